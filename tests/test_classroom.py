"""The "Compare & learn" tab through the real app (gradio_client) with the shipped models: the four named endpoints
return what the issue asks of them, and bad input gets one sentence."""

import json
import math

import pytest
import torch
from gradio_client import Client, handle_file

import geodemo
from app_fixtures import launch_app
from classroom import parse_numbers
from geodemo.examples import example_views
from geodemo.images import load_image
from geodemo.likelihood import RELEVANT_NATS
from geodemo.registry import shipped_models

MODELS = ("default", "earth-flow", "earth-diffusion")
if not set(MODELS) <= set(shipped_models()):
    pytest.skip("the shipped models are not on disk", allow_module_level=True)


@pytest.fixture(scope="module")
def client():
    url, demo = launch_app(None, map_options={"coarse_deg": 30.0, "levels": 1, "max_cells_per_level": 8})
    yield Client(url, verbose=False)
    demo.close()


@pytest.fixture(scope="module")
def view():
    return next(v for v in example_views() if "nile" in v.path.name)


def final(client, *args, api_name):
    """Every streamed update of one call and the last one's data (the JSON output)."""
    job = client.submit(*args, api_name=api_name)
    job.result()
    updates = job.outputs()
    return updates, updates[-1][-1]


@pytest.mark.slow
def test_three_processes_fly_in_or_slide_and_land_on_the_sphere(client, view):
    updates, data = final(client, handle_file(str(view.path)), *MODELS, 32, 16, 0.0, 0, api_name="/compare_processes")
    assert len(updates) == 6 and data["complete"]  # three globes appear one by one, then the scored summaries
    assert data["truth"] == pytest.approx([view.latitude, view.longitude])
    runs = {r["process"]: r for r in data["runs"]}
    assert set(runs) == {"rfm_s2", "flow_r3", "diffusion_r3"}
    for run in runs.values():
        traj = torch.tensor(run["trajectories_xyz"])
        assert traj.shape == (17, 32, 3)
        norms = traj.norm(dim=-1)
        if run["process"] == "rfm_s2":
            assert torch.allclose(norms, torch.ones_like(norms), atol=1e-3)  # slides on the surface
        else:
            assert float((norms[0] - 1).abs().median()) > 0.2  # Gaussian noise in space, off the sphere
            assert float((norms[-1] - 1).abs().median()) < 0.05  # landed on the sphere
        assert run["scored_samples"] == 16 and math.isfinite(run["localizability"])
        assert run["error_km"] < 3000 and run["spread_km"] > 0 and run["sampling_seconds"] > 0
    globe = json.loads(updates[-1][0])
    assert {k for k in globe["layout"] if k.startswith("scene")} == {"scene", "scene2", "scene3"}
    assert len(globe["frames"]) == 17 and len(globe["layout"]["sliders"]) == 1  # one slider drives all three


@pytest.mark.slow
def test_guidance_sweep_spread_of_the_rfm_model_falls_from_w0_to_w2(client, view):
    updates, data = final(client, handle_file(str(view.path)), *MODELS, "2, 0, 1", 64, 16, 0,
                          api_name="/guidance_sweep")
    assert len(updates) == 3  # each w as soon as every model has it
    assert data["guidance"] == [0.0, 1.0, 2.0]
    rfm = next(m for m in data["models"] if m["process"] == "rfm_s2")
    spread = {r["guidance"]: r["spread_km"] for r in rfm["runs"]}
    assert spread[2.0] < 0.5 * spread[0.0]
    assert all(len(r["samples"]) == 64 for m in data["models"] for r in m["runs"])


@pytest.mark.slow
def test_steps_sweep_error_at_250_steps_is_below_one_step(client):
    updates, data = final(client, None, *MODELS, "250, 1", 2, 0.0, 0, api_name="/steps_sweep")
    assert data["steps"] == [1, 250] and len(data["views"]) == len(example_views())
    assert len(updates) == 2  # each number of steps as soon as every model has it
    for model in data["models"]:
        one, many = model["median_km"]
        assert many < one, model
        assert model["geoscore"][1] > model["geoscore"][0]


@pytest.mark.slow
def test_probability_path_ends_at_log_density_and_starts_at_the_uniform_base(client, view):
    updates, data = final(client, handle_file(str(view.path)), "default", 64, 0.0, 0, api_name="/probability_path")
    assert len(updates) == 5 and data["complete"] and data["process"] == "rfm_s2"
    times = data["times"]
    assert times[0]["t"] == 1.0 and times[-1]["t"] == 0.0
    noise, end = times[0]["cells"], times[-1]["cells"]
    assert noise["log_density"] == pytest.approx([-math.log(4 * math.pi)] * len(noise["log_density"]),
                                                 abs=1e-6)  # the endpoint's JSON keeps 6 decimals
    pipe = geodemo.load("default", device="cpu")
    embedding = pipe.embed(load_image(view.path).image)
    direct = pipe.log_density(end["centres"], embeddings=embedding, **data["ode_options"])[0]
    shown = torch.tensor(end["log_density"], dtype=direct.dtype)
    # The map preset's claim: within RELEVANT_NATS of the maximum every point is solved alike; farther points may
    # be only screened in one solve and solved in the other (the map's levels each know their own maximum).
    near = direct >= direct.max() - RELEVANT_NATS
    assert near.sum() >= 3 and float((shown - direct)[near].abs().max()) < 1e-3
    assert (shown[~near] < direct.max() - RELEVANT_NATS).all()
    assert max(end["log_density"]) - min(end["log_density"]) > 3  # the data end is far from uniform (its peak may
    # be narrower than the test's coarse cells, whose centres then all lie below the uniform -log 4 pi)
    field = torch.tensor(times[2]["field_vectors"])
    assert field.shape == (200, 3) and float(field.norm(dim=-1).max()) > 0
    globe = json.loads(updates[-1][0])
    assert len(globe["frames"]) == 5


def test_bad_input_gets_one_sentence(client, view):
    with pytest.raises(Exception, match="'abc' in the guidance scales is not a number"):
        client.predict(handle_file(str(view.path)), *MODELS, "0, abc", 16, 4, 0, api_name="/guidance_sweep")
    with pytest.raises(Exception, match="Please add an image first"):
        client.predict(None, "default", 16, 0.0, 0, api_name="/probability_path")
    with pytest.raises(Exception, match="Unknown model"):
        client.predict(handle_file(str(view.path)), "no-such-model", "", "", 16, 4, 0.0, 0,
                       api_name="/compare_processes")


def test_parse_numbers_sorts_and_checks_the_range():
    assert parse_numbers("8 0, 0.5;2,2", "guidance scales", False, (0, 10)) == [0.0, 0.5, 2.0, 8.0]
    with pytest.raises(ValueError, match="whole numbers between 1 and 250"):
        parse_numbers("1, 2.5", "step counts", True, (1, 250))
    with pytest.raises(ValueError, match="at most 12"):
        parse_numbers(",".join(["1"] * 13), "step counts", True, (1, 250))
