"""Speed of the satellite-view data path: render, augment, land fraction, embed (EfficientNet-Lite0).

Usage: python benchmarks/earth_views_speed.py --device cpu --batch 16 --threads 1
       python benchmarks/earth_views_speed.py --device cuda --batch 1024
Random views (training distribution) of --size pixels; each stage timed separately (median of --repeats,
after one warm-up), then the whole shard step of training/earth_views_data.py (land map, ocean flattening and
the other augmentations, one encoder pass giving one or both features). Prints views per second.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from geodemo.encoders import get_encoder
from training.earth_views import augment, land_fraction, random_view_params, render_views
from training.earth_views_data import shard_views


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of fn() after one warm-up call, synchronising the device around each call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    p = random_view_params(args.batch, torch.Generator().manual_seed(0))
    views = render_views(p["lat"], p["lon"], p["width_km"], args.size, rotation_deg=p["rotation_deg"], device=device)
    encoder = get_encoder("efficientnet_lite0")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def embed() -> torch.Tensor:
        with autocast:
            return encoder.embed_pixels(views)

    stages = {
        "render": lambda: render_views(p["lat"], p["lon"], p["width_km"], args.size, rotation_deg=p["rotation_deg"],
                                       device=device),
        "augment": lambda: augment(views, torch.Generator().manual_seed(1)),
        "land fraction (64 px)": lambda: land_fraction(p["lat"], p["lon"], p["width_km"], device=device),
        "embed" + (" (bf16)" if device.type == "cuda" else " (fp32)"): embed,
        "whole shard step (pooled)": lambda: shard_views(0, 0, args.batch, device=device, batch_size=args.batch,
                                                         size=args.size),
        "whole shard step (pooled + 2 x 2 grid)": lambda: shard_views(
            0, 0, args.batch, device=device, batch_size=args.batch, size=args.size,
            keys=("efficientnet_lite0", "efficientnet_lite0_grid2")),
    }
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{name}; batch {args.batch} views of {args.size} x {args.size} px")
    print(f"| stage | ms per batch | views / s |\n|---|---|---|")
    for stage, fn in stages.items():
        seconds = median_seconds(fn, device, args.repeats)
        print(f"| {stage} | {seconds * 1e3:.1f} | {args.batch / seconds:,.0f} |")


if __name__ == "__main__":
    main()
