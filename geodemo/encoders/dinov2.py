"""DINOv2 ViT-L/14 with 4 registers (PLONK's YFCC and iNaturalist encoder) through timm.

timm's `vit_large_patch14_reg4_dinov2.lvd142m` holds the weights of torch.hub's `dinov2_vitl14_reg`; built at
336 px, timm resamples the 37 x 37 position grid to 24 x 24 bicubically with antialiasing at load time, as the
torch.hub model does at every forward pass. Embedding = the final-LayerNorm'd CLS token ("x_norm_clstoken",
what the torch.hub model returns). Preprocessing = the largest centre square, bicubic 336, ImageNet mean / std.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from geodemo.encoders.backbones import BackboneEncoder, square_crop_preprocess, timm_encoder
from geodemo.encoders.sources import encoder_files

TIMM_MODEL = "vit_large_patch14_reg4_dinov2.lvd142m"
WEIGHTS_FILE = "model.safetensors"
IMAGE_SIZE = 336
DIM = 1024


def dinov2_encoder(weights: str | Path | None = None) -> BackboneEncoder:
    """The 1024-d DINOv2-reg encoder; weights: a local timm-format model.safetensors (or a folder holding one),
    else, when the encoder is first used, the encoder directory's copy, the cache's or timm's hub repository's
    (geodemo.encoders.sources)."""
    if weights is not None and Path(weights).is_dir():
        weights = Path(weights) / WEIGHTS_FILE
    return timm_encoder("dinov2_vitl14_reg", TIMM_MODEL, DIM, img_size=IMAGE_SIZE,
                        weights=weights if weights is not None else lambda: encoder_files("dinov2_vitl14_reg") / WEIGHTS_FILE,
                        preprocess=partial(square_crop_preprocess, size=IMAGE_SIZE))
