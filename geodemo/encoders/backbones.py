"""Image encoders built on open_clip / timm backbones: preprocess each PIL image, batch, run, return (B, dim).

`timm_encoder(...)` and `open_clip_encoder(...)` make one registry entry per model, e.g.
    register_encoder("convnext_base", lambda: timm_encoder("convnext_base", "convnext_base.fb_in22k", 1024))
Both libraries are imported only when an encoder is built; the model moves to the device of the first call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Preprocess = Callable[[Image.Image], torch.Tensor]


def normalize(image: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(3, H, W) float32 tensor (pixel / 255 - mean) / std of an RGB image."""
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (pixels - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def clip_preprocess(image: Image.Image, size: int = 336, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """transformers' CLIPImageProcessor (PIL backend, the one PLONK's embeddings were made with): bicubic resize
    of the short side to `size` (long side int(size * long / short)), centre crop size x size with the
    offset floor((side - size) / 2), then CLIP mean / std."""
    image = image.convert("RGB")
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return normalize(image.crop((left, top, left + size, top + size)), mean, std)


def centre_square(image: Image.Image) -> Image.Image:
    """The largest centred square of an image: side s = min(w, h) at offsets round((w - s) / 2), round((h - s) / 2)
    (torchvision's CenterCrop rule, Python's round: ties to even)."""
    w, h = image.size
    s = min(w, h)
    left, top = round((w - s) / 2), round((h - s) / 2)
    return image.crop((left, top, left + s, top + s))


def square_crop_preprocess(image: Image.Image, size: int = 336, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """PLONK's DINOv2 transform: the largest centre square (centre_square), bicubic resize to size x size, then
    ImageNet mean / std."""
    image = centre_square(image.convert("RGB")).resize((size, size), Image.Resampling.BICUBIC)
    return normalize(image, mean, std)


class BackboneEncoder:
    """An Encoder around a module mapping (B, 3, H, W) pixels to (B, dim) embeddings and its per-image
    preprocessing; `build()` returns both and runs on first use."""

    def __init__(self, name: str, dim: int, build: Callable[[], tuple[torch.nn.Module, Preprocess]], batch_size: int = 32):
        self.name = name
        self.dim = dim
        self._build = build
        self.batch_size = batch_size
        self._built: tuple[torch.nn.Module, Preprocess] | None = None

    def built(self) -> tuple[torch.nn.Module, Preprocess]:
        if self._built is None:
            model, preprocess = self._build()
            self._built = (model.eval().requires_grad_(False), preprocess)
        return self._built

    def to(self, device: torch.device | str) -> BackboneEncoder:
        """Build the weights (on first use) and move them to `device`, encoding nothing."""
        self.built()[0].to(device)
        return self

    @torch.no_grad()
    def embed(self, images: Sequence[Image.Image], device: torch.device | str = "cpu") -> torch.Tensor:
        """(B, dim) float32 embeddings, batch_size images per forward pass, returned on the CPU."""
        model, preprocess = self.to(device).built()
        out = []
        for i in range(0, len(images), self.batch_size):
            pixels = torch.stack([preprocess(im) for im in images[i:i + self.batch_size]]).to(device)
            out.append(model(pixels).float().cpu())
        return torch.cat(out) if out else torch.empty(0, self.dim)


def timm_encoder(name: str, model_name: str, dim: int, img_size: int | None = None,
                 weights: str | Path | Callable[[], str | Path] | None = None,
                 preprocess: Preprocess | None = None) -> BackboneEncoder:
    """A timm model's pooled pre-logits features (num_classes=0). weights: a local .safetensors / .pth file (or a
    function returning one, called at build time), else timm's own pretrained download; preprocess: the model's
    timm transform by default."""

    def build() -> tuple[torch.nn.Module, Preprocess]:
        import timm
        from timm.data import create_transform, resolve_data_config

        kwargs = {"img_size": img_size} if img_size else {}
        file = weights() if callable(weights) else weights
        overlay = {"pretrained_cfg_overlay": {"file": str(file)}} if file else {}
        model = timm.create_model(model_name, pretrained=True, num_classes=0, **kwargs, **overlay)
        return model, preprocess or create_transform(**resolve_data_config({}, model=model))

    return BackboneEncoder(name, dim, build)


def open_clip_encoder(name: str, model_name: str, pretrained: str | None, dim: int) -> BackboneEncoder:
    """An open_clip model's image features (encode_image: pooled and projected), with open_clip's preprocessing;
    pretrained: open_clip's tag (e.g. "openai", downloaded on first use) or None for random weights."""

    def build() -> tuple[torch.nn.Module, Preprocess]:
        import open_clip

        model, _, transform = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
        return model.visual, transform

    return BackboneEncoder(name, dim, build)
