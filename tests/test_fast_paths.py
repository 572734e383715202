"""Float64 checks of the fast paths: precomputed modulations, hand-written forward-mode divergence, bf16 sampling."""

import pytest
import torch

from conftest import random_network
from geodemo import sampling
from geodemo.guidance import guided_prediction
from geodemo.likelihood import field_and_divergence, log_density, ode_field
from geodemo.processes import DiffusionR3, FlowR3, RiemannianFlowS2
from geodemo.sampling import gamma_grid, guided_step_predictions, sample
from geodemo.schedules import SigmoidSchedule
from geodemo.sphere import project, tangent_basis

SCHEDULE = SigmoidSchedule()


def test_jvp_matches_autograd_jacobian_float64():
    net = random_network(dim=32, depth=3, cond_dim=8, seed=11).double()
    y, emb = torch.randn(2, 4, 3, dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64)
    gamma = torch.tensor([0.2, 0.7], dtype=torch.float64)
    tangents = torch.randn(5, 2, 4, 3, dtype=torch.float64)
    out, dout = net.jvp_modulated(y, tangents, net.modulations(gamma, emb))
    assert torch.allclose(out, net(y, gamma, emb), rtol=1e-12, atol=1e-13)
    for b in range(2):
        for m in range(4):
            jac = torch.func.jacrev(lambda p: net(p.view(1, 1, 3), gamma[b:b + 1], emb[b:b + 1]).view(3))(y[b, m])
            assert torch.allclose(dout[:, b, m], tangents[:, b, m] @ jac.T, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("process,on_sphere", [(RiemannianFlowS2(), True), (RiemannianFlowS2(), False),
                                               (FlowR3(), False), (DiffusionR3(), False)],
                         ids=["rfm-riemannian", "rfm-ambient", "flow_r3", "diffusion_r3"])
@pytest.mark.parametrize("guidance", [0.0, 1.5])
def test_fast_divergence_equals_the_generic_jvp_float64(process, on_sphere, guidance):
    net = random_network(dim=32, depth=2, cond_dim=8, seed=12).double()
    emb = torch.randn(2, 8, dtype=torch.float64)
    y = torch.randn(2, 9, 3, dtype=torch.float64)
    y[:, :3] = torch.tensor([[0.0, 0.0, 1.3], [0.1, 0.0, -0.7], [1.0, 0.0, 0.0]], dtype=torch.float64)  # poles
    field = ode_field(net, process, SCHEDULE, emb, guidance, on_sphere=on_sphere)
    t = torch.tensor(0.45, dtype=torch.float64)
    fast_out, fast_div = field.with_divergence(t, y)
    slow_out, slow_div = field_and_divergence(lambda pts: field(t, pts), y)
    assert torch.allclose(fast_out, slow_out, rtol=1e-12, atol=1e-13)
    assert torch.allclose(fast_div, slow_div, rtol=1e-10, atol=1e-11)


def test_tangent_basis_is_orthonormal_and_perpendicular_everywhere():
    p = project(torch.randn(500, 3, dtype=torch.float64))
    p[:4] = torch.tensor([[0, 0, 1], [0, 0, -1], [1, 0, 0], [0, 0.95, 0.312]], dtype=torch.float64)
    p = project(p)
    u1, u2 = tangent_basis(p)
    frame = torch.stack((u1, u2, p), dim=-1)
    assert torch.allclose(frame.transpose(-1, -2) @ frame, torch.eye(3, dtype=torch.float64).expand(500, 3, 3),
                          atol=1e-12)


@pytest.mark.parametrize("guidance", [0.0, 2.0])
def test_precomputed_step_predictions_equal_the_guided_network_float64(guidance, monkeypatch):
    monkeypatch.setattr(sampling, "MODULATION_BYTES", 1)  # one step per chunk: exercises the chunking too
    net = random_network(dim=32, depth=2, cond_dim=8, seed=13).double()
    emb, y = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, 6, 3, dtype=torch.float64)
    gammas = gamma_grid(SCHEDULE, 5).double()
    predictions = list(guided_step_predictions(net, gammas, emb, guidance))
    assert len(predictions) == len(gammas)
    for g, predict in zip(gammas, predictions):
        expected = guided_prediction(net, y, g.expand(3), emb, guidance)
        assert torch.allclose(predict(y), expected, rtol=1e-12, atol=1e-13)


def test_bfloat16_sampling_stays_close_to_float32():
    """bf16 per-point layers: the samples move by much less than their spread (a stated tolerance, not equality)."""
    net = random_network(dim=64, depth=4, cond_dim=8, seed=14, scale=0.5)
    emb = torch.randn(2, 8)
    full = sample(net, RiemannianFlowS2(), SCHEDULE, emb, 256, steps=16, guidance=2.0, seed=3).xyz
    half = sample(net, RiemannianFlowS2(), SCHEDULE, emb, 256, steps=16, guidance=2.0, seed=3,
                  compute_dtype=torch.bfloat16).xyz
    moved = torch.linalg.norm(full - half, dim=-1)
    spread = torch.linalg.norm(full - project(full.mean(1, keepdim=True)), dim=-1)
    assert half.dtype == torch.float32 and moved.median() < 0.01 * spread.median() and moved.max() < 0.1


def test_fast_log_density_matches_the_generic_path_float64():
    net = random_network(dim=32, depth=2, cond_dim=8, seed=15, scale=0.5).double()
    emb = torch.randn(1, 8, dtype=torch.float64)
    xyz = project(torch.randn(1, 12, 3, dtype=torch.float64))

    class Wrapped(torch.nn.Module):  # not a GeoDenoiser: takes the generic torch.func.jvp path
        def forward(self, y, gamma, e):
            return net(y, gamma, e)

    for mode in ("riemannian", "ambient"):
        fast = log_density(net, RiemannianFlowS2(), SCHEDULE, emb, xyz, guidance=1.0, mode=mode, method="rk4", steps=8)
        slow = log_density(Wrapped(), RiemannianFlowS2(), SCHEDULE, emb, xyz, guidance=1.0, mode=mode, method="rk4",
                           steps=8)
        assert torch.allclose(fast, slow, rtol=1e-10, atol=1e-10)
