"""The fine-tuned Earth-view encoder: its weights file, its geocell objective, and a resumable training run."""

import math

import pytest
import torch
from PIL import Image

from geodemo.encoders.efficientnet import (EfficientNetLite0Encoder, build_model, load_backbone, pool_grid,
                                          save_backbone)
from geodemo.sphere import EARTH_RADIUS_KM, haversine_km, xyz_to_latlon
from training.earth_encoder import (EncoderRecipe, cell_centres, learning_rate_factor, soft_targets,
                                    train_encoder)


def test_a_saved_backbone_is_the_same_network_at_its_own_input_size(tmp_path):
    """save_backbone + EfficientNetLite0Encoder(weights=...) reproduces the ImageNet network's 2 x 2 features of
    pixels resized to the stored input size (float32 file: exactly; float16 file: to fp16 rounding)."""
    imagenet = EfficientNetLite0Encoder(grid=2)
    pixels = torch.rand(2, 3, 200, 200, generator=torch.Generator().manual_seed(0))
    resized = torch.nn.functional.interpolate(pixels, size=(160, 160), mode="bilinear", antialias=True,
                                              align_corners=False)
    with torch.no_grad():
        expected = pool_grid(imagenet.model.forward_features((resized - 0.5) / 0.5), 2)
    exact = save_backbone(imagenet.model, tmp_path / "fp32.safetensors", 160, 2, dtype=torch.float32)
    encoder = EfficientNetLite0Encoder(weights=exact, name="earth")
    assert (encoder.name, encoder.dim, encoder.input_size, encoder.grid) == ("earth", 5120, 160, 2)
    assert torch.allclose(encoder.embed_pixels(pixels), expected, atol=1e-5)
    half = EfficientNetLite0Encoder(weights=save_backbone(imagenet.model, tmp_path / "fp16.safetensors", 160, 2))
    cosine = torch.nn.functional.cosine_similarity(half.embed_pixels(pixels), expected, dim=-1)
    assert (cosine > 0.999).all(), cosine
    assert half.embed([Image.new("L", (300, 120), 90)]).shape == (1, 5120)  # grey, not square: cropped, resized


def test_wrong_encoder_files_are_refused_with_the_reason(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_backbone(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a weights file")
    with pytest.raises(ValueError, match="not a safetensors"):
        load_backbone(junk)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other),
              metadata={"architecture": "resnet50", "input_size": "224", "grid": "1"})
    with pytest.raises(ValueError, match="resnet50"):
        load_backbone(other)
    partial = tmp_path / "partial.safetensors"
    save_file({"conv_stem.weight": torch.zeros(32, 3, 3, 3)}, str(partial),
              metadata={"architecture": "tf_efficientnet_lite0", "input_size": "224", "grid": "1"})
    with pytest.raises(ValueError, match="lacks"):
        load_backbone(partial)
    full = save_backbone(build_model(), tmp_path / "full.safetensors", 224, 1, dtype=torch.float32)
    from safetensors.torch import load_file

    extra = tmp_path / "extra.safetensors"
    save_file({**load_file(str(full)), "head.weight": torch.zeros(2)}, str(extra),
              metadata={"architecture": "tf_efficientnet_lite0", "input_size": "224", "grid": "1"})
    with pytest.raises(ValueError, match="unexpected"):
        load_backbone(extra)
    bare = tmp_path / "bare.safetensors"
    save_file(load_file(str(full)), str(bare), metadata={"architecture": "tf_efficientnet_lite0"})
    with pytest.raises(ValueError, match="input size"):
        load_backbone(bare)


def test_soft_geocell_targets_match_a_float64_haversine_reference():
    """q_k = softmax_k(-d(x, c_k) / tau), d by the haversine formula in float64, one view at a time."""
    centres = cell_centres(500)
    assert centres.shape == (500, 3) and torch.allclose(centres.norm(dim=-1), torch.ones(500), atol=1e-6)
    views = torch.nn.functional.normalize(torch.randn(5, 3, generator=torch.Generator().manual_seed(1)), dim=-1)
    got = soft_targets(views, centres, tau_km=200.0)
    cells = xyz_to_latlon(centres.double())
    for view, row in zip(xyz_to_latlon(views.double()), got):
        distance = haversine_km(view.expand_as(cells), cells)
        weights = torch.exp(-(distance - distance.min()) / 200.0)
        assert torch.allclose(row.double(), weights / weights.sum(), atol=1e-5)
    assert torch.allclose(got.sum(-1), torch.ones(5))
    nearest = torch.acos((views @ centres.T).clamp(-1, 1)).min(-1).values * EARTH_RADIUS_KM
    assert (nearest < 600).all()  # 500 cells: about 1,000 km apart, so no view is farther than that from its cell


def test_learning_rate_warms_up_then_follows_a_cosine_to_zero():
    assert learning_rate_factor(0, 0.0, 10) == pytest.approx(0.1)
    assert learning_rate_factor(9, 0.0, 10) == pytest.approx(1.0)
    assert learning_rate_factor(50, 0.5, 10) == pytest.approx(0.5)
    assert learning_rate_factor(99, 1.0, 10) == pytest.approx(0.0)
    assert learning_rate_factor(99, 0.25, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_training_writes_a_loadable_encoder_and_resumes_where_it_stopped(tiny_mosaics, tmp_path):
    """A run of two steps, resumed with four, goes on from step 2 with the data stream where it stopped (its
    first logged loss is not the fresh run's); the held-out family alone is refused; other settings on resume
    are refused; the output loads as an encoder of the recipe's size."""
    recipe = EncoderRecipe(size=32, cells=64, batch_size=4, warmup_steps=1, steps=2, seconds=1e6)
    first = train_encoder(tiny_mosaics, tmp_path / "run", recipe, exclude_families=["fb"], device="cpu", log_every=1)
    two = load_backbone(first)[0].state_dict()
    untouched = build_model().state_dict()
    assert not torch.equal(two["conv_stem.weight"], untouched["conv_stem.weight"].half().float())  # it trained
    longer = EncoderRecipe(**{**recipe.__dict__, "steps": 4})
    resumed = train_encoder(tiny_mosaics, tmp_path / "run", longer, exclude_families=["fb"], device="cpu", log_every=1)
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=False)["step"] == 4
    rows = [line.split(",") for line in (tmp_path / "run" / "metrics.csv").read_text().splitlines()]
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4]
    fresh = train_encoder(tiny_mosaics, tmp_path / "fresh", longer, exclude_families=["fb"], device="cpu", log_every=1)
    fresh_rows = [line.split(",") for line in (tmp_path / "fresh" / "metrics.csv").read_text().splitlines()]
    assert fresh_rows[0][2] == rows[0][2]  # the same first batch and weights: a seeded run
    assert not torch.equal(load_backbone(resumed)[0].state_dict()["conv_stem.weight"], two["conv_stem.weight"])
    encoder = EfficientNetLite0Encoder(weights=resumed)
    assert encoder.input_size == 32 and encoder.dim == 5120
    with pytest.raises(ValueError, match="other settings"):
        train_encoder(tiny_mosaics, tmp_path / "run", EncoderRecipe(**{**recipe.__dict__, "lr": 0.5}),
                      exclude_families=["fb"], device="cpu")
    with pytest.raises(ValueError, match="nothing to train on"):
        train_encoder(tiny_mosaics, tmp_path / "none", recipe, exclude_families=["fa", "fb"], device="cpu")


def test_the_registered_earth_encoder_reads_the_shipped_file_or_says_how_to_make_it(tmp_path, monkeypatch):
    from geodemo import paths
    from geodemo.encoders import forget_built, get_encoder

    monkeypatch.setattr(paths, "ASSETS_DIR", tmp_path)
    forget_built("earth_lite0_grid2")
    with pytest.raises(FileNotFoundError, match="earth_views.sh"):
        get_encoder("earth_lite0_grid2")
    save_backbone(build_model(), tmp_path / "earth-encoder" / "model.safetensors", 96, 2)
    encoder = get_encoder("earth_lite0_grid2")
    assert (encoder.name, encoder.input_size, encoder.dim) == ("earth_lite0_grid2", 96, 5120)
    forget_built("earth_lite0_grid2")
