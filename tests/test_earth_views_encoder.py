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
