"""Post-hoc calibration of the credible regions: a temperature and a uniform floor.

A model's density p (nats/sr on S^2) is recalibrated as

    p'(x) = (1 - eps) p_T(x) + eps / (4 pi),    p_T = p^(1/T) / Z_T,

T > 0 the temperature (T > 1 widens the peaks of an overconfident model) and eps in [0, 1) the floor: the
share of the probability spread evenly over the sphere, for the views where the model is confidently wrong
(the truth lies where p is tiny, which no temperature reaches without widening every region). p' is an
increasing function of p, so its highest-density regions are still {p >= t}, only their masses change: the
level of a point y under p' (the mass of the region denser than y, geodemo.regions) is

    L'(y) = (1 - eps) L_T(y) + eps A(y) / (4 pi),

L_T(y) = P_{x ~ p_T}(p(x) > p(y)) its level under p_T and A(y) the solid angle of {x : p(x) > p(y)}. From N
of the model's own samples (L_T by importance weights, regions.sample_levels) and K points uniform on the
sphere (A / 4 pi = the share of them denser than y), with no map. On a map (DensityCells) the cells of p' are
those of temper(cells, T) mixed with the floor (calibrate_cells); the app draws the regions of those cells.

The values are fitted on held-out views by training/calibration.py and stored in a model's config.json under
geodemo.calibration {"temperature": T, "floor": eps} (CheckpointInfo.region_calibration).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from geodemo.adaptive_density import DensityCells
from geodemo.regions import check_temperature, sample_levels, temper


@dataclass(frozen=True)
class Calibration:
    """p' = (1 - floor) p^(1/temperature) / Z + floor / (4 pi); Calibration() is the model's own density."""

    temperature: float = 1.0
    floor: float = 0.0

    def __post_init__(self):
        check_temperature(self.temperature)
        if not (math.isfinite(self.floor) and 0 <= self.floor < 1):
            raise ValueError(f"the calibration floor must lie in [0, 1), got {self.floor}")

    @property
    def identity(self) -> bool:
        return self.temperature == 1 and self.floor == 0

    def describe(self) -> str:
        """Words for a summary: 'temperature T = 1.62' or 'temperature T = 1.62 and 8% of the mass spread evenly
        over the sphere'."""
        words = f"temperature T = {self.temperature:.2f}"
        return words + (f" and {self.floor:.0%} of the mass spread evenly over the sphere" if self.floor else "")


def denser_share(log_density: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """(...) share of the points (..., K) whose log p exceeds each value (...); ties count half."""
    points = torch.as_tensor(log_density, dtype=torch.float64)
    value = torch.as_tensor(value, dtype=torch.float64).unsqueeze(-1)
    return ((points > value).double() + 0.5 * (points == value).double()).mean(dim=-1)


def floored_levels(sample_log_density: torch.Tensor, log_density: torch.Tensor,
                   uniform_log_density: torch.Tensor | None, calibration: Calibration) -> torch.Tensor:
    """(...) level under p' of points of known log p (...), from N own samples' log p (..., N) and, when the
    floor is not 0, K uniform points' log p (..., K): (1 - eps) L_T + eps * (share of uniform points denser)."""
    levels = sample_levels(sample_log_density, log_density, calibration.temperature)
    if calibration.floor == 0:
        return levels
    if uniform_log_density is None:
        raise ValueError("a floored density's levels need the log p of points uniform on the sphere")
    area_share = denser_share(uniform_log_density, log_density)
    return ((1 - calibration.floor) * levels + calibration.floor * area_share).clamp(0.0, 1.0)


def calibrate_cells(cells: DensityCells, calibration: Calibration) -> DensityCells:
    """The cells of p' (normalised on the grid, which covers the sphere): log((1 - eps) p_T + eps / 4 pi)."""
    if calibration.identity:
        return cells
    tempered = temper(cells, calibration.temperature)
    if calibration.floor == 0:
        return tempered
    floor = torch.full_like(tempered.log_density, math.log(calibration.floor / (4 * math.pi)))
    mixed = torch.logaddexp(tempered.log_density + math.log1p(-calibration.floor), floor)
    log_z = torch.logsumexp(mixed + cells.solid_angle.log(), dim=0)  # 0 up to rounding on a whole-sphere grid
    return DensityCells(cells.bounds, mixed - log_z, cells.level, cells.evaluations)
