"""StreetCLIP (geolocal/StreetCLIP, CLIP ViT-L/14 at 336 px) through open_clip, as PLONK's OSV-5M model uses it.

The hub holds a transformers CLIP checkpoint; we build open_clip's vision transformer with no pretrained
download and convert the transformers state dict into it at load time. Embedding = the CLS token of the
last hidden state, BEFORE the post-LayerNorm and the projection (transformers: last_hidden_state[:, 0]).
Preprocessing = transformers' CLIPImageProcessor with StreetCLIP's settings (see backbones.clip_preprocess).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import torch
from torch import nn

from geodemo.encoders.backbones import BackboneEncoder, Preprocess, clip_preprocess
from geodemo.encoders.sources import ENCODER_SOURCES, encoder_files

OPEN_CLIP_MODEL = "ViT-L-14-336-quickgelu"
"""open_clip's name for the same architecture (OpenAI's CLIP ViT-L/14 at 336 px, QuickGELU)."""
_WEIGHT_FILES = ENCODER_SOURCES["street_clip"].weights
_PREFIX = "vision_model."
_TEXT_KEYS = ("text_model.", "text_projection", "logit_scale")


def open_clip_config(vision_config: dict) -> dict:
    """open_clip CLIPVisionCfg fields equal to a transformers CLIPVisionConfig dict (hidden_act quick_gelu)."""
    if vision_config.get("hidden_act", "quick_gelu") != "quick_gelu":
        raise ValueError(f"expected a CLIP vision tower with quick_gelu, got {vision_config.get('hidden_act')!r}")
    width, heads = vision_config["hidden_size"], vision_config["num_attention_heads"]
    return {
        "image_size": vision_config["image_size"],
        "patch_size": vision_config["patch_size"],
        "width": width,
        "layers": vision_config["num_hidden_layers"],
        "head_width": width // heads,
        "mlp_ratio": vision_config["intermediate_size"] / width,
    }


def build_vision_tower(vision_config: dict) -> nn.Module:
    """open_clip's VisionTransformer with the shapes of a transformers CLIP vision config (random weights)."""
    from open_clip.transformer import QuickGELU, VisionTransformer

    cfg = open_clip_config(vision_config)
    return VisionTransformer(
        image_size=cfg["image_size"], patch_size=cfg["patch_size"], width=cfg["width"], layers=cfg["layers"],
        heads=cfg["width"] // cfg["head_width"], mlp_ratio=cfg["mlp_ratio"], act_layer=QuickGELU,
        output_dim=vision_config.get("projection_dim", cfg["width"]),
    )


def convert_state_dict(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers CLIP vision keys (`vision_model.*` as CLIPModel checkpoints such as StreetCLIP's store them,
    or unprefixed as transformers 5's CLIPVisionModel.state_dict() gives them) -> open_clip VisionTransformer
    keys; q, k, v projections are stacked into in_proj. Text-tower keys are ignored."""
    if any(k.startswith(_PREFIX) for k in hf_state):
        state = {k[len(_PREFIX):]: v for k, v in hf_state.items() if k.startswith(_PREFIX)}
    else:
        state = dict(hf_state)
    out = {
        "class_embedding": state["embeddings.class_embedding"],
        "conv1.weight": state["embeddings.patch_embedding.weight"],
        "positional_embedding": state["embeddings.position_embedding.weight"],
        "ln_pre.weight": state["pre_layrnorm.weight"], "ln_pre.bias": state["pre_layrnorm.bias"],
        "ln_post.weight": state["post_layernorm.weight"], "ln_post.bias": state["post_layernorm.bias"],
    }
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")})
    renames = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
               "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    for i in layers:
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat([state[f"{src}self_attn.{p}_proj.{kind}"] for p in "qkv"])
            for a, b in renames.items():
                out[f"{dst}{b}.{kind}"] = state[f"{src}{a}.{kind}"]
    if "visual_projection.weight" in hf_state:
        out["proj"] = hf_state["visual_projection.weight"].T
    return out


class ClsTokenTower(nn.Module):
    """An open_clip VisionTransformer returning the CLS token before ln_post and proj: (B, 3, H, W) -> (B, width)."""

    def __init__(self, tower: nn.Module):
        super().__init__()
        tower.ln_post = nn.Identity()
        tower.proj = None
        self.tower = tower

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.tower(pixels)


def load_converted(vision_config: dict, hf_state: dict[str, torch.Tensor]) -> ClsTokenTower:
    """Build the open_clip tower for vision_config, load the converted weights (every key must match), wrap it."""
    tower = build_vision_tower(vision_config)
    converted = convert_state_dict(hf_state)
    missing, unexpected = tower.load_state_dict(converted, strict=False)
    if set(missing) - {"proj"} or unexpected:
        raise ValueError(f"StreetCLIP conversion mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return ClsTokenTower(tower)


def read_folder(folder: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(vision config dict, vision_model.* tensors) of a transformers CLIP folder (config.json + weights)."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    vision_config = config.get("vision_config", config)
    for name in _WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            break
    else:
        raise FileNotFoundError(f"{folder} holds none of {_WEIGHT_FILES}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys() if not k.startswith(_TEXT_KEYS)}
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    return vision_config, state


def street_clip_encoder(folder: str | Path | None = None, preprocess: Preprocess | None = None) -> BackboneEncoder:
    """The StreetCLIP encoder (1024-d); weights from a local transformers CLIP folder, else, when first used, the
    encoder directory's copy, the cache's or the hub's (geodemo.encoders.sources)."""

    def build() -> tuple[nn.Module, Preprocess]:
        source = folder if folder is not None else encoder_files("street_clip")
        vision_config, state = read_folder(source)
        size = vision_config["image_size"]
        return load_converted(vision_config, state), preprocess or partial(clip_preprocess, size=size)

    return BackboneEncoder("street_clip", 1024, build)

