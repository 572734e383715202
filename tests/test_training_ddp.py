"""training/train.py under `torchrun --nproc_per_node=2` on CPU (gloo): same weights on both ranks,
every sample seen exactly once per epoch, and an exported model that geodemo.load reads."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import geodemo
from training.synthetic import make_synthetic_shards

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_torchrun_on_cpu(tmp_path):
    make_synthetic_shards(tmp_path / "shards", num_samples=640, cond_dim=8, samples_per_shard=160,
                          embedding_key="synthetic", seed=5)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", "-m", "training.train", "--train-shards", str(tmp_path / "shards"),
               "--embedding-key", "synthetic", "--output-dir", str(out), "--dim", "16", "--depth", "1",
               "--batch-size", "64", "--total-steps", "15", "--warmup-steps", "2", "--optimizer", "lamb",
               "--num-workers", "0", "--progress", "false", "--log-every", "5", "--audit", "true",
               "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((out / "audit" / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["network_sha256"] == ranks[1]["network_sha256"]
    assert ranks[0]["ema_sha256"] == ranks[1]["ema_sha256"]
    # 640 samples / 64 per step = 10 steps per epoch: epoch 0 complete, epoch 1 half done.
    epoch0 = ranks[0]["ids"]["0"] + ranks[1]["ids"]["0"]
    assert sorted(epoch0) == list(range(640))
    assert set(ranks[0]["ids"]["0"]).isdisjoint(ranks[1]["ids"]["0"])
    epoch1 = ranks[0]["ids"]["1"] + ranks[1]["ids"]["1"]
    assert len(epoch1) == len(set(epoch1)) == 5 * 64
    pipeline = geodemo.load(out / "model", device="cpu")
    assert pipeline.network.config.cond_dim == 8
    assert pipeline.predict(embeddings=[[0.5] * 8], num_samples=3, steps=4, seed=0).latlon.shape == (1, 3, 2)
