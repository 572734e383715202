"""Step error of the fixed-step likelihood solve of a shipped model against the time warp's power (issue 12).

For every example image: the model's 8 samples (w = 0, seed 0) and the same points moved by (1.5, -1.0) degrees, their
log p by RK4 with 8-32 steps in q, t = warp(q) (geodemo.likelihood.time_warp), against 256 equal steps in t; the
radial rule of the R^3 processes is the same 16-node sinh rule in every solve, so the table holds the steps' error
alone. Prints max / mean |delta log p| in nats per power and step count.
Usage: python benchmarks/likelihood_step_warp.py earth-flow 1,2 [--threads 1]
"""

from __future__ import annotations

import argparse

import torch

import geodemo
from geodemo.examples import ExampleView, example_views
from geodemo.images import load_image
from geodemo.likelihood import log_density
from geodemo.pipeline import GeoPipeline
from geodemo.sphere import latlon_to_xyz

STEPS = (8, 12, 16, 24, 32)


def sample_points(pipe: GeoPipeline, view: ExampleView) -> tuple[torch.Tensor, torch.Tensor]:
    """(embedding (1, C), xyz (1, 16, 3)) of an example view: the model's 8 samples (w = 0, seed 0) and the same points
    moved by (1.5, -1.0) degrees."""
    emb = pipe.embed(load_image(view.path).image)
    samples = pipe.predict(embeddings=emb, num_samples=8, guidance=0.0, seed=0).latlon[0].double()
    points = torch.cat([samples, samples + torch.tensor([1.5, -1.0], dtype=torch.float64)])
    return emb, latlon_to_xyz(points).float()[None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("powers", help="comma-separated whole numbers, e.g. 1,2 or 1,-2")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = geodemo.load(args.model, device="cpu")
    process_class = type(pipe.process)
    shipped = process_class.likelihood_step_power
    views = example_views()
    errors: dict[tuple[int, int], list[torch.Tensor]] = {}
    try:
        for view in views:
            emb, xyz = sample_points(pipe, view)

            def solve(steps: int, power: int) -> torch.Tensor:
                process_class.likelihood_step_power = power
                return log_density(pipe.network, pipe.process, pipe.schedule, emb, xyz, method="rk4", steps=steps,
                                   radial_nodes=16, radial_rule="sinh")[0].double()

            reference = solve(256, 1)
            for power in (int(p) for p in args.powers.split(",")):
                for steps in STEPS:
                    errors.setdefault((power, steps), []).append((solve(steps, power) - reference).abs())
    finally:
        process_class.likelihood_step_power = shipped
    print(f"{args.model}: {len(views)} images x 16 points, against 256 equal steps in t (shipped power {shipped})")
    print(f"{'power':>6}{'steps':>6}{'max':>9}{'mean':>9}")
    for (power, steps), errs in sorted(errors.items()):
        e = torch.cat(errs)
        print(f"{power:>6}{steps:>6}{e.max():>9.4f}{e.mean():>9.4f}")


if __name__ == "__main__":
    main()
