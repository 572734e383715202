import math

import pytest
import torch

from geodemo.sphere import (angle_between, exp_map, geodesic_velocity, haversine_km, latlon_to_xyz, log_map, project,
                            project_tangent, sample_uniform, sample_vmf, tangent_basis, vmf_log_density, xyz_to_latlon)

pytestmark = pytest.mark.usefixtures("float64")


def random_points(n: int, seed: int = 0) -> torch.Tensor:
    return project(torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))


def reference_angle(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Slow, obvious: arccos of the clamped dot product (fine away from 0 and pi)."""
    return torch.arccos((x * y).sum(-1).clamp(-1, 1))


def test_latlon_round_trip_including_poles_and_date_line():
    latlon = torch.tensor([[0.0, 0.0], [45.0, 179.999], [-33.9, -70.6], [89.9999, 12.0], [-90.0, 0.0], [90.0, 0.0],
                           [10.0, -180.0 + 1e-9]])
    back = xyz_to_latlon(latlon_to_xyz(latlon))
    assert torch.allclose(back[:, 0], latlon[:, 0], atol=1e-9)
    away_from_poles = latlon[:, 0].abs() < 90
    assert torch.allclose(back[away_from_poles, 1], latlon[away_from_poles, 1], atol=1e-7)
    assert torch.isfinite(back).all()


def test_unit_vectors_match_closed_form():
    xyz = latlon_to_xyz(torch.tensor([[90.0, 0.0], [0.0, 90.0], [0.0, 180.0]]))
    assert torch.allclose(xyz, torch.tensor([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]]), atol=1e-12)


def test_known_distances():
    paris, new_york = torch.tensor([48.8566, 2.3522]), torch.tensor([40.7128, -74.0060])
    assert haversine_km(paris, new_york).item() == pytest.approx(5837, abs=5)
    north, south = torch.tensor([90.0, 0.0]), torch.tensor([-90.0, 0.0])
    assert haversine_km(north, south).item() == pytest.approx(math.pi * 6371.0, rel=1e-12)
    assert haversine_km(paris, paris).item() == 0.0


def test_haversine_matches_angle_between_vectors():
    x, y = random_points(500, 1), random_points(500, 2)
    d = haversine_km(xyz_to_latlon(x), xyz_to_latlon(y))
    assert torch.allclose(d, 6371.0 * reference_angle(x, y), rtol=1e-9, atol=1e-6)


def test_angle_between_is_accurate_at_extremes():
    x = random_points(100, 3)
    assert torch.allclose(angle_between(x, x), torch.zeros(100), atol=1e-12)
    assert torch.allclose(angle_between(x, -x), torch.full((100,), math.pi), atol=1e-12)


def test_exp_of_log_is_identity():
    x, y = random_points(1000, 4), random_points(1000, 5)
    assert torch.allclose(exp_map(x, log_map(x, y)), y, atol=1e-10)
    assert torch.allclose(log_map(x, y).norm(dim=-1), reference_angle(x, y), atol=1e-9)
    assert torch.allclose((log_map(x, y) * x).sum(-1), torch.zeros(1000), atol=1e-12)


def test_exp_map_matches_rodrigues_rotation():
    x = random_points(200, 6)
    v = project_tangent(x, torch.randn(200, 3, generator=torch.Generator().manual_seed(7)))
    angle = v.norm(dim=-1, keepdim=True)
    axis = torch.linalg.cross(x, v / angle, dim=-1)
    rotated = x * angle.cos() + torch.linalg.cross(axis, x, dim=-1) * angle.sin()
    assert torch.allclose(exp_map(x, v), rotated, atol=1e-10)


def test_antipodes_and_identical_points_have_no_nan():
    x = random_points(50, 8)
    assert torch.isfinite(log_map(x, -x)).all()
    assert torch.allclose(log_map(x, -x).norm(dim=-1), torch.full((50,), math.pi), atol=1e-9)
    assert torch.allclose(exp_map(x, log_map(x, -x)), -x, atol=1e-9)
    assert torch.allclose(log_map(x, x), torch.zeros_like(x), atol=1e-12)
    poles = torch.tensor([[0.0, 0, 1], [0, 0, -1]])
    assert torch.isfinite(log_map(poles, poles.flip(0))).all()


def test_geodesic_velocity_is_the_derivative_of_the_path():
    a, b = random_points(300, 9), random_points(300, 10)
    s = torch.rand(300, generator=torch.Generator().manual_seed(11)) * 0.9 + 0.05
    h = 1e-6
    point, velocity = geodesic_velocity(a, b, s)
    ahead, _ = geodesic_velocity(a, b, s + h)
    behind, _ = geodesic_velocity(a, b, s - h)
    assert torch.allclose((ahead - behind) / (2 * h), velocity, atol=1e-6)
    start, _ = geodesic_velocity(a, b, torch.zeros(300))
    end, _ = geodesic_velocity(a, b, torch.ones(300))
    assert torch.allclose(start, a, atol=1e-12) and torch.allclose(end, b, atol=1e-9)
    assert torch.allclose(point.norm(dim=-1), torch.ones(300), atol=1e-12)


def test_uniform_sampling_is_uniform_and_seeded():
    a = sample_uniform((20000,), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    b = sample_uniform((20000,), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(a, b)
    assert torch.allclose(a.norm(dim=-1), torch.ones(20000))
    # z is uniform on [-1, 1] for the uniform measure on S^2 (Archimedes): compare its deciles.
    deciles = torch.quantile(a[:, 2], torch.linspace(0.1, 0.9, 9))
    assert torch.allclose(deciles, torch.linspace(-0.8, 0.8, 9), atol=0.03)
    assert a.mean(0).abs().max() < 0.02


def textbook_vmf_log_density(cos_angle: torch.Tensor, kappa: float) -> torch.Tensor:
    """Slow, obvious, float64: log(kappa / (4 pi sinh kappa)) + kappa cos, while sinh kappa is finite."""
    return math.log(kappa / (4 * math.pi * math.sinh(kappa))) + kappa * cos_angle


def mean_resultant_length(kappa: float) -> float:
    """A(kappa) = E[mu.x] = coth(kappa) - 1/kappa for x ~ vMF(mu, kappa) on S^2."""
    return 1 / math.tanh(kappa) - 1 / kappa


@pytest.mark.parametrize("kappa", [1e-3, 1.0, 50.0, 600.0])
def test_vmf_log_density_matches_the_textbook_form(kappa):
    mu, x = random_points(1, 12)[0], random_points(400, 13)
    x[:2] = torch.stack((mu, -mu))
    expected = textbook_vmf_log_density((x * mu).sum(-1), kappa)
    assert torch.allclose(vmf_log_density(x, mu, kappa), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kappa", [1e-3, 1.0, 50.0, 1e4, 1e7])
def test_vmf_density_integrates_to_one_for_any_concentration(kappa):
    """2 pi int_0^pi p(theta) sin(theta) dtheta by the trapezoid rule on angles from mu, theta = pi u^2 for a
    uniform u: dense near mu, where the peak is ~1/sqrt(kappa) wide."""
    mu = latlon_to_xyz(torch.tensor([48.0, 2.0]))
    theta = math.pi * torch.linspace(0, 1, 400_001) ** 2
    x = theta.cos().unsqueeze(-1) * mu + theta.sin().unsqueeze(-1) * tangent_basis(mu)[0]
    log_p = vmf_log_density(x, mu, kappa)
    assert torch.isfinite(log_p).all()
    assert (2 * math.pi * torch.trapezoid(log_p.exp() * theta.sin(), theta)).item() == pytest.approx(1.0, abs=1e-6)
    if kappa > 1e3:  # the textbook form overflows; at mu, log p = log(kappa / (2 pi)) up to e^(-2 kappa)
        assert log_p[0].item() == pytest.approx(math.log(kappa / (2 * math.pi)), rel=1e-12)


@pytest.mark.parametrize("kappa", [0.5, 5.0, 300.0, 1e5])
def test_vmf_samples_have_the_mean_resultant_length_a_of_kappa(kappa):
    mu = random_points(2, 14)
    x = sample_vmf(mu, kappa, 40000, torch.Generator().manual_seed(15))
    assert x.shape == (40000, 2, 3) and torch.allclose(x.norm(dim=-1), torch.ones(()), atol=1e-12)
    spread = 1 - (x * mu).sum(-1)  # E = 1 - A(kappa), written without cancellation for large kappa
    standard_error = spread.std(0) / math.sqrt(40000)
    assert ((spread.mean(0) - (1 - mean_resultant_length(kappa))).abs() < 4 * standard_error).all()
    sideways = project_tangent(mu, x).mean(0).norm(dim=-1)  # no preferred direction around mu
    assert (sideways < 4 * (spread * (2 - spread)).mean(0).sqrt() / math.sqrt(40000)).all()
    again = sample_vmf(mu, kappa, 40000, torch.Generator().manual_seed(15))
    assert torch.equal(x, again)


def test_vmf_sampling_in_float32_at_extreme_concentrations():
    """kappa = 1e9 (a 5 m spread on the Earth): the angles still follow 1 - cos ~ Exp(kappa), median
    sqrt(2 ln 2 / kappa), rather than collapsing onto mu; a tiny kappa gives finite, nearly uniform points."""
    mu = latlon_to_xyz(torch.tensor([[-33.9, 151.2]], dtype=torch.float32))
    for kappa in (1e-4, 1e9):
        x = sample_vmf(mu, kappa, 5000, torch.Generator().manual_seed(16))
        assert x.dtype == torch.float32 and torch.isfinite(x).all()
        assert (x.norm(dim=-1) - 1).abs().max() < 1e-5
    median = angle_between(x, mu.expand_as(x)).median().item()
    assert median == pytest.approx(math.sqrt(2 * math.log(2) / 1e9), rel=0.05)
