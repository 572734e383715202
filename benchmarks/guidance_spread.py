"""What guidance w does to each shipped model's samples, per shipped example view: distinct positions of N and
the median distance to the samples' mean, at w = 0, 0.5, 1, 2, 4, 8 (same seed, same steps). Prints a table and
writes assets/guidance_spread.json, the table the app's guidance hint is read from.

Usage: python benchmarks/guidance_spread.py [--models default earth-flow earth-diffusion] [--samples 128]
       [--steps 32] [--seed 0] [--guidance 0 0.5 1 2 4 8] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime
import time

import numpy as np
import torch

from geodemo.examples import example_views
from geodemo.guidance_spread import SPREAD_TABLE, distinct_positions, read_table, spread_km, write_table
from geodemo.images import load_image
from geodemo.service import ModelCache, make_catalogue


def measure(model: str, cache: ModelCache, guidance: list[float], samples: int, steps: int, seed: int) -> dict:
    """{"process", "rows": [{"guidance", "distinct": [per view], "spread_km": [per view]}]} of one model."""
    pipe = cache.get(model)
    views = example_views()
    embeddings = torch.cat([pipe.embed(load_image(v.path).image) for v in views])
    rows = []
    for w in guidance:
        latlon = pipe.predict(embeddings=embeddings, num_samples=samples, steps=steps, guidance=w, seed=seed).latlon
        rows.append({"guidance": w, "distinct": [distinct_positions(s) for s in latlon],
                     "spread_km": [round(spread_km(s), 1) for s in latlon]})
    return {"process": pipe.process.name, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None, help="default: every shipped model")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance", type=float, nargs="+", default=[0, 0.5, 1, 2, 4, 8])
    parser.add_argument("--no-write", action="store_true", help=f"print only; leave {SPREAD_TABLE.name} as it is")
    args = parser.parse_args()
    torch.set_num_threads(1)
    catalogue = make_catalogue()
    cache = ModelCache(catalogue, device="cpu")
    models = args.models or list(catalogue.local)
    views = example_views()
    started = time.perf_counter()
    measured = {m: measure(m, cache, args.guidance, args.samples, args.steps, args.seed) for m in models}
    print(f"{args.samples} samples, {args.steps} steps, seed {args.seed}, {len(views)} example views "
          f"({time.perf_counter() - started:.0f} s). distinct: positions of {args.samples} after rounding to "
          "0.001 degree (fewest / median / most over the views); spread: median distance to the samples' mean, km "
          "(median / most over the views)")
    print(f"{'model':<18}{'process':<14}{'w':>5}  {'distinct min/med/max':>22}  {'spread km med/max':>18}")
    for model, entry in measured.items():
        for row in entry["rows"]:
            d, s = np.array(row["distinct"]), np.array(row["spread_km"])
            print(f"{model:<18}{entry['process']:<14}{row['guidance']:>5g}  "
                  f"{d.min():>8} {np.median(d):>6.0f} {d.max():>6}  {np.median(s):>9.1f} {s.max():>8.1f}")
    print("per view (distinct / spread km):")
    for model, entry in measured.items():
        for row in entry["rows"]:
            cells = ", ".join(f"{v.path.stem} {d}/{s:.0f}" for v, d, s in zip(views, row["distinct"], row["spread_km"]))
            print(f"  {model} w={row['guidance']:g}: {cells}")
    if not args.no_write:
        table = read_table() if args.models else {}
        table = {"setup": {"samples": args.samples, "steps": args.steps, "seed": args.seed, "views": len(views),
                           "measured": datetime.date.today().isoformat()},
                 "models": {**table.get("models", {}), **measured}}
        write_table(table)
        print(f"wrote {SPREAD_TABLE}")


if __name__ == "__main__":
    main()
