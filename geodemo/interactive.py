"""What the app and the CLI share: the model catalogue, request checks, and one request's computations.

A request flows image -> embedding -> samples with trajectories -> (progressively) log-densities of the
samples and of an adaptive grid -> summary. Nothing here keeps per-request state between calls; the
only shared state is the cache of loaded models, filled under a lock.
"""

from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import torch

from geodemo.adaptive_density import DensityCells, progressive_density
from geodemo.checkpoint import read_info
from geodemo.embedded import ALIASES, available_embedded_models, embedded_model_path, example_views
from geodemo.hub import official_model, official_models
from geodemo.pipeline import GeoPipeline, Prediction, load

HUB_MODELS = tuple(m.hub_id for m in official_models())
PROCESS_LABELS = {
    "rfm_s2": "Riemannian flow matching on the sphere: points start uniform on the globe and slide along its surface",
    "flow_r3": "Flow matching in R³: points start as Gaussian noise in space and fly onto the globe",
    "diffusion_r3": "Diffusion in R³ (DDIM sampler): points start as Gaussian noise in space and fly onto the globe",
}
LIMITS = {"num_samples": (1, 4096), "steps": (1, 250), "guidance": (0.0, 10.0), "seed": (0, 2**31 - 1)}
DENSITY_ODE = {"method": "rk4", "steps": 8, "radial_nodes": 5}
"""ODE options for interactive maps: fixed-step RK4 (the tolerance-controlled dopri5 solve is for evaluation)."""
DENSITY_GUIDANCE = 0.0
"""The map and the likelihoods show the conditional model's density (w = 0, as PLONK's NLL): guidance is a
sampling device that sharpens the samples, not a model of p(location | image); it also halves the cost."""
DENSITY_GRID = {"coarse_deg": 20.0, "levels": 5, "max_cells_per_level": 24}


def shown_level(level: int, levels: int) -> bool:
    """Which refinement levels the app draws: every other one and the last (each drawing costs about 0.5 s)."""
    return level % 2 == 0 or level >= levels


SCORED_SAMPLES = 64
"""How many samples get an exact log-density (for the best guess and the localizability)."""


class ModelUnavailable(ValueError):
    """A model name that cannot be loaded here; the message is one sentence for the user."""


def embedded_models() -> dict[str, Path]:
    """Shipped models present on disk, by name (an alias such as "default" replaces the name it points to)."""
    found: dict[Path, str] = {}
    for name in sorted(available_embedded_models(), key=lambda n: (n not in ALIASES, n)):
        folder = embedded_model_path(name)
        if folder is not None and (folder / "config.json").is_file() and folder not in found:
            found[folder] = name
    return {name: folder for folder, name in found.items()}


@dataclass
class Catalogue:
    """Models the app offers: local folders (embedded or passed by path) first, then the official hub ids."""

    local: dict[str, Path]
    hub: tuple[str, ...] = HUB_MODELS

    @property
    def names(self) -> list[str]:
        return list(self.local) + [h for h in self.hub if h not in self.local]

    def default(self) -> str | None:
        if "default" in self.local:
            return "default"
        return next(iter(self.local), None) or (self.hub[0] if self.hub else None)

    def process(self, name: str) -> str:
        """The process name of a model, read from its config.json (local) or its hub id."""
        if name in self.local:
            return read_info(self.local[name]).process or "rfm_s2"
        official = official_model(name)
        return official.process if official else "rfm_s2"

    def describe(self, name: str) -> str:
        """One line for people: where the model comes from and how its process moves the points."""
        try:
            process = self.process(name)
        except ValueError as err:
            return f"{name}: {err}"
        if name in self.local:
            where = "shipped with geodemo (offline)" if embedded_model_path(name) else f"local folder {self.local[name]}"
        else:
            official = official_model(name)
            where = "official PLONK model from the Hugging Face hub" + (
                f" (trained on {official.dataset}, {official.encoder} image encoder)" if official else "")
        info = ""
        if name in self.local:
            meta = read_info(self.local[name]).metadata
            if meta.get("description"):
                info = f" — {meta['description']}"
        return f"**{name}**: {where}{info}. Process: {PROCESS_LABELS.get(process, process)}."

    def source(self, name: str) -> str:
        """What geodemo.load receives for this name: a folder for local models, else the name itself."""
        if name in self.local:
            return str(self.local[name])
        folder = embedded_model_path(name)
        if folder is not None and (folder / "config.json").is_file():
            return str(folder)
        if name in self.hub or Path(name).is_dir():
            return name
        raise ModelUnavailable(f"Unknown model {name!r}: choose one of {', '.join(self.names)}.")


def make_catalogue(extra: str | None = None) -> Catalogue:
    """The embedded models plus, if `extra` is a model folder, that folder under its own name."""
    local = embedded_models()
    if extra and Path(extra).is_dir():
        local = {Path(extra).name: Path(extra), **local}
    return Catalogue(local=local)


class ModelCache:
    """Loaded pipelines by name; each is loaded once (under a lock) and only read afterwards."""

    def __init__(self, catalogue: Catalogue, device: str | torch.device | None = None):
        self.catalogue = catalogue
        self.device = device
        self._models: dict[str, GeoPipeline] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> GeoPipeline:
        source = self.catalogue.source(name)
        with self._lock:
            if name not in self._models:
                try:
                    self._models[name] = load(source, device=self.device)
                except ModelUnavailable:
                    raise
                except (OSError, ValueError, KeyError, RuntimeError, ImportError) as err:
                    raise ModelUnavailable(_unavailable_sentence(name, err)) from None
            return self._models[name]


def _unavailable_sentence(name: str, err: Exception) -> str:
    """geodemo.load's own sentence (for hub ids it says how to get the model offline), naming the model."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if name in text else f"Model {name} could not be loaded: {text}"


@lru_cache(maxsize=1)
def _example_locations() -> dict[str, tuple[float, float]]:
    try:
        views = example_views()
    except (OSError, ValueError, KeyError):
        return {}
    return {hashlib.sha256(v.path.read_bytes()).hexdigest(): (v.latitude, v.longitude)
            for v in views if v.path.is_file()}


def known_location(path: str | Path) -> tuple[float, float] | None:
    """The true centre (lat, lon) of a shipped example view, recognised by its content; None otherwise."""
    try:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None
    return _example_locations().get(digest)


@dataclass(frozen=True)
class Request:
    num_samples: int
    steps: int
    guidance: float
    seed: int


def check_request(num_samples, steps, guidance, seed) -> Request:
    """Validate values arriving from sliders or the API; raise ValueError with the allowed range."""
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


def sample_image(pipe: GeoPipeline, embedding: torch.Tensor, request: Request) -> Prediction:
    """Samples (1, N, 2) and trajectories of one image's embedding (1, C)."""
    return pipe.predict(embeddings=embedding, num_samples=request.num_samples, steps=request.steps,
                        guidance=request.guidance, seed=request.seed, trajectories=True)


def density_options(pipe: GeoPipeline) -> dict:
    options = dict(DENSITY_ODE)
    if pipe.process.on_sphere:
        options.pop("radial_nodes")
    return options


def sample_log_density(pipe: GeoPipeline, embedding: torch.Tensor, samples: torch.Tensor,
                       guidance: float = DENSITY_GUIDANCE, limit: int | None = SCORED_SAMPLES) -> torch.Tensor:
    """(K,) log p(sample | image), nats per steradian, of the first K = min(N, limit) of (N, 2) samples."""
    scored = samples[:limit] if limit else samples
    return pipe.log_density(scored, embeddings=embedding, guidance=guidance, **density_options(pipe))[0]


def density_stages(pipe: GeoPipeline, embedding: torch.Tensor, samples: torch.Tensor,
                   guidance: float = DENSITY_GUIDANCE, scored: int | None = SCORED_SAMPLES,
                   **grid) -> Iterator[tuple[DensityCells, torch.Tensor]]:
    """The progressive log-density map of one image: coarse grid, then refinements where the mass is.

    Yields (cells, log p of the first `scored` samples). The samples ride along in the coarse grid's ODE solve:
    on a CPU one solve costs about the same for a hundred points or a few hundred.
    grid: coarse_deg, levels, max_cells_per_level (defaults: DENSITY_GRID)."""
    options = density_options(pipe)
    extra = samples[:scored] if scored else samples
    scored_logp: list[torch.Tensor] = []

    def evaluate(latlon: torch.Tensor) -> torch.Tensor:
        if scored_logp:
            return pipe.log_density(latlon, embeddings=embedding, guidance=guidance, **options)[0]
        both = pipe.log_density(torch.cat((latlon, extra.to(latlon.dtype))), embeddings=embedding, guidance=guidance,
                                **options)[0]
        scored_logp.append(both[len(latlon):])
        return both[:len(latlon)]

    for cells in progressive_density(evaluate, samples=samples, **{**DENSITY_GRID, **grid}):
        yield cells, scored_logp[0]
