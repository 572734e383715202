"""Evaluation of the satellite-view models on held-out views of Earth mosaics, split by how much land a view shows.

For each model: the PLONK table (training/evaluate.py protocol) on all views, on views with >= 20% land,
on coastline views (20-80% land) and on open-ocean views (< 1% land), plus the prior-only baseline (zero
embedding, i.e. the unconditional model the guidance uses) on all and on >= 20% land views; and a check
that exp(log p) integrates to 1 over S^2, by importance sampling (below).

The held-out shards are named with `{key}` standing for the model's embedding key (its encoder's name), so
that one command serves models of either encoder; a comma-separated list reads several mosaics' views.

    python -m training.earth_views_eval runs/earth-rfm/model "data/earth/heldout/etopo1/{key}" --steps 32 --output eval.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tarfile
import time
from pathlib import Path
from typing import Sequence

import torch

import geodemo
from geodemo.checkpoint import read_info
from geodemo.pipeline import GeoPipeline
from geodemo.sampling import make_generator
from geodemo.sphere import (EARTH_RADIUS_KM, LOG_SPHERE_AREA, latlon_to_xyz, sample_uniform, sample_vmf,
                           vmf_log_density, xyz_to_latlon)
from training.evaluate import evaluate, format_table
from training.shards import list_shards, read_shards

LOG = logging.getLogger("earth_views_eval")
SUBSETS = {
    "all views": lambda land: land >= 0,
    "views with >= 20% land": lambda land: land >= 0.2,
    "coastline views (20-80% land)": lambda land: (land >= 0.2) & (land <= 0.8),
    "open-ocean views (< 1% land)": lambda land: land < 0.01,
}
PRIOR_SUBSETS = ("all views", "views with >= 20% land")


def read_land_fractions(paths: Sequence[str], keys: Sequence[str]) -> torch.Tensor:
    """(N,) land_fraction of each sample, from the shards' JSON members, in the order of `keys`."""
    by_key = {}
    for path in paths:
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(member).read())
                    by_key[member.name[: -len(".json")]] = float(meta["land_fraction"])
    missing = [k for k in keys if k not in by_key]
    if missing:
        raise KeyError(f"{len(missing)} samples have no land_fraction (first: {missing[0]!r}): not view shards?")
    return torch.tensor([by_key[k] for k in keys])


@torch.no_grad()
def total_probability(pipeline: GeoPipeline, embedding: torch.Tensor, num_points: int = 4096, num_centres: int = 1024,
                      bandwidth_km: float = 100.0, uniform_weight: float = 0.1, seed: int = 0,
                      **ode_options) -> tuple[float, float]:
    """(estimate, standard error) of the integral of exp(log p(x | c)) over S^2 for one embedding (C,).

    Importance sampling from q = w U(S^2) + (1 - w) mean_j vMF(x_j, kappa), x_j the model's own samples,
    kappa = (R / bandwidth)^2: integral = E_q[p / q], exact in expectation for any q with full support.
    """
    generator = make_generator(seed)
    emb = embedding.reshape(1, -1)
    centres = latlon_to_xyz(pipeline.predict(embeddings=emb, num_samples=num_centres, steps=64, seed=seed).latlon[0]).double()
    kappa = (EARTH_RADIUS_KM / bandwidth_km) ** 2
    from_uniform = torch.rand(num_points, generator=generator) < uniform_weight
    picks = centres[torch.randint(num_centres, (num_points,), generator=generator)]
    points = torch.where(from_uniform.unsqueeze(-1), sample_uniform((num_points,), generator=generator, dtype=torch.float64),
                         sample_vmf(picks, kappa, 1, generator)[0])
    log_mixture = torch.logsumexp(vmf_log_density(points.unsqueeze(1), centres, kappa), 1) - math.log(num_centres)
    log_q = torch.logaddexp(torch.full((num_points,), math.log(uniform_weight) - LOG_SPHERE_AREA, dtype=torch.float64),
                            math.log(1 - uniform_weight) + log_mixture)
    log_p = pipeline.log_density(xyz_to_latlon(points), embeddings=emb, **ode_options)[0]
    ratio = torch.exp(log_p - log_q)
    return float(ratio.mean()), float(ratio.std() / math.sqrt(num_points))


def evaluate_model(folder: str, heldout: str, steps: int = 250, guidance: float = 2.0, likelihood_images: int = 300,
                   localizability_samples: int = 16, normalisation_views: int = 8, normalisation_points: int = 4096,
                   table: bool = True, batch_size: int = 2048, device: str | None = None,
                   ode_options: dict | None = None, prior: bool = True) -> dict:
    """Every row of the table (unless table=False; prior-only rows unless prior=False) for one model folder,
    plus the normalisation check."""
    pipeline = geodemo.load(folder, device=device)
    key = read_info(folder).encoder
    paths = list_shards(heldout.format(key=key))
    data = read_shards(paths, key)
    land = read_land_fractions(paths, data.keys)
    ode = ode_options or {}
    rows = {}
    for name, rule in SUBSETS.items() if table else ():
        chosen = rule(land)
        for zeroed in (False, True) if prior and name in PRIOR_SUBSETS else (False,):
            emb = data.embeddings[chosen]
            row = evaluate(pipeline, torch.zeros_like(emb) if zeroed else emb, data.latlon[chosen], steps=steps,
                           guidance=0.0 if zeroed else guidance, batch_size=batch_size,
                           likelihood_images=likelihood_images, localizability_samples=localizability_samples,
                           ode_options=ode)
            label = f"prior only, {name}" if zeroed else name
            rows[label] = row
            LOG.info("%s\n%s", folder, format_table(row, title=f"{label} ({row['images']} views)"))
    started = time.perf_counter()
    totals = [total_probability(pipeline, data.embeddings[i].to(pipeline.device), num_points=normalisation_points,
                                seed=i, **ode)
              for i in range(normalisation_views)]
    LOG.info("%s: normalisation check on %d views in %.0f s", folder, normalisation_views, time.perf_counter() - started)
    return {"model": folder, "heldout": heldout.format(key=key), "views": int(len(land)), "rows": rows,
            "normalisation": {"points_per_view": normalisation_points,
                              "estimates": [t[0] for t in totals], "standard_errors": [t[1] for t in totals],
                              "max_abs_deviation": max((abs(t[0] - 1) for t in totals), default=float("nan"))}}


def record_evaluation(folder: str | Path, result: dict) -> Path:
    """Store the result's rows and normalisation check in folder/config.json under geodemo.evaluation."""
    path = Path(folder) / "config.json"
    config = json.loads(path.read_text())
    config.setdefault("geodemo", {})["evaluation"] = {
        "heldout_views": result["views"],
        "heldout": f"training/earth_views_data.py shards, split seed 1: {result['heldout']}",
        "rows": result["rows"], "normalisation": result["normalisation"]}
    path.write_text(json.dumps(config, indent=2, sort_keys=True))
    return path


METRIC_COLUMNS = ("n", "GeoScore", "median km", "mean km", "acc@200km", "acc@750km", "acc@2500km", "NLL",
                  "localizability")


def metric_cells(r: dict) -> str:
    """The METRIC_COLUMNS cells of one evaluation row, as markdown."""
    return (f"{r['images']} | {r['geoscore']:.0f} | {r['median_km']:.0f} | {r['mean_km']:.0f} | {r['acc@200km']:.1%} | "
            f"{r['acc@750km']:.1%} | {r['acc@2500km']:.1%} | {r['nll']:.2f} | {r.get('localizability', float('nan')):.2f}")


def markdown_header(*columns: str) -> str:
    """A markdown table's header and rule lines."""
    return f"| {' | '.join(columns)} |\n|{'---|' * len(columns)}"


def markdown_table(results: Sequence[dict]) -> str:
    """One markdown table: a row per (model, subset) with the headline metrics."""
    lines = [markdown_header("model", "views", *METRIC_COLUMNS)]
    for result in results:
        name = Path(result["model"]).parent.name if Path(result["model"]).name == "model" else Path(result["model"]).name
        for subset, r in result["rows"].items():
            lines.append(f"| {name} | {subset} | {metric_cells(r)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Satellite-view models on held-out views, by land fraction.")
    parser.add_argument("models", help="comma-separated model folders")
    parser.add_argument("heldout", help="held-out view shards (training/earth_views_data.py, split seed 1); "
                                        "{key} stands for the model's embedding key")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--likelihood-images", type=int, default=300)
    parser.add_argument("--localizability-samples", type=int, default=16)
    parser.add_argument("--normalisation-views", type=int, default=8)
    parser.add_argument("--normalisation-points", type=int, default=4096, help="importance samples per view")
    parser.add_argument("--normalisation-only", action="store_true", help="skip the table")
    parser.add_argument("--no-prior", action="store_true", help="skip the prior-only rows")
    parser.add_argument("--ode-method", default="dopri5", help="torchdiffeq method of the likelihood ODE")
    parser.add_argument("--ode-steps", type=int, help="steps of fixed-step methods (rk4, ...)")
    parser.add_argument("--device")
    parser.add_argument("--output", required=True, help="JSON file for every number")
    parser.add_argument("--record", action="store_true", help="also store the results in each model's config.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    results = []
    for folder in args.models.split(","):
        result = evaluate_model(folder, args.heldout, args.steps, args.guidance, args.likelihood_images,
                                args.localizability_samples, args.normalisation_views, args.normalisation_points,
                                table=not args.normalisation_only, device=args.device, prior=not args.no_prior,
                                ode_options={"method": args.ode_method, "steps": args.ode_steps})
        results.append(result)
        if args.record:
            record_evaluation(folder, result)
        norm = result["normalisation"]
        print(f"{folder}: integral of p over S^2 on {len(norm['estimates'])} views: "
              f"{', '.join(f'{e:.3f}' for e in norm['estimates'])} (max |I - 1| = {norm['max_abs_deviation']:.3f})",
              flush=True)
        Path(args.output).write_text(json.dumps(results, indent=2))
    print(markdown_table(results))


if __name__ == "__main__":
    main()
