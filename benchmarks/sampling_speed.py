"""Sampling speed: geodemo's sampler against diff-plonk 0.4's pipeline, same process, same random weights.

Usage: python benchmarks/sampling_speed.py --device cpu --sizes yfcc --samples 1024 --steps 32 --threads 2
Both start from the same initial points (uniform on S^2) for one image, guidance w, and return degrees on the
host. Rows: median seconds of `--repeats` runs (ours and theirs interleaved), ms per image, points x steps per
second (one point-step = one guided prediction), and on a GPU the floor = per-point denoiser FLOPs x points
x steps (x2 with guidance) / the card's measured matmul rate in the row's precision.
`agree km` compares each of our rows with diff-plonk's samples from the same start (median / max distance).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from benchmarks.plonk_reference import (SIZES, authors_pipeline, describe_device, matmul_rate, median_time,
                                        our_network, point_flops, random_hub_folder)
from geodemo.processes import RiemannianFlowS2
from geodemo.sampling import sample
from geodemo.schedules import SigmoidSchedule
from geodemo.sphere import haversine_km, sample_uniform, xyz_to_latlon

PRECISIONS = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16}


def ours(network, emb, noise, steps, guidance, precision):
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    out = sample(network, RiemannianFlowS2(), SigmoidSchedule(), emb, noise.shape[1], steps=steps,
                 guidance=guidance, initial_noise=noise, compute_dtype=PRECISIONS[precision])
    return xyz_to_latlon(out.xyz[0]).cpu()


def theirs(pipe, noise, steps, guidance):
    torch.backends.cuda.matmul.allow_tf32 = False
    return torch.from_numpy(pipe(None, x_N=noise[0], num_steps=steps, cfg=guidance)).double()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", nargs="+", default=["yfcc"], choices=sorted(SIZES))
    parser.add_argument("--samples", nargs="+", type=int, default=[1024])
    parser.add_argument("--steps", nargs="+", type=int, default=[32])
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=sorted(PRECISIONS))
    parser.add_argument("--authors", default="all", help="'all', 'none', or SAMPLESxSTEPS items, e.g. 1024x32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = args.device
    card = describe_device(device)
    rates = {}
    if device.startswith("cuda"):
        for name, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                                  ("bf16", torch.bfloat16, False)):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            rates[name] = matmul_rate(device, dtype, n=8192)
        torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    for size in args.sizes:
        config = SIZES[size]
        folder = random_hub_folder(Path(tempfile.mkdtemp()) / size, config)
        network = our_network(folder, device)
        emb = torch.randn(1, config.cond_dim, generator=torch.Generator().manual_seed(1)).to(device)
        pipe = authors_pipeline(folder, emb, device) if args.authors != "none" else None
        for n in args.samples:
            for steps in args.steps:
                noise = sample_uniform((1, n), generator=torch.Generator().manual_seed(2)).to(device)
                runs = {p: (lambda p=p: ours(network, emb, noise, steps, args.guidance, p)) for p in args.precisions}
                if pipe is not None and (args.authors == "all" or f"{n}x{steps}" in args.authors.split(",")):
                    runs["diff-plonk fp32"] = lambda: theirs(pipe, noise, steps, args.guidance)
                results = {name: fn() for name, fn in runs.items()}  # warm-up, and the samples compared below
                times = {name: [] for name in runs}
                for _ in range(args.repeats):  # interleaved, so load changes on a shared machine hit all rows alike
                    for name, fn in runs.items():
                        times[name].append(median_time(fn, device, 1, warmup=0)[0])
                reference = results.get("diff-plonk fp32")
                passes = 2 if args.guidance else 1
                for name, ts in times.items():
                    seconds = sorted(ts)[len(ts) // 2]
                    precision = name.split()[-1]
                    row = {"card": card, "size": size, "dim": config.dim, "depth": config.depth, "samples": n,
                           "steps": steps, "guidance": args.guidance, "impl": "diff-plonk" if "plonk" in name else "geodemo",
                           "precision": precision, "seconds": seconds, "all_seconds": ts,
                           "point_steps_per_s": n * steps / seconds}
                    if rates:
                        flops = point_flops(config) * n * steps * passes
                        row["floor_s"] = flops / rates[precision]
                        row["floor_ratio"] = seconds / row["floor_s"]
                    if reference is not None and "plonk" not in name:
                        km = haversine_km(results[name].double(), reference)
                        row["agree_km_median"], row["agree_km_max"] = float(km.median()), float(km.max())
                    rows.append(row)
    print(f"device: {card}; torch {torch.__version__}; threads {torch.get_num_threads()}; guidance {args.guidance}")
    if rates:
        print("measured matmul rate (8192^3, random data): " + ", ".join(f"{k} {v / 1e12:.0f} TFLOP/s" for k, v in rates.items()))
    header = f"{'size':<9}{'impl':<11}{'prec':<6}{'N':>6}{'steps':>6}{'ms/image':>10}{'pt-steps/s':>12}{'speed-up':>9}"
    header += f"{'floor ms':>10}{'x floor':>8}" if rates else ""
    print(header + f"{'agree km (med/max)':>20}")
    for row in rows:
        base = next((r for r in rows if r["impl"] == "diff-plonk" and r["size"] == row["size"]
                     and r["samples"] == row["samples"] and r["steps"] == row["steps"]), None)
        speed = f"{base['seconds'] / row['seconds']:.1f}x" if base else "-"
        line = (f"{row['size']:<9}{row['impl']:<11}{row['precision']:<6}{row['samples']:>6}{row['steps']:>6}"
                f"{row['seconds'] * 1e3:>10.1f}{row['point_steps_per_s']:>12.3g}{speed:>9}")
        if rates:
            line += f"{row['floor_s'] * 1e3:>10.2f}{row['floor_ratio']:>8.1f}"
        if "agree_km_median" in row:
            line += f"{row['agree_km_median']:>11.3g} / {row['agree_km_max']:.3g}"
        print(line)
    if args.json:
        args.json.write_text(json.dumps({"rates": rates, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
