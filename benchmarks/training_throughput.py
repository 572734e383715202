"""Training throughput (samples/s) of training/train.py's real step on 1 and N GPUs.

    python benchmarks/training_throughput.py --gpus 1 2
    python benchmarks/training_throughput.py --gpus 1 --configs 384x8x4096xadamw --compile

Writes synthetic 1024-d embedding shards, then for each GPU count launches the training step
(`Trainer.step` with in-memory data on the GPU, bf16 autocast, EMA, clipping; DDP through torchrun when N > 1)
and prints samples/s per configuration. A configuration is DIMxDEPTHxGLOBAL_BATCHxOPTIMIZER; the global batch
is split over the GPUs. Timing: `--warmup` steps, then `--steps` steps between two CUDA synchronisations.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_CONFIGS = ("512x12x1024xlamb", "512x12x1024xadamw", "512x12x2048xadamw", "384x8x4096xadamw",
                   "256x6x1024xadamw")
EMBEDDING_KEY = "synthetic"


def parse_config(text: str) -> tuple[int, int, int, str]:
    dim, depth, batch, optimizer = text.split("x")
    return int(dim), int(depth), int(batch), optimizer


def worker(args: argparse.Namespace) -> None:
    """One rank: time Trainer.step for every configuration; rank 0 prints one RESULT line each."""
    import torch
    import torch.distributed as dist

    from training.config import TrainConfig
    from training.train import Trainer, setup_runtime

    runtime = setup_runtime(TrainConfig(train_shards=args.shards))
    for text in args.configs:
        dim, depth, batch, optimizer = parse_config(text)
        config = TrainConfig(train_shards=args.shards, embedding_key=EMBEDDING_KEY, dim=dim, depth=depth,
                             batch_size=batch, optimizer=optimizer, total_steps=10**6, progress=False,
                             num_workers=4, output_dir=tempfile.mkdtemp(), compile=args.compile)
        trainer = Trainer(config, runtime)
        trainer.network.train()

        def batches():
            epoch = 0
            while True:
                yield from trainer.loader.batches(epoch)
                epoch += 1

        stream = batches()

        def run(steps: int) -> None:
            for _ in range(steps):
                batch_data = next(stream)
                trainer.step(batch_data.embeddings, batch_data.xyz)
                trainer.position.step += 1

        sync = torch.cuda.synchronize if runtime.device.type == "cuda" else (lambda: None)
        run(args.warmup)
        sync()
        if runtime.world_size > 1:
            dist.barrier()
        start = time.perf_counter()
        run(args.steps)
        sync()
        elapsed = time.perf_counter() - start
        if runtime.main:
            params = sum(p.numel() for p in trainer.network.parameters())
            print("RESULT " + json.dumps({
                "gpus": runtime.world_size, "card": torch.cuda.get_device_name() if runtime.device.type == "cuda" else "cpu", "dim": dim, "depth": depth,
                "params_M": round(params / 1e6, 2), "global_batch": batch, "optimizer": optimizer,
                "compile": args.compile, "ms_per_step": round(1000 * elapsed / args.steps, 2),
                "samples_per_s": round(args.steps * batch / elapsed)}), flush=True)
        del trainer
        torch.cuda.empty_cache()
    if runtime.world_size > 1:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS))
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--samples", type=int, default=32768, help="synthetic samples (kept on the GPUs)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--shards", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    from training.synthetic import make_synthetic_shards

    shards = tempfile.mkdtemp(prefix="throughput_shards_")
    make_synthetic_shards(shards, num_samples=args.samples, cond_dim=1024, samples_per_shard=args.samples // 8,
                          embedding_key=EMBEDDING_KEY)
    common = [__file__, "--worker", "--shards", shards, "--warmup", str(args.warmup), "--steps", str(args.steps),
              "--configs", *args.configs] + (["--compile"] if args.compile else [])
    rows = []
    for gpus in args.gpus:
        launcher = [sys.executable] if gpus == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                        f"--nproc_per_node={gpus}"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run(launcher + common, env=env, capture_output=True, text=True, cwd=REPO)
        if done.returncode != 0:
            print(done.stdout[-2000:], done.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"the {gpus}-GPU run failed")
        rows += [json.loads(line[len("RESULT "):]) for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    header = ("card", "gpus", "dim", "depth", "params_M", "global_batch", "optimizer", "compile", "ms_per_step",
              "samples_per_s")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row[h]) for h in header) + " |")


if __name__ == "__main__":
    main()
