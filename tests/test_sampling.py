import torch

from conftest import random_network
from geodemo.guidance import guided_prediction
from geodemo.processes import DiffusionR3, FlowR3, RiemannianFlowS2
from geodemo.sampling import gamma_grid, sample
from geodemo.schedules import SigmoidSchedule

SCHEDULE = SigmoidSchedule()


def test_guidance_rule(small_network):
    y, g, emb = torch.randn(2, 6, 3), torch.rand(2), torch.randn(2, 8)
    cond = small_network(y, g, emb)
    uncond = small_network(y, g, torch.zeros_like(emb))
    assert torch.equal(guided_prediction(small_network, y, g, emb, 0.0), cond)
    assert torch.allclose(guided_prediction(small_network, y, g, emb, 2.5), 3.5 * cond - 2.5 * uncond, atol=1e-5)


def test_gamma_grid_runs_from_noise_to_data():
    g = gamma_grid(SCHEDULE, 10)
    assert g.shape == (11,) and g[0] == SCHEDULE.clip_min and g[-1] == 1.0


def test_same_seed_same_samples_and_trajectory_shapes(small_network):
    emb = torch.randn(3, 8)
    for process in (RiemannianFlowS2(), FlowR3(), DiffusionR3()):
        a = sample(small_network, process, SCHEDULE, emb, 20, steps=7, guidance=1.5, seed=123, trajectories=True)
        b = sample(small_network, process, SCHEDULE, emb, 20, steps=7, guidance=1.5, seed=123)
        c = sample(small_network, process, SCHEDULE, emb, 20, steps=7, guidance=1.5, seed=124)
        assert torch.equal(a.xyz, b.xyz) and not torch.equal(a.xyz, c.xyz)
        assert a.xyz.shape == (3, 20, 3) and a.trajectories.shape == (3, 8, 20, 3)
        assert torch.allclose(a.xyz.norm(dim=-1), torch.ones(3, 20), atol=1e-5)
        assert torch.allclose(a.xyz, a.trajectories[:, -1] / a.trajectories[:, -1].norm(dim=-1, keepdim=True), atol=1e-6)


def test_rfm_trajectories_stay_on_the_sphere_and_r3_ones_start_gaussian(small_network):
    emb = torch.randn(1, 8)
    rfm = sample(small_network, RiemannianFlowS2(), SCHEDULE, emb, 500, steps=5, seed=0, trajectories=True)
    assert torch.allclose(rfm.trajectories.norm(dim=-1), torch.ones(1, 6, 500), atol=1e-5)
    flow = sample(small_network, FlowR3(), SCHEDULE, emb, 500, steps=5, seed=0, trajectories=True)
    start_norms = flow.trajectories[0, 0].norm(dim=-1)
    assert 1.4 < start_norms.mean() < 1.8  # E|n| = 1.596 for a standard Gaussian in R^3


def test_explicit_initial_noise_and_per_image_conditioning():
    net = random_network(seed=3)
    emb = torch.randn(2, 8)
    noise = torch.randn(2, 10, 3)
    out = sample(net, FlowR3(), SCHEDULE, emb, 10, steps=4, initial_noise=noise)
    alone = sample(net, FlowR3(), SCHEDULE, emb[1:], 10, steps=4, initial_noise=noise[1:])
    assert torch.allclose(out.xyz[1], alone.xyz[0], atol=1e-6)
