from pathlib import Path

import pytest
import torch
from PIL import Image

from geodemo.encoders import available_encoders, get_encoder
from geodemo.encoders import efficientnet
from geodemo.encoders.efficientnet import load_by_position, square_crop_resize

CAT = Path(__file__).parent / "data" / "chelsea.jpg"  # scikit-image's "chelsea", CC0 (Stefan van der Walt)


def test_offline_encoder_is_registered_and_recognises_a_cat():
    assert "efficientnet_lite0" in available_encoders()
    encoder = get_encoder("efficientnet_lite0")
    pixels = square_crop_resize(Image.open(CAT)).unsqueeze(0)
    assert int(encoder.classify(pixels).argmax()) == 285  # ImageNet "Egyptian cat": the weights are right
    emb = encoder.embed([Image.open(CAT), Image.open(CAT).convert("L")])
    assert emb.shape == (2, 1280) and torch.isfinite(emb).all() and (emb >= 0).all()
    assert torch.allclose(encoder.embed_pixels(pixels), emb[:1], atol=1e-5)


def test_weights_with_a_wrong_hash_or_layout_are_refused(monkeypatch):
    monkeypatch.setattr(efficientnet, "WEIGHTS_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="SHA-256"):
        efficientnet.build_model()
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match="by position"):
        load_by_position(model, {"a": torch.zeros(4, 3), "b": torch.zeros(4), "c": torch.zeros(3, 4), "d": torch.zeros(2)})
    with pytest.raises(ValueError, match="tensors"):
        load_by_position(model, {"a": torch.zeros(4, 3)})


def test_grid_features_average_the_feature_map_over_overlapping_cells():
    """2 x 2 adaptive pooling of the 7 x 7 map: rows and columns 0-3 and 3-6 (the middle ones shared); grid 1 is
    the pooled vector timm's own head gives."""
    pooled, grid = get_encoder("efficientnet_lite0"), get_encoder("efficientnet_lite0_grid2")
    assert (pooled.dim, grid.dim, grid.name) == (1280, 5120, "efficientnet_lite0_grid2")
    pixels = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    features = pooled.feature_map(pixels)
    assert features.shape == (2, 1280, 7, 7)
    head = pooled.model.forward_head(features, pre_logits=True)
    assert torch.allclose(pooled.embed_pixels(pixels), head, atol=1e-6)
    cells = grid.embed_pixels(pixels).view(2, 1280, 2, 2)
    for i, rows in enumerate((slice(0, 4), slice(3, 7))):
        for j, cols in enumerate((slice(0, 4), slice(3, 7))):
            assert torch.allclose(cells[:, :, i, j], features[:, :, rows, cols].mean(dim=(2, 3)), atol=1e-5)
