"""A synthetic embedding data set with a learnable answer, for tests and throughput benchmarks.

`clusters` places on Earth each get a random code vector; a sample's embedding is its place's code plus
Gaussian noise, and its location is the place's centre jittered by `jitter_deg` degrees. A model that
reads the embedding can locate the sample to within the jitter; an untrained one cannot.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.shards import write_shards


def synthetic_samples(num_samples: int, cond_dim: int, clusters: int = 8, jitter_deg: float = 2.0,
                      code_noise: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings (N, cond_dim) float32, latlon (N, 2) degrees) of the clustered data set."""
    rng = np.random.default_rng(seed)
    centres = np.stack([rng.uniform(-60, 60, clusters), rng.uniform(-170, 170, clusters)], axis=1)
    codes = rng.normal(size=(clusters, cond_dim))
    labels = rng.integers(0, clusters, num_samples)
    embeddings = (codes[labels] + code_noise * rng.normal(size=(num_samples, cond_dim))).astype(np.float32)
    latlon = centres[labels] + jitter_deg * rng.normal(size=(num_samples, 2))
    latlon[:, 0] = latlon[:, 0].clip(-89.9, 89.9)
    latlon[:, 1] = (latlon[:, 1] + 180) % 360 - 180
    return embeddings, latlon


def make_synthetic_shards(folder: str | Path, num_samples: int, cond_dim: int, samples_per_shard: int,
                          embedding_key: str = "synthetic", **kwargs) -> list[Path]:
    """Write the clustered data set as shards (plus sizes.json) into folder."""
    embeddings, latlon = synthetic_samples(num_samples, cond_dim, **kwargs)
    return write_shards(folder, embeddings, latlon, embedding_key, samples_per_shard=samples_per_shard)
