"""Classroom experiments as plain data, for a notebook or the app's "Compare & learn" tab.

  compare_processes  one image, one seed, several models (the three processes) sampled side by side
  guidance_sweep     the samples, their spread and their error against the guidance scale w
  steps_sweep        error to the truth (median km, mean GeoScore) against the number of sampler steps
  probability_path   the marginal density p_t(x | image) at a few times t from the noise end (t = 1) to the data
                     end (t = 0), with the particles at t and, for the Riemannian flow, its tangent field at t

Each has a `*_stages` generator that yields the result as it fills in (the app draws every stage; each stage is
a snapshot that later stages leave unchanged); the plain function returns the complete result. Every result has
`to_dict()` (lists and numbers, for JSON).
Definitions: spread = median distance (km) from the samples to their mean direction
(geodemo.guidance_spread.spread_km); error = great-circle distance (km) to the true location;
GeoScore = 5000 exp(-d / 1492.7 km) (geodemo.metrics.geoscore).
"""

from __future__ import annotations

import inspect
import math
import threading
import time
from dataclasses import dataclass, replace
from typing import Iterator, Mapping, Sequence, TypeVar

import torch
from PIL import Image

from geodemo.adaptive_density import DensityCells, progressive_density
from geodemo.examples import example_views
from geodemo.grids import fibonacci_grid
from geodemo.guidance_spread import spread_km
from geodemo.images import load_image
from geodemo.likelihood import FIXED_STEP_METHODS, ODEField, ODEOptions, log_density as likelihood_log_density, t_at_gamma
from geodemo.metrics import geoscore
from geodemo.pipeline import GeoPipeline
from geodemo.processes import AmbientProcess
from geodemo.service import DENSITY_GUIDANCE, MAP_OPTIONS, check_request, density_options
from geodemo.sphere import LOG_SPHERE_AREA, haversine_km, xyz_to_latlon
from geodemo.summary import Summary, summarize

T = TypeVar("T")
LatLon = tuple[float, float]
SCORED_SAMPLES = 16
"""Samples per model that get an exact log-density in compare_processes (best guess, localizability), as the
shipped models' evaluation (16 samples per image for the localizability)."""
GUIDANCE_SWEEP = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
STEPS_SWEEP = (1, 2, 4, 8, 16, 32, 64, 128, 250)
PATH_TIMES = 5
PATH_MAP_OPTIONS = {**MAP_OPTIONS, "levels": 3, "max_cells_per_level": 16}
"""The probability path's maps between the ends: two refinement levels fewer than the app's map (cells down to 2.5
degrees), enough for the broad p_t there; the data end (the model's density, sharp) gets the app's own map."""
FIELD_POINTS = 200
"""Points of the Fibonacci lattice where the Riemannian flow's tangent field is drawn."""
DATA_END_SIGMA = inspect.signature(likelihood_log_density).parameters["radial_sigma"].default
"""The noise level at which log_density takes the R^3 processes' density of directions (its data end)."""
SINH_NODES = ODEOptions().radial_nodes
"""Radial nodes of the "sinh" rule, right for the wide radial profiles of the R^3 marginals at t > 0."""


def classroom_density_options(pipe: GeoPipeline) -> dict:
    """The app's map options (geodemo.service.density_options) without the step-doubling check that confirms
    their accuracy on a few points: it re-solves the points near the maximum with twice the steps until they agree,
    several times the cost on the sharp shipped models, more than an interactive lesson can wait."""
    return {**density_options(pipe), "check_points": 0}


def complete(stages: Iterator[T]) -> T:
    """The last stage of a `*_stages` generator: the complete result."""
    result = None
    for result in stages:
        pass
    if result is None:
        raise ValueError("the computation yielded nothing")
    return result


class Embeddings:
    """Image embeddings of one call, computed once per image encoder (the shipped models share theirs)."""

    def __init__(self, image: Image.Image):
        self.image = image
        self._by_encoder: dict[str, torch.Tensor] = {}

    def of(self, pipe: GeoPipeline) -> torch.Tensor:
        name = pipe.encoder.name
        if name not in self._by_encoder:
            self._by_encoder[name] = pipe.embed(self.image)
        return self._by_encoder[name].to(pipe.device)


def _embeddings(image: Image.Image | Embeddings) -> Embeddings:
    return image if isinstance(image, Embeddings) else Embeddings(image)


def _latlon(point: LatLon | None) -> list[float] | None:
    return None if point is None else [round(float(point[0]), 5), round(float(point[1]), 5)]


def _rounded(x: torch.Tensor, digits: int = 5) -> list:
    return torch.round(x.double(), decimals=digits).tolist()


def _error_km(samples: torch.Tensor, truth: LatLon | None) -> float | None:
    """Median distance (km) of (N, 2) degree samples to the truth, None without a truth."""
    if truth is None:
        return None
    return float(haversine_km(samples.double(), torch.tensor(truth, dtype=torch.float64)).median())


# --- three processes side by side -------------------------------------------------------------------------------

@dataclass
class ProcessRun:
    """One model's run: samples (N, 2) degrees, every sampler state trajectories_xyz (steps + 1, N, 3) in R^3
    (noise first), the summary (best guess, error to the truth, localizability once scored), the spread (km)
    and the time taken (s) by sampling and by scoring the samples' log-densities."""

    model: str
    process: str
    samples: torch.Tensor
    trajectories_xyz: torch.Tensor
    summary: Summary
    spread_km: float
    sampling_seconds: float
    scoring_seconds: float | None = None

    def to_dict(self) -> dict:
        s = self.summary
        return {"model": self.model, "process": self.process, "samples": _rounded(self.samples),
                "trajectories_xyz": _rounded(self.trajectories_xyz, 4), "best_guess": _latlon(s.best_guess),
                "best_guess_rule": s.best_guess_rule, "error_km": s.error_km, "geoscore": s.geoscore,
                "spread_km": self.spread_km, "localizability": s.localizability, "scored_samples": s.num_scored,
                "sampling_seconds": self.sampling_seconds, "scoring_seconds": self.scoring_seconds}


@dataclass
class Comparison:
    """The runs so far of one image under several models with one seed and one request."""

    runs: list[ProcessRun]
    truth: LatLon | None
    num_samples: int
    steps: int
    guidance: float
    seed: int
    complete: bool = False

    def to_dict(self) -> dict:
        return {"truth": _latlon(self.truth), "num_samples": self.num_samples, "steps": self.steps,
                "guidance": self.guidance, "seed": self.seed, "complete": self.complete,
                "runs": [r.to_dict() for r in self.runs]}


def compare_processes_stages(pipes: Mapping[str, GeoPipeline], image: Image.Image | Embeddings,
                             num_samples: int = 64, steps: int = 32, guidance: float = 0.0, seed: int = 0,
                             truth: LatLon | None = None, scored: int = SCORED_SAMPLES) -> Iterator[Comparison]:
    """Sample the image under each model from the same seed; yields after each model's samples (best guess =
    the densest sample), then after each model's first `scored` samples got their log-density at w = 0
    (classroom_density_options; best guess = the most likely of them; localizability = their mean log p, nats/sr).
    The last stage has complete=True."""
    request = check_request(num_samples, steps, guidance, seed)
    embeddings = _embeddings(image)
    runs: list[ProcessRun] = []

    def stage(done: bool = False) -> Comparison:
        return Comparison(list(runs), truth, request.num_samples, request.steps, request.guidance, request.seed, done)

    for name, pipe in pipes.items():
        started = time.perf_counter()
        prediction = pipe.predict(embeddings=embeddings.of(pipe), num_samples=request.num_samples,
                                  steps=request.steps, guidance=request.guidance, seed=request.seed,
                                  trajectories=True)
        samples = prediction.latlon[0].double()
        runs.append(ProcessRun(name, pipe.process.name, samples, prediction.trajectories_xyz[0],
                               summarize(samples, truth=truth, truth_source="given"), spread_km(samples),
                               time.perf_counter() - started))
        yield stage()
    if scored > 0:
        for i, (name, pipe) in enumerate(pipes.items()):
            started = time.perf_counter()
            run = runs[i]
            logp = pipe.log_density(run.samples[:scored], embeddings=embeddings.of(pipe), guidance=DENSITY_GUIDANCE,
                                    **classroom_density_options(pipe))[0]
            runs[i] = ProcessRun(run.model, run.process, run.samples, run.trajectories_xyz,
                                 summarize(run.samples, logp, truth=truth, truth_source="given"), run.spread_km,
                                 run.sampling_seconds, time.perf_counter() - started)
            yield stage(done=i == len(pipes) - 1)
    else:
        yield stage(done=True)


def compare_processes(pipes: Mapping[str, GeoPipeline], image: Image.Image | Embeddings, **options) -> Comparison:
    """compare_processes_stages' complete result."""
    return complete(compare_processes_stages(pipes, image, **options))


# --- guidance sweep ---------------------------------------------------------------------------------------------

@dataclass
class GuidanceRun:
    """Samples (N, 2) degrees at one guidance scale, their spread (km) and median error to the truth (km)."""

    guidance: float
    samples: torch.Tensor
    spread_km: float
    error_km: float | None
    seconds: float

    def to_dict(self) -> dict:
        return {"guidance": self.guidance, "samples": _rounded(self.samples), "spread_km": self.spread_km,
                "error_km": self.error_km, "seconds": self.seconds}


@dataclass
class GuidanceSweep:
    """Per model (in the order given), the runs at each guidance scale computed so far."""

    guidance: list[float]
    processes: dict[str, str]
    runs: dict[str, list[GuidanceRun]]
    truth: LatLon | None
    num_samples: int
    steps: int
    seed: int
    complete: bool = False

    def to_dict(self) -> dict:
        return {"guidance": self.guidance, "truth": _latlon(self.truth), "num_samples": self.num_samples,
                "steps": self.steps, "seed": self.seed, "complete": self.complete,
                "models": [{"model": m, "process": self.processes[m], "runs": [r.to_dict() for r in runs]}
                           for m, runs in self.runs.items()]}


def guidance_sweep_stages(pipes: Mapping[str, GeoPipeline], image: Image.Image | Embeddings,
                          guidance: Sequence[float] = GUIDANCE_SWEEP, num_samples: int = 128, steps: int = 32,
                          seed: int = 0, truth: LatLon | None = None) -> Iterator[GuidanceSweep]:
    """Sample the image at each guidance scale w (same seed, so the same start points) under each model; yields
    after every (w, model), w in the order given, so that every model's curve fills in together."""
    requests = [check_request(num_samples, steps, w, seed) for w in guidance]
    if not requests:
        raise ValueError("give at least one guidance scale")
    embeddings = _embeddings(image)
    runs: dict[str, list[GuidanceRun]] = {name: [] for name in pipes}
    sweep = GuidanceSweep([r.guidance for r in requests], {n: p.process.name for n, p in pipes.items()}, runs,
                          truth, requests[0].num_samples, requests[0].steps, requests[0].seed)
    for i, request in enumerate(requests):
        for j, (name, pipe) in enumerate(pipes.items()):
            started = time.perf_counter()
            samples = pipe.predict(embeddings=embeddings.of(pipe), num_samples=request.num_samples,
                                   steps=request.steps, guidance=request.guidance, seed=request.seed).latlon[0].double()
            runs[name].append(GuidanceRun(request.guidance, samples, spread_km(samples), _error_km(samples, truth),
                                          time.perf_counter() - started))
            yield replace(sweep, runs={m: list(r) for m, r in runs.items()},
                          complete=i == len(requests) - 1 and j == len(pipes) - 1)


def guidance_sweep(pipes: Mapping[str, GeoPipeline], image: Image.Image | Embeddings, **options) -> GuidanceSweep:
    """guidance_sweep_stages' complete result."""
    return complete(guidance_sweep_stages(pipes, image, **options))


# --- steps sweep ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class View:
    """An image with a known true location."""

    title: str
    image: Image.Image
    truth: LatLon


_EXAMPLE_EMBEDDINGS: dict[str, torch.Tensor] = {}
_EXAMPLE_LOCK = threading.Lock()


def example_set() -> list[View]:
    """The shipped example views with their true centres."""
    return [View(v.title, load_image(v.path).image, (v.latitude, v.longitude)) for v in example_views()
            if v.path.is_file()]


def _view_embeddings(pipe: GeoPipeline, views: Sequence[View], shipped: int) -> torch.Tensor:
    """(V, C) embeddings of views whose first `shipped` are the shipped example views (embedded once per encoder
    and kept: they never change)."""
    name = pipe.encoder.name
    with _EXAMPLE_LOCK:
        if shipped and name not in _EXAMPLE_EMBEDDINGS:
            _EXAMPLE_EMBEDDINGS[name] = pipe.embed([v.image for v in views[:shipped]]).cpu()
        parts = [_EXAMPLE_EMBEDDINGS[name][:shipped]] if shipped else []
    if len(views) > shipped:
        parts.append(pipe.embed([v.image for v in views[shipped:]]).cpu())
    return torch.cat(parts).to(pipe.device)


@dataclass
class StepsSweep:
    """Per model, at each number of sampler steps computed so far: the median error (km) and the mean GeoScore
    of all samples of all views (samples_per_view each), and the seconds taken."""

    steps: list[int]
    views: list[str]
    processes: dict[str, str]
    median_km: dict[str, list[float]]
    geoscore: dict[str, list[float]]
    seconds: dict[str, list[float]]
    samples_per_view: int
    guidance: float
    seed: int
    complete: bool = False

    def to_dict(self) -> dict:
        return {"steps": self.steps, "views": self.views, "samples_per_view": self.samples_per_view,
                "guidance": self.guidance, "seed": self.seed, "complete": self.complete,
                "models": [{"model": m, "process": self.processes[m], "median_km": self.median_km[m],
                            "geoscore": self.geoscore[m], "seconds": self.seconds[m]} for m in self.processes]}


def steps_sweep_stages(pipes: Mapping[str, GeoPipeline], steps: Sequence[int] = STEPS_SWEEP,
                       samples_per_view: int = 4, guidance: float = 2.0, seed: int = 0,
                       extra_views: Sequence[View] = (), examples: bool = True) -> Iterator[StepsSweep]:
    """Sample every view (the shipped example views when `examples`, then extra_views) with each number of
    sampler steps, the same seed (so the same start points) for all; yields after every (steps, model), steps in
    the order given."""
    requests = [check_request(samples_per_view, s, guidance, seed) for s in steps]
    views = (example_set() if examples else []) + list(extra_views)
    if not requests or not views:
        raise ValueError("give at least one number of steps and one view with a known location")
    shipped = len(views) - len(extra_views)
    truths = torch.tensor([v.truth for v in views], dtype=torch.float64)
    names = list(pipes)
    sweep = StepsSweep([r.steps for r in requests], [v.title for v in views],
                       {n: p.process.name for n, p in pipes.items()}, {n: [] for n in names}, {n: [] for n in names},
                       {n: [] for n in names}, requests[0].num_samples, requests[0].guidance, requests[0].seed)
    embeddings = {name: _view_embeddings(pipe, views, shipped) for name, pipe in pipes.items()}
    for i, request in enumerate(requests):
        for j, (name, pipe) in enumerate(pipes.items()):
            started = time.perf_counter()
            samples = pipe.predict(embeddings=embeddings[name], num_samples=request.num_samples, steps=request.steps,
                                   guidance=request.guidance, seed=request.seed).latlon.double()
            distance = haversine_km(samples, truths[:, None])
            sweep.median_km[name].append(float(distance.median()))
            sweep.geoscore[name].append(float(geoscore(distance).mean()))
            sweep.seconds[name].append(time.perf_counter() - started)
            yield replace(sweep, median_km={m: list(v) for m, v in sweep.median_km.items()},
                          geoscore={m: list(v) for m, v in sweep.geoscore.items()},
                          seconds={m: list(v) for m, v in sweep.seconds.items()},
                          complete=i == len(requests) - 1 and j == len(names) - 1)


def steps_sweep(pipes: Mapping[str, GeoPipeline], **options) -> StepsSweep:
    """steps_sweep_stages' complete result."""
    return complete(steps_sweep_stages(pipes, **options))


# --- the probability path ---------------------------------------------------------------------------------------

@dataclass
class PathTime:
    """The path at time t (gamma = gamma(t), the signal fraction): log p_t at the centres of adaptive cells
    (nats per steradian; None until computed), the particles (N, 3) in R^3 (the sampler's state at t), and for
    the Riemannian flow the field at points field_xyz (K, 3): field_vectors (K, 3) = -dy/dt, the tangent
    direction and speed in which the particles move as the sampler runs (t decreasing)."""

    t: float
    gamma: float
    step: int
    particles_xyz: torch.Tensor
    field_xyz: torch.Tensor | None
    field_vectors: torch.Tensor | None
    how: str
    cells: DensityCells | None = None
    seconds: float | None = None

    def to_dict(self) -> dict:
        cells = self.cells
        return {"t": self.t, "gamma": self.gamma, "sampler_step": self.step, "how": self.how,
                "seconds": self.seconds, "particles_xyz": _rounded(self.particles_xyz, 4),
                "field_xyz": None if self.field_xyz is None else _rounded(self.field_xyz, 4),
                "field_vectors": None if self.field_vectors is None else _rounded(self.field_vectors, 5),
                "cells": None if cells is None else {
                    "centres": _rounded(cells.centres, 6), "bounds": _rounded(cells.bounds, 6),
                    "log_density": _rounded(cells.log_density, 6), "total_mass": cells.total_mass()}}


@dataclass
class ProbabilityPath:
    """p_t(x | image) at a few times from the noise end to the data end for one model; `exact` says what is
    exact and what is an estimate, ode_options how log p_t was solved (at the data end; fewer fixed steps
    for the shorter spans of later t)."""

    model: str
    process: str
    times: list[PathTime]
    trajectories_xyz: torch.Tensor
    steps: int
    guidance: float
    seed: int
    ode_options: dict
    exact: str
    truth: LatLon | None = None
    complete: bool = False

    def to_dict(self) -> dict:
        return {"model": self.model, "process": self.process, "steps": self.steps, "guidance": self.guidance,
                "seed": self.seed, "ode_options": self.ode_options, "exact": self.exact, "truth": _latlon(self.truth),
                "complete": self.complete, "times": [p.to_dict() for p in self.times]}


def path_times(pipe: GeoPipeline, steps: int, count: int = PATH_TIMES) -> list[tuple[int, float]]:
    """(sampler step k, t = 1 - k / steps) for `count` times at equal steps of gamma from 0 (noise, t = 1) to 1
    (data, t = 0), each snapped to the sampler's grid so that the particles are the sampler's own states."""
    if count < 2:
        raise ValueError(f"the path needs at least 2 times, got {count}")
    ks = sorted({round((1 - t_at_gamma(pipe.schedule, g)) * steps) for g in torch.linspace(0, 1, count).tolist()})
    return [(k, 1 - k / steps) for k in ks]


def _gamma(pipe: GeoPipeline, t: float) -> float:
    return float(pipe.schedule.gamma(torch.tensor(t, dtype=torch.float64)))


def at_noise_end(pipe: GeoPipeline, t: float) -> bool:
    """Whether p_t is the base density: t = 1 for the Riemannian flow (uniform on S^2), gamma(t) at or below the
    likelihood's end for the R^3 processes (an isotropic Gaussian, whose directions are uniform)."""
    if t >= 1:
        return True
    return isinstance(pipe.process, AmbientProcess) and _gamma(pipe, t) <= pipe.process.ode_end_gamma


def marginal_options(pipe: GeoPipeline, t: float, options: dict) -> dict:
    """log_density options for log p_t: the Riemannian flow starts its ODE at t (t_start); an R^3 process takes
    its density of directions at noise level max(s(gamma(t)), DATA_END_SIGMA). Fixed-step solvers take
    ceil(steps (1 - t)) steps, the same step length as over the whole path."""
    options = dict(options)
    if options.get("method") in FIXED_STEP_METHODS and options.get("steps"):
        options["steps"] = max(1, math.ceil(options["steps"] * (1 - t) - 1e-9))
    if isinstance(pipe.process, AmbientProcess):
        noise = pipe.process.signal_and_noise(_gamma(pipe, t))[1]
        options["radial_sigma"] = max(options.get("radial_sigma", DATA_END_SIGMA), noise)
        if noise > DATA_END_SIGMA and options.get("radial_rule") in ("hermite", "adaptive"):
            options.update(radial_rule="sinh", radial_nodes=SINH_NODES)  # the noised profile is not N(a, s^2)
    elif t > 0:
        options["t_start"] = t
    return options


def marginal_log_density(pipe: GeoPipeline, embedding: torch.Tensor, t: float, guidance: float = 0.0,
                         options: dict | None = None):
    """(M, 2) degrees -> (M,) log p_t(x | image) in nats per steradian: the base -log(4 pi) at the noise end,
    else log_density with marginal_options (the probability-flow ODE from t to the noise end)."""
    if at_noise_end(pipe, t):
        return lambda latlon: torch.full((len(latlon),), -LOG_SPHERE_AREA, dtype=torch.float64)
    ode = marginal_options(pipe, t, classroom_density_options(pipe) if options is None else options)
    return lambda latlon: pipe.log_density(latlon, embeddings=embedding, guidance=guidance, **ode)[0]


def tangent_field(pipe: GeoPipeline, embedding: torch.Tensor, t: float, guidance: float,
                  points: torch.Tensor) -> torch.Tensor:
    """-dy/dt (K, 3) at unit vectors points (K, 3): the Riemannian flow's tangent field as the sampler runs."""
    field = ODEField(pipe.network, pipe.process, pipe.schedule, embedding.float(), guidance, on_sphere=True)
    with torch.no_grad():
        y = points.to(device=pipe.device, dtype=torch.float32)[None]
        return -field(torch.tensor(t, dtype=torch.float32, device=pipe.device), y)[0].double().cpu()


def _how(pipe: GeoPipeline, t: float, options: dict) -> str:
    """How log p_t is obtained, in words."""
    if at_noise_end(pipe, t):
        return "base density, exact: uniform on the sphere, -log(4 pi)"
    ode = marginal_options(pipe, t, options)
    solver = f"{ode.get('method', 'dopri5')}" + (f", {ode['steps']} steps" if "steps" in ode else "")
    if pipe.process.on_sphere:
        return f"exact up to the ODE solver: probability-flow ODE from t = {t:.3f} to 1 ({solver})"
    return (f"estimate: density of directions at noise level {ode['radial_sigma']:.3f} "
            f"({ode.get('radial_nodes', 'default')}-node radial quadrature; ODE {solver})")


def probability_path_stages(pipe: GeoPipeline, image: Image.Image | Embeddings, num_samples: int = 256,
                            steps: int = 40, guidance: float = 0.0, seed: int = 0, count: int = PATH_TIMES,
                            truth: LatLon | None = None, map_options: dict | None = None,
                            ode_options: dict | None = None, name: str = "") -> Iterator[ProbabilityPath]:
    """The marginal density p_t(x | image) at `count` times (path_times) from noise to data, with the particles
    (num_samples samples from `seed`) and, for the Riemannian flow, its tangent field at each t.

    Yields first the particles, the field and the base density at the noise end, then each later time's density
    as an adaptive map (progressive_density with map_options over PATH_MAP_OPTIONS, MAP_OPTIONS at t = 0, refined where
    the mass and the particles are). All at the same guidance w: the density is the one the guided ODE transports.
    """
    request = check_request(num_samples, steps, guidance, seed)
    embedding = _embeddings(image).of(pipe)
    options = classroom_density_options(pipe) if ode_options is None else dict(ode_options)
    trajectories = pipe.predict(embeddings=embedding, num_samples=request.num_samples, steps=request.steps,
                                guidance=request.guidance, seed=request.seed, trajectories=True).trajectories_xyz[0]
    grid = fibonacci_grid(FIELD_POINTS).xyz
    times = []
    for k, t in path_times(pipe, request.steps, count):
        vectors = tangent_field(pipe, embedding, t, request.guidance, grid) if pipe.process.on_sphere else None
        times.append(PathTime(t, _gamma(pipe, t), k, trajectories[k], grid if vectors is not None else None, vectors,
                              _how(pipe, t, options)))
    exact = ("Exact: the base density at the noise end; for the Riemannian flow each p_t by the probability-flow "
             "ODE from t (up to the solver's error). Estimates: the R^3 processes' density of directions (a radial "
             "quadrature, taken at noise level >= 0.02 near the data end), and each map's cells, which show the "
             "density at their centre.") if not pipe.process.on_sphere else (
             "Exact: the base density at the noise end (uniform, -log 4 pi) and each p_t by the probability-flow "
             "ODE from t (up to the solver's error); the map's cells show the density at their centre.")
    path = ProbabilityPath(name or pipe.name, pipe.process.name, times, trajectories, request.steps,
                           request.guidance, request.seed, options, exact, truth)
    data_end = {**MAP_OPTIONS, **(map_options or {})}
    between = {**PATH_MAP_OPTIONS, **(map_options or {})}
    for i, frame in enumerate(times):
        started = time.perf_counter()
        fn = marginal_log_density(pipe, embedding, frame.t, request.guidance, options)
        particles = xyz_to_latlon(frame.particles_xyz.double())
        grid = data_end if frame.t == 0 else between
        levels = 0 if at_noise_end(pipe, frame.t) else grid["levels"]  # the base is flat: no refinement
        frame.cells = complete(progressive_density(fn, samples=particles, **{**grid, "levels": levels}))
        frame.seconds = time.perf_counter() - started
        yield replace(path, times=[replace(p) for p in times], complete=i == len(times) - 1)


def probability_path(pipe: GeoPipeline, image: Image.Image | Embeddings, **options) -> ProbabilityPath:
    """probability_path_stages' complete result."""
    return complete(probability_path_stages(pipe, image, **options))
