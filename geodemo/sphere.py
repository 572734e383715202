"""Geometry of the unit sphere S^2 embedded in R^3, and the Earth's lat/lon convention.

Points on S^2 are unit vectors (x, y, z) with lat = asin(z), lon = atan2(y, x) in degrees.
All functions broadcast over leading dimensions and work in any floating dtype.
"""

from __future__ import annotations

import math

import torch

EARTH_RADIUS_KM = 6371.0
_EPS = 1e-12


def latlon_to_xyz(latlon: torch.Tensor) -> torch.Tensor:
    """(..., 2) degrees -> (..., 3) unit vectors: (cos lat cos lon, cos lat sin lon, sin lat)."""
    lat, lon = torch.deg2rad(latlon).unbind(-1)
    return torch.stack((lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()), dim=-1)


def xyz_to_latlon(xyz: torch.Tensor) -> torch.Tensor:
    """(..., 3) points of R^3 (any non-zero norm) -> (..., 2) degrees of their direction.

    lat = atan2(z, sqrt(x^2 + y^2)) (equal to asin(z) on the sphere, exact at the poles), lon = atan2(y, x).
    """
    x, y, z = xyz.unbind(-1)
    lat = torch.atan2(z, torch.hypot(x, y))
    lon = torch.atan2(y, x)
    return torch.rad2deg(torch.stack((lat, lon), dim=-1))


def project(x: torch.Tensor) -> torch.Tensor:
    """Radial projection onto S^2: x / |x| (shape (..., 3))."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(_EPS)


def project_tangent(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Orthogonal projection of v onto the tangent plane at the unit vector x: v - <x, v> x."""
    return v - (x * v).sum(-1, keepdim=True) * x


def angle_between(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Great-circle angle in radians, atan2(|x cross y|, x . y): accurate near 0 and pi."""
    cross = torch.linalg.cross(x, y, dim=-1).norm(dim=-1)
    dot = (x * y).sum(-1)
    return torch.atan2(cross, dot)


def exp_map(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """exp_x(v) = cos(|v|) x + sin(|v|) v / |v| for a tangent vector v at x."""
    norm = v.norm(dim=-1, keepdim=True)
    sinc = torch.where(norm > 1e-6, torch.sin(norm) / norm.clamp_min(_EPS), 1 - norm**2 / 6)
    return project(torch.cos(norm) * x + sinc * v)


def log_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log_x(y) = theta * u / |u| with u = y - <x, y> x and theta the angle between x and y.

    At the antipode the direction is undefined; any tangent direction is returned (a fixed one).
    """
    theta = angle_between(x, y).unsqueeze(-1)
    u = project_tangent(x, y)
    u_norm = u.norm(dim=-1, keepdim=True)
    fallback = tangent_basis(x)[0]
    direction = torch.where(u_norm > 1e-7, u / u_norm.clamp_min(_EPS), fallback)
    return theta * direction


def tangent_basis(p: torch.Tensor) -> torch.Tensor:
    """(2, ..., 3) orthonormal vectors u1, u2 perpendicular to the unit vectors p (..., 3): u1 = a x p / |a x p|
    with a = e_z (e_x near the poles), u2 = p x u1."""
    near_pole = p[..., 2:].abs() > 0.9
    helper = torch.where(near_pole, p.new_tensor([1.0, 0.0, 0.0]), p.new_tensor([0.0, 0.0, 1.0]))
    u1 = torch.linalg.cross(helper, p)
    u1 = u1 / u1.norm(dim=-1, keepdim=True)
    return torch.stack((u1, torch.linalg.cross(p, u1)))


def geodesic_velocity(x_start: torch.Tensor, x_end: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Point and velocity at s in [0, 1] on the geodesic from x_start to x_end.

    x(s) = exp_{x_start}(s u), u = log_{x_start}(x_end); dx/ds = |u| (-sin(s|u|) x_start + cos(s|u|) u/|u|).
    s has shape (...,) matching the leading dimensions.
    """
    u = log_map(x_start, x_end)
    theta = u.norm(dim=-1, keepdim=True)
    direction = torch.where(theta > 1e-7, u / theta.clamp_min(_EPS), torch.zeros_like(u))
    angle = s.unsqueeze(-1) * theta
    point = torch.cos(angle) * x_start + torch.sin(angle) * direction
    velocity = theta * (-torch.sin(angle) * x_start + torch.cos(angle) * direction)
    return point, velocity


def haversine_km(latlon_a: torch.Tensor, latlon_b: torch.Tensor) -> torch.Tensor:
    """Great-circle distance in km between (..., 2) degree arrays: 2 R asin(sqrt(hav)), R = 6371 km."""
    lat1, lon1 = torch.deg2rad(latlon_a).unbind(-1)
    lat2, lon2 = torch.deg2rad(latlon_b).unbind(-1)
    hav = torch.sin((lat2 - lat1) / 2) ** 2 + lat1.cos() * lat2.cos() * torch.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * torch.asin(hav.clamp(0, 1).sqrt())


def sample_uniform(shape: tuple[int, ...], generator: torch.Generator | None = None,
                   device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform points on S^2 of shape (*shape, 3): normalised standard Gaussians."""
    g = torch.randn(*shape, 3, generator=generator, device=device, dtype=dtype)
    return project(g)


LOG_SPHERE_AREA = math.log(4 * math.pi)


def vmf_log_density(x: torch.Tensor, mu: torch.Tensor, kappa: float | torch.Tensor) -> torch.Tensor:
    """log of the von Mises-Fisher density on S^2 in nats per steradian, x (..., 3) and mu (..., 3) broadcast:
    log(kappa / (4 pi sinh kappa)) + kappa mu.x = log(kappa / (2 pi (1 - e^{-2 kappa}))) + kappa (mu.x - 1)."""
    kappa = torch.as_tensor(kappa, dtype=x.dtype, device=x.device)
    log_c = kappa.log() - math.log(2 * math.pi) - torch.log(-torch.expm1(-2 * kappa))
    return log_c + kappa * ((x * mu).sum(-1) - 1)


def sample_vmf(mu: torch.Tensor, kappa: float, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n exact draws from vMF(mu, kappa) around each unit vector of mu (..., 3): (n, ..., 3) in mu's dtype.

    1 - cos(angle) = -log(u + (1 - u) e^{-2 kappa}) / kappa for u ~ U(0, 1) (the inverse of the angle's CDF),
    written with logaddexp so it stays finite for any kappa; the direction around mu is uniform.
    """
    u = torch.rand(n, *mu.shape[:-1], generator=generator, dtype=mu.dtype, device=mu.device)
    one_minus_cos = (-torch.logaddexp(u.log(), torch.log1p(-u) - 2 * kappa) / kappa).clamp(0, 2).unsqueeze(-1)
    noise = torch.randn(n, *mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    direction = project(project_tangent(mu, noise))
    return (1 - one_minus_cos) * mu + (one_minus_cos * (2 - one_minus_cos)).sqrt() * direction
