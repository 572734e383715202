"""The "map" likelihood preset on a CPU, in variants (by default the blocks' products in float32 and in bfloat16,
geodemo.tangent_pass; or any ODEOptions overrides): error against a fine float32 solve, difference, times.

For every example image: the model's 8 samples (w = 0, seed 0) and the same points moved by (1.5, -1.0) degrees;
log p by the "map" preset (RK4 screened at 8 steps, 32 steps, the step-doubling check) in each variant, against
RK4 with 512 steps (S^2) or 128 steps and the 32-node sinh radial rule (R^3) in the model's warped time, float32
(on the shipped RFM model 512 float32 steps are within 1e-4 nats of 512 float64 ones, and 256 steps within 0.02; 16
sinh nodes were up to 0.083 nats off 32 on earth-flow's Hawaii view, where 16 Gauss-Hermite nodes agree with 32 sinh
ones within 0.01).
Only points within 10 nats of their image's highest log p count (the preset's claim: < 0.05 nats there).
Usage (repo root on PYTHONPATH): python benchmarks/map_precision.py [--models earth-flow ...] [--threads 1]
       [--variants map map:radial_rule=hermite,radial_nodes=4 ...]
"""

from __future__ import annotations

import argparse
import time

import torch

import geodemo
from benchmarks.density_speed import accuracy_overrides
from benchmarks.likelihood_step_warp import sample_points
from geodemo.examples import example_views
from geodemo.likelihood import RELEVANT_NATS, log_density
from geodemo.tangent_pass import fast_bf16_cpu

VARIANTS = ("map:precision=native", "map:precision=bf16")
"""The default comparison: the "map" preset with the blocks' products in float32 and in bfloat16."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["default", "earth-flow", "earth-diffusion"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS),
                        help="presets with ODEOptions overrides, NAME[:KEY=VALUE,...]; the last column compares each "
                             "with the first")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    views = example_views()
    specs = {spec: accuracy_overrides(spec) for spec in args.variants}
    print(f"bfloat16 matmul instructions on this CPU: {fast_bf16_cpu()}; torch threads {args.threads}")
    for model in args.models:
        pipe = geodemo.load(model, device="cpu")
        errors: dict[str, list[torch.Tensor]] = {spec: [] for spec in specs}
        gaps: dict[str, list[torch.Tensor]] = {spec: [] for spec in specs}
        seconds = dict.fromkeys(specs, 0.0)
        worst = dict.fromkeys(specs, (0.0, ""))
        for view in views:
            emb, xyz = sample_points(pipe, view)
            reference = log_density(pipe.network, pipe.process, pipe.schedule, emb, xyz, method="rk4",
                                    steps=512 if pipe.process.on_sphere else 128, radial_nodes=32, radial_rule="sinh",
                                    check_points=0, screen_steps=0)[0]
            relevant = reference >= reference.max() - RELEVANT_NATS
            values = {}
            for spec, (preset, options) in specs.items():
                start = time.perf_counter()
                values[spec] = log_density(pipe.network, pipe.process, pipe.schedule, emb, xyz, accuracy=preset,
                                           **options)[0]
                seconds[spec] += time.perf_counter() - start
                errors[spec].append((values[spec] - reference)[relevant].abs())
                gaps[spec].append((values[spec] - values[args.variants[0]])[relevant].abs())
                worst[spec] = max(worst[spec], (float(errors[spec][-1].max()), view.path.name))
        print(f"\nmodel {model} ({pipe.process.name}), {sum(len(e) for e in errors[args.variants[0]])} points within "
              f"{RELEVANT_NATS:g} nats of their view's maximum, 10 views")
        print(f"{'variant':<44}{'err max':>9}{'mean':>7}{'time (s)':>10}{'vs first max':>14}  worst view")
        for spec in specs:
            err = torch.cat(errors[spec])
            print(f"{spec:<44}{float(err.max()):>9.3f}{float(err.mean()):>7.3f}{seconds[spec]:>10.1f}"
                  f"{float(torch.cat(gaps[spec]).max()):>14.3f}  {worst[spec][1]} ({worst[spec][0]:.3f})", flush=True)


if __name__ == "__main__":
    main()
