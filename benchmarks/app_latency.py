"""App latency of the default request per shipped model (the app's own code path, without the browser): samples +
globe, and the complete log-density map with the drawings the app makes. Prints a table per model and a summary
table, and writes assets/app_latency.json, which the app reads to say how long the map takes before it starts.

Target (issue 12, 2-core CPU): the complete map under 10 s for every shipped model.
Usage: python benchmarks/app_latency.py [--models default earth-flow earth-diffusion]
       [--image assets/examples/nile_delta.jpg] [--threads 1] [--no-write]
Run it under the shared lock on a busy machine (`flock /tmp/cpu.lock ...`): the numbers are only honest alone.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import torch

from app import request_globe, shown_level
from geodemo.images import load_image
from geodemo.plotting import density_map_figure, render_png
from geodemo.service import DEFAULTS, LATENCY_TABLE, MAP_OPTIONS, ModelCache, check_request, locate, make_catalogue
from geodemo.tangent_pass import fast_bf16_cpu

ROOT = Path(__file__).resolve().parent.parent


def matmul_rate(n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of fp32 matrix products right now: says how much of the CPU this run actually had."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def machine() -> str:
    """'2-core CPU (model name)' from /proc/cpuinfo where available."""
    name = platform.processor() or ""
    try:
        name = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()}-core CPU" + (f" ({name})" if name else "")


def time_request(model: str, cache: ModelCache, image: str) -> tuple[list[tuple[str, float, str]], float, float]:
    """(stage rows (name, seconds, note), samples + globe seconds, complete-map seconds) of the default request,
    doing what the app does: the globe first, the map's drawn levels, the globe again when the best guess settles."""
    pipe = cache.get(model)
    request = check_request(**DEFAULTS)
    pipe.embed(load_image(image).image)  # warm-up: builds the encoder, first-call allocations
    rows: list[tuple[str, float, str]] = []

    def timed(name: str, fn, note=lambda result: ""):
        start = time.perf_counter()
        result = fn()
        rows.append((name, time.perf_counter() - start, note(result)))
        return result

    t0 = time.perf_counter()
    loaded = timed("load image", lambda: load_image(image))
    stages = locate(pipe, loaded, request, likelihood="map")
    first = timed("encode + sample + summary", lambda: next(stages),
                  lambda st: f"{request.num_samples} samples (w = {request.guidance:g}) + {len(st.guided)} guided, "
                             f"{request.steps} steps")
    timed("globe figure + JSON", lambda: request_globe(pipe, model, request, first, first.summary, "bench"),
          lambda js: f"{len(js) / 1e6:.2f} MB sent")
    first_time = time.perf_counter() - t0
    shown = first.summary
    while True:
        stage = timed("density level", lambda: next(stages, None),
                      lambda st: f"{st.cells.evaluations} grid points in total, integral {st.cells.total_mass():.3f}"
                      if st else "")
        if stage is None:
            rows.pop()
            break
        rows[-1] = (f"density level {stage.level}{' (answer)' if stage.final else ''}", *rows[-1][1:])
        if (stage.summary.best_guess, stage.summary.provisional) != (shown.best_guess, shown.provisional):
            shown = stage.summary
            timed("globe again (best guess settled)",
                  lambda: request_globe(pipe, model, request, first, shown, "bench"))
        if shown_level(stage):  # the app draws these levels only
            timed(f"map render level {stage.level}", lambda: render_png(density_map_figure(
                stage.cells, stage.samples, truth=stage.summary.truth, best_guess=stage.summary.best_guess)))
    return rows, first_time, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None, help="default: every shipped model")
    parser.add_argument("--image", default=str(ROOT / "assets/examples/nile_delta.jpg"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the app's default is 1)")
    parser.add_argument("--no-write", action="store_true", help=f"print only; leave {LATENCY_TABLE.name} as it is")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    catalogue = make_catalogue()
    cache = ModelCache(catalogue, device="cpu")
    models = args.models or list(catalogue.local)
    rate_before = matmul_rate()
    measured = {}
    for model in models:
        rows, first_time, total = time_request(model, cache, args.image)
        measured[model] = {"samples_globe_s": round(first_time, 2), "complete_map_s": round(total, 2),
                           "measured": datetime.date.today().isoformat()}
        print(f"\nmodel: {model} ({cache.get(model).process.name}); image: {Path(args.image).name}")
        print(f"{'stage':<34}{'seconds':>9}  note")
        for name, seconds, note in rows:
            print(f"{name:<34}{seconds:>9.2f}  {note}")
    print(f"\n{machine()}, torch threads {torch.get_num_threads()}; CPU available (2048^3 fp32 matmul): "
          f"{rate_before:.0f} GFLOP/s before, {matmul_rate():.0f} after; load average {os.getloadavg()[0]:.1f}; "
          f"map options {MAP_OPTIONS}")
    print(f"{'model':<18}{'samples + globe (s)':>21}{'complete map (s)':>18}  target < 10 s")
    for model, m in measured.items():
        verdict = "met" if m["complete_map_s"] < 10 else "MISSED"
        print(f"{model:<18}{m['samples_globe_s']:>21.2f}{m['complete_map_s']:>18.2f}  {verdict}")
    if not args.no_write:
        record_latency(measured, {"machine": machine_label(), "measured": datetime.date.today().isoformat(),
                                  "request": {**DEFAULTS, "image": Path(args.image).name, "threads": args.threads}})


def machine_label() -> str:
    """What the app says the times were measured on: '2-core CPU', and whether its cores multiply bfloat16 matrices
    (the R^3 maps' products run in bfloat16 there, in float32 elsewhere: about 1.4x slower)."""
    return machine().split(" (")[0] + (" with bfloat16 instructions" if fast_bf16_cpu() else "")


def record_latency(entries: dict[str, dict], header: dict | None = None) -> None:
    """Merge measured entries (model -> times) into assets/app_latency.json, keeping the other models' entries;
    `header` (machine, measured, request) replaces the table's where given."""
    try:
        table = json.loads(LATENCY_TABLE.read_text())
    except (OSError, ValueError):
        table = {"machine": machine_label(), "measured": datetime.date.today().isoformat()}
    table = {**table, **(header or {}), "models": {**table.get("models", {}), **entries}}
    LATENCY_TABLE.write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {LATENCY_TABLE}")


if __name__ == "__main__":
    main()
