"""geodemo.explore on small random models: the marginal p_t against the sampler's particles, the probability path's
two ends, and what each experiment reports against a direct computation."""

import math

import pytest
import torch
from PIL import Image

import geodemo
from app_fixtures import build_test_model, write_test_image
from conftest import random_network
from geodemo import explore
from geodemo.grids import fibonacci_grid, integrate
from geodemo.guidance_spread import spread_km
from geodemo.metrics import geoscore
from geodemo.pipeline import GeoPipeline
from geodemo.processes import FlowR3, RiemannianFlowS2
from geodemo.schedules import SigmoidSchedule
from geodemo.service import density_options
from geodemo.sphere import LOG_SPHERE_AREA, haversine_km

SMALL_MAP = {"coarse_deg": 45.0, "levels": 1, "max_cells_per_level": 6}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Three random-weight models with the test encoder, one per process."""
    root = tmp_path_factory.mktemp("explore-models")
    processes = {"rfm": "rfm_s2", "flow": "flow_r3", "diffusion": "diffusion_r3"}
    return {name: geodemo.load(build_test_model(root / name, process=process, seed=i), device="cpu")
            for i, (name, process) in enumerate(processes.items())}


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return Image.open(write_test_image(tmp_path_factory.mktemp("explore-image") / "view.jpg")).convert("RGB")


@pytest.mark.parametrize("process", [RiemannianFlowS2(), FlowR3()], ids=lambda p: p.name)
def test_marginal_density_integrates_to_one_and_is_where_the_particles_are(process):
    """p_t at t = 0.6 (the ODE from t for the Riemannian flow; the density of directions at noise level s(t) for
    R^3) integrates to 1 over the sphere, and its mean direction int x p_t(x) dx equals the mean direction of the
    sampler's particles at the same t, which started from the base and moved by the same field."""
    pipe = GeoPipeline(random_network(scale=0.5, seed=1), process, SigmoidSchedule(), device="cpu")
    embedding = torch.randn(1, 8, generator=torch.Generator().manual_seed(0))
    t, steps = 0.6, 200
    grid = fibonacci_grid(2000 if process.on_sphere else 1000)
    options = {"method": "rk4", "steps": 32} if process.on_sphere else {"method": "rk4", "steps": 16, "radial_nodes": 8}
    logp = explore.marginal_log_density(pipe, embedding, t, options=options)(grid.latlon)
    assert float(integrate(logp, grid.solid_angle)) == pytest.approx(1.0, abs=0.02)
    density_mean = (grid.xyz * (logp.exp() * grid.solid_angle)[:, None]).sum(0)
    states = pipe.predict(embeddings=embedding, num_samples=8192, steps=steps, seed=1, trajectories=True)
    particles = states.trajectories_xyz[0, round((1 - t) * steps)].double()
    particle_mean = (particles / particles.norm(dim=-1, keepdim=True)).mean(0)
    assert float(density_mean.norm()) > 0.1  # a density far from uniform: the comparison can fail
    assert float((density_mean - particle_mean).norm()) < 0.03  # ~3 standard errors of 8192 particles


def test_marginal_options_at_the_data_end_are_log_densitys_own(models):
    for pipe in models.values():
        options = density_options(pipe)
        own = options if pipe.process.on_sphere else {**options, "radial_sigma": explore.DATA_END_SIGMA}
        assert explore.marginal_options(pipe, 0.0, options) == own
    rfm, flow = models["rfm"], models["flow"]
    half = explore.marginal_options(rfm, 0.5, {"method": "rk4", "steps": 8})
    assert half == {"method": "rk4", "steps": 4, "t_start": 0.5}
    noisy = explore.marginal_options(flow, 0.5, {"method": "rk4", "steps": 8})
    gamma = float(flow.schedule.gamma(torch.tensor(0.5, dtype=torch.float64)))
    assert noisy["radial_sigma"] == pytest.approx(1 - gamma)  # flow matching: s = 1 - gamma
    assert "t_start" not in noisy


@pytest.mark.parametrize("name", ["rfm", "flow"])
def test_probability_path_runs_from_the_base_density_to_log_density(models, image, name):
    pipe = models[name]
    stages = list(explore.probability_path_stages(pipe, image, num_samples=32, steps=20, seed=3,
                                                  map_options=SMALL_MAP))
    assert len(stages) == 5 and stages[-1].complete and not stages[0].complete
    assert stages[0].times[0].cells is not None and stages[0].times[1].cells is None  # the base comes first
    path = stages[-1]
    ts = [p.t for p in path.times]
    gammas = [p.gamma for p in path.times]
    assert ts[0] == 1.0 and ts[-1] == 0.0 and ts == sorted(ts, reverse=True)
    assert gammas[0] < 1e-6 and gammas[-1] == pytest.approx(1.0) and gammas == sorted(gammas)
    for p in path.times:  # the particles are the sampler's own states at t
        assert torch.equal(p.particles_xyz, path.trajectories_xyz[p.step])
        assert p.t == pytest.approx(1 - p.step / path.steps)
    noise, data = path.times[0].cells, path.times[-1].cells
    assert torch.allclose(noise.log_density, torch.full_like(noise.log_density, -LOG_SPHERE_AREA))
    embedding = pipe.embed(image)
    direct = pipe.log_density(data.centres, embeddings=embedding, **path.ode_options)[0]
    assert torch.allclose(data.log_density, direct, atol=1e-3)
    assert data.log_density.std() > 0.05  # the data end is not the base
    middle = path.times[2]
    if pipe.process.on_sphere:
        radial = (middle.field_xyz * middle.field_vectors).sum(-1)
        assert float(radial.abs().max()) < 1e-5  # tangent to the sphere
        assert float(middle.field_vectors.norm(dim=-1).max()) > 0
    else:
        assert middle.field_vectors is None


def test_compare_processes_streams_runs_of_the_right_shapes(models, image):
    stages = list(explore.compare_processes_stages(models, image, num_samples=24, steps=6, seed=5, truth=(10.0, 20.0),
                                                   scored=4))
    assert len(stages) == 6 and stages[-1].complete
    assert [len(s.runs) for s in stages[:3]] == [1, 2, 3]
    assert all(r.summary.localizability is None for r in stages[2].runs)
    final = stages[-1]
    for run, (name, pipe) in zip(final.runs, models.items()):
        assert run.model == name and run.process == pipe.process.name
        assert run.trajectories_xyz.shape == (7, 24, 3) and run.samples.shape == (24, 2)
        expected = pipe.predict(embeddings=pipe.embed(image), num_samples=24, steps=6, seed=5).latlon[0].double()
        assert torch.allclose(run.samples, expected)  # the same seed gives the same samples
        assert run.spread_km == pytest.approx(spread_km(run.samples))
        assert run.summary.num_scored == 4 and run.summary.localizability is not None
        best = torch.tensor(run.summary.best_guess, dtype=torch.float64)
        assert run.summary.error_km == pytest.approx(float(haversine_km(best, torch.tensor((10.0, 20.0)).double())))
    norms = {r.process: r.trajectories_xyz.norm(dim=-1) for r in final.runs}
    assert torch.allclose(norms["rfm_s2"], torch.ones_like(norms["rfm_s2"]), atol=1e-5)  # slides on the sphere
    for process in ("flow_r3", "diffusion_r3"):  # starts as Gaussian noise in space: |n| ~ chi with 3 dof
        assert float((norms[process][0] - 1).abs().median()) > 0.2


def test_guidance_sweep_fills_every_curve_together(models, image):
    pair = {k: models[k] for k in ("rfm", "flow")}
    truth = (-30.0, 60.0)
    stages = [(len(s.runs["rfm"]), len(s.runs["flow"])) for s in
              explore.guidance_sweep_stages(pair, image, [0.0, 2.0], num_samples=20, steps=5, seed=2, truth=truth)]
    assert stages == [(1, 0), (1, 1), (2, 1), (2, 2)]
    sweep = explore.guidance_sweep(pair, image, guidance=[0.0, 2.0], num_samples=20, steps=5, seed=2, truth=truth)
    assert sweep.complete and sweep.guidance == [0.0, 2.0]
    for name, pipe in pair.items():
        for run in sweep.runs[name]:
            direct = pipe.predict(embeddings=pipe.embed(image), num_samples=20, steps=5, guidance=run.guidance,
                                  seed=2).latlon[0].double()
            assert torch.allclose(run.samples, direct)
            assert run.spread_km == pytest.approx(spread_km(direct))
            assert run.error_km == pytest.approx(float(haversine_km(direct, torch.tensor(truth).double()).median()))


def test_steps_sweep_reports_the_error_of_every_sample_of_every_view(models, image, tmp_path):
    other = Image.open(write_test_image(tmp_path / "b.jpg", colour=(200, 160, 40))).convert("RGB")
    views = [explore.View("a", image, (10.0, 10.0)), explore.View("b", other, (-40.0, 150.0))]
    pipe = models["diffusion"]
    sweep = explore.steps_sweep({"diffusion": pipe}, steps=[1, 3], samples_per_view=5, guidance=1.0, seed=4,
                                extra_views=views, examples=False)
    assert sweep.complete and sweep.views == ["a", "b"] and sweep.steps == [1, 3]
    embeddings = torch.cat([pipe.embed(v.image) for v in views])
    for i, steps in enumerate([1, 3]):
        samples = pipe.predict(embeddings=embeddings, num_samples=5, steps=steps, guidance=1.0, seed=4).latlon.double()
        d = torch.cat([haversine_km(samples[v], torch.tensor(view.truth).double()) for v, view in enumerate(views)])
        assert sweep.median_km["diffusion"][i] == pytest.approx(float(d.median()))
        assert sweep.geoscore["diffusion"][i] == pytest.approx(float(geoscore(d).mean()))


def test_bad_requests_are_one_sentence(models, image):
    with pytest.raises(ValueError, match="guidance must be between"):
        explore.guidance_sweep(models, image, guidance=[0.0, 50.0])
    with pytest.raises(ValueError, match="steps must be between"):
        explore.steps_sweep(models, steps=[1, 1000], examples=False, extra_views=[explore.View("a", image, (0, 0))])
    with pytest.raises(ValueError, match="t_start"):
        models["flow"].log_density([[0.0, 0.0]], images=[image], t_start=0.5)
    assert math.isfinite(float(models["rfm"].log_density([[0.0, 0.0]], images=[image], t_start=0.5, method="rk4",
                                                        steps=4)[0, 0]))
