"""Latency of the "Compare & learn" tab: per panel, the time to its first picture and to its complete answer, through
the tab's own event generators (computation and drawing, without the browser), with the tab's default inputs.

Targets (shipped models, 2-core CPU): first picture of each panel < 5 s, each panel complete < 30 s.
Usage: python benchmarks/classroom_latency.py [--image assets/examples/nile_delta.jpg] [--threads 1]
       [--path-model default] [--panels 1 2 3 4] [--save DIR]   (DIR: each panel's last pictures as PNG files)
Models are loaded and the image encoder built before the clock starts (a running server has done both).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from PIL import Image

from classroom import PROCESS_MODELS, compare_updates, guidance_updates, path_updates, steps_updates
from geodemo.explore import GUIDANCE_SWEEP, STEPS_SWEEP, example_set
from geodemo.service import ModelCache, make_catalogue

ROOT = Path(__file__).resolve().parent.parent


def panels(models: ModelCache, image: str, path_model: str) -> dict:
    """The four panels' event generators with the tab's default inputs."""
    guidance = ", ".join(f"{w:g}" for w in GUIDANCE_SWEEP)
    steps = ", ".join(str(s) for s in STEPS_SWEEP)
    return {
        "1 three processes (64 samples, 32 steps, w 0)":
            lambda: compare_updates(models, image, *PROCESS_MODELS, 64, 32, 0.0, 0),
        f"2 guidance sweep (w {guidance}; 128 samples, 32 steps)":
            lambda: guidance_updates(models, image, *PROCESS_MODELS, guidance, 128, 32, 0),
        f"3 steps sweep ({steps}; 10 views x 4 samples, w 0)":
            lambda: steps_updates(models, image, *PROCESS_MODELS, steps, 4, 0.0, 0),
        f"4 probability path ({path_model}, 256 particles, w 0)":
            lambda: path_updates(models, image, path_model, 256, 0.0, 0),
    }


def save_pictures(update: tuple, folder: Path, stem: str) -> None:
    for i, value in enumerate(update):
        if isinstance(value, Image.Image):
            value.save(folder / f"{stem}-{i}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=str(ROOT / "assets/examples/nile_delta.jpg"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the app's default is 1)")
    parser.add_argument("--path-model", default="default")
    parser.add_argument("--save", type=Path, default=None)
    parser.add_argument("--panels", type=int, nargs="+", default=[1, 2, 3, 4], help="which panels to time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = ModelCache(make_catalogue(), device="cpu")
    for name in PROCESS_MODELS:
        models.get(name).embed(Image.open(args.image).convert("RGB"))  # loads the model, builds the encoder
    example_set()  # the example views' files are read once (the OS keeps them cached)
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
    print(f"torch threads: {torch.get_num_threads()}; image: {Path(args.image).name}; "
          f"load average {os.getloadavg()[0]:.1f} at the start")
    print("| panel | first picture (s, target < 5) | complete (s, target < 30) | updates |")
    print("|---|---|---|---|", flush=True)
    for number, (name, start) in enumerate(panels(models, args.image, args.path_model).items(), 1):
        if number not in args.panels:
            continue
        started = time.perf_counter()
        first = None
        updates = 0
        for update in start():
            updates += 1
            first = first or time.perf_counter() - started
            last = update
        print(f"| {name} | {first:.2f} | {time.perf_counter() - started:.2f} | {updates} |", flush=True)
        if args.save:
            save_pictures(last, args.save, f"panel{number}")


if __name__ == "__main__":
    main()
