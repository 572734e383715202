import math

import pytest
import torch

from geodemo.grids import cell_centres, cell_solid_angle, fibonacci_grid, integrate, latlon_grid
from geodemo.sphere import latlon_to_xyz, vmf_log_density


@pytest.mark.parametrize("res", [1.0, 2.5, 7.0, 45.0])
def test_latlon_cells_tile_the_sphere(res):
    grid = latlon_grid(res)
    assert grid.solid_angle.sum().item() == pytest.approx(4 * math.pi, rel=1e-12)
    assert grid.latlon.shape == (grid.shape[0] * grid.shape[1], 2)
    assert (grid.solid_angle > 0).all()


def test_cell_solid_angle_of_caps_bands_and_small_cells():
    """A cap above latitude phi covers 2 pi (1 - sin phi) sr; a small cell about cos(lat) dlat dlon."""
    caps = torch.tensor([[30.0, 90.0, -180.0, 180.0], [-90.0, 90.0, -180.0, 180.0]], dtype=torch.float64)
    assert torch.allclose(cell_solid_angle(caps), torch.tensor([math.pi, 4 * math.pi], dtype=torch.float64))
    small = torch.tensor([60.0, 60.01, 10.0, 10.02], dtype=torch.float64)
    expected = math.cos(math.radians(60.005)) * math.radians(0.01) * math.radians(0.02)
    assert cell_solid_angle(small).item() == pytest.approx(expected, rel=1e-8)
    assert torch.allclose(cell_centres(small), torch.tensor([60.005, 10.01], dtype=torch.float64), rtol=1e-14)


def test_bad_resolution_is_refused():
    with pytest.raises(ValueError):
        latlon_grid(float("nan"))
    with pytest.raises(ValueError):
        latlon_grid(-1)


def test_grids_integrate_densities_to_one():
    mu = latlon_to_xyz(torch.tensor([48.0, 2.0], dtype=torch.float64))
    grid = latlon_grid(1.0)
    logp = vmf_log_density(latlon_to_xyz(grid.latlon), mu, 50.0).reshape(grid.shape)
    assert integrate(logp, grid.solid_angle).item() == pytest.approx(1.0, abs=1e-3)
    fib = fibonacci_grid(20000)
    assert fib.solid_angle.sum().item() == pytest.approx(4 * math.pi)
    assert integrate(vmf_log_density(fib.xyz, mu, 50.0), fib.solid_angle).item() == pytest.approx(1.0, abs=1e-3)
    uniform = torch.full((fib.xyz.shape[0],), -math.log(4 * math.pi), dtype=torch.float64)
    assert integrate(uniform, fib.solid_angle).item() == pytest.approx(1.0, rel=1e-12)


def test_fibonacci_points_are_spread_evenly():
    fib = fibonacci_grid(2000)
    assert torch.allclose(fib.xyz.norm(dim=-1), torch.ones(2000, dtype=torch.float64))
    assert fib.xyz.mean(0).abs().max() < 1e-3
