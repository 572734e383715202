"""Image encoders: image -> embedding. A registry maps a name to a factory building the encoder lazily."""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import torch
from PIL import Image


class Encoder(Protocol):
    """Turns a batch of RGB PIL images into a (B, dim) float tensor of embeddings."""

    name: str
    dim: int

    def embed(self, images: Sequence[Image.Image], device: torch.device | str = "cpu") -> torch.Tensor: ...


_FACTORIES: dict[str, Callable[[], Encoder]] = {}
_CACHE: dict[str, Encoder] = {}


def register_encoder(name: str, factory: Callable[[], Encoder]) -> None:
    """Make `name` buildable by get_encoder; the factory runs on first use only."""
    _FACTORIES[name] = factory


def available_encoders() -> list[str]:
    return sorted(_FACTORIES)


def forget_built(*names: str) -> None:
    """Drop built encoders so that the next get_encoder builds them again (after their weights' source changed)."""
    for name in names:
        _CACHE.pop(name, None)


def get_encoder(name: str) -> Encoder:
    """The encoder registered as `name`, built once and cached."""
    if name not in _FACTORIES:
        raise KeyError(f"unknown image encoder {name!r}; registered: {available_encoders()}")
    if name not in _CACHE:
        _CACHE[name] = _FACTORIES[name]()
    return _CACHE[name]


def _efficientnet_lite0(grid: int = 1) -> Encoder:
    from geodemo.encoders.efficientnet import EfficientNetLite0Encoder

    return EfficientNetLite0Encoder(grid)


def _earth_lite0() -> Encoder:
    from geodemo.encoders.efficientnet import EARTH_NAME, EARTH_WEIGHTS, EfficientNetLite0Encoder
    from geodemo.paths import ASSETS_DIR

    weights = ASSETS_DIR / EARTH_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"the fine-tuned Earth-view encoder {weights} is not there: it is made by "
                                "`STAGES=encoder bash training/earth_views.sh` (training/README.md)")
    return EfficientNetLite0Encoder(weights=weights, name=EARTH_NAME)


register_encoder("efficientnet_lite0", _efficientnet_lite0)
register_encoder("efficientnet_lite0_grid2", lambda: _efficientnet_lite0(grid=2))
register_encoder("earth_lite0_grid2", _earth_lite0)


# The encoders of the authors' released models: built on first use, nothing is downloaded here.
from geodemo.encoders.dinov2 import dinov2_encoder  # noqa: E402
from geodemo.encoders.sources import set_encoder_dir  # noqa: E402,F401  (geodemo.encoders.set_encoder_dir)
from geodemo.encoders.street_clip import street_clip_encoder  # noqa: E402

register_encoder("street_clip", street_clip_encoder)
register_encoder("dinov2_vitl14_reg", dinov2_encoder)
