"""The authors' own package (diff-plonk 0.4) against geodemo, with shared random weights.

Their GeoAdaLNMLP is saved in the hub format (PyTorchModelHubMixin.save_pretrained: config.json +
model.safetensors) and loaded with geodemo.load(folder); network outputs, the ambient log-likelihood
(their PlonkPipeline.compute_likelihood) and the RFM / flow / DDIM samplers must agree.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import geodemo

from plonk.models.pretrained_models import Plonk  # test dependency: pip install --no-deps diff-plonk==0.4
from plonk.models.samplers.ddim import ddim_sampler
from plonk.models.samplers.flow_sampler import flow_sampler
from plonk.models.samplers.riemannian_flow_sampler import riemannian_flow_sampler
from plonk.models.schedulers import SigmoidScheduler


def authors_network(dim: int, depth: int, scale: float = 1.0, seed: int = 0) -> Plonk:
    """diff-plonk's network with every weight random (their zero-initialised layers too)."""
    torch.manual_seed(seed)
    net = Plonk(input_dim=3, dim=dim, depth=depth, expansion=4, cond_dim=1024)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=scale / math.sqrt(p.shape[-1]) if p.dim() > 1 else 0.1 * scale)
    return net.eval().requires_grad_(False)


def saved(net: Plonk, folder) -> str:
    net.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("dim", [512, 256])
def test_network_outputs_equal_the_authors(tmp_path, dim):
    net = authors_network(dim, 12)
    pipe = geodemo.load(saved(net, tmp_path / "model"), device="cpu")
    assert pipe.network.config.dim == dim and pipe.process.name == "rfm_s2"
    g = torch.Generator().manual_seed(1)
    y, gamma, emb = torch.randn(64, 3, generator=g), torch.rand(64, generator=g), torch.randn(64, 1024, generator=g)
    theirs = net({"y": y, "gamma": gamma, "emb": emb})
    ours = pipe.network(y.unsqueeze(1), gamma, emb).squeeze(1)
    assert ((ours - theirs).norm() / theirs.norm()).item() < 1e-5
    assert theirs.abs().mean() > 0.1  # a live network, not a zero map


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory):
    """(their network, our pipeline) for the slower checks: dim 64, depth 4, weights scaled by 0.3 (a field smooth
    enough for their dopri5 at 1e-6 to take ~400 steps, yet a density 0.7 nats away from uniform)."""
    net = authors_network(64, 4, scale=0.3)
    return net, geodemo.load(saved(net, tmp_path_factory.mktemp("small")), device="cpu")


@pytest.mark.slow  # their solver: about 400 dopri5 steps with an autograd Jacobian each
@pytest.mark.parametrize("guidance", [0.0, 2.0])
def test_ambient_log_density_equals_compute_likelihood(small_pair, guidance):
    from plonk.models.preconditioning import DDPMPrecond
    from plonk.pipe import PlonkPipeline
    from plonk.utils.manifolds import Sphere

    net, pipe = small_pair
    theirs_pipe = object.__new__(PlonkPipeline)  # their __init__ downloads the encoders: set what it would set
    theirs_pipe.network, theirs_pipe.scheduler = net, SigmoidScheduler(-7, 3, 1.0)
    theirs_pipe.preconditioning, theirs_pipe.manifold = DDPMPrecond(), Sphere()
    theirs_pipe.device, theirs_pipe.input_dim = torch.device("cpu"), 3
    latlon = np.array([[10.0, 20.0], [-45.0, 170.0], [80.0, -30.0]])
    emb = torch.randn(1, 1024, generator=torch.Generator().manual_seed(2))
    theirs = theirs_pipe.compute_likelihood(coordinates=latlon, emb=emb, cfg=guidance, normalize_logp=False,
                                            atol=1e-6, rtol=1e-6)
    ours = pipe.log_density(torch.as_tensor(latlon), embeddings=emb, guidance=guidance, geometry="ambient",
                            atol=1e-6, rtol=1e-6)[0]
    assert (ours - theirs.double()).abs().max() < 1e-3
    assert (ours + math.log(4 * math.pi)).abs().max() > 0.1  # far from the uniform density: the field matters


@pytest.mark.parametrize("process, sampler", [("rfm_s2", riemannian_flow_sampler), ("flow_r3", flow_sampler),
                                              ("diffusion_r3", ddim_sampler)])
@pytest.mark.parametrize("guidance", [0.0, 2.0])
def test_samplers_end_at_the_authors_points(small_pair, tmp_path, process, sampler, guidance):
    net, _ = small_pair
    pipe = geodemo.load(saved(net, tmp_path / "m"), device="cpu", process=process)
    g = torch.Generator().manual_seed(3)
    noise, emb = torch.randn(48, 3, generator=g), torch.randn(1, 1024, generator=g)
    batch = {"y": noise.clone(), "emb": emb.expand(48, -1)}
    theirs = sampler(net, batch, conditioning_keys="emb", scheduler=SigmoidScheduler(-7, 3, 1.0), num_steps=16,
                     cfg_rate=guidance)
    ours = pipe.predict(embeddings=emb, steps=16, guidance=guidance, initial_noise=noise.unsqueeze(0),
                        trajectories=True).trajectories_xyz[0, -1]
    assert (ours - theirs).abs().max() < 1e-4
    assert (theirs - noise).abs().mean() > 0.1  # the samplers moved the points
