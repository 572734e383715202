"""The data format: WebDataset tar shards of (`<embedding_key>.npy`, `json` with latitude/longitude).

One sample = `<key>.<embedding_key>.npy` (a float vector) + `<key>.json` ({"latitude": deg, "longitude": deg,
...}), as in the authors' shards and the hub data set `osv5m/osv5m-wds` (embedding key `street_clip`).
A `sizes.json` beside the shards maps each shard's file name to its sample count (the authors' convention);
shards without it are counted once by reading their tar headers.
"""

from __future__ import annotations

import glob
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import braceexpand
import numpy as np
import torch
import webdataset as wds

from geodemo.sphere import latlon_to_xyz

SAMPLES_PER_SHARD = 10_000
SIZES_FILE = "sizes.json"


def shard_name(index: int, prefix: str = "") -> str:
    """Zero-padded shard file name: `000042.tar` (or `<prefix>-000042.tar`)."""
    return f"{prefix}-{index:06d}.tar" if prefix else f"{index:06d}.tar"


def write_shard(path: str | Path, keys: Sequence[str], embeddings: np.ndarray, latlon: np.ndarray,
                embedding_key: str, extra: Sequence[dict] | None = None) -> Path:
    """Write one shard atomically (a `.tmp` file renamed at the end). embeddings (n, C), latlon (n, 2) degrees."""
    path = Path(path)
    embeddings = np.asarray(embeddings)
    latlon = np.asarray(latlon, dtype=np.float64)
    if embeddings.ndim != 2 or latlon.shape != (embeddings.shape[0], 2) or len(keys) != embeddings.shape[0]:
        raise ValueError(f"need n keys, (n, C) embeddings and (n, 2) latlon; got {len(keys)}, "
                         f"{embeddings.shape}, {latlon.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with wds.TarWriter(str(tmp)) as sink:
        for i, key in enumerate(keys):
            meta = {"latitude": float(latlon[i, 0]), "longitude": float(latlon[i, 1]), **(extra[i] if extra else {})}
            sink.write({"__key__": str(key), f"{embedding_key}.npy": embeddings[i], "json": meta})
    os.replace(tmp, path)
    return path


def write_shards(folder: str | Path, embeddings: np.ndarray, latlon: np.ndarray, embedding_key: str,
                 samples_per_shard: int = SAMPLES_PER_SHARD, keys: Sequence[str] | None = None) -> list[Path]:
    """Split (N, C) embeddings and (N, 2) degrees into shards `000000.tar`, ... and write sizes.json."""
    folder = Path(folder)
    n = len(embeddings)
    keys = list(keys) if keys is not None else [f"{i:09d}" for i in range(n)]
    paths = []
    for index, start in enumerate(range(0, n, samples_per_shard)):
        stop = min(start + samples_per_shard, n)
        paths.append(write_shard(folder / shard_name(index), keys[start:stop], embeddings[start:stop],
                                 latlon[start:stop], embedding_key))
    update_sizes(folder, {p.name: min(samples_per_shard, n - i * samples_per_shard) for i, p in enumerate(paths)})
    return paths


def update_sizes(folder: str | Path, sizes: dict[str, int]) -> None:
    """Merge {shard file name: sample count} into folder/sizes.json."""
    path = Path(folder) / SIZES_FILE
    current = json.loads(path.read_text()) if path.is_file() else {}
    current.update({k: int(v) for k, v in sizes.items()})
    tmp = path.with_name(SIZES_FILE + ".tmp")
    tmp.write_text(json.dumps(dict(sorted(current.items())), indent=1))
    os.replace(tmp, path)


def list_shards(spec: str | Path | Sequence[str]) -> list[str]:
    """Shard paths from a folder (its *.tar, sorted), a brace pattern, a glob, or a comma-separated list of those."""
    if isinstance(spec, (list, tuple)):
        parts = [str(s) for s in spec]
    else:
        parts = [p for p in str(spec).split(",") if p]
    paths: list[str] = []
    for part in parts:
        if os.path.isdir(part):
            found = sorted(glob.glob(os.path.join(part, "*.tar")))
        elif any(c in part for c in "*?["):
            found = sorted(glob.glob(part))
        else:
            found = list(braceexpand.braceexpand(part))
        missing = [p for p in found if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"shard {missing[0]} does not exist ({len(missing)} missing in {part!r})")
        if not found:
            raise FileNotFoundError(f"no .tar shards found at {part!r}")
        paths.extend(found)
    return paths


def count_samples(path: str) -> int:
    """Number of samples in a shard: distinct keys among its members (headers only, no decoding)."""
    keys = set()
    with tarfile.open(path) as tar:
        for member in tar:
            if member.isfile():
                keys.add(_sample_key(member.name))
    return len(keys)


def _sample_key(member_name: str) -> str:
    """WebDataset's grouping rule: the key is the path up to the first '.' of the file name."""
    directory, name = os.path.split(member_name)
    return os.path.join(directory, name.split(".", 1)[0])


def shard_sizes(paths: Sequence[str]) -> list[int]:
    """Sample count of each shard, from sizes.json beside it when listed there, else by counting."""
    cache: dict[str, dict] = {}
    sizes = []
    for p in paths:
        folder = os.path.dirname(p)
        if folder not in cache:
            f = os.path.join(folder, SIZES_FILE)
            cache[folder] = json.loads(Path(f).read_text()) if os.path.isfile(f) else {}
        name = os.path.basename(p)
        sizes.append(int(cache[folder][name]) if name in cache[folder] else count_samples(p))
    return sizes


def _samples(path: str) -> wds.WebDataset:
    """The raw samples of one shard, in file order, whatever the process (no node/worker splitting)."""
    return wds.WebDataset(path, shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False)


@dataclass
class ShardData:
    """One shard in memory: embeddings (n, C) float32, xyz (n, 3) float32 unit vectors, latlon (n, 2) float64."""

    embeddings: torch.Tensor
    xyz: torch.Tensor
    latlon: torch.Tensor
    keys: list[str]


def read_shard(path: str, embedding_key: str) -> ShardData:
    """Decode every sample of one shard; a sample lacking the embedding or the coordinates is an error."""
    emb_name = f"{embedding_key}.npy"
    embeddings, latlon, keys = [], [], []
    for sample in _samples(path):
        if emb_name not in sample or "json" not in sample:
            have = sorted(k for k in sample if not k.startswith("__"))
            raise KeyError(f"sample {sample['__key__']!r} of {path} lacks {emb_name!r} or 'json' (has {have})")
        embeddings.append(np.load(io.BytesIO(sample[emb_name])).astype(np.float32, copy=False).reshape(-1))
        meta = json.loads(sample["json"])
        latlon.append((float(meta["latitude"]), float(meta["longitude"])))
        keys.append(sample["__key__"])
    if not embeddings:
        raise ValueError(f"shard {path} holds no samples")
    lat_lon = torch.tensor(latlon, dtype=torch.float64)
    return ShardData(embeddings=torch.from_numpy(np.stack(embeddings)), xyz=latlon_to_xyz(lat_lon).float(),
                     latlon=lat_lon, keys=keys)


def read_shards(paths: Sequence[str], embedding_key: str) -> ShardData:
    """All samples of several shards, concatenated in order."""
    parts = [read_shard(p, embedding_key) for p in paths]
    return ShardData(embeddings=torch.cat([p.embeddings for p in parts]), xyz=torch.cat([p.xyz for p in parts]),
                     latlon=torch.cat([p.latlon for p in parts]), keys=[k for p in parts for k in p.keys])


def embedding_dim(path: str, embedding_key: str) -> int:
    """Width of the embeddings in a shard (read from its first sample)."""
    emb_name = f"{embedding_key}.npy"
    for sample in _samples(path):
        if emb_name not in sample:
            have = sorted(k for k in sample if not k.startswith("__"))
            raise KeyError(f"{path}: samples hold {have}, not {emb_name!r}; set embedding_key accordingly")
        return int(np.load(io.BytesIO(sample[emb_name])).size)
    raise ValueError(f"shard {path} holds no samples")
