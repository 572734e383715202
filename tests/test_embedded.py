import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import geodemo
from geodemo.checkpoint import CheckpointError, read_info
from geodemo.examples import example_views
from geodemo.paths import ASSETS_DIR
from geodemo.registry import SHIPPED_MODELS, known_names, lookup, shipped_folder
from geodemo.sphere import haversine_km
from training.earth_views import render_example

CAT = Path(__file__).parent / "data" / "chelsea.jpg"
PROCESSES = {"earth-rfm": "rfm_s2", "earth-flow": "flow_r3", "earth-diffusion": "diffusion_r3"}
ENCODER_DIMS = {"efficientnet_lite0": 1280, "efficientnet_lite0_grid2": 5120,  # pooled 1 x 1 or 2 x 2
                "earth_lite0_grid2": 5120}  # fine-tuned on Earth views (training/earth_encoder.py), 2 x 2


@pytest.fixture(scope="module")
def default_model():
    return geodemo.load("default", device="cpu")


def test_names_resolve_to_shipped_folders():
    assert {"default", "earth-rfm", "earth-flow", "earth-diffusion"} <= set(known_names())
    assert shipped_folder("default") == shipped_folder("earth-rfm") == ASSETS_DIR / "earth-rfm"
    assert shipped_folder("no-such-model") is None
    entry = lookup("default")
    assert (entry.kind, entry.folder, entry.process(), entry.encoder()) == (
        "shipped", ASSETS_DIR / "earth-rfm", "rfm_s2", "earth_lite0_grid2")
    with pytest.raises(CheckpointError, match="not a model"):
        geodemo.load("no-such-model")
    with pytest.raises(CheckpointError, match="no such folder"):
        geodemo.load("/nonexistent/model")


@pytest.mark.parametrize("name", sorted(SHIPPED_MODELS))
def test_shipped_checkpoints_are_small_and_describe_themselves(name):
    folder = shipped_folder(name)
    assert (folder / "model.safetensors").stat().st_size <= 16 * 2**20
    info = read_info(folder)
    assert info.process == PROCESSES[name] and info.encoder in ENCODER_DIMS
    assert info.network.cond_dim == ENCODER_DIMS[info.encoder]
    assert "Blue Marble" in info.metadata["training"]["train_data"]
    table = info.metadata["evaluation"]
    assert table["heldout_views"] >= 2000 and "views with >= 20% land" in table["rows"]


def test_default_model_finds_distinctive_example_views(default_model):
    assert default_model.process.name == "rfm_s2"
    examples = {e.path.stem: e for e in example_views()}
    chosen = [examples[k] for k in ("nile_delta", "italy", "greenland", "himalaya")]  # hawaii: 1,245 km (model card)
    images = [Image.open(e.path) for e in chosen]
    truth = torch.tensor([[e.latitude, e.longitude] for e in chosen], dtype=torch.float64)
    pred = default_model.predict(images=images, num_samples=16, steps=32, guidance=2.0, seed=0).latlon
    again = default_model.predict(images=images, num_samples=16, steps=32, guidance=2.0, seed=0).latlon
    assert torch.equal(pred, again)
    median_km = haversine_km(pred.double(), truth.unsqueeze(1)).median(dim=1).values
    assert (median_km < 750).all(), median_km


def test_a_cat_photo_still_gets_a_finite_answer(default_model):
    cat = Image.open(CAT)
    odd = [cat, cat.convert("L"), cat.convert("RGBA"), Image.new("RGB", (1, 1)), cat.resize((2000, 40))]
    pred = default_model.predict(images=odd, num_samples=8, steps=16, seed=1).latlon
    assert pred.shape == (5, 8, 2) and torch.isfinite(pred).all()
    assert (pred[..., 0].abs() <= 90).all() and (pred[..., 1].abs() <= 180).all()
    logp = default_model.log_density(torch.tensor([[0.0, 0.0], [45.0, 90.0]]), images=[cat], method="rk4", steps=8)
    assert logp.shape == (1, 2) and torch.isfinite(logp).all()


def test_example_views_come_from_several_mosaics_and_the_shipped_renderer():
    examples = example_views()
    assert 8 <= len(examples) <= 12
    manifest = json.loads((ASSETS_DIR / "examples" / "examples.json").read_text())
    assert [e["file"] for e in manifest] == [e.path.name for e in examples]
    assert len({e["mosaic"] for e in manifest}) >= 3 and manifest[0]["mosaic"] == "bmng"
    for e in examples:
        assert e.path.is_file() and e.title and abs(e.latitude) <= 90 and abs(e.longitude) <= 180
    first = examples[0]
    shipped = np.asarray(Image.open(first.path).convert("RGB"), dtype=np.float32)
    fresh = np.asarray(render_example(first.latitude, first.longitude, first.width_km, size=shipped.shape[0]),
                       dtype=np.float32)
    assert np.abs(shipped - fresh).mean() < 3.0  # equal up to JPEG compression (0-255 scale)
