"""The "map" likelihood preset on a CPU with the blocks' products in float32 ("native") and in bfloat16 ("bf16",
geodemo.tangent_pass): error against a fine float32 solve, the two presets' difference, and their times.

For every example image: the model's 8 samples (w = 0, seed 0) and the same points moved by (1.5, -1.0) degrees;
log p by the "map" preset (RK4 screened at 8 steps, 32 steps, the step-doubling check) at each precision, against
RK4 with 512 steps (S^2) or 128 steps and the 16-node sinh radial rule (R^3) in the model's warped time, float32
(on the shipped RFM model 512 float32 steps are within 1e-4 nats of 512 float64 ones, and 256 steps within 0.02).
Only points within 10 nats of their image's highest log p count (the preset's claim: < 0.05 nats there).
Usage (repo root on PYTHONPATH): python benchmarks/map_precision.py [--models earth-flow ...] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

import geodemo
from benchmarks.likelihood_step_warp import sample_points
from geodemo.examples import example_views
from geodemo.likelihood import RELEVANT_NATS, log_density
from geodemo.tangent_pass import fast_bf16_cpu

PRECISIONS = ("native", "bf16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["default", "earth-flow", "earth-diffusion"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    views = example_views()
    print(f"bfloat16 matmul instructions on this CPU: {fast_bf16_cpu()}; torch threads {args.threads}")
    print(f"{'model':<17}{'points':>7}" + "".join(f"{p + ' err max':>16}{'mean':>7}{'time (s)':>10}"
                                                   for p in PRECISIONS) + f"{'bf16 - native max':>19}  worst view")
    for model in args.models:
        pipe = geodemo.load(model, device="cpu")
        errors: dict[str, list[torch.Tensor]] = {p: [] for p in PRECISIONS}
        worst = (0.0, "")
        gaps: list[torch.Tensor] = []
        seconds = dict.fromkeys(PRECISIONS, 0.0)
        for view in views:
            emb, xyz = sample_points(pipe, view)
            reference = log_density(pipe.network, pipe.process, pipe.schedule, emb, xyz, method="rk4",
                                    steps=512 if pipe.process.on_sphere else 128, radial_nodes=16, radial_rule="sinh",
                                    check_points=0, screen_steps=0)[0]
            relevant = reference >= reference.max() - RELEVANT_NATS
            values = {}
            for precision in PRECISIONS:
                start = time.perf_counter()
                values[precision] = log_density(pipe.network, pipe.process, pipe.schedule, emb, xyz,
                                                accuracy="map", precision=precision)[0]
                seconds[precision] += time.perf_counter() - start
                errors[precision].append((values[precision] - reference)[relevant].abs())
            gaps.append((values["bf16"] - values["native"])[relevant].abs())
            worst = max(worst, (float(errors["native"][-1].max()), view.path.name))
        count = sum(len(e) for e in errors["native"])
        row = f"{model:<17}{count:>7}"
        for precision in PRECISIONS:
            err = torch.cat(errors[precision])
            row += f"{float(err.max()):>16.3f}{float(err.mean()):>7.3f}{seconds[precision]:>10.1f}"
        print(row + f"{float(torch.cat(gaps).max()):>19.3f}  {worst[1]} ({worst[0]:.3f} native)", flush=True)


if __name__ == "__main__":
    main()
