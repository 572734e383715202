"""Satellite-view data for the offline default model: render Blue Marble views, embed them, write shards.

Each view's centre is uniform on S^2 (oceans and ice included, so the learned prior is honest), its
width log-uniform in [1000, 4000] km, its rotation uniform in +-10 degrees, and its pixels perturbed by
`training.earth_views.augment`. Shard i of a split holds views i * shard_size ... (i + 1) * shard_size - 1,
drawn from a generator seeded by (split seed, i): shards are independent, so the run is resumable
(finished shards are skipped); a shard's content is fixed by (seed, i, batch size, device). The train and held-out splits use different seeds, hence different locations.

Sample = `<key>.efficientnet_lite0.npy` (float16, 1280) + `<key>.json` {latitude, longitude, width_km,
rotation_deg, land_fraction} (training/shards.py format).

    python -m training.earth_views_data shards --out data/earth/train --split-seed 0 --num-views 400000
    python -m training.earth_views_data shards --out data/earth/heldout --split-seed 1 --num-views 2000
    python -m training.earth_views_data examples --out assets/examples
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from geodemo.examples import EXAMPLES_FILE
from geodemo.encoders import get_encoder
from training.earth_views import (Augmentation, NO_AUGMENTATION, ViewSampling, augment, land_fraction,
                                  random_view_params, render_example, render_views)
from training.loader import seeded_generator
from training.shards import SAMPLES_PER_SHARD, shard_name, update_sizes, write_shard

LOG = logging.getLogger("earth_views_data")
ENCODER = "efficientnet_lite0"
VIEW_SIZE = 224
TRAIN_SEED, HELDOUT_SEED = 0, 1


@dataclass
class ViewShard:
    """One shard's content: params (lat, lon, width_km, rotation_deg: (n,)), land (n,), embeddings (n, C)."""

    params: dict[str, torch.Tensor]
    land: torch.Tensor
    embeddings: torch.Tensor


def shard_views(seed: int, index: int, count: int, sampling: ViewSampling = ViewSampling(),
                augmentation: Augmentation = Augmentation(), device: torch.device | str = "cpu",
                batch_size: int = 512, size: int = VIEW_SIZE) -> ViewShard:
    """Render, augment and embed the `count` views of shard `index` of the split seeded by `seed`."""
    generator = seeded_generator(seed, index)
    params = random_view_params(count, generator, sampling)
    encoder = get_encoder(ENCODER)
    embeddings, land = [], []
    for start in range(0, count, batch_size):
        part = {k: v[start:start + batch_size] for k, v in params.items()}
        views = render_views(part["lat"], part["lon"], part["width_km"], size=size, projection=sampling.projection,
                             rotation_deg=part["rotation_deg"], device=device)
        views = augment(views, generator, augmentation)
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                            enabled=torch.device(device).type == "cuda"):
            embeddings.append(encoder.embed_pixels(views).float().cpu())
        land.append(land_fraction(part["lat"], part["lon"], part["width_km"], projection=sampling.projection,
                                  rotation_deg=part["rotation_deg"], device=device).cpu())
    return ViewShard(params=params, land=torch.cat(land), embeddings=torch.cat(embeddings))


def write_view_shards(out: str | Path, seed: int, num_views: int, shard_size: int = SAMPLES_PER_SHARD,
                      augmentation: Augmentation = Augmentation(), device: torch.device | str = "cpu",
                      batch_size: int = 512, sampling: ViewSampling = ViewSampling()) -> list[Path]:
    """Write ceil(num_views / shard_size) shards into `out` (skipping finished ones) and update sizes.json."""
    out = Path(out)
    paths = []
    started = time.perf_counter()
    for index, start in enumerate(range(0, num_views, shard_size)):
        count = min(shard_size, num_views - start)
        path = out / shard_name(index)
        paths.append(path)
        if path.is_file():
            continue
        shard = shard_views(seed, index, count, sampling, augmentation, device, batch_size)
        latlon = torch.stack((shard.params["lat"], shard.params["lon"]), dim=-1).numpy()
        extra = [{"width_km": round(float(w), 1), "rotation_deg": round(float(r), 2), "land_fraction": round(float(f), 4)}
                 for w, r, f in zip(shard.params["width_km"], shard.params["rotation_deg"], shard.land)]
        keys = [f"s{seed}-{start + i:09d}" for i in range(count)]
        write_shard(path, keys, shard.embeddings.numpy().astype(np.float16), latlon, ENCODER, extra)
        update_sizes(out, {path.name: count})
        done = start + count
        LOG.info("%s: %d / %d views, %.0f views/s", path.name, done, num_views, done / (time.perf_counter() - started))
    return paths


EXAMPLES = [
    # (file stem, title, latitude, longitude, width_km)
    ("sahara_desert", "Desert: the Sahara (Libya, Egypt)", 25.0, 25.0, 2000.0),
    ("nile_delta", "Delta: the Nile and Sinai", 30.5, 31.5, 1000.0),
    ("norway_coast", "Coastline: Norway's fjords", 63.5, 9.0, 1500.0),
    ("hawaii", "Island chain: Hawaii", 20.5, -157.5, 1000.0),
    ("himalaya", "Mountains: the Himalaya and Tibet", 29.5, 85.0, 2000.0),
    ("greenland", "Ice sheet: Greenland", 72.0, -40.0, 3000.0),
    ("amazon", "Rainforest: the Amazon basin", -3.5, -62.0, 2000.0),
    ("south_pacific", "Open ocean: the South Pacific", -35.0, -130.0, 2000.0),
    ("tokyo_region", "A big city's region: Tokyo and the Kanto plain", 35.7, 139.7, 1000.0),
    ("italy", "Peninsula: Italy", 42.0, 12.5, 1500.0),
]


def write_examples(out: str | Path, size: int = 448, quality: int = 90) -> Path:
    """Render the clean EXAMPLES views as JPEGs into `out` and list them in examples.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for stem, title, lat, lon, width in EXAMPLES:
        render_example(lat, lon, width, size=size).save(out / f"{stem}.jpg", quality=quality)
        entries.append({"file": f"{stem}.jpg", "title": title, "latitude": lat, "longitude": lon, "width_km": width})
    path = out / EXAMPLES_FILE
    path.write_text(json.dumps(entries, indent=1))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Blue Marble views: embedding shards for training, example images.")
    commands = parser.add_subparsers(dest="command", required=True)
    shards = commands.add_parser("shards", help="render + embed views into WebDataset shards")
    shards.add_argument("--out", required=True, help="folder for the .tar shards and sizes.json")
    shards.add_argument("--split-seed", type=int, default=TRAIN_SEED,
                        help=f"seed of the split: {TRAIN_SEED} = train, {HELDOUT_SEED} = held-out")
    shards.add_argument("--num-views", type=int, required=True)
    shards.add_argument("--shard-size", type=int, default=SAMPLES_PER_SHARD)
    shards.add_argument("--batch-size", type=int, default=512)
    shards.add_argument("--no-augment", action="store_true", help="clean renderings (no photometric changes)")
    shards.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    examples = commands.add_parser("examples", help="render the example views shipped with the app")
    examples.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.command == "examples":
        LOG.info("wrote %s", write_examples(args.out))
        return
    write_view_shards(args.out, args.split_seed, args.num_views, args.shard_size,
                      NO_AUGMENTATION if args.no_augment else Augmentation(), args.device, args.batch_size)


if __name__ == "__main__":
    main()
