"""The real app on localhost, called through gradio_client: results, clear errors, concurrent users."""

import csv
import json
import threading

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

import app
from app_fixtures import build_test_model, launch_app, write_test_image

MODEL = "app-test-model"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = build_test_model(tmp_path_factory.mktemp("models") / MODEL)
    url, demo = launch_app(folder, map_options={"coarse_deg": 45.0, "levels": 1, "max_cells_per_level": 8})
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


def locate(client, image, **kwargs):
    """The latest value of each output: (globe JSON, map, summary, CSV path, GeoJSON path)."""
    latest = [None] * 5
    for update in stream(client, image, **kwargs):
        for i, value in enumerate(update):
            if not (isinstance(value, dict) and value.get("__type__") == "update"):
                latest[i] = value
    return latest


def read_samples(path):
    with open(path, newline="") as f:
        return [(float(r["lat"]), float(r["lon"])) for r in csv.DictReader(f)]


def test_prediction_returns_samples_in_range_and_an_animated_globe(client, tmp_path):
    image = write_test_image(tmp_path / "photo.jpg")
    assert len(stream(client, image, samples=32, density=True)) == 3  # samples, coarse map, one refinement
    globe, density_map, summary, csv_path, geojson_path = locate(client, image, samples=32, density=True)
    points = read_samples(csv_path)
    assert len(points) == 32
    assert all(-90 <= lat <= 90 and -180 <= lon <= 180 for lat, lon in points)
    figure = json.loads(globe)
    assert len(figure["frames"]) == 7 and figure["layout"]["updatemenus"]  # steps + 1 states, play/pause
    assert "Best guess" in summary and "highest likelihood" in summary  # the density stage finished
    assert density_map.endswith(".png")
    features = json.load(open(geojson_path))["features"]
    assert sum(f["properties"]["kind"] == "sample" for f in features) == 32


def test_example_view_brings_its_true_location(client):
    examples, _ = app.example_images()
    if not examples:
        pytest.fail("assets/examples/ should ship example views")
    _, _, summary, _, _ = locate(client, examples[0])
    assert "True location" in summary and "GeoScore" in summary


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
