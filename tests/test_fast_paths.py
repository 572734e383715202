"""Checks of the fast paths: precomputed modulations, hand-written forward-mode divergence (float64), bf16 sampling,
bf16x3 matmuls, the compiled network pass and the per-point error norm."""

import shutil

import pytest
import torch

from conftest import random_network
from geodemo import sampling
from geodemo.guidance import guided_prediction
from geodemo.likelihood import ODEField, field_and_divergence, log_density, per_point_error_norm
from geodemo.network import bf16x3_weight, hidden_product, split_bf16, tf32_matmuls
from geodemo.processes import DiffusionR3, FlowR3, RiemannianFlowS2
from geodemo.point_pass import GuidedPointPass, fused_linear_available
from geodemo.sampling import gamma_grid, matmul_precision, sample, step_modulations
from geodemo.schedules import SigmoidSchedule
from geodemo.sphere import angle_between, project, tangent_basis
from geodemo.tangent_pass import TangentPointPass

SCHEDULE = SigmoidSchedule()
FIXED_STEPS = dict(method="rk4", steps=8)
"""Solves compared with each other take the same fixed steps, so that only the arithmetic differs."""


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


@pytest.mark.parametrize("rows,count", [(1, 2), (2, 3)])
def test_tangent_pass_equals_the_plain_jvp_float64(rows, count):
    """The log-density's pass (first block folded through the input layer, primal and tangents stacked through
    [W, b] products, ATen's LayerNorm and GELU backward as tangents) against jvp_modulated at three stage times
    whose folded first blocks are made at once, for two point counts (each its own buffers)."""
    net = random_network(dim=32, depth=3, cond_dim=8, seed=18).double()
    emb = torch.randn(rows, 8, dtype=torch.float64)
    stages = next(step_modulations(net, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64), emb, 0.0))
    tangent_pass = TangentPointPass(net)
    for points in (7, 1):
        y = torch.randn(rows, points, 3, dtype=torch.float64)
        tangents = torch.randn(count, rows, points, 3, dtype=torch.float64)
        for mods, first in zip(stages.unbind(), tangent_pass.first_terms(stages).unbind()):
            out, dout = tangent_pass(y, tangents, mods, first)
            plain_out, plain_dout = net.jvp_modulated(y, tangents, mods)
            assert torch.allclose(out, plain_out, rtol=1e-12, atol=1e-12)
            assert torch.allclose(dout, plain_dout, rtol=1e-12, atol=1e-12)


def test_tangent_pass_float32_is_as_accurate_as_the_plain_jvp():
    """float32, the map's case (sphere tangents, 300 points), both passes against jvp_modulated in float64: measured
    max errors 1.1-1.5e-5 for either (seeds 19-21, outputs up to ~5), the two passes 2.6-4.2e-6 apart."""
    net, exact_net = (random_network(dim=64, depth=4, cond_dim=8, seed=19) for _ in range(2))
    exact_net = exact_net.double()
    y = project(torch.randn(1, 300, 3))
    tangents = tangent_basis(y)
    gamma, emb = torch.tensor([0.4]), torch.randn(1, 8)
    mods = net.modulations(gamma, emb)
    tangent_pass = TangentPointPass(net)
    stacked = lambda out, dout: torch.cat((out.unsqueeze(0), dout)).double()  # noqa: E731
    fast = stacked(*tangent_pass(y, tangents, mods, tangent_pass.first_terms(mods)))
    plain = stacked(*net.jvp_modulated(y, tangents, mods))
    exact = stacked(*exact_net.jvp_modulated(y.double(), tangents.double(),
                                             exact_net.modulations(gamma.double(), emb.double())))
    assert float((fast - plain).abs().max()) < 1e-5
    assert float((fast - exact).abs().max()) < 2 * float((plain - exact).abs().max())


def test_tangent_pass_bf16_products_stay_within_bf16_rounding():
    """precision="bf16" (the CPU map's products on AVX512-BF16 cores): the R^3 case (3 tangents, 300 points) against
    jvp_modulated in float64 stays within 1% of the largest output (measured 0.4-0.6%, seeds 19-21), and is truly
    bfloat16 (over 100 times the float32 pass's error, measured ~3000)."""
    net = random_network(dim=64, depth=4, cond_dim=8, seed=19)
    exact_net = random_network(dim=64, depth=4, cond_dim=8, seed=19).double()
    y = project(torch.randn(1, 300, 3))
    tangents = torch.eye(3).view(3, 1, 1, 3).expand(3, 1, 300, 3)
    gamma, emb = torch.tensor([0.4]), torch.randn(1, 8)
    mods = net.modulations(gamma, emb)
    stacked = lambda out, dout: torch.cat((out.unsqueeze(0), dout)).double()  # noqa: E731
    exact = stacked(*exact_net.jvp_modulated(y.double(), tangents.double(),
                                             exact_net.modulations(gamma.double(), emb.double())))
    errors = {}
    for precision in ("native", "bf16"):
        tangent_pass = TangentPointPass(net, precision)
        fast = stacked(*tangent_pass(y, tangents, mods, tangent_pass.first_terms(mods)))
        errors[precision] = float((fast - exact).abs().max())
    assert errors["bf16"] < 0.01 * float(exact.abs().max())
    assert errors["bf16"] > 100 * errors["native"]
    with pytest.raises(ValueError, match="float32 network"):
        TangentPointPass(net.double(), "bf16")
    with pytest.raises(ValueError, match="'native' or 'bf16'"):
        TangentPointPass(net, "bf16x3")


@pytest.mark.parametrize("process,on_sphere", [(RiemannianFlowS2(), True), (RiemannianFlowS2(), False),
                                               (FlowR3(), False), (DiffusionR3(), False)],
                         ids=["rfm-riemannian", "rfm-ambient", "flow_r3", "diffusion_r3"])
@pytest.mark.parametrize("guidance", [0.0, 1.5])
def test_fast_divergence_equals_the_generic_jvp_float64(process, on_sphere, guidance):
    net = random_network(dim=32, depth=2, cond_dim=8, seed=12).double()
    emb = torch.randn(2, 8, dtype=torch.float64)
    y = torch.randn(2, 9, 3, dtype=torch.float64)
    y[:, :3] = torch.tensor([[0.0, 0.0, 1.3], [0.1, 0.0, -0.7], [1.0, 0.0, 0.0]], dtype=torch.float64)  # poles
    field = ODEField(net, process, SCHEDULE, emb, guidance, on_sphere)
    t = torch.tensor(0.45, dtype=torch.float64)
    fast_out, fast_div = field.with_divergence(field.terms(t.view(1))[0], y)
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
    chunks = list(step_modulations(net, gammas, emb, guidance))
    assert len(chunks) == len(gammas)
    for g, mods in zip(gammas, chunks):
        predict = GuidedPointPass(net, mods, net.hidden_weights(), "native", guidance)
        exact = guided_prediction(net, y, g.expand(3), emb, guidance)
        assert torch.allclose(predict(0, y), exact, rtol=1e-12, atol=1e-13)


def max_degrees(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest great-circle angle in degrees between matching points of a and b."""
    return float(torch.rad2deg(angle_between(a.double(), b.double())).max())


@pytest.mark.parametrize("process", [RiemannianFlowS2(), FlowR3(), DiffusionR3()], ids=lambda p: p.name)
def test_default_samples_stay_within_a_hundredth_of_a_degree_of_float32(process):
    """The CUDA default (bf16x3 matmuls, float32 state; emulated here with the same rounding) against the exact
    float32 path, guidance 2, 32 steps, random weights: measured max 0.0003-0.003 degrees (float64 against float32:
    0.00005-0.0001); one bfloat16 product (the precision it improves on) is 0.1-0.9 degrees off."""
    net = random_network(dim=64, depth=4, cond_dim=8, seed=14, scale=0.5)
    emb = torch.randn(2, 8)
    draw = lambda precision: sample(net, process, SCHEDULE, emb, 256, steps=32, guidance=2.0, seed=3,  # noqa: E731
                                    precision=precision).xyz
    exact = draw("float32")
    assert matmul_precision("auto", "cuda") == "bf16x3" and matmul_precision("auto", "cpu") == "native"
    assert torch.equal(draw("auto"), exact)  # on a CPU the default is the float32 path itself
    assert max_degrees(draw("bf16x3"), exact) < 0.01
    assert max_degrees(draw("bf16"), exact) > 0.01


def test_tf32_sampling_restores_the_matmul_flag():
    """precision="tf32" turns TF32 matmuls on for its products only (tf32_matmuls), also when one fails."""
    net = random_network(dim=32, depth=2, cond_dim=8, seed=15, scale=0.5)
    emb = torch.randn(1, 8)
    before = torch.backends.cuda.matmul.allow_tf32
    out = sample(net, RiemannianFlowS2(), SCHEDULE, emb, 16, steps=4, seed=1, precision="tf32").xyz
    assert torch.isfinite(out).all() and torch.backends.cuda.matmul.allow_tf32 == before
    with pytest.raises(RuntimeError), tf32_matmuls():
        raise RuntimeError("inside the block")
    assert torch.backends.cuda.matmul.allow_tf32 == before


@pytest.mark.skipif(not fused_linear_available(torch.ones(1), "native"), reason="needs oneDNN")
def test_fused_onednn_layers_equal_the_aten_ones_to_float32_rounding():
    net = random_network(dim=64, depth=3, cond_dim=8, seed=17)
    emb, y = torch.randn(2, 8), project(torch.randn(2, 300, 3))
    mods = next(step_modulations(net, gamma_grid(SCHEDULE, 4), emb, 2.0))
    fused, aten = (GuidedPointPass(net, mods, net.hidden_weights(), "native", 2.0) for _ in range(2))
    aten.fused = False
    assert fused.fused
    for k in range(4):
        assert torch.allclose(fused(k, y), aten(k, y), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("process", [RiemannianFlowS2(), FlowR3(), DiffusionR3()], ids=lambda p: p.name)
def test_float32_samples_stay_within_a_thousandth_of_a_degree_of_float64(process):
    """The sampler's float32 pass (point_pass: the first block folded through the input layer, every row in one
    product per layer, oneDNN layers) against the same network and start in float64, guidance 2, 32 steps: measured 4e-5 / 1.1e-4 / 5e-5
    degrees (rfm / flow / diffusion; the plain float32 forward gave 4e-5 / 1.5e-4 / 4e-5)."""
    net = random_network(dim=64, depth=4, cond_dim=8, seed=14, scale=0.5)
    emb = torch.randn(2, 8)
    noise = process.initial_noise((2, 256), generator=torch.Generator().manual_seed(3))
    draw = lambda network, dtype: sample(network, process, SCHEDULE, emb.to(dtype), 256, steps=32,  # noqa: E731
                                         guidance=2.0, initial_noise=noise.to(dtype)).xyz
    assert max_degrees(draw(net, torch.float32), draw(net.double(), torch.float64)) < 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_graphed_step_loop_equals_the_eager_loop():
    net = random_network(dim=64, depth=4, cond_dim=8, seed=16, scale=0.5).cuda()
    emb = torch.randn(2, 8, device="cuda")
    for trajectories in (False, True):
        runs = [sample(net, RiemannianFlowS2(), SCHEDULE, emb, 128, steps=8, guidance=2.0, seed=seed,
                       trajectories=trajectories, graphs=graphs) for seed in (1, 2) for graphs in (False, True)]
        for eager, graphed in (runs[:2], runs[2:]):  # the second seed replays the first capture
            # the same arithmetic; cuBLAS may pick other kernels under capture, so rounding may differ
            assert max_degrees(eager.xyz, graphed.xyz) < 1e-3
            assert (eager.trajectories is None) == (graphed.trajectories is None)
            if trajectories:
                assert eager.trajectories.shape == graphed.trajectories.shape == (2, 9, 128, 3)


def test_fast_log_density_matches_the_generic_path_float64(monkeypatch):
    """The generic path samples the time conditioning at the stage times: so does the fast one here (the process's
    time filter off; it needs a GeoDenoiser's modulations)."""
    monkeypatch.setattr(RiemannianFlowS2, "likelihood_time_filter", False)
    net = random_network(dim=32, depth=2, cond_dim=8, seed=15, scale=0.5).double()
    emb = torch.randn(1, 8, dtype=torch.float64)
    xyz = project(torch.randn(1, 12, 3, dtype=torch.float64))

    class Wrapped(torch.nn.Module):  # not a GeoDenoiser: takes the generic torch.func.jvp path
        def forward(self, y, gamma, e):
            return net(y, gamma, e)

    for geometry in ("riemannian", "ambient"):
        fast = log_density(net, RiemannianFlowS2(), SCHEDULE, emb, xyz, guidance=1.0, geometry=geometry, **FIXED_STEPS)
        slow = log_density(Wrapped(), RiemannianFlowS2(), SCHEDULE, emb, xyz, guidance=1.0, geometry=geometry,
                           **FIXED_STEPS)
        assert torch.allclose(fast, slow, rtol=1e-10, atol=1e-10)


def test_split_bf16_keeps_float32_to_2_pow_minus_16():
    t = torch.randn(4096) * torch.logspace(-20, 20, 4096)
    hi, lo = split_bf16(t)
    assert hi.dtype == lo.dtype == torch.bfloat16
    assert torch.equal(hi.float(), t.bfloat16().float())  # round to nearest, like the cast (no ties here)
    assert ((hi.double() + lo.double() - t.double()).abs() <= 2.0**-16 * t.double().abs()).all()


def test_bf16x3_product_is_float32_accurate():
    torch.manual_seed(0)
    x, w = torch.randn(3, 64, 256), torch.randn(128, 256) / 16
    exact = x.double() @ w.double().T
    error = lambda out: float((out.double() - exact).norm() / exact.norm())  # noqa: E731
    assert error(hidden_product(x, bf16x3_weight(w), "bf16x3")) < 1e-5  # measured 4e-6; plain bf16 gives 3e-3
    assert error(hidden_product(x, w, "native")) < 1e-6


def float64_log_density(seed: int, emb: torch.Tensor, xyz: torch.Tensor, geometry: str) -> torch.Tensor:
    """The reference: the same network (random_network(seed)) and fixed-step solve, in float64."""
    net = random_network(dim=32, depth=2, cond_dim=8, seed=seed).double()
    return log_density(net, RiemannianFlowS2(), SCHEDULE, emb.double(), xyz.double(), geometry=geometry, **FIXED_STEPS)


@pytest.mark.parametrize("geometry", ["riemannian", "ambient"])
def test_bf16x3_log_density_is_as_accurate_as_float32(geometry):
    """Measured 1-3e-5 nats from float64 for both; plain bfloat16 products would be 4-5e-3 off."""
    net = random_network(dim=32, depth=2, cond_dim=8, seed=3)
    emb, xyz = torch.randn(1, 8), project(torch.randn(1, 24, 3))
    exact = float64_log_density(3, emb, xyz, geometry)
    for precision in ("native", "bf16x3"):
        got = log_density(net, RiemannianFlowS2(), SCHEDULE, emb, xyz, geometry=geometry, precision=precision,
                          **FIXED_STEPS)
        assert (got.double() - exact).abs().max() < 2e-4, precision


@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_network_pass_gives_the_same_log_density():
    """The compiled bf16x3 pass stays as close to the float64 solve as the eager one (fused float32 arithmetic
    differs in rounding only)."""
    net = random_network(dim=32, depth=2, cond_dim=8, seed=4)
    emb, xyz = torch.randn(1, 8), project(torch.randn(1, 16, 3))
    exact = float64_log_density(4, emb, xyz, "ambient")
    compiled = log_density(net, RiemannianFlowS2(), SCHEDULE, emb, xyz, geometry="ambient", precision="bf16x3",
                           compile=True, **FIXED_STEPS)
    assert (compiled.double() - exact).abs().max() < 2e-4


def test_speed_options_reject_what_they_cannot_do():
    net = random_network(dim=32, depth=2, cond_dim=8, seed=5)
    emb, xyz = torch.randn(1, 8), project(torch.randn(1, 4, 3))
    with pytest.raises(ValueError, match="float32 network"):
        net.double().hidden_weights("bf16x3")
    with pytest.raises(ValueError, match="precision must be"):
        net.float().hidden_weights("fp8")
    with pytest.raises(ValueError, match="GeoDenoiser only"):
        log_density(lambda y, g, e: y, RiemannianFlowS2(), SCHEDULE, emb, xyz, precision="bf16x3")


def test_error_norm_is_the_worst_points_own():
    scaled = torch.zeros(1, 100, 4)
    scaled[0, 7] = torch.tensor([3.0, 0.0, 0.0, 4.0])
    assert float(per_point_error_norm(scaled)) == pytest.approx(2.5)  # RMS over all: 0.25

