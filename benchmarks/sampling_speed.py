"""Sampling speed: geodemo's sampler at its defaults against diff-plonk 0.4's pipeline, same process, same random
weights.

Usage: python benchmarks/sampling_speed.py --device cpu --sizes yfcc --samples 1024 --steps 32 --threads 2
Both start from the same initial points (uniform on S^2) for one image, guidance w, and return degrees on the
host. Variants: "auto" is `sample`'s default (on CUDA bf16x3 matmuls in a captured CUDA graph, on a CPU float32),
"float32" the exact path, "bf16x3" / "bf16" the matmul precisions; a "-eager" suffix runs without CUDA graphs.
Rows: median seconds of `--repeats` runs (all variants interleaved), ms per image, points x steps per second (one
point-step = one guided prediction), and on a GPU the floor = per-point denoiser FLOPs x points x steps (x2 with
guidance) / the card's measured matmul rate in the row's precision (bf16x3: the bf16 rate / 3).
`agree km` compares each of our rows with diff-plonk's samples from the same start (median / max distance);
`vs fp32 deg` with our float32 path's (max angle, degrees: the default's promise is < 0.01).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from benchmarks.plonk_reference import (SIZES, authors_pipeline, describe_device, matmul_rate, median_time,
                                        our_network, point_flops, random_hub_folder)
from geodemo.network import tf32_matmuls
from geodemo.processes import RiemannianFlowS2
from geodemo.sampling import matmul_precision, sample
from geodemo.schedules import SigmoidSchedule
from geodemo.sphere import angle_between, haversine_km, latlon_to_xyz, sample_uniform, xyz_to_latlon

VARIANTS = ("auto", "float32", "bf16x3", "bf16", "tf32", "auto-eager", "float32-eager", "bf16x3-eager", "bf16-eager",
            "tf32-eager")


def ours(network, emb, noise, steps, guidance, variant):
    precision, _, eager = variant.partition("-")
    out = sample(network, RiemannianFlowS2(), SigmoidSchedule(), emb, noise.shape[1], steps=steps,
                 guidance=guidance, initial_noise=noise, precision=precision, graphs=False if eager else None)
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
    parser.add_argument("--variants", nargs="+", default=["auto", "float32"], choices=VARIANTS)
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
        rates = {"native": matmul_rate(device, torch.float32, n=8192), "bf16": matmul_rate(device, torch.bfloat16, n=8192)}
        rates["bf16x3"] = rates["bf16"] / 3
        with tf32_matmuls():
            rates["tf32"] = matmul_rate(device, torch.float32, n=8192)
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
                runs = {v: (lambda v=v: ours(network, emb, noise, steps, args.guidance, v)) for v in args.variants}
                if pipe is not None and (args.authors == "all" or f"{n}x{steps}" in args.authors.split(",")):
                    runs["diff-plonk fp32"] = lambda: theirs(pipe, noise, steps, args.guidance)
                results = {name: fn() for name, fn in runs.items()}  # warm-up, and the samples compared below
                times = {name: [] for name in runs}
                for _ in range(args.repeats):  # interleaved, so load changes on a shared machine hit all rows alike
                    for name, fn in runs.items():
                        times[name].append(median_time(fn, device, 1, warmup=0)[0])
                reference = results.get("diff-plonk fp32")
                exact = ours(network, emb, noise, steps, args.guidance, "float32-eager")
                passes = 2 if args.guidance else 1
                for name, ts in times.items():
                    seconds = sorted(ts)[len(ts) // 2]
                    precision = "fp32" if "plonk" in name else matmul_precision(name.partition("-")[0], device)
                    row = {"card": card, "size": size, "dim": config.dim, "depth": config.depth, "samples": n,
                           "steps": steps, "guidance": args.guidance, "impl": "diff-plonk" if "plonk" in name else "geodemo",
                           "variant": name, "precision": precision, "seconds": seconds, "all_seconds": ts,
                           "point_steps_per_s": n * steps / seconds}
                    if rates:
                        flops = point_flops(config) * n * steps * passes
                        row["floor_s"] = flops / rates["native" if precision == "fp32" else precision]
                        row["floor_ratio"] = seconds / row["floor_s"]
                    if reference is not None and "plonk" not in name:
                        km = haversine_km(results[name].double(), reference)
                        row["agree_km_median"], row["agree_km_max"] = float(km.median()), float(km.max())
                    if "plonk" not in name:
                        angle = angle_between(latlon_to_xyz(results[name].double()), latlon_to_xyz(exact.double()))
                        row["vs_float32_deg_max"] = float(torch.rad2deg(angle).max())
                    rows.append(row)
    print(f"device: {card}; torch {torch.__version__}; threads {torch.get_num_threads()}; guidance {args.guidance}")
    if rates:
        print("measured matmul rate (8192^3, random data): " + ", ".join(f"{k} {v / 1e12:.0f} TFLOP/s" for k, v in rates.items()))
    header = f"{'size':<9}{'impl':<11}{'variant':<15}{'N':>6}{'steps':>6}{'ms/image':>10}{'pt-steps/s':>12}{'speed-up':>9}"
    header += f"{'floor ms':>10}{'x floor':>8}" if rates else ""
    print(header + f"{'vs fp32 deg':>12}{'agree km (med/max)':>20}")
    for row in rows:
        base = next((r for r in rows if r["impl"] == "diff-plonk" and r["size"] == row["size"]
                     and r["samples"] == row["samples"] and r["steps"] == row["steps"]), None)
        speed = f"{base['seconds'] / row['seconds']:.1f}x" if base else "-"
        line = (f"{row['size']:<9}{row['impl']:<11}{row['variant']:<15}{row['samples']:>6}{row['steps']:>6}"
                f"{row['seconds'] * 1e3:>10.1f}{row['point_steps_per_s']:>12.3g}{speed:>9}")
        if rates:
            line += f"{row['floor_s'] * 1e3:>10.2f}{row['floor_ratio']:>8.1f}"
        line += f"{row['vs_float32_deg_max']:>12.1e}" if "vs_float32_deg_max" in row else f"{'-':>12}"
        if "agree_km_median" in row:
            line += f"{row['agree_km_median']:>11.3g} / {row['agree_km_max']:.3g}"
        print(line)
    if args.json:
        args.json.write_text(json.dumps({"rates": rates, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
