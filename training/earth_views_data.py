"""Satellite-view data for the offline models: render views of several Earth mosaics, embed them, write shards.

Each view's centre is uniform on S^2 (oceans and ice included, so the learned prior is honest), its
width log-uniform in [1000, 4000] km, its rotation uniform in +-10 degrees, and its pixels perturbed by
`training.earth_views.augment` (ocean flattening uses the land mask rendered for the same view). The mosaics
come from the folder gathered by training/earth_views_mosaics.py; the training views are split over them by
their manifest weights. Shard i of a mosaic's split holds views i * shard_size ... (i + 1) * shard_size - 1,
drawn from a generator seeded by (split seed, CRC-32 of the mosaic's name, i): shards are independent, so
the run is resumable (finished shards are skipped). The train and held-out splits use different seeds, hence
different locations. One pass of the encoder gives every requested embedding (pooled 1 x 1 and/or 2 x 2).

Layout: <out>/<mosaic>/<embedding key>/000000.tar + sizes.json. A sample = `<key>.<embedding key>.npy`
(float16) + `<key>.json` {latitude, longitude, width_km, rotation_deg, land_fraction, mosaic}
(training/shards.py format).

    python -m training.earth_views_data shards --mosaics-dir data/mosaics --out data/earth/train --split-seed 0 --num-views 400000
    python -m training.earth_views_data shards --mosaics-dir data/mosaics --out data/earth/heldout --split-seed 1 \
        --num-views 2000 --per-mosaic --mosaics etopo1,shadedrelief
    python -m training.earth_views_data folders --root data/earth/train --key efficientnet_lite0 --exclude-family etopo1
    python -m training.earth_views_data examples --mosaics-dir data/mosaics --out assets/examples
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from geodemo.encoders import forget_built, get_encoder, register_encoder
from geodemo.encoders.efficientnet import EARTH_NAME, EfficientNetLite0Encoder, pool_grid
from geodemo.examples import EXAMPLES_FILE
from training.earth_views import (Augmentation, Mosaic, NO_AUGMENTATION, ViewSampling, augment, blue_marble_mosaic,
                                  basemap_land_mask, ocean_colour, random_view_params, render_example, render_land,
                                  render_views)
from training.earth_views_mosaics import load_land_mask, load_mosaic, read_manifest, select
from training.loader import seeded_generator
from training.shards import SAMPLES_PER_SHARD, shard_name, update_sizes, write_shard

LOG = logging.getLogger("earth_views_data")
ENCODER = "efficientnet_lite0"
FEATURES = {"efficientnet_lite0": (ENCODER, 1), "efficientnet_lite0_grid2": (ENCODER, 2),
            EARTH_NAME: (EARTH_NAME, 2)}
"""Embedding key (= registered encoder name) -> (the network whose feature map it pools, cells per side): keys of
one network come from one pass. earth_lite0_grid2 is the fine-tuned network (training/earth_encoder.py)."""
VIEW_SIZE = 224
TRAIN_SEED, HELDOUT_SEED = 0, 1


@dataclass
class ViewShard:
    """One shard's content: params (lat, lon, width_km, rotation_deg: (n,)), land (n,), embeddings {key: (n, C)}."""

    params: dict[str, torch.Tensor]
    land: torch.Tensor
    embeddings: dict[str, torch.Tensor]


def shard_views(seed: int, index: int, count: int, mosaic: Mosaic | None = None, mask: Mosaic | None = None,
                sampling: ViewSampling = ViewSampling(), augmentation: Augmentation = Augmentation(),
                device: torch.device | str = "cpu", batch_size: int = 512, size: int = VIEW_SIZE,
                keys: Sequence[str] = (ENCODER,)) -> ViewShard:
    """Render, augment and embed the `count` views of shard `index` of a mosaic's split seeded by `seed`."""
    mosaic, mask = mosaic or blue_marble_mosaic(), mask or basemap_land_mask()
    generator = seeded_generator(seed, zlib.crc32(mosaic.name.encode()), index)
    params = random_view_params(count, generator, sampling)
    ocean = ocean_colour(mosaic, mask)
    networks = {FEATURES[key][0] for key in keys}
    device = torch.device(device)
    embeddings: dict[str, list[torch.Tensor]] = {key: [] for key in keys}
    land = []
    for start in range(0, count, batch_size):
        part = {k: v[start:start + batch_size] for k, v in params.items()}
        where = (part["lat"], part["lon"], part["width_km"], size, sampling.projection, part["rotation_deg"], device)
        views = render_views(*where, mosaic=mosaic)
        pixel_land = render_land(*where, mask=mask)
        views = augment(views, generator, augmentation, land=pixel_land, ocean=ocean)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            features = {name: get_encoder(name).feature_map(views) for name in networks}
        for key in keys:
            network, grid = FEATURES[key]
            embeddings[key].append(pool_grid(features[network].float(), grid).cpu())
        land.append(pixel_land.mean(dim=(1, 2, 3)).cpu())
    return ViewShard(params=params, land=torch.cat(land), embeddings={k: torch.cat(v) for k, v in embeddings.items()})


def write_view_shards(out: str | Path, seed: int, num_views: int, mosaic: Mosaic | None = None,
                      mask: Mosaic | None = None, shard_size: int = SAMPLES_PER_SHARD,
                      augmentation: Augmentation = Augmentation(), device: torch.device | str = "cpu",
                      batch_size: int = 512, sampling: ViewSampling = ViewSampling(),
                      keys: Sequence[str] = (ENCODER,), size: int = VIEW_SIZE) -> list[Path]:
    """Write ceil(num_views / shard_size) shards of one mosaic into out/<key>/ for every embedding key
    (skipping shards already there for every key) and update each folder's sizes.json."""
    out = Path(out)
    mosaic = mosaic or blue_marble_mosaic()
    paths = []
    started = time.perf_counter()
    for index, start in enumerate(range(0, num_views, shard_size)):
        count = min(shard_size, num_views - start)
        targets = [out / key / shard_name(index) for key in keys]
        paths.extend(targets)
        if all(path.is_file() for path in targets):
            continue
        shard = shard_views(seed, index, count, mosaic, mask, sampling, augmentation, device, batch_size, size, keys)
        latlon = torch.stack((shard.params["lat"], shard.params["lon"]), dim=-1).numpy()
        extra = [{"width_km": round(float(w), 1), "rotation_deg": round(float(r), 2),
                  "land_fraction": round(float(f), 4), "mosaic": mosaic.name}
                 for w, r, f in zip(shard.params["width_km"], shard.params["rotation_deg"], shard.land)]
        names = [f"s{seed}-{mosaic.name}-{start + i:09d}" for i in range(count)]
        for key, path in zip(keys, targets):
            write_shard(path, names, shard.embeddings[key].numpy().astype(np.float16), latlon, key, extra)
            update_sizes(path.parent, {path.name: count})
        done = start + count
        LOG.info("%s %s: %d / %d views, %.0f views/s", mosaic.name, path.name, done, num_views,
                 done / (time.perf_counter() - started))
    return paths


def use_earth_encoder(weights: str | Path) -> None:
    """Make the registered earth_lite0_grid2 encoder read `weights` (a fold's or a new run's fine-tuned network)."""
    register_encoder(EARTH_NAME, lambda: EfficientNetLite0Encoder(weights=weights, name=EARTH_NAME))
    forget_built(EARTH_NAME)


def views_per_mosaic(entries: Sequence[dict], num_views: int, per_mosaic: bool) -> dict[str, int]:
    """num_views each (per_mosaic) or num_views split in proportion to the manifest weights (rounded)."""
    if per_mosaic:
        return {e["name"]: num_views for e in entries}
    total = sum(e["weight"] for e in entries)
    return {e["name"]: round(num_views * e["weight"] / total) for e in entries}


def shard_folders(root: str | Path, key: str, mosaics_dir: str | Path, exclude_families: Sequence[str] = (),
                  only_families: Sequence[str] = ()) -> list[str]:
    """Shard folders root/<mosaic>/<key> of the manifest's mosaics outside `exclude_families` (and inside
    `only_families` when given), in manifest order."""
    entries = read_manifest(mosaics_dir)
    known = {e["family"] for e in entries}
    unknown = [f for f in (*exclude_families, *only_families) if f not in known]
    if unknown:
        raise ValueError(f"unknown families {unknown}; the manifest has {sorted(known)}")
    return [str(Path(root) / e["name"] / key) for e in entries
            if e["family"] not in exclude_families and (not only_families or e["family"] in only_families)]


EXAMPLES = [
    # (file stem, title, latitude, longitude, width_km, mosaic)
    ("sahara_desert", "Desert: the Sahara (Libya, Egypt) - NASA Blue Marble", 25.0, 25.0, 2000.0, "bmng"),
    ("nile_delta", "Delta: the Nile and Sinai - NASA Blue Marble", 30.5, 31.5, 1000.0, "bmng"),
    ("norway_coast", "Coastline: Norway's fjords - ETOPO1 relief map", 63.5, 9.0, 1500.0, "etopo1"),
    ("hawaii", "Island chain: Hawaii - NASA Blue Marble", 20.5, -157.5, 1000.0, "bmng"),
    ("himalaya", "Mountains: the Himalaya and Tibet - Natural Earth shaded relief", 29.5, 85.0, 2000.0, "shadedrelief"),
    ("greenland", "Ice sheet: Greenland - NASA Blue Marble with topography (gpredict)", 72.0, -40.0, 3000.0,
     "gpredict-topo"),
    ("amazon", "Rainforest: the Amazon basin - NASA Blue Marble", -3.5, -62.0, 2000.0, "bmng"),
    ("south_pacific", "Open ocean: the South Pacific - NASA Blue Marble", -35.0, -130.0, 2000.0, "bmng"),
    ("japan", "Island arc: Japan in winter - NASA Blue Marble, January (gpredict)", 36.5, 138.5, 2000.0,
     "gpredict-bmng-01"),
    ("italy", "Peninsula: Italy - ETOPO1 relief map", 42.0, 12.5, 1500.0, "etopo1"),
]


def write_examples(out: str | Path, mosaics_dir: str | Path, size: int = 448, quality: int = 90) -> Path:
    """Render the clean EXAMPLES views of their mosaics as JPEGs into `out` and list them in examples.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries = {e["name"]: e for e in read_manifest(mosaics_dir)}
    listed = []
    for stem, title, lat, lon, width, name in EXAMPLES:
        mosaic = load_mosaic(mosaics_dir, entries[name])
        render_example(lat, lon, width, size=size, mosaic=mosaic).save(out / f"{stem}.jpg", quality=quality)
        listed.append({"file": f"{stem}.jpg", "title": title, "latitude": lat, "longitude": lon, "width_km": width,
                       "mosaic": name})
    path = out / EXAMPLES_FILE
    path.write_text(json.dumps(listed, indent=1))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Earth-mosaic views: embedding shards for training, example images.")
    commands = parser.add_subparsers(dest="command", required=True)
    shards = commands.add_parser("shards", help="render + embed views of each mosaic into WebDataset shards")
    shards.add_argument("--mosaics-dir", default="data/mosaics", help="folder written by training.earth_views_mosaics")
    shards.add_argument("--mosaics", default="all", help="comma-separated mosaic names, or all")
    shards.add_argument("--out", required=True, help="root folder: <out>/<mosaic>/<embedding key>/*.tar")
    shards.add_argument("--split-seed", type=int, default=TRAIN_SEED,
                        help=f"seed of the split: {TRAIN_SEED} = train, {HELDOUT_SEED} = held-out")
    shards.add_argument("--num-views", type=int, required=True, help="in all, split by the manifest weights")
    shards.add_argument("--per-mosaic", action="store_true", help="--num-views for each mosaic instead")
    shards.add_argument("--keys", default=ENCODER, help=f"comma-separated embedding keys among {sorted(FEATURES)}")
    shards.add_argument("--encoder-weights", default=None,
                        help="earth_lite0_grid2 from this file (training.earth_encoder's output), not the shipped one")
    shards.add_argument("--size", type=int, default=VIEW_SIZE, help="view size in pixels (embedded at 224)")
    shards.add_argument("--shard-size", type=int, default=SAMPLES_PER_SHARD)
    shards.add_argument("--batch-size", type=int, default=512)
    shards.add_argument("--no-augment", action="store_true", help="clean renderings (no perturbations)")
    shards.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    folders = commands.add_parser("folders", help="print the training shard folders outside some families")
    folders.add_argument("--root", required=True)
    folders.add_argument("--key", default=ENCODER)
    folders.add_argument("--mosaics-dir", default="data/mosaics")
    folders.add_argument("--exclude-family", default="", help="comma-separated families to leave out")
    folders.add_argument("--only-family", default="", help="comma-separated families to keep (default: all)")
    folders.add_argument("--names", action="store_true", help="print the mosaic names, one a line")
    examples = commands.add_parser("examples", help="render the example views shipped with the app")
    examples.add_argument("--mosaics-dir", default="data/mosaics")
    examples.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.command == "examples":
        LOG.info("wrote %s", write_examples(args.out, args.mosaics_dir))
        return
    if args.command == "folders":
        found = shard_folders(args.root, args.key, args.mosaics_dir, [f for f in args.exclude_family.split(",") if f],
                              [f for f in args.only_family.split(",") if f])
        print("\n".join(Path(f).parent.name for f in found) if args.names else ",".join(found))
        return
    keys = args.keys.split(",")
    unknown = [k for k in keys if k not in FEATURES]
    if unknown:
        parser.error(f"unknown embedding keys {unknown}; choose among {sorted(FEATURES)}")
    if args.encoder_weights:
        use_earth_encoder(args.encoder_weights)
    entries = select(read_manifest(args.mosaics_dir), args.mosaics)
    mask = load_land_mask(args.mosaics_dir)
    counts = views_per_mosaic(entries, args.num_views, args.per_mosaic)
    sampling = ViewSampling()
    for entry in entries:
        write_view_shards(Path(args.out) / entry["name"], args.split_seed, counts[entry["name"]],
                          load_mosaic(args.mosaics_dir, entry), mask, args.shard_size,
                          NO_AUGMENTATION if args.no_augment else Augmentation(), args.device, args.batch_size,
                          sampling, keys, args.size)


if __name__ == "__main__":
    main()
