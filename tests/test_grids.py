import math

import pytest
import torch

from geodemo.grids import fibonacci_grid, integrate, latlon_grid
from geodemo.sphere import latlon_to_xyz


def vmf_log_density(xyz: torch.Tensor, mu: torch.Tensor, kappa: float) -> torch.Tensor:
    """log of kappa / (4 pi sinh kappa) exp(kappa mu.x), written stably."""
    log_c = math.log(kappa) - math.log(2 * math.pi) - kappa - math.log1p(-math.exp(-2 * kappa))
    return log_c + kappa * (xyz * mu).sum(-1)


@pytest.mark.parametrize("res", [1.0, 2.5, 7.0, 45.0])
def test_latlon_cells_tile_the_sphere(res):
    grid = latlon_grid(res)
    assert grid.solid_angle.sum().item() == pytest.approx(4 * math.pi, rel=1e-12)
    assert grid.latlon.shape == (grid.shape[0] * grid.shape[1], 2)
    assert (grid.solid_angle > 0).all()


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
