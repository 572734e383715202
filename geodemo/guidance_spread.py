"""What classifier-free guidance does to a model's samples, measured rather than assumed.

Two measures of N samples (degrees):
  distinct positions = how many different (lat, lon) remain after rounding to 0.001 degree (~100 m);
  spread             = median great-circle distance (km) from the samples to their mean direction
                       (the normalised mean of the unit vectors).
`benchmarks/guidance_spread.py` measures both per shipped model, example view and guidance scale w and writes
the table `assets/guidance_spread.json`; the app's guidance hint is read from that table, so the hint says what
the models actually do and follows them when they are retrained.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from geodemo.paths import ASSETS_DIR
from geodemo.sphere import EARTH_RADIUS_KM, angle_between, latlon_to_xyz

SPREAD_TABLE = ASSETS_DIR / "guidance_spread.json"
DISTINCT_DECIMALS = 3
"""Positions equal after rounding to 10^-3 degree (~100 m) count as one."""


def distinct_positions(latlon: torch.Tensor | np.ndarray, decimals: int = DISTINCT_DECIMALS) -> int:
    """How many different (lat, lon) pairs remain among (N, 2) degrees after rounding to `decimals` places."""
    points = np.round(np.asarray(latlon, dtype=np.float64).reshape(-1, 2), decimals) + 0.0  # -0.0 -> 0.0
    return len(np.unique(points, axis=0))


def spread_km(latlon: torch.Tensor | np.ndarray) -> float:
    """Median distance (km) from (N, 2) degree samples to their mean direction sum(x_i) / |sum(x_i)|."""
    xyz = latlon_to_xyz(torch.as_tensor(np.asarray(latlon, dtype=np.float64)).reshape(-1, 2))
    mean = xyz.sum(0)
    if float(mean.norm()) < 1e-12:  # perfectly balanced: no mean direction, the spread is a hemisphere
        return float(np.pi / 2 * EARTH_RADIUS_KM)
    return float(angle_between(xyz, (mean / mean.norm())[None]).median() * EARTH_RADIUS_KM)


def write_table(table: dict, path: Path = SPREAD_TABLE) -> None:
    """Write the measured table: {"setup": {...}, "models": {name: {"process": p, "rows": [{"guidance": w,
    "distinct": [per view], "spread_km": [per view]}]}}}."""
    path.write_text(json.dumps(table, indent=1) + "\n")


@lru_cache(maxsize=4)
def read_table(path: Path = SPREAD_TABLE) -> dict:
    """The measured table, or {} when it has not been measured (or cannot be read)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def guidance_hint(model: str, table: dict | None = None) -> str:
    """Markdown for people: what guidance w does to this model's samples, from the measured table: per w the
    fewest-most distinct positions over the example views and the spread (median / largest over the views),
    with a one-line reading (reading())."""
    table = read_table() if table is None else table
    entry = table.get("models", {}).get(model)
    if not entry:
        return ("w = 0 shows the model's own distribution. What larger w does (sharpen, collapse onto one point, or "
                "spread again) depends on the model and has not been measured for this one.")
    setup = table.get("setup", {})
    n = setup.get("samples", "N")
    lines = [f"**What w does to {model}'s samples** ({reading(entry['rows'])}; measured on the "
             f"{setup.get('views', 'shipped')} example views, {n} samples, {setup.get('steps', '?')} steps, "
             f"seed {setup.get('seed', 0)}):", "",
             f"| w | distinct positions of {n} | spread (median / largest) |", "|---|---|---|"]
    for row in entry["rows"]:
        distinct = row["distinct"]
        count = f"{min(distinct)}" if min(distinct) == max(distinct) else f"{min(distinct)}-{max(distinct)}"
        lines.append(f"| {row['guidance']:g} | {count} | {_km(float(np.median(row['spread_km'])))} / "
                     f"{_km(max(row['spread_km']))} |")
    return "\n".join(lines)


def reading(rows: list[dict]) -> str:
    """One clause on what the measured rows show: where the samples collapse onto (about) one point, and where
    they spread again (the largest or the median spread over the views grows past 3x, and past 10 km, its
    smallest at a lower w)."""
    parts = []
    collapsed = [r["guidance"] for r in rows if r["guidance"] > 0 and max(r["distinct"]) <= 2]
    if collapsed:
        parts.append(f"from w = {collapsed[0]:g} all samples fall on one point")
    tightest = np.full(2, np.inf)
    for row in rows:
        spread = np.array([max(row["spread_km"]), np.median(row["spread_km"])])
        if row["guidance"] > 0 and ((spread > 3 * tightest) & (spread > 10)).any():
            parts.append(f"at w = {row['guidance']:g} they spread again")
            break
        tightest = np.minimum(tightest, spread)
    return "; ".join(parts) or "larger w draws the samples closer together"


def _km(distance: float) -> str:
    return f"{distance:,.0f} km" if distance >= 1 else "< 1 km"
