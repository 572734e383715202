"""The example views shipped in assets/examples with the place each shows (examples.json): what the app offers
as examples and how a shipped example is recognised by its content, so that its true centre is known."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from geodemo.paths import EXAMPLES_DIR

EXAMPLES_FILE = "examples.json"


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


@lru_cache(maxsize=1)
def _centres_by_digest() -> dict[str, tuple[float, float]]:
    try:
        views = example_views()
    except (OSError, ValueError, KeyError):
        return {}
    return {hashlib.sha256(v.path.read_bytes()).hexdigest(): (v.latitude, v.longitude)
            for v in views if v.path.is_file()}


def known_location(path: str | Path) -> tuple[float, float] | None:
    """The true centre (lat, lon) of a shipped example view, recognised by its bytes; None otherwise."""
    try:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None
    return _centres_by_digest().get(digest)
