"""Decisions a server makes at startup, on a Hugging Face Space or anywhere: which model the app opens on, the one
sentence the page shows when that model cannot be had, loading it before the first visitor, and how long a
ZeroGPU call may hold its GPU for one request.

The model shown first: `--model`, else the environment variable GEODEMO_MODEL, else, on a Space (SPACE_ID set),
SPACE_MODEL (an official photo model), else the shipped `default`. A hub model is taken when the Hugging Face
cache holds it and its image encoder (what `preload_from_hub` puts there at build time) or when the hub answers;
otherwise the app opens on the shipped model and says why.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from geodemo import hub
from geodemo.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from geodemo.encoders.sources import ENCODER_SOURCES, ready_offline
from geodemo.service import Catalogue, ModelCache, catalogue_name, make_catalogue

log = logging.getLogger("geodemo.space")

SPACE_MODEL = "nicolas-dufour/PLONK_YFCC"
"""The model a Space opens on: trained on YFCC100M's geotagged Flickr photos, the kind of picture visitors drop
(OSV-5M is street-level imagery only, iNaturalist plants and animals; both stay one click away)."""
MODEL_ENV = "GEODEMO_MODEL"
PROBE_TIMEOUT_S = 5.0
"""Seconds the startup waits for the hub before opening on the shipped model."""


@dataclass(frozen=True)
class StartModel:
    """The model the page opens on (`name`; None = the catalogue's default, the shipped `default`), what was
    asked for and by whom, and `notice`: one sentence for the page when the request could not be met."""

    name: str | None
    requested: str | None = None
    source: str = ""
    notice: str | None = None


def requested_model(cli_model: str | None, environ: Mapping[str, str]) -> tuple[str | None, str]:
    """(model, who asked): `--model`, else GEODEMO_MODEL, else SPACE_MODEL on a Space, else (None, "")."""
    if cli_model:
        return cli_model, "--model"
    if environ.get(MODEL_ENV):
        return environ[MODEL_ENV], MODEL_ENV
    if environ.get("SPACE_ID"):
        return SPACE_MODEL, "the Space default"
    return None, ""


def hub_model_problem(hub_id: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when a hub model can be loaded here (the cache holds it and its image encoder, or the hub answers),
    else why not, in a few words."""
    official = hub.official_model(hub_id)
    encoder = official.encoder if official is not None else None
    encoder_ready = encoder not in ENCODER_SOURCES or ready_offline(encoder)
    if encoder_ready and hub.cached(hub_id, (CONFIG_FILE, WEIGHTS_FILE)) is not None:
        return None
    return hub.unreachable_reason(hub_id, timeout=timeout)


def fallback_notice(model: str, why: str) -> str:
    """The page's one sentence when `model` could not be opened."""
    kind = "photo model" if hub.official_model(model) is not None else "model"
    return (f"The {kind} {model} could not be loaded ({why.rstrip('.')}), so this page opened on the shipped model "
            "`default`, which reads views of the Earth from space, not photos; choose the model again once it can be "
            "reached.")


def choose_start_model(cli_model: str | None = None, environ: Mapping[str, str] | None = None,
                       timeout: float = PROBE_TIMEOUT_S) -> StartModel:
    """The model to open on. A hub id that can be neither found in the cache nor fetched falls back to the shipped
    model with a notice; anything else (a folder, a shipped name) is returned as asked, for the catalogue to
    accept or refuse with its own message (a folder that does not exist is an error, not a fallback)."""
    requested, source = requested_model(cli_model, os.environ if environ is None else environ)
    if requested is None:
        return StartModel(None)
    if hub.is_hub_id(requested) and not Path(requested).exists():
        why = hub_model_problem(requested, timeout)
        if why is not None:
            return StartModel(None, requested, source, fallback_notice(requested, why))
    return StartModel(requested, requested, source)


def warm_up(load: Callable[[str], object], name: str) -> str | None:
    """Load model `name` and its image encoder's weights onto the model's device before the first visitor (no
    image is encoded, so this is also safe in a ZeroGPU Space's main process). `load` is the app's model cache's
    get. Returns None, or the page's fallback sentence when the model or its encoder fails to load."""
    failures = (OSError, ValueError, KeyError, RuntimeError, ImportError)
    try:
        pipe = load(name)
    except failures as err:
        return fallback_notice(name, _why(err))
    try:
        encoder = pipe.encoder
    except ValueError:  # a model without an image encoder (embeddings only): nothing more to load
        return None
    try:
        if hasattr(encoder, "to"):  # the encoders that hold weights: EfficientNet, open_clip's and timm's
            encoder.to(pipe.device)
    except failures as err:
        return fallback_notice(name, _why(err))
    return None


def _why(err: Exception) -> str:
    return " ".join(str(err).split()).rstrip(".") or type(err).__name__


def on_zero_gpu(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process runs on a ZeroGPU Space (the variable the `spaces` package reads)."""
    return (os.environ if environ is None else environ).get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")


def on_space(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process runs on a Hugging Face Space."""
    return bool((os.environ if environ is None else environ).get("SPACE_ID"))


ZERO_GPU_START_S = 15.0
"""A ZeroGPU worker's start: fork, the weights' move to the GPU (~1.5 GB with a ViT-L encoder), first kernels."""
ZERO_GPU_PASSES_PER_S = 1.0e5
"""Denoiser passes per second (point x step x 2 for guidance) counted for a ZeroGPU slice: a third of the
~6.6e5 / s measured for dim 512 / depth 12 in fp32 on a whole H200 (benchmarks/README.md), for the slice and
margin."""
ZERO_GPU_MAP_S = 25.0
"""The progressive log-density map with its drawings (each drawing ~0.5 s of CPU inside the call)."""
ZERO_GPU_MAX_S = 120
"""The longest call asked for."""


def gpu_seconds(num_samples: int, steps: int, exact_density: bool) -> int:
    """Seconds one request may hold a ZeroGPU GPU: start + 2 N steps / rate + the map if asked, at most
    ZERO_GPU_MAX_S. Shorter calls wait less in ZeroGPU's queue; a call past its time is cut off."""
    seconds = ZERO_GPU_START_S + 2 * int(num_samples) * int(steps) / ZERO_GPU_PASSES_PER_S
    return int(min(ZERO_GPU_MAX_S, math.ceil(seconds + (ZERO_GPU_MAP_S if exact_density else 0.0))))


REQUEST_ARGUMENTS = ("num_samples", "steps", "exact_density")


def request_duration(fn: Callable) -> Callable[..., int]:
    """The `duration` callable of spaces.GPU for request function `fn`: called with fn's own arguments, it reads
    them by name (REQUEST_ARGUMENTS) and returns gpu_seconds. Raises TypeError at once when fn lacks one."""
    signature = inspect.signature(fn)
    missing = [name for name in REQUEST_ARGUMENTS if name not in signature.parameters]
    if missing:
        raise TypeError(f"{fn.__name__} has no argument {missing}: gpu_seconds cannot size its ZeroGPU calls")

    def duration(*args, **kwargs) -> int:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = bound.arguments
        try:
            return gpu_seconds(values["num_samples"], values["steps"], bool(values["exact_density"]))
        except (TypeError, ValueError):  # values the request's own checks will refuse: the shortest call
            return int(ZERO_GPU_START_S)

    return duration



@dataclass
class Startup:
    """What the app starts with: the models on offer, their cache (the first model already loaded), the model
    shown first and the page's one-sentence notice (None when all went as asked)."""

    catalogue: Catalogue
    models: ModelCache
    first_model: str | None
    notice: str | None = None


def start_app(cli_model: str | None = None, device: str | None = None, environ: Mapping[str, str] | None = None,
              timeout: float = PROBE_TIMEOUT_S, warm: bool = True) -> Startup:
    """choose_start_model, then the catalogue offering it and, with `warm`, the model loaded before the first
    visitor; a model that fails to load then gives way to the shipped default with the notice. Raises
    ModelUnavailable for what is neither a model folder, a shipped name nor a hub id."""
    choice = choose_start_model(cli_model, environ, timeout)
    catalogue = make_catalogue(choice.name)
    models = ModelCache(catalogue, device=device)
    first = catalogue_name(choice.name) if choice.name else catalogue.default()
    notice = choice.notice
    if warm and first is not None:
        failed = warm_up(models.get, first)
        if failed is not None and first != catalogue.default():
            log.warning("%s", failed)
            first, notice = catalogue.default(), failed
            failed = warm_up(models.get, first) if first is not None else None
        if failed is not None:
            log.warning("%s", failed)
    return Startup(catalogue, models, first, notice)
