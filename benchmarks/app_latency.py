"""App latency of the default request (the app's own code path, without the browser), printed as a table.

Targets (embedded model, 2-core CPU): samples + animated globe < 3 s; complete log-density map < 15 s.
Usage: python benchmarks/app_latency.py [--model default] [--image assets/examples/nile_delta.jpg] [--threads 1]
       [--coarse-deg 20 --levels 2 --max-cells 24]
Without a shipped model on disk it times a stand-in of the shipped size (dim 256, depth 8, EfficientNet-Lite0
encoder, random weights) and says so: timings depend on the size, not on the weights.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from geodemo.checkpoint import save_checkpoint
from geodemo.images import load_image
from geodemo.service import MAP_OPTIONS, ModelCache, check_request, locate, make_catalogue
from geodemo.network import GeoDenoiser, NetworkConfig
from app import shown_level
from geodemo.plotting import density_map_figure, globe_figure, render_png
from geodemo.schedules import SigmoidSchedule, schedule_to_config

ROOT = Path(__file__).resolve().parent.parent


def stand_in_model(folder: Path) -> Path:
    """Random-weight network of the shipped size with the real offline encoder."""
    torch.manual_seed(0)
    network = GeoDenoiser(NetworkConfig(dim=256, depth=8, cond_dim=1280))
    with torch.no_grad():
        for block in network.blocks:
            block.mlp[3].weight.normal_(0, 0.02)
    return save_checkpoint(folder, network, "rfm_s2", schedule_to_config(SigmoidSchedule()), "efficientnet_lite0")


def matmul_rate(n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of fp32 matrix products right now: says how much of the CPU this run actually had."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--image", default=str(ROOT / "assets/examples/nile_delta.jpg"))
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the app's default is 1)")
    parser.add_argument("--coarse-deg", type=float, default=MAP_OPTIONS["coarse_deg"])
    parser.add_argument("--levels", type=int, default=MAP_OPTIONS["levels"])
    parser.add_argument("--max-cells", type=int, default=MAP_OPTIONS["max_cells_per_level"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    catalogue = make_catalogue()
    label = args.model
    if args.model not in catalogue.local:
        folder = stand_in_model(Path(tempfile.mkdtemp()) / "stand-in")
        catalogue = make_catalogue(str(folder))
        label = f"stand-in for {args.model!r} (dim 256, depth 8, random weights; shipped model not on disk)"
        args.model = folder.name
    pipe = ModelCache(catalogue, device="cpu").get(args.model)
    request = check_request(args.samples, args.steps, args.guidance, 0)
    options = {"coarse_deg": args.coarse_deg, "levels": args.levels, "max_cells_per_level": args.max_cells}
    rows: list[tuple[str, float, str]] = []

    def timed(name: str, fn, note=lambda result: ""):
        start = time.perf_counter()
        result = fn()
        rows.append((name, time.perf_counter() - start, note(result)))
        return result

    pipe.embed(load_image(args.image).image)  # warm-up: builds the encoder, first-call allocations
    rate_before = matmul_rate()
    t0 = time.perf_counter()
    loaded = timed("load image", lambda: load_image(args.image))
    stages = locate(pipe, loaded, request, likelihood="map", map_options=options)
    first = timed("encode + sample + summary", lambda: next(stages),
                  lambda st: f"{args.samples} samples x {args.steps} steps, w={args.guidance}")
    timed("globe figure + JSON", lambda: globe_figure(first.prediction.trajectories_xyz[0], first.samples,
                                                      best_guess=first.summary.best_guess).to_json(),
          lambda js: f"{len(js) / 1e6:.2f} MB sent")
    first_time = time.perf_counter() - t0
    while True:
        stage = timed("density level", lambda: next(stages, None),
                      lambda st: f"{st.cells.evaluations} grid points in total, integral {st.cells.total_mass():.3f}"
                      if st else "")
        if stage is None:
            rows.pop()
            break
        rows[-1] = (f"density level {stage.level}{' (answer)' if stage.final else ''}", *rows[-1][1:])
        if shown_level(stage):  # the app draws these levels only
            timed(f"map render level {stage.level}", lambda: render_png(density_map_figure(
                stage.cells, stage.samples, best_guess=stage.summary.best_guess)))
    total = time.perf_counter() - t0
    print(f"model: {label}; torch threads: {torch.get_num_threads()}; image: {Path(args.image).name}")
    print(f"CPU available (2048^3 fp32 matmul): {rate_before:.0f} GFLOP/s before, {matmul_rate():.0f} after; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'stage':<28}{'seconds':>9}  note")
    for name, seconds, note in rows:
        print(f"{name:<28}{seconds:>9.2f}  {note}")
    print(f"{'samples + globe (target < 3 s)':<28}{first_time:>9.2f}")
    print(f"{'complete map (target < 15 s)':<28}{total:>9.2f}")


if __name__ == "__main__":
    main()
