"""Images/s of `geodemo predict-shards` on 1 and 2 GPUs (torchrun, NCCL), against the FLOP floor.

    python benchmarks/predict_scaling.py --gpus 1 2

Writes random embedding shards (8 per network, so that every rank holds whole shards), then runs the real
command's engine, `torchrun --nproc_per_node=G -m geodemo.batch_predict` (= `geodemo predict-shards`), for
two networks: the shipped embedded model (`default`: dim 128, depth 4 since 2026-12-07; dim 256, depth 8 in
the measured table) and an official-shape one (dim 512, depth 12, cond 1024, random weights, Riemannian flow),
each without and with log-densities (`--scored 16` by fixed-step RK4, `--ode-steps 8`).
The rate is manifest.json's: all images over the slowest rank's time in its shard loop (reading shards,
sampling, log-densities, writing CSVs; not the start of the processes or the loading of the model).
FLOP floor: the network's matmul FLOPs per image at the card's FP32 peak (torch's default, no TF32).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from geodemo.checkpoint import save_checkpoint  # noqa: E402
from geodemo.network import GeoDenoiser, NetworkConfig  # noqa: E402
from geodemo.pipeline import load  # noqa: E402
from training.shards import write_shards  # noqa: E402

FP32_PEAK = {"NVIDIA H200": 67e12}
"""Dense FP32 (non-tensor-core) FLOP/s of the cards we measured on (NVIDIA's data sheet, SXM)."""
SHARDS = 8
SAMPLES, STEPS, GUIDANCE, SCORED, ODE_STEPS = 64, 32, 2.0, 16, 8
RK4_STAGES, SPHERE_TANGENTS = 4, 2


def eval_flops(config: NetworkConfig) -> float:
    """Matmul FLOPs of one point through the per-point layers: two dim x (expansion dim) linears per block."""
    d, e = config.dim, config.expansion
    return config.depth * 4 * e * d * d + 2 * (config.input_dim * d)


def image_flops(config: NetworkConfig, scored: int) -> float:
    """Per image: N samples x steps x (2 with guidance) passes, plus scored x ODE steps x RK4 stages x
    (1 + 2 tangents) passes for the log-densities on S^2."""
    sampling = SAMPLES * STEPS * (2 if GUIDANCE else 1)
    density = scored * ODE_STEPS * RK4_STAGES * (1 + SPHERE_TANGENTS)
    return (sampling + density) * eval_flops(config)


def make_models(folder: Path) -> dict[str, tuple[str, NetworkConfig, int]]:
    """{label: (model name or folder, config, images per shard)}."""
    official = NetworkConfig(dim=512, depth=12, cond_dim=1024)
    torch.manual_seed(0)
    path = save_checkpoint(folder / "official", GeoDenoiser(official), "rfm_s2",
                           {"kind": "linear"}, encoder=None)
    embedded = load("default", device="cpu").network.config
    return {f"embedded ({embedded.dim} x {embedded.depth})": ("default", embedded, 1536),
            "official shape (512 x 12)": (str(path), official, 384)}


def run(model: str, shards: Path, output: Path, gpus: int, scored: int, batch: int) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={gpus}", "--standalone", "-m",
           "geodemo.batch_predict", str(shards),
           "--output", str(output), "--model", model, "--samples", str(SAMPLES), "--steps", str(STEPS),
           "--guidance", str(GUIDANCE), "--scored", str(scored), "--ode-method", "rk4", "--ode-steps", str(ODE_STEPS),
           "--batch-size", str(batch)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads((output / "manifest.json").read_text())["last_run"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=1536, help="images per network batch")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the images per shard")
    args = parser.parse_args()
    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    peak = FP32_PEAK.get(card)
    print(f"{card}, torch {torch.__version__}; N = {SAMPLES} samples, {STEPS} steps, w = {GUIDANCE:g}; "
          f"log-density: {SCORED} samples, RK4 x {ODE_STEPS}")
    print("| network | log-density | GPUs | images | s | images/s | x 1 GPU | TFLOP/s | FLOP floor (images/s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for label, (model, config, per_shard) in make_models(tmp).items():
            per_shard = max(1, int(per_shard * args.scale))
            rng = np.random.default_rng(0)
            n = SHARDS * per_shard
            emb = rng.normal(size=(n, config.cond_dim)).astype(np.float32) / np.sqrt(config.cond_dim)
            latlon = np.c_[rng.uniform(-60, 60, n), rng.uniform(-180, 180, n)]
            shards = tmp / f"shards-{config.dim}"
            write_shards(shards, emb, latlon, "emb", samples_per_shard=per_shard)
            for scored in (0, SCORED):
                base = None
                for gpus in args.gpus:
                    out = tmp / f"out-{config.dim}-{scored}-{gpus}"
                    stats = run(model, shards, out, gpus, scored, args.batch_size)
                    rate = stats["images_per_s"]
                    base = base or rate
                    flops = image_flops(config, scored)
                    floor = f"{gpus * peak / flops:,.0f}" if peak else "-"
                    print(f"| {label} | {'yes' if scored else 'no'} | {gpus} | {stats['images']:,} | "
                          f"{stats['seconds']:.1f} | {rate:,.0f} | {rate / base:.2f} | {rate * flops / 1e12:.1f} | "
                          f"{floor} |", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    main()
