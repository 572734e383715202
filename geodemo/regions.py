"""Highest-density (credible) regions of a density map, and the level of a point.

For a density p on S^2 and a mass m in (0, 1], the highest-density region R_m = {x : p(x) >= t_m}, t_m the
largest threshold whose region still holds m of the probability: the smallest region holding mass m. On
DensityCells (p constant over each cell) R_m is the union of the densest cells, taken in decreasing log p until
their shares reach m. The level of a point y is the probability of landing somewhere denser,
L(y) = P_{x ~ p}(p(x) > p(y)): y lies in R_m iff L(y) < m, so for a calibrated model the truth's level is
uniform on [0, 1] and R_m holds the truth with probability m.

A post-hoc temperature T reshapes the density as p_T(x) = p(x)^(1/T) / Z_T: T > 1 widens (for an overconfident
model), T < 1 sharpens; the regions stay nested in the same order, only their masses change.

Without a map, N draws x_i of p and their log p give the same quantities by Monte Carlo: the level of y is the
share of draws denser than y, the area of {p >= t} is E_p[1{p >= t} / p], and p_T is reached by the importance
weights p^(1/T - 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from geodemo.adaptive_density import DensityCells, touch_matrix
from geodemo.sphere import EARTH_RADIUS_KM


def densest_first(cells: DensityCells) -> tuple[torch.Tensor, torch.Tensor]:
    """(order, mass_before): cell indices by decreasing log p, and for each cell (indexed like `cells`) the
    share of the mass held by the cells before it in that order (its level)."""
    order = torch.argsort(cells.log_density, descending=True, stable=True)
    shares = cells.probabilities()[order]
    before = torch.empty_like(shares)
    before[order] = torch.cumsum(shares, dim=0) - shares
    return order, before


def cell_index(cells: DensityCells, latlon: torch.Tensor) -> torch.Tensor:
    """(N,) index of the cell containing each (N, 2) degree point (the finest when a point lies on an edge)."""
    lat, lon = torch.as_tensor(latlon, dtype=torch.float64).reshape(-1, 2).unbind(-1)
    lon = torch.remainder(lon + 180.0, 360.0) - 180.0
    lat0, lat1, lon0, lon1 = cells.bounds.unbind(-1)
    inside = ((lat[:, None] >= lat0) & (lat[:, None] <= lat1) & (lon[:, None] >= lon0) & (lon[:, None] <= lon1))
    if not inside.any(dim=1).all():
        raise ValueError("the cells do not cover every point: not a grid over the whole sphere")
    smallest = torch.where(inside, cells.solid_angle, torch.tensor(math.inf, dtype=torch.float64))
    return smallest.argmin(dim=1)


def point_levels(cells: DensityCells, latlon: torch.Tensor) -> torch.Tensor:
    """(N,) level of each (N, 2) degree point on the piecewise-constant map: the mass of the cells denser than
    the cell containing it (the point is in credible_region(cells, m) iff its level < m)."""
    return densest_first(cells)[1][cell_index(cells, latlon)]


def density_levels(cells: DensityCells, log_density: torch.Tensor) -> torch.Tensor:
    """(...) level of points of known log p (nats/sr, any shape): the mass of the cells with log p above it."""
    order, before = densest_first(cells)
    descending = cells.log_density[order]
    shares = cells.probabilities()[order]
    cumulative = torch.cat((torch.zeros(1, dtype=torch.float64), torch.cumsum(shares, dim=0)))
    values = torch.as_tensor(log_density, dtype=torch.float64)
    denser = torch.searchsorted(-descending, -values.reshape(-1), side="left")  # cells with log p > value
    return cumulative[denser].reshape(values.shape)


def check_temperature(temperature: float) -> None:
    """ValueError unless the temperature is a positive finite number."""
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"the temperature must be a positive number, got {temperature}")


def sample_weights(sample_log_density: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(..., N) self-normalised importance weights that turn N draws from p into draws from p_T: proportional to
    p^(1/T) / p = exp((1/T - 1) log p) (uniform at T = 1; p_T has p's support, so no region is missed)."""
    check_temperature(temperature)
    logp = torch.as_tensor(sample_log_density, dtype=torch.float64)
    return torch.softmax((1 / temperature - 1) * logp, dim=-1)


def sample_levels(sample_log_density: torch.Tensor, log_density: torch.Tensor, temperature: float = 1.0
                  ) -> torch.Tensor:
    """Monte Carlo level of points from N of the model's own samples: the (weighted, sample_weights) share of
    samples (..., N) whose log p exceeds each point's log p (...); ties count half. Uses no map. Clamped to
    [0, 1]: the weights' sum may round a hair past 1."""
    weights = sample_weights(sample_log_density, temperature)
    samples = torch.as_tensor(sample_log_density, dtype=torch.float64)
    value = torch.as_tensor(log_density, dtype=torch.float64).unsqueeze(-1)
    return (weights * ((samples > value).double() + 0.5 * (samples == value).double())).sum(dim=-1).clamp(0.0, 1.0)


def sample_region_area_km2(sample_log_density: torch.Tensor, mass: float, temperature: float = 1.0) -> torch.Tensor:
    """(...) area of the highest-density region of p_T holding `mass`, from N draws of p (..., N): the region is
    {log p >= t}, t the largest sample value whose (weighted) share of samples at or above it reaches `mass`;
    its area is E_p[1{log p >= t} / p] (importance sampling), times R^2."""
    if not 0 < mass <= 1:
        raise ValueError(f"the credible mass must lie in (0, 1], got {mass}")
    logp = torch.as_tensor(sample_log_density, dtype=torch.float64)
    ordered, order = torch.sort(logp, dim=-1, descending=True)
    reached = torch.cumsum(torch.gather(sample_weights(logp, temperature), -1, order), dim=-1) >= mass - 1e-12
    last = reached.double().argmax(dim=-1, keepdim=True)  # the first sample (densest first) reaching the mass
    inside = torch.arange(logp.shape[-1]) <= last
    return (inside * torch.exp(-ordered)).mean(dim=-1) * EARTH_RADIUS_KM**2


def temper(cells: DensityCells, temperature: float) -> DensityCells:
    """The cells of p_T = p^(1/T) / Z_T, Z_T = sum_k exp(log p_k / T) Omega_k (normalised on this grid)."""
    check_temperature(temperature)
    scaled = cells.log_density / temperature
    log_z = torch.logsumexp(scaled + cells.solid_angle.log(), dim=0)
    return DensityCells(cells.bounds, scaled - log_z, cells.level, cells.evaluations)


def connected_components(bounds: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """(K,) component label (0, 1, ...) of each cell: cells that share an edge or a corner (longitudes wrap,
    cells meeting at a pole touch) belong to one component. Labels spread by min over neighbours with pointer
    jumping until nothing changes."""
    k = len(bounds)
    if k == 0:
        return torch.zeros(0, dtype=torch.long)
    pairs = [torch.nonzero(touch_matrix(bounds[start:start + chunk], bounds)) + torch.tensor([start, 0])
             for start in range(0, k, chunk)]
    i, j = torch.cat(pairs).unbind(-1)
    labels = torch.arange(k)
    while True:
        spread = labels.scatter_reduce(0, i, labels[j], reduce="amin")
        spread = spread[spread]
        if torch.equal(spread, labels):
            break
        labels = spread
    return torch.unique(labels, return_inverse=True)[1]


@dataclass
class CredibleRegion:
    """The smallest set of cells holding `mass` of the probability (highest-density region) of one map."""

    mass: float
    """The mass asked for."""
    held: float
    """The mass the chosen cells hold (>= mass: the last cell is taken whole)."""
    inside: torch.Tensor
    """(K,) bool over the map's cells."""
    bounds: torch.Tensor
    """(n, 4) bounds of the chosen cells, degrees."""
    threshold: float
    """log p (nats/sr) of the least dense chosen cell: the region is {log p >= threshold} on the map."""
    area_km2: float
    components: int
    """Number of separate areas (connected components of the chosen cells)."""
    cells: DensityCells

    def contains(self, latlon: torch.Tensor) -> torch.Tensor:
        """(N,) bool: whether each (N, 2) degree point lies in a chosen cell."""
        return self.inside[cell_index(self.cells, latlon)]


def credible_region(cells: DensityCells, mass: float, temperature: float = 1.0) -> CredibleRegion:
    """The highest-density region holding `mass` in (0, 1] of the map's probability p_T (temper; T = 1: p
    itself): the densest cells whose level (mass of the denser cells under p_T) is below `mass`. The region's
    cells, threshold and held mass are those of p_T."""
    if not 0 < mass <= 1:
        raise ValueError(f"the credible mass must lie in (0, 1], got {mass}")
    cells = temper(cells, temperature) if temperature != 1 else cells
    inside = densest_first(cells)[1] < mass
    chosen = cells.bounds[inside]
    return CredibleRegion(
        mass=float(mass),
        held=float(cells.probabilities()[inside].sum()),
        inside=inside,
        bounds=chosen,
        threshold=float(cells.log_density[inside].min()),
        area_km2=float(cells.solid_angle[inside].sum()) * EARTH_RADIUS_KM**2,
        components=int(connected_components(chosen).max()) + 1,
        cells=cells,
    )


def level_image(cells: DensityCells, resolution_deg: float, window: tuple[float, float, float, float] | None = None,
                temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lats (H,), lons (W,), levels (H, W)) on a regular grid of pixel centres (DensityCells.rasterize): each
    pixel's level under p_T; the contour at m outlines credible_region(cells, m, temperature)."""
    cells = temper(cells, temperature) if temperature != 1 else cells
    lats, lons, image = cells.rasterize(resolution_deg, window)
    levels = density_levels(cells, torch.from_numpy(np.nan_to_num(image, nan=-np.inf))).numpy()
    return lats, lons, levels

