"""The released models' image encoders: StreetCLIP converted into open_clip, DINOv2-reg through timm."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch.nn import functional as F
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from geodemo.encoders import available_encoders, get_encoder, register_encoder
from geodemo.encoders.backbones import (centre_square, clip_preprocess, open_clip_encoder, square_crop_preprocess,
                                        timm_encoder)
from geodemo.encoders.dinov2 import IMAGE_SIZE, TIMM_MODEL
from geodemo.encoders.street_clip import (OPEN_CLIP_MODEL, build_vision_tower, convert_state_dict, load_converted,
                                          open_clip_config, street_clip_encoder)

ODD_SIZES = [(501, 333), (337, 1001), (400, 400), (1000, 339), (339, 338)]
# geolocal/StreetCLIP's vision_config (that of openai/clip-vit-large-patch14-336)
STREET_CLIP_VISION = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                          image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5)
SMALL_VISION = dict(STREET_CLIP_VISION, hidden_size=64, intermediate_size=256, num_attention_heads=4,
                    num_hidden_layers=2, image_size=56, projection_dim=32)


@pytest.fixture(scope="module")
def photos():
    from pathlib import Path

    source = Image.open(Path(__file__).parent / "data" / "chelsea.jpg").convert("RGB")
    return [source.resize(size, Image.Resampling.BILINEAR) for size in ODD_SIZES]


def test_registry_names_the_released_encoders():
    assert {"street_clip", "dinov2_vitl14_reg"} <= set(available_encoders())


def test_street_clip_is_open_clip_vit_l14_336_quickgelu():
    """StreetCLIP's transformers config, converted, equals open_clip's own config of OPEN_CLIP_MODEL as open_clip
    reads it (CLIPVisionCfg: the fields its JSON leaves out, such as head_width and mlp_ratio, take their defaults)."""
    import open_clip
    from open_clip.model import CLIPVisionCfg

    config = open_clip.get_model_config(OPEN_CLIP_MODEL)
    theirs = CLIPVisionCfg(**config["vision_cfg"])
    ours = open_clip_config(STREET_CLIP_VISION)
    assert {k: getattr(theirs, k) for k in ours} == ours
    assert config["quick_gelu"] is True and config["embed_dim"] == STREET_CLIP_VISION["projection_dim"]


def test_conversion_covers_every_tensor_of_the_full_size_model():
    """Real StreetCLIP shapes, on the meta device (no memory, no compute): every open_clip tensor is filled
    by a transformers tensor of the same shape."""
    with torch.device("meta"):
        hf = CLIPVisionModel(CLIPVisionConfig(**STREET_CLIP_VISION))
        tower = build_vision_tower(STREET_CLIP_VISION)
    converted = convert_state_dict({f"vision_model.{k}": v for k, v in hf.state_dict().items()})
    expected = {k: tuple(v.shape) for k, v in tower.state_dict().items() if k != "proj"}
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected
    assert expected["positional_embedding"] == (577, 1024)


def test_converted_cls_token_equals_transformers():
    torch.manual_seed(0)
    hf = CLIPVisionModel(CLIPVisionConfig(**SMALL_VISION)).eval()
    ours = load_converted(SMALL_VISION, hf.state_dict()).eval()
    pixels = torch.randn(3, 3, 56, 56)
    with torch.no_grad():
        expected = hf(pixel_values=pixels).last_hidden_state[:, 0]
        got = ours(pixels)
    assert (got - expected).abs().max() < 1e-4 and expected.abs().mean() > 0.1


def test_preprocessing_matches_clip_processor_on_odd_sizes(photos):
    kwargs = dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    pil_backend, default_backend = CLIPImageProcessorPil(**kwargs), CLIPImageProcessor(**kwargs)
    for image in photos:
        ours = clip_preprocess(image)
        exact = torch.as_tensor(np.asarray(pil_backend(images=[image], return_tensors="np")["pixel_values"]))[0]
        assert ours.shape == (3, 336, 336) and torch.equal(ours, exact)
        # transformers 5's default (torchvision) backend resizes differently by a grey level here and there
        near = default_backend(images=[image], return_tensors="pt")["pixel_values"][0]
        assert (ours - near).abs().mean() < 1e-3


def test_street_clip_encoder_from_a_local_transformers_folder(tmp_path, photos):
    """The load path of the real encoder: a folder as the hub stores it (CLIP config.json + safetensors)."""
    torch.manual_seed(0)
    hf = CLIPVisionModel(CLIPVisionConfig(**SMALL_VISION)).eval()
    hf.save_pretrained(tmp_path)
    encoder = street_clip_encoder(tmp_path)
    got = encoder.embed(photos[:2])
    pixels = torch.stack([clip_preprocess(im, size=56) for im in photos[:2]])
    with torch.no_grad():
        expected = hf(pixel_values=pixels).last_hidden_state[:, 0]
    assert got.shape == (2, 64) and (got - expected).abs().max() < 1e-4


def test_dinov2_config_is_vit_l14_with_4_registers_at_336():
    import timm

    with torch.device("meta"):
        model = timm.create_model(TIMM_MODEL, pretrained=False, img_size=IMAGE_SIZE, num_classes=0)
    assert model.patch_embed.patch_size == (14, 14) and model.patch_embed.grid_size == (24, 24)
    assert model.num_reg_tokens == 4 and model.num_prefix_tokens == 5 and model.embed_dim == 1024
    assert model.global_pool == "token" and model.num_features == 1024  # the LayerNorm'd CLS token


@pytest.mark.parametrize("size", [(503, 500), (500, 507), (337, 1001), (339, 338), (400, 400)])
def test_centre_square_is_torchvision_center_crop(size):
    """Both encoders' crop; odd margins such as 3 and 7 pixels tell round-half-to-even from floor."""
    from torchvision.transforms.functional import center_crop

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    assert np.array_equal(np.asarray(centre_square(image)), np.asarray(center_crop(image, min(size))))


def test_dinov2_preprocessing_matches_the_authors_transform(photos):
    from plonk.utils.image_processing import CenterCrop
    from torchvision import transforms

    authors = transforms.Compose([
        CenterCrop(ratio="1:1"), transforms.Resize(336, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(), transforms.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    ])
    for image in photos:
        assert (square_crop_preprocess(image) - authors(image)).abs().max() < 1e-6


def test_timm_encoder_loads_local_weights_and_resamples_positions_like_dinov2(tmp_path, photos):
    """The DINOv2 load path with a small sibling: weights from a local file, positions resampled from a 7 x 7
    to a 4 x 4 grid by bicubic antialiased interpolation (torch.hub DINOv2-reg's interpolate_pos_encoding)."""
    import timm

    torch.manual_seed(0)
    source = timm.create_model("vit_small_patch14_reg4_dinov2.lvd142m", pretrained=False, img_size=98, num_classes=0)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "model.safetensors"))
    encoder = timm_encoder("small", "vit_small_patch14_reg4_dinov2.lvd142m", 384, img_size=56,
                           weights=str(tmp_path / "model.safetensors"), preprocess=partial(square_crop_preprocess, size=56))
    model, _ = encoder.built()
    grid = source.pos_embed.reshape(1, 7, 7, 384).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(4, 4), mode="bicubic", antialias=True).permute(0, 2, 3, 1).reshape(1, 16, 384)
    assert (model.pos_embed - expected).abs().max() < 1e-6
    assert torch.equal(model.cls_token, source.cls_token) and torch.equal(model.reg_token, source.reg_token)
    got = encoder.embed(photos[:2])
    with torch.no_grad():
        direct = model(torch.stack([square_crop_preprocess(im, size=56) for im in photos[:2]]))
    assert got.shape == (2, 384) and torch.allclose(got, direct)


def test_any_open_clip_model_is_one_registry_line(photos):
    register_encoder("test_vit_s32", lambda: open_clip_encoder("test_vit_s32", "ViT-S-32", None, 384))
    encoder = get_encoder("test_vit_s32")
    got = encoder.embed(photos[:3])
    model, preprocess = encoder.built()
    with torch.no_grad():
        direct = model(torch.stack([preprocess(im) for im in photos[:3]]))
    assert got.shape == (3, 384) and torch.allclose(got, direct, atol=1e-6)
