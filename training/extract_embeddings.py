"""Images -> embedding shards with any registered encoder (resumable, one process per GPU under torchrun).

    python -m training.extract_embeddings --encoder efficientnet_lite0 --csv photos.csv --images photos/ --output shards/
    python -m training.extract_embeddings --encoder NAME --image-shards "raw/{000000..000099}.tar" --output shards/
    torchrun --nproc_per_node=8 -m training.extract_embeddings ...   # rank r does output shards r, r + 8, ...

Input: a CSV with an image column (a path relative to --images) and latitude/longitude columns, cut into
output shards of --samples-per-shard rows in file order; or WebDataset image shards (jpg/png/webp + json with
latitude/longitude), one output shard per input shard. A shard whose output file exists is skipped, so an
interrupted run resumes. An unreadable or missing image is skipped and reported with its CSV row (or shard key)
in `<output>/errors.csv`; the run goes on. At the end sizes.json lists every output shard.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.distributed as dist
import webdataset as wds
from PIL import Image
from tqdm.auto import tqdm

from geodemo.encoders import get_encoder
from training.shards import SAMPLES_PER_SHARD, count_samples, list_shards, shard_name, update_sizes, write_shard

log = logging.getLogger("training.extract_embeddings")

ERRORS_FILE = "errors.csv"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


@dataclass
class Item:
    """One input sample: where it came from (for error messages), its key, coordinates and image source."""

    origin: str
    key: str
    latitude: float
    longitude: float
    source: str | bytes


def load_image(source: str | bytes) -> Image.Image:
    """An RGB image from a path or encoded bytes; raises OSError/ValueError when unreadable."""
    image = Image.open(source if isinstance(source, str) else io.BytesIO(source))
    image.load()
    return image.convert("RGB")


def csv_items(csv_path: str, images_dir: str, image_column: str, lat_column: str, lon_column: str) -> list[Item]:
    """One Item per CSV row (row numbers count the header as row 1, as spreadsheets do)."""
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in (image_column, lat_column, lon_column) if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{csv_path} lacks the columns {missing} (it has {reader.fieldnames})")
        items = []
        for row_number, row in enumerate(reader, start=2):
            origin = f"{csv_path} row {row_number}"
            try:
                lat, lon = float(row[lat_column]), float(row[lon_column])
            except (TypeError, ValueError):
                raise ValueError(f"{origin}: latitude/longitude {row[lat_column]!r}, {row[lon_column]!r} "
                                 "are not numbers") from None
            name = row[image_column]
            items.append(Item(origin, Path(name).stem, lat, lon, os.path.join(images_dir, name)))
    return items


def image_shard_items(path: str) -> Iterator[Item]:
    """The samples of one WebDataset image shard (first image member + json coordinates)."""
    for sample in wds.WebDataset(path, shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False):
        origin = f"{path} key {sample['__key__']}"
        image = next((sample[e] for e in IMAGE_EXTENSIONS if e in sample), None)
        meta = json.loads(sample["json"]) if "json" in sample else {}
        yield Item(origin, sample["__key__"], float(meta.get("latitude", "nan")), float(meta.get("longitude", "nan")),
                   image if image is not None else b"")


class _Loaded(torch.utils.data.Dataset):
    """Decodes images in DataLoader workers; an unreadable one comes back as its error text."""

    def __init__(self, items: Sequence[Item]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, Image.Image | str]:
        item = self.items[i]
        if not (np.isfinite(item.latitude) and np.isfinite(item.longitude)):
            return i, "no latitude/longitude"
        try:
            return i, load_image(item.source)
        except (OSError, ValueError, SyntaxError) as err:
            return i, f"{type(err).__name__}: {err}"


def embed_items(items: Sequence[Item], encoder, device: torch.device, batch_size: int,
                num_workers: int) -> tuple[list[int], np.ndarray, list[tuple[str, str]]]:
    """(indices kept, (n, dim) float32 embeddings, [(origin, error)] skipped) for one shard's items."""
    loader = torch.utils.data.DataLoader(_Loaded(items), batch_size=batch_size, num_workers=num_workers,
                                         collate_fn=list)
    kept, chunks, errors = [], [], []
    for batch in loader:
        good = [(i, im) for i, im in batch if not isinstance(im, str)]
        errors += [(items[i].origin, im) for i, im in batch if isinstance(im, str)]
        if good:
            with torch.no_grad():
                chunks.append(encoder.embed([im for _, im in good], device=device).float().cpu().numpy())
            kept += [i for i, _ in good]
    dim = chunks[0].shape[1] if chunks else 0
    return kept, np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32), errors


def extract(shard_items: Sequence[Sequence[Item] | str], output: str | Path, encoder_name: str, embedding_key: str,
            batch_size: int = 64, num_workers: int = 4, device: torch.device | None = None, rank: int = 0,
            world_size: int = 1, progress: bool = True) -> dict:
    """Write output shard i from shard_items[i] (a list of Items, or the path of an image shard) for i = rank mod W.

    Returns {"written": n, "skipped_shards": n, "images": n, "errors": n} for this rank.
    """
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encoder = get_encoder(encoder_name)
    stats = {"written": 0, "skipped_shards": 0, "images": 0, "errors": 0}
    mine = list(range(rank, len(shard_items), world_size))
    for index in tqdm(mine, disable=not (progress and rank == 0), unit="shard"):
        path = output / shard_name(index)
        if path.exists():
            stats["skipped_shards"] += 1
            continue
        source = shard_items[index]
        items = list(image_shard_items(source)) if isinstance(source, str) else list(source)
        kept, embeddings, errors = embed_items(items, encoder, device, batch_size, num_workers)
        if errors:
            with open(output / ERRORS_FILE, "a", newline="") as f:
                csv.writer(f).writerows([(index, origin, message) for origin, message in errors])
            for origin, message in errors[:3]:
                log.warning("skipped %s: %s", origin, message)
        write_shard(path, [items[i].key for i in kept], embeddings,
                    np.array([[items[i].latitude, items[i].longitude] for i in kept]).reshape(-1, 2), embedding_key)
        stats["written"] += 1
        stats["images"] += len(kept)
        stats["errors"] += len(errors)
    return stats


def finish(output: Path) -> None:
    """sizes.json for every shard in output (headers only)."""
    shards = sorted(output.glob("*.tar"))
    update_sizes(output, {p.name: count_samples(str(p)) for p in shards})


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description="Images -> embedding shards.")
    parser.add_argument("--encoder", required=True, help="a registered encoder name (geodemo.encoders)")
    parser.add_argument("--output", required=True, help="folder for the embedding shards")
    parser.add_argument("--embedding-key", help="member name <key>.npy (default: the encoder name)")
    parser.add_argument("--csv", help="CSV with image path, latitude and longitude columns")
    parser.add_argument("--images", default=".", help="folder the CSV's image paths are relative to")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--lat-column", default="latitude")
    parser.add_argument("--lon-column", default="longitude")
    parser.add_argument("--image-shards", help="WebDataset image shards instead of a CSV (folder or pattern)")
    parser.add_argument("--samples-per-shard", type=int, default=SAMPLES_PER_SHARD)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=4, help="image-decoding processes")
    parser.add_argument("--device", help="cpu, cuda, ... (default: this rank's GPU when present)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if (args.csv is None) == (args.image_shards is None):
        raise SystemExit("error: pass exactly one of --csv or --image-shards")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if args.device:
        device = torch.device(args.device)
    else:
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if world_size > 1:
        dist.init_process_group(backend="gloo")
    rank = dist.get_rank() if world_size > 1 else 0
    try:
        if args.csv:
            items = csv_items(args.csv, args.images, args.image_column, args.lat_column, args.lon_column)
            size = args.samples_per_shard
            shard_items: list = [items[i:i + size] for i in range(0, len(items), size)]
        else:
            shard_items = list_shards(args.image_shards)
        stats = extract(shard_items, args.output, args.encoder, args.embedding_key or args.encoder,
                        batch_size=args.batch_size, num_workers=args.num_workers, device=device, rank=rank,
                        world_size=world_size, progress=not args.no_progress)
    except (ValueError, KeyError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    if world_size > 1:
        totals = torch.tensor([stats[k] for k in sorted(stats)], dtype=torch.long)
        dist.all_reduce(totals)
        stats = dict(zip(sorted(stats), totals.tolist()))
    if rank == 0:
        finish(Path(args.output))
        print(f"{stats['written']} shards written ({stats['images']} images), {stats['skipped_shards']} already "
              f"done, {stats['errors']} images skipped" + (f": see {Path(args.output) / ERRORS_FILE}"
                                                            if stats["errors"] else ""))
    if world_size > 1:
        dist.barrier()  # rank 0 has finished; gloo aborts a rank whose peer destroys the group first
        dist.destroy_process_group()
    return stats


if __name__ == "__main__":
    main()
