"""The real app on localhost, called through gradio_client: results, clear errors, concurrent users, one best
guess everywhere, and the model's distribution at the defaults."""

import base64
import csv
import io
import json
import threading

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image

import app
import geodemo
from app_fixtures import build_test_model, launch_app, write_test_image
from geodemo.cli import main as cli_main
from geodemo.examples import example_views
from geodemo.guidance_spread import distinct_positions
from geodemo.images import load_image
from geodemo.registry import shipped_models
from geodemo.service import DEFAULTS, GUIDED_CANDIDATES, LATENCY_TABLE, POINT_GUIDANCE, density_options
from geodemo.sphere import xyz_to_latlon

MODEL = "app-test-model"


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return build_test_model(tmp_path_factory.mktemp("models") / MODEL)


@pytest.fixture(scope="module")
def server(model_folder):
    url, demo = launch_app(model_folder, map_options={"coarse_deg": 45.0, "levels": 1, "max_cells_per_level": 8})
    yield url
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server, verbose=False)


def stream(client, image, model=MODEL, guidance=2.0, steps=6, samples=16, seed=0, density=False) -> list:
    """Every update the app streams for one request (the first holds the globe, the last the final map)."""
    job = client.submit(handle_file(str(image)), model, guidance, steps, samples, seed, density, api_name="/locate")
    job.result()
    return job.outputs()


def latest(updates) -> list:
    """The latest value of each output: (globe JSON, map, summary, CSV path, GeoJSON path)."""
    values = [None] * 5
    for update in updates:
        for i, value in enumerate(update[:5]):
            if not (isinstance(value, dict) and value.get("__type__") == "update"):
                values[i] = value
    return values


def locate(client, image, **kwargs):
    return latest(stream(client, image, **kwargs))


def read_rows(path, kind="sample"):
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if r["kind"] == kind]


def read_samples(path):
    return [(float(r["lat"]), float(r["lon"])) for r in read_rows(path)]


def globe_marker(globe_json: str, prefix: str) -> tuple[str, tuple[float, float]]:
    """(legend name, (lat, lon)) of the globe's trace whose name starts with prefix."""
    trace = next(t for t in json.loads(globe_json)["data"] if t.get("name", "").startswith(prefix))
    xyz = torch.tensor([[array(trace[axis])[0] for axis in "xyz"]], dtype=torch.float64)
    return trace["name"], tuple(xyz_to_latlon(xyz)[0].tolist())


def array(value) -> np.ndarray:
    """A plotly JSON array: a list, or typed binary data {"dtype", "bdata": base64}."""
    if isinstance(value, dict):
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
    return np.asarray(value)


def test_prediction_returns_samples_in_range_and_an_animated_globe(client, tmp_path):
    image = write_test_image(tmp_path / "photo.jpg")
    assert len(stream(client, image, samples=32, density=True)) == 3  # samples, coarse map, one refinement
    globe, density_map, summary, csv_path, geojson_path = locate(client, image, samples=32, density=True)
    points = read_samples(csv_path)
    assert len(points) == 32
    assert all(-90 <= lat <= 90 and -180 <= lon <= 180 for lat, lon in points)
    figure = json.loads(globe)
    assert len(figure["frames"]) == 7 and figure["layout"]["updatemenus"]  # steps + 1 states, play/pause
    assert "Best guess" in summary and "highest log-density" in summary  # the density stage finished
    assert density_map.endswith(".png")
    features = json.load(open(geojson_path))["features"]
    assert sum(f["properties"]["kind"] == "sample" for f in features) == 32


def test_example_view_brings_its_true_location(client):
    examples, _ = app.example_images()
    if not examples:
        pytest.fail("assets/examples/ should ship example views")
    _, _, summary, _, _ = locate(client, examples[0])
    assert "True location" in summary and "GeoScore" in summary
    assert "(no log-densities computed)" in summary and "follows" not in summary  # the map is off: none will come


def truncated_jpeg(tmp_path) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "whole.jpg")
    data = (tmp_path / "whole.jpg").read_bytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize("kind, message", [("text", "not an image"), ("truncated", "damaged or truncated")])
def test_bad_files_give_a_clear_error(client, tmp_path, kind, message):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"definitely not a jpeg" if kind == "text" else truncated_jpeg(tmp_path))
    with pytest.raises(Exception, match=message):
        locate(client, bad)


def test_absurd_values_and_unknown_models_are_refused(client, tmp_path):
    image = write_test_image(tmp_path / "ok.jpg")
    with pytest.raises(Exception, match="steps must be between 1 and 250"):
        locate(client, image, steps=100000)
    with pytest.raises(Exception, match="guidance must be between 0.0 and 10.0"):
        locate(client, image, guidance=-5)
    with pytest.raises(Exception, match="Unknown model 'no/such-model'"):
        locate(client, image, model="no/such-model")
    with pytest.raises(Exception, match="nicolas-dufour/PLONK_YFCC"):
        locate(client, image, model="nicolas-dufour/PLONK_YFCC")  # not cached, hub unreachable: one sentence
    assert read_samples(locate(client, image)[3])  # the server is still fine


def test_concurrent_users_each_get_their_own_result(server, tmp_path):
    images = [write_test_image(tmp_path / f"user{i}.jpg", colour=(60 * i + 20, 90, 200 - 50 * i)) for i in range(3)]
    solo = [read_samples(locate(Client(server, verbose=False), img, seed=i)[3]) for i, img in enumerate(images)]
    results = [None] * 3

    def user(i):
        results[i] = read_samples(locate(Client(server, verbose=False), images[i], seed=i)[3])

    threads = [threading.Thread(target=user, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == solo and solo[0] != solo[1]


def test_one_best_guess_everywhere(client, model_folder, tmp_path):
    """THE best guess (the guided w = 2 sample of highest w = 0 log-density, here computed by the API's own
    GeoPipeline.best_guess) is the same point on the app's globe, in its summary, CSV and GeoJSON, and in the
    CLI's JSON, CSV and GeoJSON; the globe first shows the provisional one and is drawn again once it is settled."""
    image = write_test_image(tmp_path / "photo.jpg", colour=(150, 60, 30))
    pipe = geodemo.load(model_folder, device="cpu")
    embedding = pipe.embed(load_image(image).image)
    expected = pipe.best_guess(embeddings=embedding, num_samples=GUIDED_CANDIDATES, steps=6, guidance=POINT_GUIDANCE,
                               seed=0, ode_options=density_options(pipe)).latlon[0].tolist()
    close = lambda point: np.allclose(point, expected, atol=2e-6)  # noqa: E731  (files keep 6 decimals)

    updates = stream(client, image, guidance=0.0, samples=32, density=True)
    globes = list(dict.fromkeys(u[0] for u in updates if isinstance(u[0], str)))  # each drawing once, in order
    assert len(globes) == 2  # drawn with the provisional best guess, then again with the settled one
    assert "provisional" in globe_marker(globes[0], "best guess")[0]
    name, on_globe = globe_marker(globes[-1], "best guess")
    assert "provisional" not in name and close(on_globe)
    _, _, summary, csv_path, geojson_path = latest(updates)
    lat, lon = expected
    assert f"{abs(lat):.3f}°{'N' if lat >= 0 else 'S'}, {abs(lon):.3f}°{'E' if lon >= 0 else 'W'}" in summary
    [row] = read_rows(csv_path, "best_guess")
    assert close((float(row["lat"]), float(row["lon"])))
    [feature] = [f for f in json.load(open(geojson_path))["features"] if f["properties"]["kind"] == "best_guess"]
    assert close(feature["geometry"]["coordinates"][::-1])

    options = ["--model", str(model_folder), "--samples", "32", "--steps", "6", "--seed", "0"]
    for fmt in ("json", "csv", "geojson"):
        out = io.StringIO()
        assert cli_main(["predict", str(image), *options, "--format", fmt], out=out) == 0
        if fmt == "json":
            point = json.loads(out.getvalue())["best_guess"]
        elif fmt == "csv":
            row = next(r for r in csv.DictReader(io.StringIO(out.getvalue())) if r["kind"] == "best_guess")
            point = (float(row["lat"]), float(row["lon"]))
        else:
            features = json.loads(out.getvalue())["features"]
            point = next(f for f in features if f["properties"]["kind"] == "best_guess")["geometry"]["coordinates"][::-1]
        assert close(point), fmt


def test_an_error_clears_the_previous_answer(client, tmp_path):
    """After an error nothing on screen seems to answer the new request: the globe, map, summary and files of the
    previous one are replaced; an error in the map stage clears the map only (the samples still stand)."""
    assert read_samples(locate(client, write_test_image(tmp_path / "ok.jpg"))[3])
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"definitely not a jpeg")
    job = client.submit(handle_file(str(bad)), MODEL, 0.0, 6, 16, 0, False, api_name="/locate")
    with pytest.raises(Exception, match="not an image"):
        job.result()
    globe, density_map, summary, csv_path, geojson_path = job.outputs()[-1][:5]
    assert summary.startswith("**No answer.**") and "not an image" in summary
    assert density_map is None and csv_path is None and geojson_path is None
    figure = json.loads(globe)
    assert figure["layout"]["title"]["text"].startswith("No answer") and not figure.get("frames")


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(shipped_models()))
def test_defaults_show_the_distribution_on_every_example_view(client, model):
    """With every default left as it is, each shipped model gives at least 100 distinct positions of 128 on each
    shipped example view in the app, the CLI and predict(): the samples are the model's own distribution."""
    views = [str(v.path) for v in example_views()]
    for view in views:  # the app: only the image and the model given; the map off (it does not change the samples)
        job = client.submit(image=handle_file(view), model_name=model, exact_density=False, api_name="/locate")
        job.result()
        rows = read_rows(latest(job.outputs())[3])
        points = [(float(r["lat"]), float(r["lon"])) for r in rows]
        assert len(points) == DEFAULTS["num_samples"] == 128 and {r["guidance"] for r in rows} == {"0.0"}
        assert distinct_positions(points) >= 100, (model, view)
    out = io.StringIO()
    assert cli_main(["predict", *views, "--model", model, "--format", "csv", "--no-likelihood"], out=out) == 0
    rows = [r for r in csv.DictReader(io.StringIO(out.getvalue())) if r["kind"] == "sample"]
    for view in views:
        points = [(float(r["lat"]), float(r["lon"])) for r in rows if r["image"] == view]
        assert len(points) == 128 and distinct_positions(points) >= 100, (model, view, "CLI")
    pipe = geodemo.load(model, device="cpu")
    embeddings = torch.cat([pipe.embed(load_image(view).image) for view in views])
    latlon = pipe.predict(embeddings=embeddings, num_samples=128).latlon  # predict()'s own defaults otherwise
    assert all(distinct_positions(s) >= 100 for s in latlon), (model, "predict()")


def test_the_map_note_states_the_measured_time_of_each_shipped_model():
    table = json.loads(LATENCY_TABLE.read_text())
    for name, entry in table["models"].items():
        note = app.map_note(name)
        assert f"samples + globe: {entry['samples_globe_s']:.1f} s" in note, note
        assert app.spoken_time(entry["complete_map_s"]) in note and entry["measured"] in note, note
    assert app.spoken_time(46.3) == "46 s" and app.spoken_time(424.8) == "7 min"
    assert "not measured" in app.map_note("some/unmeasured-model")
