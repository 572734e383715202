"""Integration grids on S^2: each point carries the solid angle (steradians) it stands for."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from geodemo.sphere import latlon_to_xyz, xyz_to_latlon


def cell_centres(bounds: torch.Tensor) -> torch.Tensor:
    """(..., 2) centres in degrees of lat/lon cells bounds (..., 4) = (lat0, lat1, lon0, lon1) in degrees."""
    lat0, lat1, lon0, lon1 = bounds.unbind(-1)
    return torch.stack(((lat0 + lat1) / 2, (lon0 + lon1) / 2), dim=-1)


def cell_solid_angle(bounds: torch.Tensor) -> torch.Tensor:
    """(...,) steradians of lat/lon cells bounds (..., 4) in degrees: (lon1 - lon0) (sin lat1 - sin lat0)."""
    lat0, lat1, lon0, lon1 = torch.deg2rad(bounds).unbind(-1)
    return (lon1 - lon0) * (lat1.sin() - lat0.sin())


@dataclass(frozen=True)
class LatLonGrid:
    """Cell centres of a regular lat/lon grid and the exact solid angle of each cell.

    A cell [lat0, lat1] x [lon0, lon1] covers (lon1 - lon0) (sin lat1 - sin lat0) steradians.
    """

    lats: torch.Tensor  # (H,) degrees, south to north
    lons: torch.Tensor  # (W,) degrees, west to east
    solid_angle: torch.Tensor  # (H, W) steradians, sums to 4 pi

    @property
    def latlon(self) -> torch.Tensor:
        """(H * W, 2) cell centres in degrees, row-major (latitude rows)."""
        lat, lon = torch.meshgrid(self.lats, self.lons, indexing="ij")
        return torch.stack((lat, lon), dim=-1).reshape(-1, 2)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.lats.numel(), self.lons.numel())


def latlon_grid(resolution_deg: float, dtype: torch.dtype = torch.float64) -> LatLonGrid:
    """Regular grid of cells resolution_deg wide (rounded so that cells tile the sphere exactly)."""
    if not math.isfinite(resolution_deg) or resolution_deg <= 0:
        raise ValueError(f"grid resolution must be a positive number of degrees, got {resolution_deg}")
    n_lat = max(1, round(180.0 / resolution_deg))
    n_lon = max(1, round(360.0 / resolution_deg))
    lat_edges = torch.linspace(-90.0, 90.0, n_lat + 1, dtype=dtype)
    lon_edges = torch.linspace(-180.0, 180.0, n_lon + 1, dtype=dtype)
    bounds = torch.stack(torch.broadcast_tensors(lat_edges[:-1, None], lat_edges[1:, None], lon_edges[None, :-1],
                                                 lon_edges[None, 1:]), dim=-1)
    centres = cell_centres(bounds)
    return LatLonGrid(lats=centres[:, 0, 0], lons=centres[0, :, 1], solid_angle=cell_solid_angle(bounds))


@dataclass(frozen=True)
class PointGrid:
    """Scattered points on S^2 with equal solid angles (a quadrature rule)."""

    xyz: torch.Tensor  # (M, 3)
    solid_angle: torch.Tensor  # (M,) steradians, sums to 4 pi

    @property
    def latlon(self) -> torch.Tensor:
        return xyz_to_latlon(self.xyz)


def fibonacci_grid(num_points: int, dtype: torch.dtype = torch.float64) -> PointGrid:
    """Fibonacci lattice: z_i = 1 - (2i + 1)/M, lon_i = i * golden angle; each point 4 pi / M sr."""
    if num_points < 1:
        raise ValueError(f"a Fibonacci grid needs at least one point, got {num_points}")
    i = torch.arange(num_points, dtype=dtype)
    z = 1 - (2 * i + 1) / num_points
    lon = torch.remainder(i * math.pi * (3 - math.sqrt(5)), 2 * math.pi) - math.pi
    lat = torch.asin(z)
    xyz = latlon_to_xyz(torch.rad2deg(torch.stack((lat, lon), dim=-1)))
    return PointGrid(xyz=xyz, solid_angle=torch.full((num_points,), 4 * math.pi / num_points, dtype=dtype))


def integrate(log_density: torch.Tensor, solid_angle: torch.Tensor) -> torch.Tensor:
    """Integral over S^2 of exp(log p) dOmega by the grid's rule: sum exp(log p_i) Omega_i.

    log_density (..., *grid) and solid_angle (*grid) broadcast; the grid dimensions are summed.
    """
    dims = tuple(range(-solid_angle.dim(), 0))
    return torch.exp(torch.logsumexp(log_density + solid_angle.log(), dim=dims))
