"""Progressive log-density maps: a coarse global grid first, then refine only the cells that hold the mass.

Cells are lat/lon rectangles; the log-density log p (nats per steradian) is evaluated at each cell's
centre and taken as constant over the cell, so a cell holds mass exp(log p) * Omega with
Omega = (lon1 - lon0) (sin lat1 - sin lat0). Each refinement splits into 2 x 2 children the cells
that together hold `mass_fraction` of the mass, plus the cells that contain a sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from geodemo.grids import cell_centres, cell_solid_angle
from geodemo.sphere import EARTH_RADIUS_KM, angle_between, latlon_to_xyz

LogDensityFn = Callable[[torch.Tensor], torch.Tensor]
"""(M, 2) degrees -> (M,) log p in nats per steradian."""


@dataclass
class DensityCells:
    """Leaf cells of the adaptive grid: bounds (K, 4) = (lat0, lat1, lon0, lon1) degrees and log p (K,) at centres."""

    bounds: torch.Tensor
    log_density: torch.Tensor
    level: torch.Tensor  # (K,) refinement depth of each cell, 0 = coarse
    evaluations: int = 0  # log-density evaluations spent so far

    @property
    def centres(self) -> torch.Tensor:
        """(K, 2) degrees."""
        return cell_centres(self.bounds)

    @property
    def solid_angle(self) -> torch.Tensor:
        """(K,) steradians: (lon1 - lon0) (sin lat1 - sin lat0)."""
        return cell_solid_angle(self.bounds)

    @property
    def log_mass(self) -> torch.Tensor:
        """(K,) log of the mass of each cell, log p + log Omega."""
        return self.log_density + self.solid_angle.log()

    def total_mass(self) -> float:
        """Integral of exp(log p) over the sphere by this grid (1 for a normalised density)."""
        return float(torch.logsumexp(self.log_mass, dim=0).exp())

    def probabilities(self) -> torch.Tensor:
        """(K,) share of the total mass held by each cell."""
        return torch.softmax(self.log_mass, dim=0)

    def holding(self, fraction: float) -> torch.Tensor:
        """Indices of the fewest cells that hold `fraction` of the mass, heaviest first: the n heaviest, n the
        smallest count whose shares add up to at least fraction."""
        order = torch.argsort(self.log_mass, descending=True)
        cumulative = torch.cumsum(self.probabilities()[order], dim=0)
        n = int(torch.searchsorted(cumulative, torch.tensor([fraction], dtype=cumulative.dtype))) + 1
        return order[:n]

    def rasterize(self, resolution_deg: float, window: tuple[float, float, float, float] | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lats (H,), lons (W,), log p (H, W)) on a regular grid of pixel centres resolution_deg apart, over the
        globe or over window = (lat0, lat1, lon0, lon1): each pixel takes the value of the cell containing it."""
        lat0, lat1, lon0, lon1 = window or (-90.0, 90.0, -180.0, 180.0)
        n_lat, n_lon = max(1, round((lat1 - lat0) / resolution_deg)), max(1, round((lon1 - lon0) / resolution_deg))
        lats = lat0 + (np.arange(n_lat) + 0.5) * (lat1 - lat0) / n_lat
        lons = lon0 + (np.arange(n_lon) + 0.5) * (lon1 - lon0) / n_lon
        image = np.full((n_lat, n_lon), np.nan)
        bounds = self.bounds.numpy()
        rows0, rows1 = np.searchsorted(lats, bounds[:, 0]), np.searchsorted(lats, bounds[:, 1])
        cols0, cols1 = np.searchsorted(lons, bounds[:, 2]), np.searchsorted(lons, bounds[:, 3])
        values = self.log_density.numpy()
        for k in np.argsort(bounds[:, 1] - bounds[:, 0])[::-1]:  # coarse first, fine cells drawn over them
            image[rows0[k]:rows1[k], cols0[k]:cols1[k]] = values[k]
        return lats, lons, image

    def mass_within(self, centre_latlon: torch.Tensor, radius_km: float) -> torch.Tensor:
        """(C,) share of the mass in cells whose centre lies within radius_km of each (C, 2) centre."""
        angle = angle_between(latlon_to_xyz(centre_latlon.double()).unsqueeze(1),
                              latlon_to_xyz(self.centres.double()).unsqueeze(0))
        inside = angle * EARTH_RADIUS_KM <= radius_km
        return (inside.double() * self.probabilities().unsqueeze(0)).sum(dim=1)


def coarse_cells(resolution_deg: float) -> torch.Tensor:
    """(K, 4) bounds of a near-equal-area grid: latitude bands resolution_deg high, each cut into
    round(360 cos(lat) / resolution_deg) longitude cells (at least 1), so polar cells are not tiny."""
    n_lat = max(1, round(180 / resolution_deg))
    edges = np.linspace(-90, 90, n_lat + 1)
    rows = []
    for lat0, lat1 in zip(edges[:-1], edges[1:]):
        n_lon = max(3, round(360 * math.cos(math.radians((lat0 + lat1) / 2)) / resolution_deg))
        lon_edges = np.linspace(-180, 180, n_lon + 1)
        rows.append(np.stack([np.full(n_lon, lat0), np.full(n_lon, lat1), lon_edges[:-1], lon_edges[1:]], axis=1))
    return torch.from_numpy(np.concatenate(rows)).double()


def split_cells(bounds: torch.Tensor) -> torch.Tensor:
    """(K, 4) cells -> (4K, 4) children: each cell halved in latitude and in longitude."""
    lat0, lat1, lon0, lon1 = bounds.unbind(-1)
    lat_mid, lon_mid = cell_centres(bounds).unbind(-1)
    children = [
        torch.stack(b, dim=-1)
        for b in ((lat0, lat_mid, lon0, lon_mid), (lat0, lat_mid, lon_mid, lon1),
                  (lat_mid, lat1, lon0, lon_mid), (lat_mid, lat1, lon_mid, lon1))
    ]
    return torch.cat(children, dim=0)


def points_in_cells(bounds: torch.Tensor, latlon: torch.Tensor) -> torch.Tensor:
    """(K,) how many of the (N, 2) points each cell contains (edges included)."""
    lat, lon = latlon.double()[:, 0], latlon.double()[:, 1]
    lat0, lat1, lon0, lon1 = bounds.unbind(-1)
    inside = ((lat[None] >= lat0[:, None]) & (lat[None] <= lat1[:, None])
              & (lon[None] >= lon0[:, None]) & (lon[None] <= lon1[:, None]))
    return inside.sum(dim=1)


def cells_containing(bounds: torch.Tensor, latlon: torch.Tensor) -> torch.Tensor:
    """(K,) bool: which cells contain at least one of the (N, 2) points."""
    return points_in_cells(bounds, latlon) > 0


def touch_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(A, B) bool: whether cells a (A, 4) and b (B, 4) share an edge or a corner (longitudes wrap at 180; cells
    that reach the same pole meet there)."""
    eps = 1e-9
    lat_ok = (a[:, None, 0] <= b[None, :, 1] + eps) & (a[:, None, 1] >= b[None, :, 0] - eps)
    lon_ok = torch.zeros_like(lat_ok)
    for shift in (-360.0, 0.0, 360.0):
        lon_ok |= (a[:, None, 2] <= b[None, :, 3] + shift + eps) & (a[:, None, 3] >= b[None, :, 2] + shift - eps)
    north, south = (a[:, 1] >= 90 - eps), (a[:, 0] <= -90 + eps)
    poles = (north[:, None] & (b[None, :, 1] >= 90 - eps)) | (south[:, None] & (b[None, :, 0] <= -90 + eps))
    return (lat_ok & lon_ok) | poles


def touching(bounds: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """(K,) bool: cells that share an edge or a corner with a chosen cell (touch_matrix)."""
    return touch_matrix(bounds, bounds[chosen]).any(dim=1)


def cells_to_refine(cells: DensityCells, mass_fraction: float, samples: torch.Tensor | None,
                    max_cells: int, neighbours: bool = True) -> torch.Tensor:
    """(K,) bool: the fewest cells holding mass_fraction of the mass, plus cells containing samples, plus
    (neighbours=True) the cells touching those, since a peak narrower than a cell spills into them unseen by
    their centres; at most max_cells of them, largest share first. A cell's share is the larger of its share of the
    grid's mass and its share of the samples (the model's own draws estimate the mass of a cell whose centre
    misses a peak narrower than the cell, and the far cells' log p, only screened, are over-estimates)."""
    chosen = torch.zeros(len(cells.bounds), dtype=torch.bool)
    chosen[cells.holding(mass_fraction)] = True
    share = cells.probabilities()
    if samples is not None and len(samples):
        counts = points_in_cells(cells.bounds, samples)
        chosen |= counts > 0
        share = torch.maximum(share, counts.double() / len(samples))
    if neighbours:
        chosen |= touching(cells.bounds, chosen)
    if int(chosen.sum()) > max_cells:
        order = torch.argsort(share, descending=True)
        ranked = order[chosen[order]]
        chosen = torch.zeros_like(chosen)
        chosen[ranked[:max_cells]] = True
    return chosen


def progressive_density(log_density_fn: LogDensityFn, coarse_deg: float = 10.0, levels: int = 2,
                        mass_fraction: float = 0.95, samples: torch.Tensor | None = None,
                        max_cells_per_level: int = 256, neighbours: bool = True) -> Iterator[DensityCells]:
    """Yield the density on a coarse grid, then after each of `levels` refinements of the cells that hold
    `mass_fraction` of the mass, of the cells containing `samples` ((N, 2) degrees) and of their neighbours."""
    bounds = coarse_cells(coarse_deg)
    cells = DensityCells(bounds, _evaluate(log_density_fn, bounds), torch.zeros(len(bounds), dtype=torch.long),
                         evaluations=len(bounds))
    yield cells
    for _ in range(levels):
        refine = cells_to_refine(cells, mass_fraction, samples, max_cells_per_level, neighbours)
        if not refine.any():
            return
        children = split_cells(cells.bounds[refine])
        child_logp = _evaluate(log_density_fn, children)
        child_level = cells.level[refine].repeat(4) + 1
        cells = DensityCells(
            bounds=torch.cat((cells.bounds[~refine], children)),
            log_density=torch.cat((cells.log_density[~refine], child_logp)),
            level=torch.cat((cells.level[~refine], child_level)),
            evaluations=cells.evaluations + len(children),
        )
        yield cells


def _evaluate(log_density_fn: LogDensityFn, bounds: torch.Tensor) -> torch.Tensor:
    centres = cell_centres(bounds)
    logp = torch.as_tensor(log_density_fn(centres), dtype=torch.float64).reshape(-1)
    if logp.shape[0] != centres.shape[0]:
        raise ValueError(f"log_density_fn returned {logp.shape[0]} values for {centres.shape[0]} points")
    return logp
