"""Hub ids, local copies and registered names in geodemo.load; batch inference, best guess and mode. No network."""

from __future__ import annotations

import json
import time

import httpx2
import huggingface_hub
import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import save_file

import geodemo
from geodemo import hub
from geodemo.checkpoint import CheckpointError, save_checkpoint
from geodemo.pipeline import densest_samples
from geodemo.registry import lookup, register_model
from geodemo.sphere import haversine_km
from tests.conftest import random_network

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def authors_folder(folder, dim: int = 32, seed: int = 0):
    """A checkpoint as the authors publish it: their config.json fields only, no geodemo entry."""
    net = random_network(dim=dim, depth=2, cond_dim=16, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(net.config.to_dict()))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "model.safetensors"))
    return folder


def test_official_ids_name_process_encoder_and_size():
    models = {m.hub_id: m for m in hub.official_models()}
    assert len(models) == 9
    assert models["nicolas-dufour/PLONK_OSV_5M"].encoder == "street_clip"
    assert models["nicolas-dufour/PLONK_YFCC_diffusion"].process == "diffusion_r3"
    assert models["nicolas-dufour/PLONK_iNaturalist_flow"].process == "flow_r3"
    assert models["nicolas-dufour/PLONK_iNaturalist"].encoder == "dinov2_vitl14_reg"
    assert models["nicolas-dufour/PLONK_iNaturalist"].dim == 256 and models["nicolas-dufour/PLONK_YFCC"].dim == 512
    assert {m.process for m in models.values() if m.hub_id.count("_") == 1 or m.hub_id.endswith("OSV_5M")} == {"rfm_s2"}
    assert all(m.schedule == {"kind": "sigmoid", "start": -7.0, "end": 3.0, "tau": 1.0} for m in models.values())
    assert hub.official_model("PLONK_iNat").hub_id == "nicolas-dufour/PLONK_iNaturalist"
    snapshot = f"/c/models--nicolas-dufour--PLONK_OSV_5M_diffusion/snapshots/{COMMIT}"
    assert hub.official_model(snapshot).hub_id == "nicolas-dufour/PLONK_OSV_5M_diffusion"
    assert hub.official_model("/data/PLONK_YFCC/finetuned") is None and hub.official_model("PLONK_MNIST") is None
    assert hub.is_hub_id("nicolas-dufour/PLONK_YFCC") and not hub.is_hub_id("default")


def test_offline_and_not_cached_is_one_clear_sentence(hub_cache):
    start = time.perf_counter()
    with pytest.raises(hub.HubUnavailableError) as err:
        geodemo.load("nicolas-dufour/PLONK_YFCC", device="cpu")
    message = str(err.value)
    assert time.perf_counter() - start < 5
    assert "nicolas-dufour/PLONK_YFCC" in message and "HF_HUB_OFFLINE" in message
    assert "`hf download nicolas-dufour/PLONK_YFCC config.json model.safetensors --local-dir PLONK_YFCC`" in message
    # the image encoder must be fetched too, and both copies passed as an API user passes them
    assert "`hf download timm/vit_large_patch14_reg4_dinov2.lvd142m model.safetensors --local-dir encoders/dinov2-reg`" in message
    assert "geodemo.encoders.set_encoder_dir('encoders') and geodemo.load('PLONK_YFCC')" in message
    assert message.count(". ") == 0 and "\n" not in message


def test_the_message_names_the_flags_of_the_app_and_the_cli(hub_cache):
    import app
    from geodemo import cli

    for use, words in ((app.LOCAL_COPIES, "`python app.py --model PLONK_OSV_5M --encoder-dir encoders`"),
                       (cli.LOCAL_COPIES, "`geodemo predict IMAGE --model PLONK_OSV_5M --encoder-dir encoders`")):
        previous = hub.set_local_copy_use(use)
        try:
            with pytest.raises(hub.HubUnavailableError) as err:
                geodemo.load("nicolas-dufour/PLONK_OSV_5M", device="cpu")
        finally:
            hub.set_local_copy_use(previous)
        assert words.strip("`") in str(err.value) and "geodemo.load" not in str(err.value)
        assert "`hf download geolocal/StreetCLIP config.json pytorch_model.bin --local-dir encoders/StreetCLIP`" in str(err.value)


def test_unreachable_hub_is_one_clear_sentence(hub_cache, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def refuse(*args, **kwargs):
        raise httpx2.ConnectError("Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", refuse)
    with pytest.raises(CheckpointError, match=r"hub is unreachable \(ConnectError\).*pass them"):
        geodemo.load("nicolas-dufour/PLONK_OSV_5M", device="cpu")
    assert hub.unreachable_reason("nicolas-dufour/PLONK_OSV_5M") == "the Hugging Face hub is unreachable (ConnectError)"


def test_cached_hub_model_loads_offline_with_its_process_and_encoder(hub_cache):
    repo = hub_cache / "models--nicolas-dufour--PLONK_OSV_5M_diffusion"
    authors_folder(repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    pipe = geodemo.load("nicolas-dufour/PLONK_OSV_5M_diffusion", device="cpu")
    assert pipe.process.name == "diffusion_r3" and pipe._encoder == "street_clip"
    assert (pipe.schedule.start, pipe.schedule.end, pipe.schedule.tau) == (-7.0, 3.0, 1.0)
    assert pipe.name == "nicolas-dufour/PLONK_OSV_5M_diffusion"


def test_local_copy_named_after_a_release_gets_its_settings(tmp_path):
    pipe = geodemo.load(authors_folder(tmp_path / "PLONK_YFCC"), device="cpu")
    assert pipe.process.name == "rfm_s2" and pipe._encoder == "dinov2_vitl14_reg"
    pipe = geodemo.load(tmp_path / "PLONK_YFCC", device="cpu", process="flow_r3", encoder="street_clip")
    assert pipe.process.name == "flow_r3" and pipe._encoder == "street_clip"
    plain = geodemo.load(authors_folder(tmp_path / "mine"), device="cpu")
    assert plain.process.name == "rfm_s2" and plain._encoder is None


def test_geodemo_metadata_wins_over_the_folder_name(tmp_path):
    net = random_network(dim=32, depth=2, cond_dim=16)
    folder = save_checkpoint(tmp_path / "PLONK_YFCC", net, "diffusion_r3", {"kind": "linear"}, "efficientnet_lite0")
    pipe = geodemo.load(folder, device="cpu")
    assert pipe.process.name == "diffusion_r3" and lookup(folder).encoder() == "efficientnet_lite0"
    assert lookup(tmp_path / "PLONK_YFCC").process() == "diffusion_r3"


def test_registered_names_resolve_after_local_folders_and_before_the_hub(tmp_path, monkeypatch):
    first, second = authors_folder(tmp_path / "a", seed=1), authors_folder(tmp_path / "b", seed=2)
    calls = []
    register_model("test-folder", first)
    register_model("test-resolver", lambda: calls.append(1) or second)
    assert torch.equal(geodemo.load("test-folder", device="cpu").network.final_linear.bias,
                       random_network(dim=32, depth=2, cond_dim=16, seed=1).final_linear.bias)
    assert calls == []
    geodemo.load("test-resolver", device="cpu")
    assert calls == [1]
    monkeypatch.chdir(tmp_path)
    authors_folder(tmp_path / "test-folder", seed=3)  # a local folder of the same name wins
    assert torch.equal(geodemo.load("test-folder", device="cpu").network.final_linear.bias,
                       random_network(dim=32, depth=2, cond_dim=16, seed=3).final_linear.bias)
    with pytest.raises(CheckpointError, match="registered name .*test-folder.*hub id"):
        geodemo.load("no-such-model", device="cpu")


@pytest.fixture
def pipe(tmp_path):
    return geodemo.load(authors_folder(tmp_path / "m"), device="cpu")


@pytest.mark.parametrize("guidance", [0.0, 2.0])
def test_batch_inference_does_not_depend_on_chunking(pipe, guidance):
    emb = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))
    whole = pipe.predict(embeddings=emb, num_samples=12, steps=6, guidance=guidance, seed=7).latlon
    chunked = pipe.predict_batch(embeddings=emb, num_samples=12, steps=6, guidance=guidance, seed=7, max_points=10)
    assert chunked.latlon.shape == (5, 12, 2)
    assert haversine_km(chunked.latlon.double(), whole.double()).max() < 0.05  # float32 sums differ by batch size


def test_best_guess_is_the_most_likely_sample(pipe):
    """Each image's best guess, checked one image and one point at a time (another code path than the batch)."""
    emb = torch.randn(2, 16, generator=torch.Generator().manual_seed(1))
    ode = {"method": "rk4", "steps": 8}
    best = pipe.best_guess(embeddings=emb, num_samples=16, steps=8, guidance=2.0, seed=3, ode_options=ode)
    for b in range(2):
        single = [float(pipe.log_density(point[None], embeddings=emb[b], **ode)) for point in best.samples[b]]
        winner = max(range(16), key=single.__getitem__)
        assert torch.equal(best.latlon[b], best.samples[b, winner])
        assert abs(float(best.log_density[b]) - single[winner]) < 1e-4
    assert not torch.equal(best.latlon[0], best.latlon[1])


def test_densest_sample():
    cluster = torch.tensor([[48.85, 2.35], [48.9, 2.3], [48.8, 2.4], [48.86, 2.36]], dtype=torch.float64)
    spread = torch.tensor([[-33.9, 151.2], [40.7, -74.0], [35.7, 139.7]], dtype=torch.float64)
    samples = torch.cat([spread, cluster]).unsqueeze(0)
    mode = densest_samples(samples)[0]
    assert any(torch.equal(mode, c) for c in cluster)


def test_a_partial_cached_snapshot_is_not_taken_for_a_model(hub_cache):
    repo = hub_cache / "models--nicolas-dufour--PLONK_YFCC"
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    (repo / "snapshots" / COMMIT / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    with pytest.raises(hub.HubUnavailableError, match="not in the local Hugging Face cache"):
        hub.resolve("nicolas-dufour/PLONK_YFCC")


def test_cli_and_encoder_dir_errors_name_the_flag(hub_cache, tmp_path, capsys):
    from geodemo import cli
    from geodemo.encoders import sources

    image = tmp_path / "photo.jpg"
    image.write_bytes(b"")  # never read: the model fails first
    assert cli.main(["predict", str(image), "--encoder-dir", str(tmp_path / "nowhere")]) == 2
    assert "encoder directory" in capsys.readouterr().err and sources.encoder_dir() is None
    assert cli.main(["predict", str(image), "--model", "nicolas-dufour/PLONK_YFCC"]) == 2
    err = capsys.readouterr().err
    assert "geodemo predict IMAGE --model PLONK_YFCC --encoder-dir encoders" in err and "geodemo.load" not in err
    with pytest.raises(hub.HubUnavailableError, match="geodemo.load"):  # the CLI put the API's words back
        geodemo.load("nicolas-dufour/PLONK_YFCC", device="cpu")


def test_an_encoder_directory_serves_the_encoder(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from geodemo.encoders import get_encoder, set_encoder_dir
    from geodemo.encoders.sources import ready_offline

    vision = dict(hidden_size=64, intermediate_size=256, num_attention_heads=4, num_hidden_layers=2, image_size=56,
                  patch_size=14, projection_dim=32, hidden_act="quick_gelu")
    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(**vision)).save_pretrained(tmp_path / "encoders" / "StreetCLIP")
    set_encoder_dir(tmp_path / "encoders")
    try:
        assert ready_offline("street_clip") and not ready_offline("dinov2_vitl14_reg")
        encoder = get_encoder("street_clip")
        assert encoder.dim == 1024 and encoder.built()[0].tower.conv1.weight.shape == (64, 3, 14, 14)
    finally:
        set_encoder_dir(None)
