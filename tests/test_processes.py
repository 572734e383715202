from functools import partial

import pytest
import torch

from geodemo.processes import DiffusionR3, FlowR3, RiemannianFlowS2, process_from_name
from geodemo.sphere import project

pytestmark = pytest.mark.usefixtures("float64")
GEN = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731


def data_and_noise(process, n=400):
    x0 = project(torch.randn(n, 3, generator=GEN(1)))
    noise = process.initial_noise((n,), generator=GEN(2), dtype=torch.float64)
    return x0, noise


@pytest.mark.parametrize("process", [DiffusionR3(), FlowR3(), RiemannianFlowS2()], ids=lambda p: p.name)
def test_interpolant_ends(process):
    x0, noise = data_and_noise(process)
    y1, _ = process.interpolate(x0, noise, torch.ones(400))
    y0, _ = process.interpolate(x0, noise, torch.zeros(400))
    assert torch.allclose(y1, x0, atol=1e-9) and torch.allclose(y0, noise, atol=1e-9)


def reference_path(name: str, x0: torch.Tensor, noise: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The flows' interpolants written out independently: the straight line g x0 + (1 - g) n in R^3, and the great
    circle (slerp) (sin((1 - g) theta) n + sin(g theta) x0) / sin(theta), theta = arccos(n . x0), on S^2."""
    g = g.unsqueeze(-1)
    if name == "flow_r3":
        return g * x0 + (1 - g) * noise
    theta = torch.arccos((x0 * noise).sum(-1, keepdim=True).clamp(-1, 1))
    return (torch.sin((1 - g) * theta) * noise + torch.sin(g * theta) * x0) / torch.sin(theta)


@pytest.mark.parametrize("process", [FlowR3(), RiemannianFlowS2()], ids=lambda p: p.name)
def test_flow_target_is_the_path_derivative(process):
    """The regression target and the ODE field at the true target both equal d/dg of the reference path,
    by central differences."""
    x0, noise = data_and_noise(process)
    g = torch.rand(400, generator=GEN(3)) * 0.9 + 0.05
    h = 1e-6
    path = partial(reference_path, process.name, x0, noise)
    derivative = (path(g + h) - path(g - h)) / (2 * h)
    y, target = process.interpolate(x0, noise, g)
    assert torch.allclose(y, path(g), atol=1e-10)
    assert torch.allclose(target, derivative, atol=1e-6)
    assert torch.allclose(process.velocity(y, target, g.unsqueeze(-1)), derivative, atol=1e-6)


def test_rfm_path_stays_on_the_sphere_and_noise_is_uniform():
    process = RiemannianFlowS2()
    x0, noise = data_and_noise(process)
    y, target = process.interpolate(x0, noise, torch.rand(400, generator=GEN(4)))
    assert torch.allclose(y.norm(dim=-1), torch.ones(400))
    assert torch.allclose((y * target).sum(-1), torch.zeros(400), atol=1e-9)
    assert torch.allclose(noise.norm(dim=-1), torch.ones(400))


def test_diffusion_velocity_is_the_path_derivative_for_the_true_noise():
    process = DiffusionR3()
    x0, noise = data_and_noise(process)
    g = torch.rand(400, generator=GEN(5)) * 0.9 + 0.05
    h = 1e-7
    y, target = process.interpolate(x0, noise, g)
    assert torch.equal(target, noise)
    numeric = (process.interpolate(x0, noise, g + h)[0] - process.interpolate(x0, noise, g - h)[0]) / (2 * h)
    assert torch.allclose(process.velocity(y, noise, g.unsqueeze(-1)), numeric, atol=1e-5)


@pytest.mark.parametrize("process", [DiffusionR3(), FlowR3()], ids=lambda p: p.name)
def test_a_step_with_the_exact_prediction_lands_on_the_path(process):
    x0, noise = data_and_noise(process)
    x0 = x0 * 0.99  # inside [-1, 1], so the DDIM clamp is inactive
    g_now, g_next = torch.tensor(0.3), torch.tensor(0.6)
    y_now, target = process.interpolate(x0, noise, g_now.expand(400))
    y_next, _ = process.interpolate(x0, noise, g_next.expand(400))
    assert torch.allclose(process.step(y_now, target, g_now, g_next), y_next, atol=1e-12)


def test_rfm_step_projects_back_to_the_sphere():
    process = RiemannianFlowS2()
    x0, noise = data_and_noise(process)
    y = process.step(noise, torch.randn(400, 3, generator=GEN(6)), torch.tensor(0.2), torch.tensor(0.3))
    assert torch.allclose(y.norm(dim=-1), torch.ones(400))


def test_loss_is_mean_squared_error_over_coordinates():
    pred, target = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[0.0, 0.0, 0.0]])
    assert RiemannianFlowS2.loss(pred, target).item() == pytest.approx(14 / 3)


def test_names():
    for name in ("rfm_s2", "flow_r3", "diffusion_r3"):
        assert process_from_name(name).name == name
    with pytest.raises(ValueError):
        process_from_name("gan")
