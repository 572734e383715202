"""Log-density speed and accuracy of the defaults: geodemo's log_density (accuracy "default" and "map") against
diff-plonk 0.4's `compute_likelihood` at its defaults, same weights, one image, guidance 0, per global grid.

Usage: python benchmarks/density_speed.py --device cuda --model yfcc --grids 10 5 2 1
       python benchmarks/density_speed.py --device cpu --model default --embedding emb.pt:amazon --grids 5 --no-authors
--model: a random-weight size of benchmarks/plonk_reference.SIZES (yfcc = dim 512 / depth 12), or a shipped model
(default, earth-flow, earth-diffusion) with --embedding FILE:KEY (a dict of (1, C) image embeddings saved by
torch.save; make one with --save-embeddings FILE IMAGE ...).
Grids: diff-plonk's own (lat -90..90, lon -180..180, endpoints included). diff-plonk solves a grid in batches of
1,024 points, each an adaptive dopri5 solve (float32, atol = rtol = 1e-6, RMS error norm) with the divergence by
vmap(jacrev): one batch from the middle of the finest grid is timed and a grid's time is that x its number of
batches (exact for its batch-by-batch loop; a grid of one batch or less counts one whole batch). Ours solves each
whole grid (all points in chunks of the preset's size), measured; a grid larger than --measure-limit points is
measured on every k-th point and scaled by k ("est.").
Accuracy: max / mean |delta log p| in nats on --reference-points points (spread over diff-plonk's timed batch; for
models without diff-plonk half the highest of a map of the coarsest grid, half spread over it) against a float64
solve by our implementation (dopri5, atol = rtol = --reference-tol, sinh radial rule with 32 nodes): ours in its
own geometry (riemannian on S^2, or the R^3 processes' density of directions), diff-plonk against the ambient
reference (its quantity); the map error only where the reference is within 10 nats of its maximum.
Evaluations: network passes (with the divergence) per point, the map's step-doubling checks included.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import io
import json
import math
import re
import tempfile
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch

from benchmarks.plonk_reference import (SIZES, authors_pipeline, describe_device, matmul_rate, our_network,
                                        point_flops, random_hub_folder, synchronize)
from geodemo.likelihood import ODEField, ODEOptions, accuracy_options, log_density
from geodemo.network import NetworkConfig
from geodemo.processes import RiemannianFlowS2
from geodemo.registry import lookup
from geodemo.schedules import SigmoidSchedule
from geodemo.sphere import latlon_to_xyz

TANGENTS = {"ambient": 3, "riemannian": 2, "r3": 3}
"""Tangent directions our exact divergence pushes through the network per evaluation."""
SHIPPED = ("default", "earth-flow", "earth-diffusion")


def authors_grid(resolution: float) -> np.ndarray:
    """(M, 2) degrees in compute_likelihood_grid's order."""
    lats = np.arange(-90, 90 + resolution, resolution)
    lons = np.arange(-180, 180 + resolution, resolution)
    lon_grid, lat_grid = np.meshgrid(lons, lats)
    return np.vstack([lat_grid.ravel(), lon_grid.ravel()]).T


class Model:
    """The network, process, schedule and embedding under test, and where its weights came from."""

    def __init__(self, name: str, device: str, embedding: str | None):
        if name in SHIPPED:
            import geodemo
            pipe = geodemo.load(name, device=device)
            self.network, self.process, self.schedule = pipe.network, pipe.process, pipe.schedule
            self.folder = lookup(name).local_folder()
            path, key = embedding.split(":")
            self.emb = torch.load(path)[key].to(device)
            self.config = pipe.network.config
        else:
            self.config: NetworkConfig = SIZES[name]
            self.folder = random_hub_folder(Path(tempfile.mkdtemp()) / name, self.config)
            self.network = our_network(self.folder, device)
            self.process, self.schedule = RiemannianFlowS2(), SigmoidSchedule()
            self.emb = torch.randn(1, self.config.cond_dim, generator=torch.Generator().manual_seed(1)).to(device)
        digest = hashlib.sha256()
        for p in self.network.state_dict().values():
            digest.update(p.detach().cpu().float().numpy().tobytes())
        self.weights_sha = digest.hexdigest()[:16]

    def log_density(self, xyz: torch.Tensor, **options) -> tuple[torch.Tensor, float, float]:
        """(log p (M,), seconds, network evaluations per point) of one log_density call."""
        evaluations = [0]
        with_divergence = ODEField.with_divergence

        def counted(field, t, y):
            evaluations[0] += y.shape[0] * y.shape[1]
            return with_divergence(field, t, y)

        ODEField.with_divergence = counted
        try:
            synchronize(str(xyz.device))
            start = time.perf_counter()
            logp = log_density(self.network, self.process, self.schedule, self.emb.to(xyz.dtype), xyz, **options)[0]
            synchronize(str(xyz.device))
            seconds = time.perf_counter() - start
        finally:
            ODEField.with_divergence = with_divergence
        return logp.double().cpu(), seconds, evaluations[0] / xyz.shape[1]


def authors_run(pipe, emb: torch.Tensor, points: np.ndarray, device: str) -> tuple[torch.Tensor, float, int]:
    """(log p in nats (M,), seconds, NFE) of diff-plonk's compute_likelihood as compute_likelihood_grid calls it."""
    printed = io.StringIO()
    synchronize(device)
    start = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        bits = pipe.compute_likelihood(emb=emb, coordinates=points, cfg=0)
    synchronize(device)
    seconds = time.perf_counter() - start
    nfe = int(re.findall(r"NFE: (\d+)", printed.getvalue())[-1])
    return bits.double().cpu() * 3 * math.log(2), seconds, nfe  # it returns bits per dimension


def accuracy_overrides(spec: str) -> tuple[str, dict]:
    """'map:time_filter=False,steps=64' -> ('map', {'time_filter': False, 'steps': 64}): a preset and ODEOptions
    overrides, each value read as a Python literal where it is one (else kept as text)."""
    preset, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    unknown = set(options) - {f.name for f in fields(ODEOptions)}
    if unknown:
        raise SystemExit(f"unknown ODEOptions in {spec!r}: {sorted(unknown)}")
    return preset, options


def save_embeddings(path: Path, images: list[str]) -> None:
    """Embed images with the shipped models' encoder into {file stem: (1, C) tensor}."""
    import geodemo
    from geodemo.images import load_image
    pipe = geodemo.load("default", device="cpu")
    torch.save({Path(i).stem: pipe.embed(load_image(i).image) for i in images}, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="yfcc", choices=sorted(SIZES) + list(SHIPPED))
    parser.add_argument("--embedding", help="FILE:KEY of the image embedding (shipped models)")
    parser.add_argument("--save-embeddings", nargs="+", metavar=("FILE", "IMAGE"), help="write embeddings and exit")
    parser.add_argument("--grids", nargs="+", type=float, default=[10, 5, 2, 1])
    parser.add_argument("--accuracies", nargs="+", default=["default", "map"],
                        help="presets, each optionally with ODEOptions overrides: NAME[:KEY=VALUE,...], "
                             "e.g. map:time_filter=False")
    parser.add_argument("--no-authors", action="store_true")
    parser.add_argument("--batch", type=int, default=1024, help="diff-plonk's batch (compute_likelihood_grid's)")
    parser.add_argument("--measure-limit", type=int, default=70000)
    parser.add_argument("--reference-points", type=int, default=64)
    parser.add_argument("--reference-tol", type=float, default=1e-9)
    parser.add_argument("--reference-file", type=Path, help="float64 reference: read if it exists, else written")
    parser.add_argument("--reference-only", action="store_true", help="compute (and save) the reference, then stop")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.save_embeddings:
        save_embeddings(Path(args.save_embeddings[0]), args.save_embeddings[1:])
        return
    torch.set_num_threads(args.threads)
    device = args.device
    card = describe_device(device)
    model = Model(args.model, device, args.embedding)
    on_sphere = model.process.on_sphere
    geometry = "riemannian" if on_sphere else "r3"
    cuda = device.startswith("cuda")
    rates = {"fp32": matmul_rate(device, torch.float32, n=8192 if cuda else 2048)}
    if cuda:
        rates["bf16"] = matmul_rate(device, torch.bfloat16, n=8192)
        rates["bf16x3"] = rates["bf16"] / 3
    overrides = {spec: accuracy_overrides(spec) for spec in args.accuracies}
    presets = {spec: replace(accuracy_options(preset, device, radial=not on_sphere), **options)
               for spec, (preset, options) in overrides.items()}
    print(f"device: {card}; torch {torch.__version__}; model {args.model} (dim {model.config.dim}, depth "
          f"{model.config.depth}, weights sha256 {model.weights_sha}); matmul "
          + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in rates.items()), flush=True)
    for name, preset in presets.items():
        print(f"preset {name}: {preset}", flush=True)

    grids = {res: authors_grid(res) for res in args.grids}
    reference = torch.load(args.reference_file, weights_only=False) if args.reference_file and args.reference_file.exists() else {}
    if reference and reference["sha"] != model.weights_sha:
        raise SystemExit(f"{args.reference_file} belongs to other weights: delete it to recompute")
    authors = None if args.no_authors or not on_sphere else authors_pipeline(model.folder, model.emb, device)
    finest = grids[min(args.grids)]
    start = (len(finest) // args.batch // 2) * args.batch
    batch = finest[start:start + args.batch]
    if "latlon" in reference:
        ref_latlon = reference["latlon"]
    elif authors is not None:  # spread over diff-plonk's timed batch, whose values give its error
        ref_latlon = batch[np.linspace(0, len(batch) - 1, args.reference_points).round().astype(int)]
    else:  # half the highest of a map on the coarsest grid, half spread over it
        coarse = grids[max(args.grids)]
        first, _, _ = model.log_density(latlon_to_xyz(torch.from_numpy(coarse)).float().unsqueeze(0).to(device),
                                        accuracy="map", compile=False)
        half = args.reference_points // 2
        spread = torch.linspace(0, len(coarse) - 1, args.reference_points - half).round().long()
        ref_latlon = coarse[torch.cat((first.topk(half).indices, spread)).unique().numpy()]
    ref_xyz = latlon_to_xyz(torch.from_numpy(ref_latlon)).unsqueeze(0).to(device)
    model.network.double()
    for geo in [geometry] + (["ambient"] if authors is not None else []):
        if geo in reference:
            continue
        options = {"geometry": geo} if on_sphere else {"radial_nodes": 32}
        logp, seconds, evals = model.log_density(ref_xyz, atol=args.reference_tol, rtol=args.reference_tol,
                                                 precision="native", compile=False, chunk_size=1 << 20, **options)
        reference[geo] = logp
        print(f"float64 reference, {geo}, {len(ref_latlon)} points: {seconds:.1f} s, {evals:.0f} evaluations / point",
              flush=True)
    model.network.float()
    if args.reference_file:
        torch.save({**reference, "sha": model.weights_sha, "latlon": ref_latlon}, args.reference_file)
    if args.reference_only:
        return
    exact = reference[geometry]
    near = exact >= exact.max() - 10

    rows = []

    def record(row: dict) -> None:
        rows.append(row)
        print("  " + json.dumps(row), flush=True)
        if args.json:
            args.json.write_text(json.dumps({"card": card, "model": args.model, "weights_sha": model.weights_sha,
                                             "rates": rates, "presets": {k: str(v) for k, v in presets.items()},
                                             "reference_points": len(ref_latlon), "rows": rows}, indent=1))

    errors = {}
    for name in args.accuracies:
        preset, options = overrides[name]
        logp, _, _ = model.log_density(ref_xyz.float(), accuracy=preset, **options)
        delta = (logp - exact).abs()
        if preset == "map":
            delta = delta[near]
        errors[name] = (float(delta.max()), float(delta.mean()))
    if authors is not None:
        theirs, batch_seconds, nfe = authors_run(authors, model.emb, batch, device)
        at_reference = [int(np.flatnonzero((batch == point).all(1))[0]) for point in ref_latlon]
        delta = (theirs[at_reference] - reference["ambient"]).abs()
        errors["diff-plonk"] = (float(delta.max()), float(delta.mean()))
        print(f"diff-plonk: {batch_seconds:.2f} s on one batch of {len(batch)} points, {nfe} evaluations", flush=True)
    print(f"errors (max / mean |dlogp|, nats): {errors}", flush=True)

    for res, grid in grids.items():
        xyz = latlon_to_xyz(torch.from_numpy(grid)).float().unsqueeze(0).to(device)
        base = None
        if authors is not None:
            base = batch_seconds * max(1.0, len(grid) / len(batch))
            record({"grid_deg": res, "points": len(grid), "impl": "diff-plonk", "accuracy": "default",
                    "seconds": base, "extrapolated": len(grid) > len(batch), "nfe": nfe,
                    "max_err": errors["diff-plonk"][0], "mean_err": errors["diff-plonk"][1]})
        for name in args.accuracies:
            stride = max(1, math.ceil(len(grid) / args.measure_limit))
            preset, options = overrides[name]
            _, seconds, evals = model.log_density(xyz[:, ::stride], accuracy=preset, **options)
            seconds *= len(grid) / xyz[:, ::stride].shape[1]
            rate = rates["fp32" if presets[name].precision == "native" else presets[name].precision]
            floor = point_flops(model.config) * (1 + TANGENTS[geometry]) * evals * len(grid) / rate
            record({"grid_deg": res, "points": len(grid), "impl": "geodemo", "accuracy": name, "seconds": seconds,
                    "estimated": stride > 1, "evals_per_point": evals,
                    "radial_nodes": 1 if on_sphere else presets[name].radial_nodes,
                    "max_err": errors[name][0], "mean_err": errors[name][1], "floor_s": floor,
                    "speedup": base / seconds if base else None})

    print(f"\n{'grid':>5}{'points':>8} {'impl':<11}{'accuracy':<9}{'seconds':>10}{'speed-up':>9}{'evals/pt':>10}"
          f"{'max|dlogp|':>11}{'mean|dlogp|':>12}{'floor s':>9}")
    for row in rows:
        speed = f"{row['speedup']:.1f}x" if row.get("speedup") else "-"
        evals = row.get("evals_per_point", row.get("nfe"))
        flag = " (extrap.)" if row.get("extrapolated") else " (est.)" if row.get("estimated") else ""
        floor = f"{row['floor_s']:>9.2f}" if "floor_s" in row else f"{'-':>9}"
        print(f"{row['grid_deg']:>5g}{row['points']:>8} {row['impl']:<11}{row['accuracy']:<9}{row['seconds']:>10.2f}"
              f"{speed:>9}{evals:>10.0f}{row['max_err']:>11.1e}{row['mean_err']:>12.1e}{floor}{flag}")
    print(f"errors on {len(ref_latlon)} points against float64 dopri5 {args.reference_tol:g} (map: the "
          f"{int(near.sum())} within 10 nats of the maximum); diff-plonk against the ambient reference (its quantity), "
          f"ours against the {geometry} one; floor = {point_flops(model.config) / 1e6:.1f} MFLOP x (1 + tangents) x "
          f"points x evaluations / matmul rate")


if __name__ == "__main__":
    main()
