"""Running for months: a bounded temporary folder, faults survived, users kept apart, no door into the disk.

The real app (app.py) on localhost through gradio_client, with a tiny random-weight model and its own temporary
folder (GRADIO_TEMP_DIR), so every file the app writes can be counted.
"""

from __future__ import annotations

import gc
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import httpx
import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image

import app
from app_fixtures import build_test_model, free_port, write_test_image
from geodemo.checkpoint import WEIGHTS_FILE, CheckpointError
from geodemo.pipeline import GeoPipeline, load
from geodemo.request_files import EMPTY_FOLDER_GRACE_S, REQUEST_PREFIX, RequestFiles, TempBounds
from geodemo.service import Catalogue

ROOT = Path(__file__).resolve().parent.parent
MODEL, DIFFUSION, BROKEN = "reliability-model", "reliability-diffusion", "broken-model"
BOUNDS = TempBounds(max_age_s=3600, max_bytes=2**20, prune_every_s=0, keep_fresh_s=5)
MAP = {"coarse_deg": 45.0, "levels": 2, "max_cells_per_level": 8}
UPLOAD_LIMIT = 2**20
GLOBE_PAYLOAD_BOUND = 2**20
"""The globe JSON of the largest request the app offers (1,024 samples x 250 steps) stays below 1 MiB."""


def folder_bytes(folder: Path) -> tuple[int, int]:
    """(files, bytes) under folder, written out independently of geodemo.request_files."""
    sizes = [p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]
    return len(sizes), sum(sizes)


def one_sentence(text: str) -> bool:
    """No line break and no full stop followed by a capital letter (a second sentence)."""
    return "\n" not in text and not re.search(r"\.\s+[A-Z]", text) and "Traceback" not in text


# ---- the temporary folder itself ----------------------------------------------------------------------------

def write_file(path: Path, size: int, age_s: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_pruning_removes_old_files_then_the_oldest_down_to_the_size_and_spares_kept_and_fresh_ones(tmp_path):
    root = tmp_path / "app"
    kept = write_file(root / "cafe" / "example.jpg", 5000, age_s=10_000)
    old = write_file(root / "beef" / "upload.jpg", 100, age_s=4000)
    aged = [write_file(root / f"{REQUEST_PREFIX}{i}" / "samples.csv", 1000, age_s=100 - i) for i in range(6)]
    forgotten: list[set] = []
    files = RequestFiles(root, TempBounds(max_age_s=3600, max_bytes=8000, keep_fresh_s=60),
                         keep=lambda: {str(kept)}, forget=forgotten.append)
    left = files.prune()
    assert kept.exists() and not old.exists()  # too old, but the kept file stays whatever its age
    assert [p.exists() for p in aged] == [False, False, False, True, True, True]  # oldest first, down to 8000 B
    assert left.bytes == 5000 + 3000 <= 8000 and folder_bytes(root) == (left.files, left.bytes)
    assert forgotten == [{str(old), *(str(p) for p in aged[:3])}]  # Gradio is told what went
    fresh = [write_file(root / f"{REQUEST_PREFIX}new" / f"{i}.png", 4000, age_s=1) for i in range(2)]
    files.prune()
    assert all(p.exists() for p in fresh) and not any(p.exists() for p in aged)  # over the size: fresh files stay
    files.clear()
    assert folder_bytes(root) == (1, 5000) and [p for p in root.rglob("*") if p.is_dir()] == [kept.parent]


def test_empty_folders_go_after_a_grace_and_request_folders_hold_what_was_written(tmp_path):
    files = RequestFiles(tmp_path / "app", TempBounds(prune_every_s=3600))
    csv_path, geojson_path = files.write({"samples.csv": "lat,lon\n", "../../escape.geojson": "{}"})
    assert csv_path.read_text() == "lat,lon\n" and geojson_path.parent == csv_path.parent
    assert files.holds(geojson_path) and csv_path.parent.name.startswith(REQUEST_PREFIX)
    assert not (tmp_path / "escape.geojson").exists()  # a name never leaves the request's folder
    csv_path.unlink(), geojson_path.unlink()
    files.prune()
    assert csv_path.parent.exists()  # empty but new: Gradio may be about to write into such a folder
    files.prune(now=time.time() + EMPTY_FOLDER_GRACE_S + 1)
    assert not csv_path.parent.exists() and (tmp_path / "app").exists()
    outside = tmp_path / "secret.txt"
    outside.write_text("x")
    (tmp_path / "app" / "link").symlink_to(outside)
    assert not files.holds(tmp_path / "app" / "link") and not files.holds("/etc/passwd")


# ---- a damaged model file -------------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "nan"])
def test_a_damaged_model_file_is_one_sentence(tmp_path, damage):
    folder = build_test_model(tmp_path / "model")
    weights = folder / WEIGHTS_FILE
    data = weights.read_bytes()
    if damage == "nan":  # the last float32 of the last tensor becomes NaN: a readable file with broken values
        data = data[:-4] + np.float32(np.nan).tobytes()
    weights.write_bytes({"truncated": data[: len(data) * 2 // 3], "empty": b"", "garbage": os.urandom(4096),
                         "nan": data}[damage])
    with pytest.raises(CheckpointError) as info:
        load(folder)
    message = str(info.value)
    assert one_sentence(message) and str(weights) in message
    assert ("non-finite" if damage == "nan" else "damaged or truncated") in message


def test_a_config_asking_for_a_huge_network_is_refused_before_allocating(tmp_path):
    folder = build_test_model(tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "dim": 10**7}))
    with pytest.raises(CheckpointError, match="wrong shape") as info:
        load(folder)
    assert one_sentence(str(info.value))


# ---- the real app -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app with its own temporary folder, the test model and a model whose weights file is truncated."""
    temp = tmp_path_factory.mktemp("app-temp")
    models = tmp_path_factory.mktemp("models")
    local = {MODEL: build_test_model(models / MODEL),
             DIFFUSION: build_test_model(models / DIFFUSION, process="diffusion_r3"),
             BROKEN: build_test_model(models / BROKEN)}
    (local[BROKEN] / WEIGHTS_FILE).write_bytes((local[BROKEN] / WEIGHTS_FILE).read_bytes()[:1000])
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GRADIO_TEMP_DIR", str(temp))
        demo = app.build_demo(Catalogue(local=local), device="cpu", map_options=MAP, temp_bounds=BOUNDS)
        port = free_port()
        demo.queue(default_concurrency_limit=2).launch(server_name="127.0.0.1", server_port=port, quiet=True,
                                                       prevent_thread_lock=True, max_file_size=UPLOAD_LIMIT)
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", temp=temp, models=models,
                              downloads=tmp_path_factory.mktemp("downloads"))
        demo.close()


def new_client(server) -> Client:
    """A client whose downloads land outside the app's folder (so they are not counted as the app's files)."""
    return Client(server.url, verbose=False, download_files=str(server.downloads))


@pytest.fixture(scope="module")
def client(server):
    return new_client(server)


def stream(client, image, model=MODEL, guidance=2.0, steps=4, samples=16, seed=0, density=False) -> list:
    image = handle_file(str(image)) if isinstance(image, Path) else image
    job = client.submit(image, model, guidance, steps, samples, seed, density, api_name="/locate")
    job.result()
    return job.outputs()


def error_of(client, image, **kwargs) -> str:
    with pytest.raises(Exception) as info:
        stream(client, image, **kwargs)
    return str(info.value)


def live_components() -> int:
    gc.collect()
    return sum(isinstance(o, gr.components.Component) for o in gc.get_objects())


def test_a_sessions_requests_do_not_grow_the_servers_components(server, tmp_path):
    """Each output a request leaves unchanged is sent again, not skipped: Gradio builds a new component into the
    session's config for every prop update (gr.skip()), which grew the server's memory with every request."""
    client = new_client(server)
    image = write_test_image(tmp_path / "view.jpg")
    for density in (False, True):  # warm-up: the session's own copies of the outputs
        stream(client, image, seed=1, density=density)
    before = live_components()
    for i in range(8):
        stream(client, image, seed=i, density=i % 2 == 0)
    assert live_components() - before < 4, (before, live_components())


@pytest.mark.slow
def test_two_hundred_requests_leave_a_bounded_temporary_folder(server, client, tmp_path, monkeypatch):
    """200 requests, each leaving an upload, a CSV, a GeoJSON and a map PNG: the folder stays within max_bytes +
    the kept files + what was written in the last keep_fresh_s (the bound geodemo.request_files states), far
    below what the requests wrote. The drawings are stubbed by small pictures: the files are what counts here,
    and drawing would take most of the time."""
    monkeypatch.setattr(app, "density_map_figure", lambda *args, **kwargs: None)
    monkeypatch.setattr(app, "render_png", lambda figure: Image.new("RGB", (64, 32), "white"))
    monkeypatch.setattr(app, "globe_figure", lambda *args, **kwargs: go.Figure())
    kept = folder_bytes(server.temp)[1]  # before any request: the example thumbnails Gradio keeps
    written = 0
    for i in range(200):
        image = write_test_image(tmp_path / f"view{i}.jpg", colour=(i % 256, 7 * i % 256, 13 * i % 256))
        before = time.time()
        updates = stream(client, image, steps=2, samples=256, seed=i)
        assert "lat" in Path(updates[0][3]).read_text()  # the fresh files are served
        written += sum(p.stat().st_size for p in server.temp.rglob("*") if p.is_file() and p.stat().st_mtime >= before)
        fresh = sum(p.stat().st_size for p in server.temp.rglob("*")  # fresh when this request pruned
                    if p.is_file() and p.stat().st_mtime > before - BOUNDS.keep_fresh_s)
        assert folder_bytes(server.temp)[1] <= BOUNDS.max_bytes + kept + fresh
    files, size = folder_bytes(server.temp)
    assert written > 3 * (BOUNDS.max_bytes + kept + fresh) and files < 200  # the bound was what held it
    RequestFiles(server.temp, TempBounds()).prune(now=time.time() + EMPTY_FOLDER_GRACE_S + 1)
    assert len([p for p in server.temp.rglob("*") if p.is_dir()]) <= files  # emptied folders go after their grace


def test_the_largest_requests_globe_stays_under_its_bound(client, tmp_path):
    """The globe the app sends for 1,024 samples x 250 steps is drawn from a capped number of frames and points
    (R^3 diffusion: its points start far off the sphere, so its numbers are the widest of the three processes)."""
    updates = stream(client, write_test_image(tmp_path / "ok.jpg"), model=DIFFUSION, samples=1024, steps=250)
    assert len(updates[0][0]) < GLOBE_PAYLOAD_BOUND
    assert sum(1 for _ in open(updates[0][3])) > 1024  # the downloads keep every sample


def test_no_model_path_and_no_server_path_opens_a_door(server, client, tmp_path):
    """Names outside the catalogue, existing folders or not, get the same sentence but for the echoed name;
    an image that names a server path instead of an upload gets one sentence whether the file exists or not."""
    image = write_test_image(tmp_path / "ok.jpg")
    names = [str(server.models / MODEL), str(server.models), "/etc", "/nonexistent/folder", "../assets",
             "default/../../etc", str(ROOT / "assets"), "~", "C:\\Windows"]
    messages = {error_of(client, image, model=name).replace(repr(name), "NAME") for name in names}
    assert len(messages) == 1
    message = messages.pop()
    assert message.startswith("Unknown model NAME: choose one of") and one_sentence(message)
    assert str(server.models) not in message and str(tmp_path.parent) not in message
    assert "Unknown model" in error_of(client, image, model={"path": "/etc"})
    existing, missing = write_test_image(tmp_path / "on-server.jpg"), tmp_path / "missing.jpg"
    refusals = {error_of(client, {"path": str(path)}) for path in (existing, missing, Path("/etc/hostname"))}
    assert refusals == {"The image did not arrive as an upload; please upload it again."}
    too_big = httpx.post(server.url + "gradio_api/upload",
                         files={"files": ("big.jpg", b"\xff\xd8" + b"0" * (UPLOAD_LIMIT + 10), "image/jpeg")})
    assert too_big.status_code == 413 and "maximum allowed size" in too_big.text
    assert stream(client, image)[0][3]  # still serving


def test_a_damaged_model_file_through_the_app_is_one_sentence(client, tmp_path):
    image = write_test_image(tmp_path / "ok.jpg")
    message = error_of(client, image, model=BROKEN)
    assert "damaged or truncated" in message and BROKEN in message and one_sentence(message)
    assert stream(client, image)[0][3]


@pytest.mark.parametrize("where", ["sampling", "density"])
def test_a_model_that_runs_out_of_memory_mid_request_leaves_the_server_serving(client, tmp_path, monkeypatch,
                                                                                where):
    image = write_test_image(tmp_path / "ok.jpg")

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(GeoPipeline, "predict" if where == "sampling" else "log_density", out_of_memory)
    expected = "The model failed on this request" if where == "sampling" else "could not be computed"
    message = error_of(client, image, density=True)
    assert expected in message and "OutOfMemoryError" in message and one_sentence(message)
    monkeypatch.undo()
    updates = stream(client, image, density=where == "density")
    assert updates[-1][1] and updates[0][3]  # the next request gets its map and its samples


def request_outputs(client, image, seed) -> list:
    """Every streamed update of one request with density, each output read back: globe figure (without its
    per-request camera revision), map pixels, summary, CSV text, GeoJSON text ("skip" where the update left an
    output as it was)."""
    def read(i, value):
        if isinstance(value, dict) and value.get("__type__") == "update":
            return "skip"
        if value is None:
            return None
        if i == 0:
            figure = json.loads(value)
            figure["layout"].pop("uirevision", None)
            return figure
        if i == 1:
            return np.asarray(Image.open(value).convert("RGB")).tobytes()
        return Path(value).read_text() if i in (3, 4) else value

    return [[read(i, v) for i, v in enumerate(update)] for update in stream(client, image, seed=seed, density=True)]


@pytest.mark.slow
def test_two_users_at_once_never_see_each_others_outputs(server, tmp_path):
    users = [(write_test_image(tmp_path / "a.jpg", colour=(230, 40, 30)), 11),
             (write_test_image(tmp_path / "b.jpg", colour=(20, 60, 240)), 22)]
    solo = [request_outputs(new_client(server), image, seed) for image, seed in users]
    for i in range(5):  # every output differs between the two users
        shown = [[update[i] for update in outputs if update[i] not in ("skip", None)] for outputs in solo]
        assert shown[0] and shown[0][-1] != shown[1][-1]
    together: dict[int, list] = defaultdict(list)
    start = threading.Barrier(2)

    def user(k):
        own = new_client(server)
        start.wait()
        together[k].append(request_outputs(own, *users[k]))

    threads = [threading.Thread(target=user, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert together[0] == [solo[0]] and together[1] == [solo[1]]


ABANDONING_CLIENT = """
import sys, time
from gradio_client import Client, handle_file
url, image, seed, downloads, model = sys.argv[1:]
job = Client(url, verbose=False, download_files=downloads).submit(
    handle_file(image), model, 2.0, 4, 16, int(seed), True, api_name="/locate")
while not job.outputs():
    time.sleep(0.05)
print("first update", flush=True)
time.sleep(600)
"""
STAGE_SECONDS = 1.0


@pytest.mark.slow
def test_a_client_that_disconnects_frees_its_worker(server, client, tmp_path, monkeypatch):
    """Two clients fill both workers with slow requests (each stage of their answer takes STAGE_SECONDS more) and
    are killed after their first update: their requests stop at the next update they would send, and a third
    request is served meanwhile."""
    produced: dict[int, list] = defaultdict(list)
    real_locate = app.locate

    def slow_locate(pipe, image, request, **kwargs):
        for stage in real_locate(pipe, image, request, **kwargs):
            produced[request.seed].append(stage.level)
            yield stage
            if request.seed >= 100:
                time.sleep(STAGE_SECONDS)

    monkeypatch.setattr(app, "locate", slow_locate)
    image = write_test_image(tmp_path / "ok.jpg")
    full = len(list(real_locate(load(server.models / MODEL), image, app.check_request(16, 4, 2.0, 0),
                                map_options=MAP)))
    abandoning = [subprocess.Popen([sys.executable, "-c", ABANDONING_CLIENT, server.url, str(image), str(seed),
                                    str(server.downloads), MODEL], stdout=subprocess.PIPE, text=True)
                  for seed in (100, 101)]
    try:
        for process in abandoning:
            assert process.stdout.readline().strip() == "first update"
    finally:
        for process in abandoning:
            process.kill()
            process.wait()
    updates = stream(client, image, seed=1, density=True)
    assert updates[-1][1] and len(produced[1]) == full
    time.sleep(3 * STAGE_SECONDS)  # time for an abandoned request to go on, were it still running
    assert all(len(produced[seed]) < full for seed in (100, 101)), dict(produced)


@pytest.mark.slow
def test_sigterm_stops_the_server_cleanly(tmp_path):
    """python app.py serves a request, then SIGTERM: exit status 0, no traceback, its temporary folder empty."""
    temp, port = tmp_path / "app-temp", free_port()
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen([sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port),
                               "--temp-dir", str(temp)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "config", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        updates = stream(Client(url, verbose=False, download_files=str(tmp_path / "downloads")),
                         Path(app.example_images()[0][0]), model="default", steps=4)
        assert updates[0][3] and list(temp.glob(f"{REQUEST_PREFIX}*"))
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
    finally:
        server.kill()
    text = (tmp_path / "server.log").read_text()
    assert "stopped" in text and "Traceback" not in text, text[-3000:]
    assert folder_bytes(temp) == (0, 0)  # the app's temporary folder is emptied
