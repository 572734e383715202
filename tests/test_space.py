"""Startup on a Space or a server (geodemo.space, app.py): the model shown first, the fallback when the hub cannot be
reached, local model folders, and ZeroGPU: request-sized calls, picklable yields, no torch.compile. No network."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import urllib.request
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import huggingface_hub
import huggingface_hub.constants
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

import app
import geodemo
from app_fixtures import build_test_model, free_port, write_test_image
from geodemo import hub, space
from geodemo.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from geodemo.encoders import register_encoder, sources
from geodemo.encoders.backbones import square_crop_preprocess, timm_encoder
from geodemo.encoders.sources import ENCODER_SOURCES
from geodemo.service import ModelUnavailable
from tests.conftest import random_network

ROOT = Path(__file__).resolve().parent.parent


def page_config(demo: gr.Blocks) -> dict:
    """The page's configuration as the browser receives it from the running server."""
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=30) as answer:
            return json.load(answer)
    finally:
        demo.close()


def component(config: dict, kind: str, **props) -> list[dict]:
    return [c["props"] for c in config["components"]
            if c["type"] == kind and all(c["props"].get(k) == v for k, v in props.items())]


def test_the_model_shown_first_is_flag_then_environment_then_the_space_default(hub_cache):
    env = {"SPACE_ID": "someone/geodemo", space.MODEL_ENV: "earth-flow"}
    assert space.choose_start_model("earth-diffusion", env).name == "earth-diffusion"
    assert space.choose_start_model(None, env) == space.StartModel("earth-flow", "earth-flow", space.MODEL_ENV)
    assert space.choose_start_model(None, {}) == space.StartModel(None)
    on_space = space.choose_start_model(None, {"SPACE_ID": "someone/geodemo"})  # offline: falls back
    assert on_space.name is None and on_space.requested == space.SPACE_MODEL and "HF_HUB_OFFLINE" in on_space.notice


def test_on_a_space_with_the_hub_reachable_the_photo_model_comes_first(hub_cache, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    asked = []
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info",
                        lambda self, repo_id, **kw: asked.append(repo_id) or SimpleNamespace(sha="0" * 40, siblings=[]))
    start = space.start_app(None, device="cpu", environ={"SPACE_ID": "someone/geodemo"}, warm=False)
    assert asked == [space.SPACE_MODEL] and start.notice is None
    assert start.first_model == space.SPACE_MODEL and space.SPACE_MODEL in start.catalogue.names
    assert "default" in start.catalogue.names  # the satellite-view models stay one click away


def test_space_with_the_hub_unreachable_opens_on_the_shipped_model_and_says_so(hub_cache):
    start = space.start_app(None, device="cpu", environ={"SPACE_ID": "someone/geodemo"})
    assert start.first_model == "default"
    config = page_config(app.build_demo(start.catalogue, device="cpu", default_model=start.first_model,
                                        models=start.models, notice=start.notice))
    assert component(config, "dropdown", label="Model")[0]["value"] == "default"
    notes = [p["value"] for p in component(config, "markdown") if space.SPACE_MODEL in str(p.get("value"))]
    assert len(notes) == 1 and "could not be loaded" in notes[0] and "shipped model `default`" in notes[0]
    assert notes[0].count(". ") == 0 and "\n" not in notes[0]  # one sentence


def test_a_local_model_folder_in_the_environment_is_the_default(tmp_path, hub_cache):
    folder = build_test_model(tmp_path / "my-photo-model")
    start = space.start_app(None, device="cpu", environ={space.MODEL_ENV: str(folder), "SPACE_ID": "someone/geodemo"})
    assert start.first_model == "my-photo-model" and start.notice is None
    assert start.catalogue.names[0] == "my-photo-model"
    config = page_config(app.build_demo(start.catalogue, device="cpu", default_model=start.first_model,
                                        models=start.models))
    assert component(config, "dropdown", label="Model")[0]["value"] == "my-photo-model"


def test_a_model_folder_that_does_not_exist_is_an_error(tmp_path, hub_cache):
    for missing in (str(tmp_path / "nowhere"), "./nowhere"):
        with pytest.raises(ModelUnavailable, match="no such folder"):
            space.start_app(None, environ={space.MODEL_ENV: missing}, warm=False)
        with pytest.raises(ModelUnavailable, match="no such folder"):
            space.start_app(missing, environ={}, warm=False)


def test_a_model_that_fails_to_load_gives_way_to_the_shipped_one(tmp_path, hub_cache):
    folder = build_test_model(tmp_path / "broken")
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    start = space.start_app(str(folder), device="cpu", environ={})
    assert start.first_model == "default" and "broken" in start.notice and "shipped model `default`" in start.notice


def test_gpu_seconds_grow_with_the_request_and_stay_bounded():
    small, large = space.gpu_seconds(16, 8, False), space.gpu_seconds(1024, 250, False)
    assert space.ZERO_GPU_START_S <= small < large < space.gpu_seconds(1024, 250, True) <= space.ZERO_GPU_MAX_S
    assert space.gpu_seconds(128, 32, True) - space.gpu_seconds(128, 32, False) >= space.ZERO_GPU_MAP_S - 1
    assert space.gpu_seconds(10**6, 250, True) == space.ZERO_GPU_MAX_S


def test_zero_gpu_gets_a_duration_computed_from_each_request(tmp_path, monkeypatch):
    """app.on_gpu hands spaces.GPU a duration callable; called as ZeroGPU calls it, with the request function's
    own arguments, it sizes the call by that request."""
    decorated = {}

    def fake_gpu(duration):
        def wrap(fn):
            decorated[fn.__name__] = duration
            return fn
        return wrap

    monkeypatch.setattr(app, "spaces", SimpleNamespace(GPU=fake_gpu))
    folder = build_test_model(tmp_path / "m")
    app.build_demo(app.make_catalogue(str(folder)), device="cpu")
    duration = decorated["locate_request"]
    image = {"path": "x.jpg"}
    assert duration(image, "m", 0.0, 32, 128, 0, True) == space.gpu_seconds(128, 32, True)
    assert duration(image, "m", 0.0, 250, 1024, 0, False) == space.gpu_seconds(1024, 250, False)
    assert duration(image, "m", 0.0, "many", 128, 0, True) == int(space.ZERO_GPU_START_S)
    with pytest.raises(TypeError, match="num_samples"):
        space.request_duration(lambda image, steps, exact_density: None)


def locate_function(demo: gr.Blocks):
    return next(f.fn for f in demo.fns.values() if f.api_name == "locate")


def test_every_value_a_request_yields_pickles_and_nothing_is_compiled_under_zero_gpu(tmp_path, monkeypatch):
    """Under ZeroGPU the request runs in a worker process and every yielded value travels back pickled: a real
    request through the app's own function, with the density map, yields only plain data. torch.compile is not
    supported there, so it must not be called."""
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")

    def no_compile(*args, **kwargs):
        raise AssertionError("torch.compile called under ZeroGPU")

    monkeypatch.setattr(torch, "compile", no_compile)
    folder = build_test_model(tmp_path / "m")
    demo = app.build_demo(app.make_catalogue(str(folder)), device="cpu",
                          map_options={"coarse_deg": 45.0, "levels": 2, "max_cells_per_level": 8})
    upload = gr.utils.get_upload_folder()
    image = write_test_image(tmp_path / "photo.jpg")
    uploaded = shutil.copy(image, f"{upload}/{tmp_path.name}-photo.jpg")
    args = ({"path": uploaded, "meta": {"_type": "gradio.FileData"}}, "m", 0.0, 6, 16, 0, True)
    assert pickle.loads(pickle.dumps(args)) == args  # what ZeroGPU sends to the worker
    yielded = list(locate_function(demo)(*args))
    assert len(yielded) >= 2  # the samples and globe, then the map
    for update in yielded:
        for value in update:
            copy = pickle.loads(pickle.dumps(value))
            assert type(copy) is type(value)


def preload_list() -> list[tuple[str, tuple[str, ...]]]:
    """README front matter's preload_from_hub entries: (repository, files)."""
    front = (ROOT / "README.md").read_text().split("---\n")[1]
    entries = front.split("preload_from_hub:\n")[1].split("\n")
    found = []
    for line in entries:
        if not line.startswith("- "):
            break
        repo, files = line[2:].split()
        found.append((repo, tuple(files.split(","))))
    return found


def lay_out_like_preload(cache: Path, repo_id: str, files: dict[str, bytes], commit: str = "a" * 40) -> Path:
    """A repository in the Hugging Face cache as hf_hub_download leaves it (preload_from_hub uses it at build
    time): blobs named by content, snapshots/<commit>/<file> symbolic links to them, refs/main -> <commit>."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (repo / "snapshots" / commit / name).symlink_to(Path("..", "..", "blobs", blob.name))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit


def test_preload_lists_the_official_models_and_the_encoder_files_geodemo_reads():
    listed = dict(preload_list())
    official = {m.hub_id: m for m in hub.official_models()}
    models = [repo for repo in listed if repo in official]
    assert space.SPACE_MODEL in models and "nicolas-dufour/PLONK_OSV_5M" in models
    for repo in models:
        assert listed[repo] == (CONFIG_FILE, WEIGHTS_FILE)
        source = ENCODER_SOURCES[official[repo].encoder]
        assert listed[source.repo_id] == source.files  # its encoder, with the files geodemo downloads and reads
    assert set(listed) == set(models) | {ENCODER_SOURCES[official[m].encoder].repo_id for m in models}


def test_a_cache_laid_out_like_preload_from_hub_is_found_offline(hub_cache, tmp_path):
    """Every preloaded model and encoder is found with the hub switched off, the Space opens on its photo model
    with no notice, and a released model loads from the cache and geolocates an image through its encoder."""
    network = random_network(dim=32, depth=2, cond_dim=384, seed=1)
    weights, dino_file = tmp_path / "w.safetensors", tmp_path / "dino.safetensors"
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(weights))
    dino = timm.create_model("vit_small_patch14_reg4_dinov2.lvd142m", pretrained=False, img_size=56, num_classes=0)
    save_file({k: v.contiguous() for k, v in dino.state_dict().items()}, str(dino_file))
    dino_repo = ENCODER_SOURCES["dinov2_vitl14_reg"].repo_id
    contents = {CONFIG_FILE: json.dumps(network.config.to_dict()).encode(), WEIGHTS_FILE: weights.read_bytes(),
                "pytorch_model.bin": b"StreetCLIP weights (only their presence is checked here)"}
    for repo, files in preload_list():
        lay_out_like_preload(hub_cache, repo, {f: dino_file.read_bytes() if repo == dino_repo else contents[f]
                                                 for f in files})
    for repo, files in preload_list():
        assert hub.cached(repo, files) is not None, repo
    assert all(sources.ready_offline(name) for name in ENCODER_SOURCES)
    assert space.hub_model_problem(space.SPACE_MODEL) is None
    start = space.start_app(None, device="cpu", environ={"SPACE_ID": "someone/geodemo"}, warm=False)
    assert start.first_model == space.SPACE_MODEL and start.notice is None
    # the DINOv2 encoder reads the cached weights (a small sibling of the same family stands in for the ViT-L)
    register_encoder("test-cached-dino", lambda: timm_encoder(
        "test-cached-dino", "vit_small_patch14_reg4_dinov2.lvd142m", 384, img_size=56,
        weights=lambda: sources.encoder_files("dinov2_vitl14_reg") / "model.safetensors",
        preprocess=partial(square_crop_preprocess, size=56)))
    pipe = geodemo.load(space.SPACE_MODEL, device="cpu", encoder="test-cached-dino")
    assert pipe.name == space.SPACE_MODEL and pipe.process.name == "rfm_s2"
    out = pipe.predict(images=[Image.open(write_test_image(tmp_path / "photo.jpg"))], num_samples=8, steps=4, seed=0)
    assert out.latlon.shape == (1, 8, 2) and torch.isfinite(out.latlon).all()
    assert torch.equal(pipe.encoder.built()[0].cls_token, dino.cls_token)


@pytest.mark.slow
def test_on_a_space_examples_are_answered_on_first_click_and_then_from_the_cache(tmp_path, monkeypatch):
    """cache_examples=True, cache_mode="lazy" on a Space only: nothing is computed at boot; the first use of an
    example runs the request (the shipped model, whose views they are) and stores its answer."""
    monkeypatch.chdir(tmp_path)  # Gradio's cache of examples lives under the working folder
    made = []

    make = gr.Examples

    def recording(*args, **kwargs):
        made.append(make(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(gr, "Examples", recording)
    small_map = {"coarse_deg": 45.0, "levels": 1, "max_cells_per_level": 8}
    app.build_demo(app.make_catalogue(), device="cpu", map_options=small_map)
    assert made and all(e.cache_examples is False and e.fn is None for e in made)  # off a Space: inputs only
    made.clear()
    monkeypatch.setenv("SPACE_ID", "someone/geodemo")
    app.build_demo(app.make_catalogue(), device="cpu", map_options=small_map)
    answered = [e for e in made if e.fn is not None]
    assert len(answered) == 1 and all(e.cache_examples is False for e in made if e.fn is None)
    examples = answered[0]
    assert examples.cache_examples == "lazy" and not Path(examples.cached_file).exists()  # nothing at boot
    globe, density_map, summary, csv_file, geojson_file, _ = examples.load_from_cache(0)
    assert json.loads(globe)["frames"] and "True location" in summary  # the whole answer, the globe included
    assert all(Path(f.path).is_file() for f in (density_map, csv_file, geojson_file))
    assert Path(examples.cached_file).exists()
