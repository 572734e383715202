"""The Earth as drawn offline: coastline and border polylines, Earth colours, cartopy's data folder."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import shapefile
from PIL import Image

from geodemo.paths import MAP_DIR

COASTLINE_SHP = MAP_DIR / "shapefiles/natural_earth/physical/ne_110m_coastline.shp"
BORDERS_SHP = MAP_DIR / "shapefiles/natural_earth/cultural/ne_110m_admin_0_boundary_lines_land.shp"


@lru_cache(maxsize=4)
def polylines(path: str) -> tuple[np.ndarray, ...]:
    """Every part of every shape in a polyline shapefile as an (K, 2) array of (lon, lat) degrees."""
    lines = []
    with shapefile.Reader(path) as reader:
        for shape in reader.shapes():
            bounds = list(shape.parts) + [len(shape.points)]
            pts = np.asarray(shape.points, dtype=np.float64)
            lines += [pts[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b - a >= 2]
    return tuple(lines)


def coastlines() -> tuple[np.ndarray, ...]:
    return polylines(str(COASTLINE_SHP))


def borders() -> tuple[np.ndarray, ...]:
    return polylines(str(BORDERS_SHP))


@lru_cache(maxsize=1)
def earth_colors() -> np.ndarray:
    """(H, W, 3) uint8 Natural Earth colours, equirectangular, row 0 at 90 N, column 0 at 180 W."""
    return np.asarray(Image.open(MAP_DIR / "earth_colors.jpg").convert("RGB"))


def use_shipped_cartopy_data() -> None:
    """Point cartopy at assets/map/ so coastlines() and BORDERS draw from shipped Natural Earth files
    instead of downloading them."""
    import cartopy

    cartopy.config["pre_existing_data_dir"] = str(MAP_DIR)
