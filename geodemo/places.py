"""Offline reverse geocoding: nearest named place and country of points on Earth.

Data shipped in assets/map/ (built by assets/map/build_map_assets.py): GeoNames places with at least
15,000 inhabitants (CC-BY 4.0) and a 0.1-degree raster of Natural Earth 1:50m countries (public domain).
Everything is read on first use, never at import.
"""

from __future__ import annotations

import csv
import gzip
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from geodemo.paths import MAP_DIR
from geodemo.sphere import EARTH_RADIUS_KM, angle_between, latlon_to_xyz

OCEAN = "open water"


@dataclass(frozen=True)
class Place:
    """The nearest populated place to a point: its name, country, position and distance (km)."""

    name: str
    country_code: str
    country: str
    lat: float
    lon: float
    distance_km: float

    def label(self) -> str:
        """'Lyon, France' or, when the point is far from it, '850 km from Lyon, France'."""
        where = f"{self.name}, {self.country}" if self.country else self.name
        return where if self.distance_km < 50 else f"{self.distance_km:,.0f} km from {where}"


@dataclass(frozen=True)
class Countries:
    """Country index raster (0 = no country) and the names of its indices (names[0] = OCEAN)."""

    raster: np.ndarray  # (H, W) uint8, row 0 at 90 N, column 0 at 180 W
    names: list[str]
    iso2: list[str]

    @property
    def resolution_deg(self) -> float:
        return 180.0 / self.raster.shape[0]


@lru_cache(maxsize=1)
def countries() -> Countries:
    """The shipped country raster and table."""
    raster = np.array(Image.open(MAP_DIR / "countries.png"))
    names, iso2 = [OCEAN], [""]
    with open(MAP_DIR / "countries.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if int(row["index"]) != len(names):
                raise ValueError("countries.csv indices must be 1, 2, 3, ... in order")
            names.append(row["name"])
            iso2.append(row["iso2"])
    return Countries(raster=raster, names=names, iso2=iso2)


@dataclass(frozen=True)
class Cities:
    names: list[str]
    country_codes: list[str]
    latlon: np.ndarray  # (K, 2) degrees
    xyz: torch.Tensor  # (K, 3) float32 unit vectors
    log_population: torch.Tensor  # (K,)


@lru_cache(maxsize=1)
def cities() -> Cities:
    """The shipped GeoNames places (population >= 15,000)."""
    names, codes, coords, population = [], [], [], []
    with gzip.open(MAP_DIR / "cities.csv.gz", "rt", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            names.append(row["name"])
            codes.append(row["cc"])
            coords.append((float(row["lat"]), float(row["lon"])))
            population.append(float(row["population"]))
    latlon = np.asarray(coords, dtype=np.float64)
    return Cities(names, codes, latlon, latlon_to_xyz(torch.from_numpy(latlon)).float(),
                  torch.tensor(population).clamp_min(1).log())


@lru_cache(maxsize=1)
def _country_name_by_iso2() -> dict[str, str]:
    """Country names by ISO code: the map's names, then GeoNames' for codes without a polygon."""
    with open(MAP_DIR / "country_codes.csv", newline="", encoding="utf-8") as f:
        names = {row["iso2"]: row["name"] for row in csv.DictReader(f)}
    table = countries()
    return names | {code: name for code, name in zip(table.iso2, table.names) if code}


def country_index(latlon: np.ndarray | torch.Tensor) -> np.ndarray:
    """Index into countries().names of the country containing each (..., 2) degree point (0 = none)."""
    table = countries()
    pts = np.asarray(latlon, dtype=np.float64)
    res = table.resolution_deg
    h, w = table.raster.shape
    rows = np.clip(np.floor((90.0 - pts[..., 0]) / res), 0, h - 1).astype(np.int64)
    cols = np.floor((pts[..., 1] + 180.0) / res).astype(np.int64) % w
    return table.raster[rows, cols]


def country_names(latlon: np.ndarray | torch.Tensor) -> list[str]:
    """Country name of each (M, 2) point, OCEAN where no country contains it."""
    names = countries().names
    return [names[i] for i in country_index(latlon).reshape(-1)]


def _best_city(query: torch.Tensor, table: Cities, slack_km: float) -> torch.Tensor:
    """Index of the most populous place among those within (nearest distance + slack_km) of each (M, 3) point."""
    cos = query @ table.xyz.T
    nearest = cos.max(dim=1, keepdim=True).values.clamp(-1, 1).acos()
    reach = torch.cos((nearest + slack_km / EARTH_RADIUS_KM).clamp(max=torch.pi))
    score = torch.where(cos >= reach, table.log_population, torch.tensor(-torch.inf))
    return score.argmax(dim=1)


def nearest_places(latlon: np.ndarray | torch.Tensor, slack_km: float = 15.0, chunk: int = 256) -> list[Place]:
    """The place naming each (M, 2) degree point: the most populous GeoNames place no more than slack_km
    farther than the nearest one (so a point in Lyon is 'Lyon', not one of its districts)."""
    table = cities()
    pts = torch.as_tensor(np.asarray(latlon, dtype=np.float64)).reshape(-1, 2)
    if not torch.isfinite(pts).all():
        raise ValueError("coordinates contain NaN or infinite values")
    query = latlon_to_xyz(pts).float()
    best = torch.cat([_best_city(part, table, slack_km) for part in query.split(chunk)]) if len(query) else \
        torch.zeros(0, dtype=torch.long)
    angle = angle_between(latlon_to_xyz(pts), table.xyz[best].double())
    by_code = _country_name_by_iso2()
    places = []
    for i, k in enumerate(best.tolist()):
        code = table.country_codes[k]
        places.append(Place(name=table.names[k], country_code=code, country=by_code.get(code, code),
                            lat=float(table.latlon[k, 0]), lon=float(table.latlon[k, 1]),
                            distance_km=float(angle[i]) * EARTH_RADIUS_KM))
    return places


def nearest_place(lat: float, lon: float) -> Place:
    """Nearest GeoNames place to one point."""
    return nearest_places(np.array([[lat, lon]]))[0]
