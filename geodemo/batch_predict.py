"""Batch inference at scale: `geodemo predict-shards INPUT --output DIR` on CPU, one GPU or under torchrun.

    geodemo predict-shards shards/ --output results/                                    # one process
    torchrun --nproc_per_node=8 -m geodemo predict-shards "shards/{000000..000999}.tar" --output results/

Input: WebDataset shards (tar files of `<key>.<ext>` members) holding precomputed embeddings (`<key>.<name>.npy`,
the training/ format) or images (jpg/png/webp), each with an optional `<key>.json` {"latitude", "longitude"};
or a folder / CSV of image files, cut into parts of --images-per-shard files. Output: one CSV per input shard
(key, best guess, its log-density, localizability, spread of the samples, truth and error when known), optional
samples (`<shard>.samples.npy`, (B, N, 2) degrees), and `manifest.json` once every shard is done.

Rank r of W takes every W-th shard still to do; a shard's CSV appears (by an atomic rename) only when the shard
is complete, so re-running skips finished shards and a killed rank loses at most the shard it was on.
Same answers at any scale: the initial noise of image `key` is drawn from a generator seeded by a hash of
(seed, key), sample i being its i-th draw, so an image's samples depend on neither its rank nor its batch.
"""

from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import io
import json
import logging
import os
import re
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence, TextIO

import numpy as np
import torch
import torch.distributed as dist

from geodemo.images import ImageError, load_image
from geodemo.pipeline import GeoPipeline, densest_samples
from geodemo.sampling import sample
from geodemo.sphere import haversine_km, xyz_to_latlon

log = logging.getLogger("geodemo.batch_predict")

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
MANIFEST = "manifest.json"
SETTINGS = "settings.json"
FIELDS = ("key", "best_lat", "best_lon", "log_density", "localizability", "spread_km", "true_lat", "true_lon",
          "error_km", "error")


@dataclass(frozen=True)
class Settings:
    """Everything a result depends on besides the input; a re-run into the same folder must use the same."""

    model: str
    num_samples: int = 64
    steps: int = 32
    guidance: float = 2.0
    seed: int = 0
    scored: int = 16
    ode_method: str = "dopri5"
    ode_tol: float = 1e-5
    ode_steps: int | None = None
    embedding_key: str | None = None
    save_samples: bool = False

    def ode_options(self) -> dict:
        return {"method": self.ode_method, "atol": self.ode_tol, "rtol": self.ode_tol, "steps": self.ode_steps}


@dataclass
class Item:
    """One image of a shard: its key, and either an embedding or an image source; truth (lat, lon) when known."""

    key: str
    embedding: np.ndarray | None = None
    image: bytes | str | None = None
    truth: tuple[float, float] | None = None


@dataclass
class Shard:
    """One unit of work: `name` (the output file stem) and where its items come from (a tar path or a list)."""

    name: str
    tar: str | None = None
    files: list[Item] = field(default_factory=list)


def key_seed(seed: int, key: str) -> int:
    """A 63-bit generator seed from (seed, key): blake2b of the two, so every image has its own noise stream."""
    digest = hashlib.blake2b(f"{int(seed)}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def key_noise(pipe: GeoPipeline, keys: Sequence[str], num_samples: int, seed: int) -> torch.Tensor:
    """(B, N, 3) initial noise, row b drawn from its own generator seeded by key_seed(seed, keys[b])."""
    rows = []
    for key in keys:
        generator = torch.Generator().manual_seed(key_seed(seed, key))
        rows.append(pipe.process.initial_noise((1, num_samples), generator=generator))
    return torch.cat(rows) if rows else torch.zeros(0, num_samples, 3)


def tar_samples(path: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) of a WebDataset tar, in file order. WebDataset's rule: the key is the member's
    path up to the first '.' of its file name, the extension the rest; consecutive members share a sample."""
    key, members = None, {}
    with tarfile.open(path, "r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            directory, name = os.path.split(member.name)
            stem, _, ext = name.partition(".")
            this = os.path.join(directory, stem)
            if this != key and key is not None:
                yield key, members
                members = {}
            key = this
            members[ext.lower()] = tar.extractfile(member).read()
    if key is not None:
        yield key, members


def _truth(meta: dict) -> tuple[float, float] | None:
    try:
        lat, lon = float(meta["latitude"]), float(meta["longitude"])
    except (KeyError, TypeError, ValueError):
        return None
    return (lat, lon) if np.isfinite(lat) and np.isfinite(lon) else None


def shard_items(shard: Shard, embedding_key: str | None) -> list[Item]:
    """The items of a shard: embeddings when its samples hold `<embedding_key>.npy` (or one .npy when the key is
    not given), else the first image member; truth from its json."""
    if shard.tar is None:
        return shard.files
    items = []
    for key, members in tar_samples(shard.tar):
        meta = json.loads(members["json"]) if "json" in members else {}
        arrays = [e for e in members if e.endswith(".npy")]
        wanted = f"{embedding_key}.npy" if embedding_key else (arrays[0] if len(arrays) == 1 else None)
        if embedding_key is None and len(arrays) > 1:
            raise ValueError(f"{shard.tar}: samples hold several embeddings {arrays}: pass --embedding-key")
        if wanted in members:
            emb = np.load(io.BytesIO(members[wanted])).astype(np.float32, copy=False).reshape(-1)
            items.append(Item(key, embedding=emb, truth=_truth(meta)))
            continue
        image = next((members[e] for e in IMAGE_EXTENSIONS if e in members), None)
        if image is None:
            raise ValueError(f"{shard.tar} key {key!r} has neither {wanted or 'an embedding .npy'} nor an image "
                             f"(it has {sorted(members)})")
        items.append(Item(key, image=image, truth=_truth(meta)))
    return items


def list_inputs(spec: str, images_per_shard: int = 1000, image_column: str = "image") -> list[Shard]:
    """Shards from a folder or glob of .tar files, a comma list of tar paths or brace patterns ({000..009}), a
    folder of image files, or a CSV with an image column (paths relative to the CSV) and optional
    latitude/longitude columns. Image lists are cut into parts `images-000000`, ... of images_per_shard files."""
    path = Path(spec)
    if path.is_file() and path.suffix.lower() == ".csv":
        return _csv_shards(path, images_per_shard, image_column)
    if path.is_dir():
        tars = sorted(str(p) for p in path.glob("*.tar"))
        if tars:
            return _tar_shards(tars)
        files = sorted(p for p in path.rglob("*") if p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS)
        if not files:
            raise FileNotFoundError(f"{spec} holds no .tar shards and no image files")
        return _parts([Item(str(p.relative_to(path)), image=str(p)) for p in files], images_per_shard)
    paths = []
    for part in (p for p in re.split(r",(?![^{]*})", spec) if p):  # commas outside {a,b}
        found = sorted(glob.glob(part)) if any(c in part for c in "*?[") else _brace_expand(part)
        if not found:
            raise FileNotFoundError(f"no shards found at {part!r}")
        paths += found
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"shard {missing[0]} does not exist ({len(missing)} missing)")
    return _tar_shards(paths)


def _brace_expand(pattern: str) -> list[str]:
    """Expand numeric ranges {000..099} (zero-padded like the first bound) and lists {a,b}."""
    start = pattern.find("{")
    if start < 0:
        return [pattern]
    stop = pattern.index("}", start)
    body, head, tail = pattern[start + 1:stop], pattern[:start], pattern[stop + 1:]
    if ".." in body:
        lo, hi = body.split("..")
        options = [str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    return [p for option in options for p in _brace_expand(head + option + tail)]


def _tar_shards(paths: Sequence[str]) -> list[Shard]:
    names = [Path(p).name.removesuffix(".tar") for p in paths]
    if len(set(names)) != len(names):
        raise ValueError("two input shards share a file name; their results would overwrite each other")
    return [Shard(name, tar=p) for name, p in zip(names, paths)]


def _parts(items: list[Item], size: int) -> list[Shard]:
    if size < 1:
        raise ValueError(f"images per shard must be at least 1, got {size}")
    return [Shard(f"images-{i // size:06d}", files=items[i:i + size]) for i in range(0, len(items), size)]


def _csv_shards(path: Path, size: int, image_column: str) -> list[Shard]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if image_column not in (reader.fieldnames or []):
            raise ValueError(f"{path} has no {image_column!r} column (it has {reader.fieldnames})")
        items = [Item(row[image_column], image=str(path.parent / row[image_column]), truth=_truth(row))
                 for row in reader]
    if not items:
        raise ValueError(f"{path} lists no images")
    return _parts(items, size)


def embed_items(pipe: GeoPipeline, items: list[Item], batch_size: int) -> tuple[torch.Tensor, list[str | None]]:
    """(B, C) embeddings of the items (rows of unreadable images are zero) and, per item, its error or None."""
    errors: list[str | None] = [None] * len(items)
    emb = torch.zeros(len(items), pipe.network.config.cond_dim)
    pending: list[tuple[int, object]] = []
    for i, item in enumerate(items):
        if item.embedding is not None:
            if item.embedding.shape != (emb.shape[1],):
                errors[i] = f"its embedding has shape {item.embedding.shape}; the model takes {emb.shape[1]} values"
            else:
                emb[i] = torch.from_numpy(item.embedding)
            continue
        try:
            loaded = load_image(item.image)
        except ImageError as err:
            errors[i] = str(err)
            continue
        if item.truth is None and loaded.gps is not None:
            item.truth = loaded.gps
        pending.append((i, loaded.image))
    for start in range(0, len(pending), batch_size):
        chunk = pending[start:start + batch_size]
        emb[[i for i, _ in chunk]] = pipe.embed([im for _, im in chunk]).float().cpu()
    return emb, errors


@torch.no_grad()
def predict_embeddings(pipe: GeoPipeline, emb: torch.Tensor, keys: Sequence[str], settings: Settings,
                       batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Samples (B, N, 2) degrees, best guess (B, 2), its log p (B,) and localizability (B,) (NaN without scored
    samples), batch_size images at a time.

    Best guess: the highest log p(x | image) (w = 0, nats/sr) among the first `scored` samples, else the densest
    sample; localizability: the mean log p of those scored samples (drawn at the sampling guidance)."""
    if emb.shape[0] == 0:
        n = settings.num_samples
        return {"samples": torch.zeros(0, n, 2, dtype=torch.float64), "best": torch.zeros(0, 2, dtype=torch.float64),
                "log_density": torch.zeros(0, dtype=torch.float64),
                "localizability": torch.zeros(0, dtype=torch.float64)}
    noise = key_noise(pipe, keys, settings.num_samples, settings.seed)
    samples, best, best_logp, local = [], [], [], []
    for start in range(0, emb.shape[0], batch_size):
        chunk = emb[start:start + batch_size].to(pipe.device)
        out = sample(pipe.network, pipe.process, pipe.schedule, chunk, num_samples=settings.num_samples,
                     steps=settings.steps, guidance=settings.guidance,
                     initial_noise=noise[start:start + batch_size])
        latlon = xyz_to_latlon(out.xyz).double().cpu()
        if settings.scored > 0:
            logp = pipe.log_density(latlon[:, :settings.scored], embeddings=chunk, **settings.ode_options())
            pick = logp.argmax(dim=1)
            rows = torch.arange(len(pick))
            best.append(latlon[rows, pick])
            best_logp.append(logp[rows, pick])
            local.append(logp.mean(dim=1))
        else:
            best.append(densest_samples(latlon))
            best_logp.append(torch.full((len(latlon),), float("nan"), dtype=torch.float64))
            local.append(torch.full((len(latlon),), float("nan"), dtype=torch.float64))
        samples.append(latlon)
    return {"samples": torch.cat(samples), "best": torch.cat(best), "log_density": torch.cat(best_logp),
            "localizability": torch.cat(local)}


def shard_rows(items: list[Item], result: dict[str, torch.Tensor], errors: list[str | None]) -> list[dict]:
    """One CSV row per item; spread_km = median distance from the best guess to the samples."""
    spread = haversine_km(result["best"].unsqueeze(1), result["samples"]).median(dim=1).values
    rows = []
    for i, item in enumerate(items):
        if errors[i] is not None:
            rows.append({"key": item.key, "error": errors[i]})
            continue
        lat, lon = result["best"][i].tolist()
        row = {"key": item.key, "best_lat": f"{lat:.6f}", "best_lon": f"{lon:.6f}",
               "log_density": f"{float(result['log_density'][i]):.6f}",
               "localizability": f"{float(result['localizability'][i]):.6f}",
               "spread_km": f"{float(spread[i]):.3f}", "error": ""}
        if item.truth is not None:
            truth = torch.tensor([item.truth], dtype=torch.float64)
            error = float(haversine_km(truth, result["best"][i:i + 1]))
            row.update(true_lat=f"{item.truth[0]:.6f}", true_lon=f"{item.truth[1]:.6f}", error_km=f"{error:.3f}")
        rows.append(row)
    return rows


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def process_shard(pipe: GeoPipeline, shard: Shard, output: Path, settings: Settings, batch_size: int) -> int:
    """Predict one shard and write its results (samples first, the CSV last: the CSV marks the shard done).
    Returns the number of images."""
    items = shard_items(shard, settings.embedding_key)
    emb, errors = embed_items(pipe, items, batch_size)
    good = [i for i, e in enumerate(errors) if e is None]
    result = predict_embeddings(pipe, emb[good], [items[i].key for i in good], settings, batch_size)
    full = {k: torch.full((len(items), *v.shape[1:]), float("nan"), dtype=v.dtype) for k, v in result.items()}
    for k, v in result.items():
        full[k][good] = v
    if settings.save_samples:
        _atomic_write(output / f"{shard.name}.samples.npy", lambda f: np.save(f, full["samples"].float().numpy()))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(shard_rows(items, full, errors))
    _atomic_write(output / f"{shard.name}.csv", lambda f: f.write(text.getvalue().encode()))
    return len(items)


@dataclass
class World:
    """This process's place in the run: rank of size, and its device."""

    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def join_world(device: str | None = None) -> World:
    """The torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK) -> a process group (nccl on GPUs, gloo on CPUs)."""
    size, rank, local = (int(os.environ.get(k, d)) for k, d in (("WORLD_SIZE", 1), ("RANK", 0), ("LOCAL_RANK", 0)))
    if device is not None:
        dev = torch.device(device)
    else:
        dev = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                device_id=dev if dev.type == "cuda" else None)
    return World(rank=rank, size=size, device=dev)


def check_settings(output: Path, settings: Settings, world: World) -> None:
    """Record the settings in output/settings.json on the first run; a later run must use the same ones."""
    path = output / SETTINGS
    if world.rank == 0:
        output.mkdir(parents=True, exist_ok=True)
        if not path.is_file():
            _atomic_write(path, lambda f: f.write(json.dumps(asdict(settings), indent=1).encode()))
    world.barrier()
    found = json.loads(path.read_text())
    if found != asdict(settings):
        changed = sorted(k for k in found if found[k] != asdict(settings).get(k))
        raise ValueError(f"{output} holds results made with other settings ({', '.join(changed)}): "
                         "use another --output or the same settings")


def predict_shards(pipe: GeoPipeline, shards: list[Shard], output: str | Path, settings: Settings, world: World,
                   batch_size: int = 256) -> dict:
    """Run this rank's share of the shards not yet done; rank 0 writes the manifest at the end.
    Returns this rank's {"shards", "images", "seconds", "images_per_s", "skipped"}."""
    output = Path(output)
    check_settings(output, settings, world)
    todo = [s for s in shards if not (output / f"{s.name}.csv").is_file()]
    world.barrier()  # every rank has listed what is done before any rank writes
    mine = todo[world.rank::world.size]
    log.info("rank %d/%d on %s: %d of the %d shards still to do (%d of %d already done)", world.rank, world.size,
             world.device, len(mine), len(todo), len(shards) - len(todo), len(shards))
    images, start = 0, time.perf_counter()
    for n, shard in enumerate(mine, start=1):
        t0 = time.perf_counter()
        count = process_shard(pipe, shard, output, settings, batch_size)
        images += count
        now = time.perf_counter()
        log.info("rank %d: [%d/%d] %s: %d images in %.1f s (%.1f images/s; rank total %d images, %.1f images/s)",
                 world.rank, n, len(mine), shard.name, count, now - t0, count / max(now - t0, 1e-9), images,
                 images / max(now - start, 1e-9))
    seconds = time.perf_counter() - start
    stats = {"rank": world.rank, "shards": len(mine), "images": images, "seconds": seconds,
             "images_per_s": images / seconds if seconds > 0 else 0.0, "skipped": len(shards) - len(todo)}
    everyone = [None] * world.size
    if world.size > 1:
        dist.all_gather_object(everyone, stats)
    else:
        everyone = [stats]
    if world.rank == 0:
        write_manifest(output, shards, settings, everyone)
    world.barrier()  # no rank tears the process group down while another still uses it (gloo aborts then)
    return stats


def write_manifest(output: Path, shards: list[Shard], settings: Settings, ranks: list[dict]) -> None:
    """output/manifest.json: settings, each shard's source, result file and row count, and this run's ranks."""
    entries = []
    for shard in shards:
        result = output / f"{shard.name}.csv"
        rows = sum(1 for _ in open(result)) - 1 if result.is_file() else None
        entries.append({"name": shard.name, "source": shard.tar or f"{len(shard.files)} image files",
                        "result": result.name, "rows": rows})
    images = sum(r["images"] for r in ranks)
    slowest = max(r["seconds"] for r in ranks)
    manifest = {"settings": asdict(settings), "shards": entries,
                "complete": all(e["rows"] is not None for e in entries),
                "last_run": {"ranks": ranks, "images": images, "seconds": slowest,
                             "images_per_s": images / slowest if slowest > 0 else 0.0}}
    _atomic_write(output / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=1).encode()))


def add_predict_shards_parser(commands) -> argparse.ArgumentParser:
    """The `predict-shards` subcommand's arguments."""
    p = commands.add_parser("predict-shards", help="batch inference over shards, a folder or a CSV of images "
                                                   "(resumable; one process per GPU under torchrun)")
    add_arguments(p)
    p.set_defaults(run=run_predict_shards)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of predict-shards (also `python -m geodemo.batch_predict`, which loads no CLI modules)."""
    p.add_argument("input", help="folder of .tar shards, tar paths / brace patterns / globs (comma-separated), "
                                 "a folder of images, or a CSV with an image column")
    p.add_argument("--output", required=True, help="folder for the per-shard CSVs and manifest.json")
    p.add_argument("--model", default="default", help="shipped model name, hub id or model folder")
    p.add_argument("--samples", type=int, default=64, help="samples per image")
    p.add_argument("--steps", type=int, default=32, help="sampler steps")
    p.add_argument("--guidance", type=float, default=2.0, help="guidance scale of the samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scored", type=int, default=16,
                   help="samples per image that get an exact log-density; the best guess is the best of them "
                        "(0: no ODE, the best guess is the densest sample)")
    p.add_argument("--ode-method", default="dopri5", help="torchdiffeq solver of the log-density")
    p.add_argument("--ode-tol", type=float, default=1e-5, help="atol = rtol of adaptive solvers")
    p.add_argument("--ode-steps", type=int, help="steps of fixed-step solvers (euler, midpoint, rk4)")
    p.add_argument("--embedding-key",
                   help="embedding member <key>.NAME.npy of embedding shards (default: the only one)")
    p.add_argument("--save-samples", action="store_true", help="also write <shard>.samples.npy, (B, N, 2) degrees")
    p.add_argument("--batch-size", type=int, default=256, help="images per network batch")
    p.add_argument("--images-per-shard", type=int, default=1000, help="for a folder or CSV of images")
    p.add_argument("--image-column", default="image", help="the CSV's column of image paths")
    p.add_argument("--device", help="cpu or cuda (default: this rank's GPU when there is one)")


def run_predict_shards(args: argparse.Namespace, out: TextIO) -> int:
    """The subcommand: 0 when every shard of this rank is done, 2 on bad input or settings."""
    import geodemo

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True)
    world = join_world(args.device)
    try:
        for name in ("samples", "steps", "batch_size"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
        if not 0 <= args.scored <= args.samples:
            raise ValueError(f"--scored must be between 0 and --samples ({args.samples}), got {args.scored}")
        settings = Settings(model=str(args.model), num_samples=args.samples, steps=args.steps,
                            guidance=args.guidance, seed=args.seed, scored=args.scored, ode_method=args.ode_method,
                            ode_tol=args.ode_tol, ode_steps=args.ode_steps, embedding_key=args.embedding_key,
                            save_samples=args.save_samples)
        shards = list_inputs(args.input, args.images_per_shard, args.image_column)
        pipe = geodemo.load(args.model, device=world.device)
        stats = predict_shards(pipe, shards, args.output, settings, world, args.batch_size)
    except (ValueError, FileNotFoundError, tarfile.TarError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    finally:
        if world.size > 1 and dist.is_initialized():
            dist.destroy_process_group()
    if world.rank == 0:
        print(f"rank 0: {stats['images']} images in {stats['seconds']:.1f} s; results in {args.output}", file=out,
              flush=True)
    return 0


if __name__ == "__main__":
    main_parser = argparse.ArgumentParser(prog="python -m geodemo.batch_predict", description=__doc__.split("\n")[0])
    add_arguments(main_parser)
    sys.exit(run_predict_shards(main_parser.parse_args(), sys.stdout))
