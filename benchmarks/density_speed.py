"""Log-density speed and accuracy on a global grid: geodemo's log_density against diff-plonk 0.4's
`compute_likelihood_grid`, same random weights, one image, guidance 0.

Usage: python benchmarks/density_speed.py --device cuda --size yfcc --resolution 1
The grid is diff-plonk's own (lat -90..90, lon -180..180 inclusive). diff-plonk solves it in batches of 1024
points, each an adaptive dopri5 solve (atol = rtol = 1e-6, float32) with the divergence by vmap(jacrev).
A full 1-degree grid (65,341 points, ~2,400 function evaluations per batch on these random weights) is far
too slow to time, so ONE batch of `--batch` points in the middle of the grid is timed for each implementation
and the grid time is extrapolated per point (x number of batches). Ours also gets a throughput row: the cost
per point per function evaluation with the whole grid in one batch (a few fixed RK4 steps), times the
dopri5 evaluations measured on the batch: the estimate for solving the grid in one go.
Accuracy: max / mean |delta log p| in nats on `--reference-points` of the batch against a float64 solve by our
implementation (dopri5, atol = rtol = `--reference-tol`), per geometry: "ambient" (the authors' quantity: raw field,
R^3 divergence) or "riemannian" (our default: tangent field on S^2, normalised).
Variants GEOMETRY:METHOD:TOL|STEPS[:bf16x3][:compile]: bf16x3 runs the blocks' matmuls as three bfloat16 products,
compile hands the network pass to torch.compile (compiled and warmed up on each shape before timing).
`--full VARIANT ...` solves the whole grid in one solve and times it (measured, not extrapolated).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.plonk_reference import (SIZES, authors_pipeline, describe_device, matmul_rate, our_network,
                                        point_flops, random_hub_folder, synchronize)
from geodemo.likelihood import ODEField, log_density
from geodemo.processes import RiemannianFlowS2
from geodemo.schedules import SigmoidSchedule
from geodemo.sphere import latlon_to_xyz

TANGENTS = {"ambient": 3, "riemannian": 2}
"""Tangent directions our exact divergence pushes through the network per evaluation."""


def authors_grid(resolution: float) -> np.ndarray:
    """(M, 2) degrees in compute_likelihood_grid's order."""
    lats = np.arange(-90, 90 + resolution, resolution)
    lons = np.arange(-180, 180 + resolution, resolution)
    lon_grid, lat_grid = np.meshgrid(lons, lats)
    return np.vstack([lat_grid.ravel(), lon_grid.ravel()]).T


def parse_variant(variant: str) -> tuple[str, str, dict]:
    """GEOMETRY:METHOD:TOL|STEPS[:bf16x3][:compile] -> (geometry, method, log_density keyword arguments)."""
    geometry, method, value, *flags = variant.split(":")
    unknown = set(flags) - {"bf16x3", "compile"}
    if unknown:
        raise ValueError(f"unknown variant flags {sorted(unknown)} in {variant!r}")
    options = {"atol": float(value), "rtol": float(value)} if method.startswith("dopri") else {"steps": int(value)}
    return geometry, method, {**options, "precision": "bf16x3" if "bf16x3" in flags else "native",
                          "compile": "compile" in flags}


def ours(network, emb, xyz, variant: str, chunk: int, device: str) -> tuple[torch.Tensor, float, int]:
    """(log p (M,), seconds, function evaluations of the ODE solver per chunk) for a variant (parse_variant).
    A compiled variant is first run for one RK4 step on the same shape, so compilation stays out of the time."""
    geometry, method, options = parse_variant(variant)
    solve = lambda meth, opts: log_density(network, RiemannianFlowS2(), SigmoidSchedule(), emb, xyz,  # noqa: E731
                                           guidance=0.0, geometry=geometry, method=meth, chunk_size=chunk, **opts)[0]
    if options["compile"]:
        solve("rk4", {"steps": 1, "precision": options["precision"], "compile": True})
    calls = [0]
    with_divergence = ODEField.with_divergence

    def counted(field, t, y):
        calls[0] += 1
        return with_divergence(field, t, y)

    ODEField.with_divergence = counted
    try:
        synchronize(device)
        start = time.perf_counter()
        logp = solve(method, options)
        synchronize(device)
        seconds = time.perf_counter() - start
    finally:
        ODEField.with_divergence = with_divergence
    return logp.double().cpu(), seconds, calls[0] // max(1, math.ceil(xyz.shape[1] / chunk))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="yfcc", choices=sorted(SIZES))
    parser.add_argument("--resolution", type=float, default=1.0)
    parser.add_argument("--variants", nargs="*", default=["ambient:dopri5:1e-6", "riemannian:dopri5:1e-6"])
    parser.add_argument("--tf32-variants", nargs="*", default=[], help="variants also run with TF32 matmuls (GPU)")
    parser.add_argument("--full", nargs="*", default=[], help="variants also solved on the whole grid in one solve")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--no-authors", action="store_true")
    parser.add_argument("--reference-points", type=int, default=256)
    parser.add_argument("--reference-tol", type=float, default=1e-8)
    parser.add_argument("--throughput-steps", type=int, default=4, help="RK4 steps of the whole-grid run (0: none)")
    parser.add_argument("--chunk", type=int, default=1 << 17)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--reference-file", type=Path, help="float64 reference values: read if it exists, else written")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device, config = args.device, SIZES[args.size]
    card = describe_device(device)
    folder = random_hub_folder(Path(tempfile.mkdtemp()) / args.size, config)
    network = our_network(folder, device)
    emb = torch.randn(1, config.cond_dim, generator=torch.Generator().manual_seed(1)).to(device)
    grid = authors_grid(args.resolution)
    n_batches = len(grid) / args.batch
    xyz = latlon_to_xyz(torch.from_numpy(grid)).float().unsqueeze(0).to(device)
    start = (len(grid) // args.batch // 2) * args.batch
    batch = slice(start, start + args.batch)
    ref_index = torch.arange(0, args.batch, max(1, args.batch // args.reference_points))[:args.reference_points]
    torch.backends.cuda.matmul.allow_tf32 = False
    rates = {"fp32": matmul_rate(device, torch.float32, n=8192 if device.startswith("cuda") else 2048)}
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        rates["tf32"] = matmul_rate(device, torch.float32, n=8192)
        torch.backends.cuda.matmul.allow_tf32 = False
    rates["bf16x3"] = matmul_rate(device, torch.bfloat16, n=8192 if device.startswith("cuda") else 2048) / 3
    print(f"device: {card}; torch {torch.__version__}; size {args.size} (dim {config.dim}, depth {config.depth}); "
          f"{args.resolution:g}-degree grid, {len(grid)} points; matmul "
          + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in rates.items()), flush=True)

    reference = torch.load(args.reference_file) if args.reference_file and args.reference_file.exists() else {}
    geometries = ({v.split(":")[0] for v in args.variants + args.tf32_variants + args.full}
                  | ({"ambient"} if not args.no_authors else set()))
    net64 = our_network(folder, device).double()
    for geometry in sorted(geometries - set(reference)):
        logp, seconds, nfe = ours(net64, emb.double(), xyz[:, batch][:, ref_index].double(),
                                  f"{geometry}:dopri5:{args.reference_tol}", args.chunk, device)
        reference[geometry] = logp
        print(f"float64 reference, {geometry}, {len(ref_index)} points: {seconds:.1f} s, {nfe} evaluations", flush=True)
    del net64
    if args.reference_file:
        torch.save(reference, args.reference_file)

    rows = []

    def record(row: dict) -> None:
        rows.append(row)
        if args.json:
            args.json.write_text(json.dumps({"card": card, "size": args.size, "resolution": args.resolution,
                                             "rates": rates, "points": len(grid), "rows": rows}, indent=1))

    if not args.no_authors:
        pipe = authors_pipeline(folder, emb, device)
        synchronize(device)
        begin = time.perf_counter()
        theirs = pipe.compute_likelihood(emb=emb, coordinates=grid[batch], cfg=0)  # compute_likelihood_grid's call
        synchronize(device)
        seconds = time.perf_counter() - begin
        nats = theirs.double().cpu()[ref_index] * 3 * math.log(2)  # it returns bits per dimension
        err = (nats - reference["ambient"]).abs()
        record({"impl": "diff-plonk", "variant": "ambient:dopri5:1e-6", "precision": "fp32", "batch_seconds": seconds,
                "grid_seconds": seconds * n_batches, "max_err": float(err.max()), "mean_err": float(err.mean())})
        print(f"diff-plonk: {seconds:.2f} s on {args.batch} points", flush=True)

    ours(network, emb, xyz[:, :64], "ambient:rk4:2", args.chunk, device)  # warm-up
    runs = [(v, False) for v in args.variants] + [(v, True) for v in args.tf32_variants]

    def precision_and_floor(variant: str, tf32: bool, nfe: int) -> tuple[str, float]:
        geometry, _, options = parse_variant(variant)
        precision = "tf32" if tf32 else "bf16x3" if options["precision"] == "bf16x3" else "fp32"
        return precision, point_flops(config) * (1 + TANGENTS[geometry]) * nfe * len(grid) / rates[precision]

    for variant, tf32 in runs:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            logp, seconds, nfe = ours(network, emb, xyz[:, batch], variant, args.chunk, device)
        except Exception as error:  # a variant this machine cannot run (e.g. no compiler) is reported, not fatal
            print(f"ours {variant}: failed: {type(error).__name__}: {error}", flush=True)
            continue
        geometry = variant.split(":")[0]
        err = (logp[ref_index] - reference[geometry]).abs()
        precision, floor = precision_and_floor(variant, tf32, nfe)
        row = {"impl": "geodemo", "variant": variant, "precision": precision, "batch_seconds": seconds,
               "grid_seconds": seconds * n_batches, "max_err": float(err.max()), "mean_err": float(err.mean()),
               "nfe": nfe, "floor_s": floor}
        if args.throughput_steps:
            flags = "".join(f":{f}" for f in variant.split(":")[3:])
            _, whole, whole_nfe = ours(network, emb, xyz, f"{geometry}:rk4:{args.throughput_steps}{flags}", args.chunk,
                                       device)
            row["one_solve_seconds"] = whole / whole_nfe * nfe
        print(f"ours {variant} {precision}: {seconds:.2f} s on {args.batch} points, {nfe} evaluations", flush=True)
        record(row)
    torch.backends.cuda.matmul.allow_tf32 = False

    for variant in args.full:
        geometry = variant.split(":")[0]
        logp_full, full_s, full_nfe = ours(network, emb, xyz, variant, args.chunk, device)
        full_err = (logp_full[batch][ref_index] - reference[geometry]).abs()
        precision, floor = precision_and_floor(variant, False, full_nfe)
        record({"impl": "geodemo", "variant": variant, "precision": precision, "full_seconds": full_s,
                "full_nfe": full_nfe, "full_max_err": float(full_err.max()), "full_mean_err": float(full_err.mean()),
                "full_finite": bool(torch.isfinite(logp_full).all()), "floor_s": floor})
        print(f"ours {variant} whole grid in one solve: {full_s:.1f} s, {full_nfe} evaluations, max / mean "
              f"|dlogp| {full_err.max():.1e} / {full_err.mean():.1e}", flush=True)

    base = next((r for r in rows if r["impl"] == "diff-plonk"), None)
    print(f"\n{'impl':<11}{'variant':<36}{'prec':<7}{'batch s':>9}{'grid s':>10}{'speed-up':>9}{'one-solve s':>12}"
          f"{'speed-up':>9}{'max|dlogp|':>11}{'mean|dlogp|':>12}{'NFE':>6}{'floor s':>9}")
    for row in (r for r in rows if "batch_seconds" in r):
        speed = f"{base['grid_seconds'] / row['grid_seconds']:.1f}x" if base else "-"
        line = (f"{row['impl']:<11}{row['variant']:<36}{row['precision']:<7}{row['batch_seconds']:>9.2f}"
                f"{row['grid_seconds']:>10.0f}{speed:>9}")
        if "one_solve_seconds" in row:
            line += f"{row['one_solve_seconds']:>12.0f}" + (f"{base['grid_seconds'] / row['one_solve_seconds']:>8.1f}x" if base else f"{'-':>9}")
        else:
            line += f"{'-':>12}{'-':>9}"
        line += f"{row['max_err']:>11.1e}{row['mean_err']:>12.1e}"
        if "nfe" in row:
            line += f"{row['nfe']:>6}{row['floor_s']:>9.0f}"
        print(line)
    for row in (r for r in rows if "full_seconds" in r):
        speed = f"{base['grid_seconds'] / row['full_seconds']:.1f}x" if base else "-"
        print(f"whole grid, one solve, measured: {row['variant']} {row['full_seconds']:.0f} s ({speed} diff-plonk's "
              f"extrapolated grid), {row['full_nfe']} NFE, max / mean |dlogp| {row['full_max_err']:.1e} / "
              f"{row['full_mean_err']:.1e}, floor {row['floor_s']:.0f} s")
    print(f"grid s = batch s x {n_batches:.1f} batches (extrapolated); one-solve s = cost per evaluation with all "
          f"{len(grid)} points in one batch x the batch's NFE; floor = {point_flops(config) / 1e6:.1f} MFLOP x "
          f"(1 + tangents: ambient 3, riemannian 2) x points x NFE / matmul rate (bf16x3: bf16 rate / 3)")


if __name__ == "__main__":
    main()
