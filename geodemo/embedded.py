"""The models shipped inside the repository (no download): satellite-view geolocators of Blue Marble.

`geodemo.load("default")` is the Riemannian flow-matching model; "earth-flow" and "earth-diffusion"
are the same network trained with flow matching and diffusion in R^3, for side-by-side comparison.
They answer "where on Earth is this view from space?" (see assets/MODEL_CARD.md); any other image
still gets an answer, but one outside the training domain.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from geodemo.paths import ASSETS_DIR, EXAMPLES_DIR

EXAMPLES_FILE = "examples.json"

EMBEDDED_MODELS: dict[str, str] = {
    "earth-rfm": "earth-rfm",
    "earth-flow": "earth-flow",
    "earth-diffusion": "earth-diffusion",
}
"""Name -> folder under assets/ (config.json + model.safetensors)."""
ALIASES: dict[str, str] = {"default": "earth-rfm"}


def available_embedded_models() -> list[str]:
    """Names that `geodemo.load` resolves to a shipped folder, aliases included."""
    return sorted([*EMBEDDED_MODELS, *ALIASES])


def embedded_model_path(name: str) -> Path | None:
    """The assets/ folder of a shipped model name (or alias), None for any other string."""
    name = ALIASES.get(str(name), str(name))
    return ASSETS_DIR / EMBEDDED_MODELS[name] if name in EMBEDDED_MODELS else None


@dataclass(frozen=True)
class ExampleView:
    """A shipped example image with the place it shows: centre (lat, lon) degrees and view width in km."""

    path: Path
    title: str
    latitude: float
    longitude: float
    width_km: float


def example_views() -> list[ExampleView]:
    """The example views in assets/examples, in the order of examples.json."""
    entries = json.loads((EXAMPLES_DIR / EXAMPLES_FILE).read_text())
    return [ExampleView(path=EXAMPLES_DIR / e["file"], title=e["title"], latitude=e["latitude"],
                        longitude=e["longitude"], width_km=e["width_km"]) for e in entries]
