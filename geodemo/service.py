"""One request, as the app and the CLI both serve it: the models on offer, the checks on a request, and
`locate(...)`, which yields the stages of one answer.

A request flows image -> embedding -> samples with trajectories -> (progressively) log-densities of the
samples and of an adaptive grid -> summary. Nothing here keeps per-request state between calls; the only
shared state is the cache of loaded models, filled under a lock.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator, Literal

import torch

from geodemo.adaptive_density import DensityCells, progressive_density
from geodemo.checkpoint import CheckpointError
from geodemo.examples import known_location
from geodemo.hub import official_model, official_models
from geodemo.images import LoadedImage, load_image
from geodemo.likelihood import CheckReport, accuracy_options
from geodemo.paths import ASSETS_DIR
from geodemo.pipeline import GeoPipeline, Prediction, load
from geodemo.processes import AmbientProcess
from geodemo.registry import ModelEntry, lookup, shipped_folder, shipped_models
from geodemo.sampling import gamma_grid
from geodemo.summary import Summary, summarize

HUB_MODELS = tuple(m.hub_id for m in official_models())
PROCESS_LABELS = {
    "rfm_s2": "Riemannian flow matching on the sphere: points start uniform on the globe and slide along its surface",
    "flow_r3": "Flow matching in R³: points start as Gaussian noise in space and fly onto the globe",
    "diffusion_r3": "Diffusion in R³ (DDIM sampler): points start as Gaussian noise in space and fly onto the globe",
}
LIMITS = {"num_samples": (1, 4096), "steps": (1, 250), "guidance": (0.0, 10.0), "seed": (0, 2**31 - 1)}
DEFAULTS = {"num_samples": 128, "steps": 32, "guidance": 0.0, "seed": 0}
"""A request's values when the person sets none, in the app and the CLI (README "Defaults"): the drawn samples
are the model's own distribution (w = 0, also GeoPipeline.predict's default); guidance is a choice, not a default."""
POINT_GUIDANCE = 2.0
"""The guidance of the point estimate, drawn in every request beside the samples: PLONK evaluates its
one-prediction answer at w = 2."""
GUIDED_CANDIDATES = 32
"""Guided (w = POINT_GUIDANCE) samples drawn for the best guess; the one of highest log p at w = 0 wins
(geodemo.summary: the best-guess rule)."""
DENSITY_ODE = "map"
"""The log-density accuracy of maps and scored samples (geodemo.likelihood.accuracy_options): fixed-step RK4, within
about 0.05 nats of the exact density where it is within 10 nats of its maximum, measured at samples of the shipped
models' example views: up to 0.059 nats (benchmarks/README.md); each map's summary says what its check found
(CheckReport)."""
DENSITY_GUIDANCE = 0.0
"""The map and the likelihoods show the conditional model's density (w = 0, as PLONK's NLL): guidance is a
sampling device that sharpens the samples, not a model of p(location | image); it also halves the cost."""
MAP_OPTIONS = {"coarse_deg": 20.0, "levels": 5, "max_cells_per_level": 24}
"""The adaptive log-density map of a request: coarse grid spacing (degrees), refinement levels, cells per level."""
SCORED_SAMPLES = 64
"""How many of the drawn samples get an exact log-density (for the localizability and the downloads)."""
LATENCY_TABLE = ASSETS_DIR / "app_latency.json"
"""The default request's measured times per shipped model, written by benchmarks/app_latency.py."""
Likelihood = Literal["map", "samples", "none"]
"""What a request computes beyond the samples: the progressive map (with the samples' log-densities), the
log-densities of the scored samples only, or nothing."""


class ModelUnavailable(ValueError):
    """A model name that cannot be loaded here; the message is one sentence for the user."""


@dataclass
class Catalogue:
    """The models on offer: shipped ones and the operator's folders first, then the official hub ids.

    Only these names are served: a request naming anything else (another path on the server's disk included)
    gets one sentence that says nothing about the file system.
    """

    local: dict[str, Path]
    hub: tuple[str, ...] = HUB_MODELS

    @property
    def names(self) -> list[str]:
        return list(self.local) + [h for h in self.hub if h not in self.local]

    def default(self) -> str | None:
        if "default" in self.local:
            return "default"
        return next(iter(self.local), None) or (self.hub[0] if self.hub else None)

    def entry(self, name: str) -> ModelEntry:
        """The registry entry of an offered name; ModelUnavailable for anything else (any value a request sends)."""
        if isinstance(name, str) and name in self.local:
            return ModelEntry(name, "shipped" if shipped_folder(name) else "folder", folder=self.local[name])
        if isinstance(name, str) and name in self.hub:
            return lookup(name)
        raise ModelUnavailable(f"Unknown model {str(name)[:80]!r}: choose one of {', '.join(self.names)}.")

    def describe(self, name: str) -> str:
        """One line for people: where the model comes from and how its process moves the points."""
        try:
            entry = self.entry(name)
            process, info = entry.process(), entry.info()
        except ValueError as err:
            return f"{name}: {err}"
        if entry.kind == "hub":
            official = official_model(name)
            where = "official PLONK model from the Hugging Face hub" + (
                f" (trained on {official.dataset}, {official.encoder} image encoder)" if official else "")
        else:
            where = "shipped with geodemo (offline)" if entry.kind == "shipped" else f"local folder {entry.folder}"
        description = info.metadata.get("description") if info else None
        return (f"**{name}**: {where}{f' — {description}' if description else ''}. "
                f"Process: {PROCESS_LABELS.get(process, process)}.")


def measured_latency(model: str) -> dict | None:
    """How long the default request took for a model where benchmarks/app_latency.py (shipped models) or
    benchmarks/space_cpu.py (official models' shapes) measured it: {"samples_globe_s", "complete_map_s", "machine",
    "measured"}, an entry's own "machine" / "measured" before the table's; None when not measured."""
    try:
        table = json.loads(LATENCY_TABLE.read_text())
        return {"machine": table["machine"], "measured": table["measured"], **table["models"][model]}
    except (OSError, ValueError, KeyError):
        return None


def make_catalogue(extra: str | None = None) -> Catalogue:
    """The shipped models plus the operator's choice `extra`: a model folder (offered under its own name) or a
    shipped name or hub id. An `extra` that is none of these is a ModelUnavailable error, not a silent default."""
    local = shipped_models()
    if extra is None or extra in local or extra in HUB_MODELS:
        return Catalogue(local=local)
    try:
        entry = lookup(extra)
    except CheckpointError as err:
        raise ModelUnavailable(str(err)) from None
    if entry.kind == "folder":
        return Catalogue(local={catalogue_name(extra): entry.folder, **local})
    return Catalogue(local=local, hub=(*HUB_MODELS, extra) if entry.kind == "hub" else HUB_MODELS)


def catalogue_name(model: str) -> str:
    """The name under which the catalogue offers what the operator passed: a folder by its own name."""
    return Path(model).name if Path(model).is_dir() else model


class ModelCache:
    """Loaded pipelines by name; each is loaded once (under a lock) and only read afterwards."""

    def __init__(self, catalogue: Catalogue, device: str | torch.device | None = None):
        self.catalogue = catalogue
        self.device = device
        self._models: dict[str, GeoPipeline] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> GeoPipeline:
        entry = self.catalogue.entry(name)
        with self._lock:
            if name not in self._models:
                try:
                    self._models[name] = load(entry.folder or entry.name, device=self.device)
                except (OSError, ValueError, KeyError, RuntimeError, ImportError) as err:
                    raise ModelUnavailable(_unavailable_sentence(name, err)) from None
            return self._models[name]


def _unavailable_sentence(name: str, err: Exception) -> str:
    """geodemo.load's own sentence (for hub ids it says how to get the model offline), naming the model."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if name in text else f"Model {name} could not be loaded: {text}"


@dataclass(frozen=True)
class Request:
    num_samples: int
    steps: int
    guidance: float
    seed: int


def check_request(num_samples, steps, guidance, seed) -> Request:
    """Validate values arriving from sliders, the API or the command line; ValueError names the allowed range."""
    values = {}
    for key, raw in (("num_samples", num_samples), ("steps", steps), ("guidance", guidance), ("seed", seed)):
        lo, hi = LIMITS[key]
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{key.replace('_', ' ')} must be a number between {lo} and {hi}, got {raw!r}") from None
        if not math.isfinite(value) or not lo <= value <= hi:
            raise ValueError(f"{key.replace('_', ' ')} must be between {lo} and {hi}, got {raw!r}")
        if key != "guidance" and value != int(value):
            raise ValueError(f"{key.replace('_', ' ')} must be a whole number, got {raw!r}")
        values[key] = value if key == "guidance" else int(value)
    return Request(**values)


def image_truth(loaded: LoadedImage) -> tuple[tuple[float, float] | None, str]:
    """The true location of an image and where it comes from: EXIF GPS first, else the centre of a shipped
    example view recognised by its file's bytes; (None, "") when unknown."""
    if loaded.gps is not None:
        return loaded.gps, "EXIF GPS"
    centre = known_location(loaded.path) if loaded.path is not None else None
    return (centre, "centre of this example view") if centre is not None else (None, "")


def density_options(pipe: GeoPipeline) -> dict:
    """The map's ODE options for this model on its device, written out (DENSITY_ODE's preset; the radial
    quadrature only for the R^3 processes)."""
    options = asdict(accuracy_options(DENSITY_ODE, pipe.device, radial=not pipe.process.on_sphere))
    if pipe.process.on_sphere:
        del options["radial_nodes"], options["radial_rule"]
    return options


def density_stages(pipe: GeoPipeline, embedding: torch.Tensor, samples: torch.Tensor, scored: torch.Tensor,
                   guidance: float = DENSITY_GUIDANCE, **map_options
                   ) -> Iterator[tuple[DensityCells, torch.Tensor, CheckReport]]:
    """The progressive log-density map of one image: coarse grid, then refinements where the mass is and around
    the (N, 2) samples.

    Yields (cells, log p of the (K, 2) `scored` points, what the step-doubling checks of the levels so far found).
    The scored points ride along in the coarse grid's ODE
    solve: on a CPU one solve costs about the same for a hundred points or a few hundred. Each level's solve knows
    the highest log p found so far (known_max): its cells far below it are only screened (accuracy_options "map").
    map_options: coarse_deg, levels, max_cells_per_level (defaults: MAP_OPTIONS)."""
    options = density_options(pipe)
    scored_logp: list[torch.Tensor] = []
    highest = torch.tensor([-math.inf])
    report = CheckReport()

    def evaluate(latlon: torch.Tensor) -> torch.Tensor:
        points = latlon if scored_logp else torch.cat((latlon, scored.to(latlon.dtype)))
        logp = pipe.log_density(points, embeddings=embedding, guidance=guidance, known_max=highest, report=report,
                                **options)[0]
        highest.copy_(torch.maximum(highest, logp.max()))
        if not scored_logp:
            scored_logp.append(logp[len(latlon):])
        return logp[:len(latlon)]

    for cells in progressive_density(evaluate, samples=samples, **{**MAP_OPTIONS, **map_options}):
        yield cells, scored_logp[0], replace(report)


def guided_samples(pipe: GeoPipeline, embedding: torch.Tensor, request: Request, samples: torch.Tensor,
                   count: int = GUIDED_CANDIDATES) -> torch.Tensor:
    """(G, 2) degrees: the best guess's pool, G = count samples at POINT_GUIDANCE with the request's seed and
    steps (the first G drawn samples when those were drawn at POINT_GUIDANCE already)."""
    if request.guidance == POINT_GUIDANCE:
        return samples[:count]
    return pipe.predict(embeddings=embedding, num_samples=count, steps=request.steps, guidance=POINT_GUIDANCE,
                        seed=request.seed).latlon[0].double()


def state_labels(pipe: GeoPipeline, steps: int) -> list[str]:
    """One label per sampler state k = 0..steps: the step, t_k = 1 - k/steps and the noise level there, the
    noise scale s(gamma) of y = a x0 + s n for the R^3 processes, 1 - gamma (the share of the geodesic from the
    noise point still to travel) on the sphere."""
    gammas = gamma_grid(pipe.schedule, steps).double().tolist()
    ambient = isinstance(pipe.process, AmbientProcess)
    noise = [pipe.process.signal_and_noise(g)[1] if ambient else 1 - g for g in gammas]
    name = "noise σ" if ambient else "noise 1 − γ"
    return [f"step {k} of {steps} · t = {1 - k / steps:.3f} · {name} = {level:.3f}" for k, level in enumerate(noise)]


@dataclass
class Stage:
    """One stage of a request's answer. The first stage carries the samples (N, 2) degrees with their
    trajectories and the guided samples (G, 2) that the best guess is chosen from; later ones add log-densities
    (`cells`: the map after refinement `level` of `levels`). `summary` is the whole answer so far: best guess,
    modes, countries, truth and error."""

    samples: torch.Tensor
    summary: Summary
    prediction: Prediction | None = None
    guided: torch.Tensor | None = None
    sample_log_density: torch.Tensor | None = None
    guided_log_density: torch.Tensor | None = None
    cells: DensityCells | None = None
    level: int = -1
    levels: int = 0
    final: bool = False


def locate(pipe: GeoPipeline, image: str | Path | LoadedImage, request: Request, likelihood: Likelihood = "map",
           scored: int = SCORED_SAMPLES, map_options: dict | None = None,
           candidates: int = GUIDED_CANDIDATES) -> Iterator[Stage]:
    """Geolocate one image: yields the samples (at request.guidance) and the guided samples (at POINT_GUIDANCE,
    `candidates` of them) first, with a provisional best guess; then (likelihood="map") the log-density map level
    by level, or (likelihood="samples") the log-densities only, of the first `scored` samples and of the guided
    samples, which settle the best guess. The last stage has final=True.

    Raises geodemo.images.ImageError for a file that is not a usable image, ValueError for bad values."""
    loaded = image if isinstance(image, LoadedImage) else load_image(image)
    truth, truth_source = image_truth(loaded)
    embedding = pipe.embed(loaded.image)
    prediction = pipe.predict(embeddings=embedding, num_samples=request.num_samples, steps=request.steps,
                              guidance=request.guidance, seed=request.seed, trajectories=True)
    samples = prediction.latlon[0].double()
    guided = guided_samples(pipe, embedding, request, samples, candidates) if candidates > 0 else None
    k = min(max(0, scored), len(samples))
    points = torch.cat((samples[:k], guided)) if guided is not None else samples[:k]

    def stage(logp: torch.Tensor | None = None, cells: DensityCells | None = None,
              check: CheckReport | None = None, **fields) -> Stage:
        drawn = logp[:k] if logp is not None and k else None
        pool = logp[k:] if logp is not None and guided is not None else None
        summary = summarize(samples, drawn, cells, truth=truth, truth_source=truth_source, guided=guided,
                            guided_log_density=pool, sample_guidance=request.guidance,
                            point_guidance=POINT_GUIDANCE if guided is not None else None,
                            region_temperature=pipe.region_temperature, map_check=check,
                            scores_follow=likelihood != "none" and len(points) > 0)
        return Stage(samples, summary, guided=guided, sample_log_density=drawn, guided_log_density=pool, cells=cells,
                     **fields)

    yield stage(prediction=prediction, final=likelihood == "none" or (likelihood == "samples" and not len(points)))
    if likelihood == "samples" and len(points):
        yield stage(pipe.log_density(points, embeddings=embedding, guidance=DENSITY_GUIDANCE,
                                     **density_options(pipe))[0], final=True)
    elif likelihood == "map":
        options = {**MAP_OPTIONS, **(map_options or {})}
        near = torch.cat((samples, guided)) if guided is not None else samples
        last = None
        for level, (cells, logp, check) in enumerate(density_stages(pipe, embedding, near, points, **options)):
            last = stage(logp, cells, check, level=level, levels=options["levels"], final=level >= options["levels"])
            yield last
        if not last.final:  # the refinement stopped early: the last map is the answer
            yield replace(last, final=True)
