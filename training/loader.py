"""Per-rank, seeded, resumable batches of (embedding, point on S^2) from embedding shards.

Plan of an epoch for rank r of W: the shard list (fixed in "memory" mode, reshuffled each epoch by the
seed in "stream" mode) is dealt round-robin, rank r taking shards r, r + W, ...; its shards are cut into
windows (all of them in "memory" mode), each window is permuted by a generator seeded by
(seed, epoch, rank, window), and the concatenated stream is cut into batches. Every rank runs
min_r floor(n_r / batch) steps, so ranks stay in lock-step. A batch is therefore a pure function of
(seed, epoch, batch index): resuming at any batch index reproduces the remaining batches exactly.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from training.shards import read_shard


def mixed_seed(*values: int) -> int:
    """A 63-bit seed that depends on every integer in `values` (numpy SeedSequence hashing)."""
    state = np.random.SeedSequence([int(v) for v in values]).generate_state(2, np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


def seeded_generator(*values: int, device: torch.device | str = "cpu") -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(mixed_seed(*values))
    return generator


_SHARD_ORDER, _WINDOW_ORDER = 1, 2  # stream tags keeping the seeded streams independent


@dataclass
class Batch:
    """embeddings (b, C) float32, xyz (b, 3) float32 unit vectors, ids (b,) global sample indices."""

    embeddings: torch.Tensor
    xyz: torch.Tensor
    ids: torch.Tensor


@dataclass
class _Window:
    embeddings: torch.Tensor
    xyz: torch.Tensor
    ids: torch.Tensor


class _ShardFiles(Dataset):
    """Map-style view of shard files, so that DataLoader workers decode shards in parallel, in order."""

    def __init__(self, paths: Sequence[str], embedding_key: str):
        self.paths, self.embedding_key = list(paths), embedding_key

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        data = read_shard(self.paths[i], self.embedding_key)
        return data.embeddings, data.xyz


class ShardLoader:
    """Batches for one rank. `batch_size` is the per-rank batch; `sizes` the sample count of each shard."""

    def __init__(self, paths: Sequence[str], sizes: Sequence[int], embedding_key: str, batch_size: int,
                 rank: int = 0, world_size: int = 1, seed: int = 0, mode: str = "memory", window_shards: int = 8,
                 num_workers: int = 0, device: torch.device | str = "cpu"):
        if len(paths) < world_size:
            raise ValueError(f"{len(paths)} shards cannot feed {world_size} ranks: each rank reads its own shards; "
                             "write smaller shards")
        if mode not in ("memory", "stream"):
            raise ValueError(f"mode must be 'memory' or 'stream', got {mode!r}")
        self.paths, self.sizes = list(paths), [int(s) for s in sizes]
        self.offsets = np.concatenate(([0], np.cumsum(self.sizes)))
        self.embedding_key, self.batch_size = embedding_key, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.mode, self.window_shards, self.num_workers = mode, window_shards, num_workers
        self.device = torch.device(device)
        self._cache: tuple[tuple[int, ...], _Window] | None = None
        self._prefetch = ThreadPoolExecutor(max_workers=1) if mode == "stream" else None
        if self.steps_per_epoch(0) < 1:
            raise ValueError(f"a rank holds fewer samples than its batch of {batch_size}: lower batch_size "
                             f"or use fewer ranks ({sum(self.sizes)} samples in {len(self.paths)} shards)")

    def shards_of_rank(self, epoch: int, rank: int | None = None) -> list[int]:
        """Indices of the shards rank reads in `epoch`."""
        rank = self.rank if rank is None else rank
        if self.mode == "memory":
            order = torch.arange(len(self.paths))
        else:
            order = torch.randperm(len(self.paths), generator=seeded_generator(self.seed, _SHARD_ORDER, epoch))
        return order[rank::self.world_size].tolist()

    def steps_per_epoch(self, epoch: int) -> int:
        """min over ranks of floor(samples of the rank / batch): the same on every rank, no communication."""
        counts = [sum(self.sizes[i] for i in self.shards_of_rank(epoch, r)) for r in range(self.world_size)]
        return min(counts) // self.batch_size

    def _windows(self, epoch: int) -> list[list[int]]:
        shards = self.shards_of_rank(epoch)
        size = len(shards) if self.mode == "memory" else self.window_shards
        return [shards[i:i + size] for i in range(0, len(shards), size)]

    def _read(self, shards: list[int]) -> _Window:
        """Decode the shards (in parallel with num_workers processes) and move them to the device."""
        files = _ShardFiles([self.paths[i] for i in shards], self.embedding_key)
        loader = DataLoader(files, batch_size=None, num_workers=min(self.num_workers, len(shards)))
        embeddings, xyz, ids = [], [], []
        for i, (emb, points) in zip(shards, loader):
            if emb.shape[0] != self.sizes[i]:
                raise ValueError(f"{self.paths[i]} holds {emb.shape[0]} samples but its size is listed as "
                                 f"{self.sizes[i]}: fix or delete the stale sizes.json")
            embeddings.append(emb)
            xyz.append(points)
            ids.append(torch.arange(self.offsets[i], self.offsets[i + 1]))
        return _Window(embeddings=torch.cat(embeddings).to(self.device), xyz=torch.cat(xyz).to(self.device),
                       ids=torch.cat(ids).to(self.device))

    def _load(self, shards: list[int]) -> _Window:
        key = tuple(shards)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._read(shards))
        return self._cache[1]

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Batches start, start + 1, ... steps_per_epoch(epoch) - 1 of the epoch."""
        windows = self._windows(epoch)
        lengths = [sum(self.sizes[i] for i in w) for w in windows]
        bounds = np.concatenate(([0], np.cumsum(lengths)))
        b = self.batch_size
        pos, end = start * b, self.steps_per_epoch(epoch) * b
        if pos >= end:
            return
        w = int(np.searchsorted(bounds, pos, side="right")) - 1
        pending: Future | None = None
        pieces: list[tuple[_Window, torch.Tensor]] = []
        while pos < end:
            window = pending.result() if pending is not None else self._load(windows[w])
            pending = None
            if self._prefetch is not None and w + 1 < len(windows) and bounds[w + 1] < end:
                pending = self._prefetch.submit(self._read, windows[w + 1])
            order = torch.randperm(lengths[w], generator=seeded_generator(self.seed, _WINDOW_ORDER, epoch,
                                                                          self.rank, w)).to(self.device)
            while pos < min(bounds[w + 1], end):
                take = min(bounds[w + 1], (pos // b + 1) * b) - pos
                local = pos - bounds[w]
                pieces.append((window, order[local:local + take]))
                pos += take
                if pos % b == 0:
                    yield _gather(pieces)
                    pieces = []
            w += 1


def _gather(pieces: list[tuple[_Window, torch.Tensor]]) -> Batch:
    """Concatenate the rows idx of each window into one batch."""
    return Batch(embeddings=torch.cat([w.embeddings[i] for w, i in pieces]),
                 xyz=torch.cat([w.xyz[i] for w, i in pieces]),
                 ids=torch.cat([w.ids[i] for w, i in pieces]))
