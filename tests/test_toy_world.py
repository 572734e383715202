"""A toy world trained inside the suite: each 'embedding' names a known von Mises-Fisher mixture on S^2.

Condition 0: one vMF (kappa 40) at Paris; condition 1: half Tokyo, half Sydney (kappa 30 each);
condition 2: a broad vMF (kappa 6) over South America. Each process is trained for a few hundred
steps on the CPU, then its samples and its density are compared with the truth.
"""

import math
from functools import lru_cache

import pytest
import torch

from geodemo.grids import integrate, latlon_grid
from geodemo.losses import training_loss
from geodemo.network import GeoDenoiser, NetworkConfig
from geodemo.pipeline import GeoPipeline
from geodemo.processes import DiffusionR3, FlowR3, RiemannianFlowS2
from geodemo.schedules import SigmoidSchedule
from geodemo.sphere import haversine_km, latlon_to_xyz, sample_vmf, vmf_log_density, xyz_to_latlon

pytestmark = pytest.mark.slow
PARIS, TOKYO, SYDNEY, AMAZON = (48.86, 2.35), (35.68, 139.69), (-33.87, 151.21), (-10.0, -60.0)
WORLD = [  # per condition: list of (weight, centre, kappa)
    [(1.0, PARIS, 40.0)],
    [(0.5, TOKYO, 30.0), (0.5, SYDNEY, 30.0)],
    [(1.0, AMAZON, 6.0)],
]


def centre_xyz(centre: tuple[float, float]) -> torch.Tensor:
    return latlon_to_xyz(torch.tensor(centre, dtype=torch.float64))


def sample_world(condition: int, n: int, gen: torch.Generator) -> torch.Tensor:
    parts = WORLD[condition]
    counts = torch.multinomial(torch.tensor([w for w, _, _ in parts]), n, replacement=True, generator=gen).bincount(
        minlength=len(parts))
    return torch.cat([sample_vmf(centre_xyz(c), k, int(m), gen) for (_, c, k), m in zip(parts, counts)])


def world_log_density(condition: int, xyz: torch.Tensor) -> torch.Tensor:
    """log sum_j w_j vMF(x; mu_j, kappa_j), per steradian."""
    terms = [math.log(w) + vmf_log_density(xyz.double(), centre_xyz(c), k) for w, c, k in WORLD[condition]]
    return torch.logsumexp(torch.stack(terms), dim=0)


def train(process, steps: int = 600, batch: int = 768, seed: int = 0) -> GeoPipeline:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    network = GeoDenoiser(NetworkConfig(dim=64, depth=3, cond_dim=3))
    schedule = SigmoidSchedule()
    optimiser = torch.optim.AdamW(network.parameters(), lr=3e-3, weight_decay=0.0)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    per = batch // 3
    emb = torch.eye(3).repeat_interleave(per, dim=0)
    for _ in range(steps):
        x0 = torch.cat([sample_world(c, per, gen) for c in range(3)]).float()
        loss = training_loss(network, process, schedule, x0, emb, generator=gen, cond_drop=0.1)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        decay.step()
    return GeoPipeline(network, process, schedule, device="cpu", name=process.name)


@lru_cache(maxsize=None)
def trained_once(name: str) -> GeoPipeline:
    return train({"rfm_s2": RiemannianFlowS2(), "flow_r3": FlowR3(), "diffusion_r3": DiffusionR3()}[name])


@pytest.fixture(params=["rfm_s2", "flow_r3", "diffusion_r3"])
def trained(request) -> GeoPipeline:
    return trained_once(request.param)


def test_samples_land_on_the_right_components(trained):
    pred = trained.predict(embeddings=torch.eye(3), num_samples=400, steps=64, seed=0).latlon
    d_paris = haversine_km(pred[0], torch.tensor(PARIS))
    # vMF(kappa = 40): the median angle is sqrt(2 ln 2 / kappa) rad, i.e. about 1,186 km.
    assert 800 < d_paris.median() < 1600
    d_tokyo, d_sydney = haversine_km(pred[1], torch.tensor(TOKYO)), haversine_km(pred[1], torch.tensor(SYDNEY))
    near_tokyo = (d_tokyo < 3000).double().mean()
    near_sydney = (d_sydney < 3000).double().mean()
    assert near_tokyo + near_sydney > 0.9
    assert 0.3 < near_tokyo < 0.7
    assert haversine_km(pred[2], torch.tensor(AMAZON)).median() < 4000


def test_guidance_sharpens_and_seed_reproduces(trained):
    a = trained.predict(embeddings=torch.eye(3)[:1], num_samples=300, steps=32, seed=5, guidance=2.0).latlon
    b = trained.predict(embeddings=torch.eye(3)[:1], num_samples=300, steps=32, seed=5, guidance=2.0).latlon
    plain = trained.predict(embeddings=torch.eye(3)[:1], num_samples=300, steps=32, seed=5).latlon
    assert torch.equal(a, b)
    paris = torch.tensor(PARIS)
    assert haversine_km(a[0], paris).median() < haversine_km(plain[0], paris).median()


def test_density_integrates_to_one(trained):
    """On S^2: the Tokyo/Sydney mixture on a 6-degree grid. In R^3 every grid point costs a radial quadrature of
    20 ODE points, so the test uses the broad condition (kappa 6: 1/sqrt(kappa) = 23 degrees wide) on a 20-degree
    grid, which resolves it (the trained models integrate to within 0.6% of 1 there)."""
    condition, grid = (1, latlon_grid(6.0)) if trained.process.on_sphere else (2, latlon_grid(20.0))
    logp = trained.log_density(grid.latlon, embeddings=torch.eye(3)[condition:condition + 1], method="rk4", steps=16)
    assert integrate(logp.view(grid.shape), grid.solid_angle).item() == pytest.approx(1.0, abs=0.02)


def test_rfm_likelihood_of_held_out_points_is_close_to_the_true_entropy():
    """NLL = H(p) + KL(p || q) >= H(p): the fit is good when the gap is small. Tolerance 0.25 nats covers
    the KL of a few hundred CPU training steps and the Monte Carlo error of 300 points (about 0.06 nats).
    RK4 with 32 steps gives the NLL of the default dopri5 solve to 2e-3 nats, at a tenth of the cost."""
    pipe = trained_once("rfm_s2")
    gen = torch.Generator().manual_seed(123)
    for condition in (0, 1):
        held_out = sample_world(condition, 300, gen)
        entropy = -world_log_density(condition, sample_world(condition, 20000, gen)).mean().item()
        latlon = xyz_to_latlon(held_out)
        nll = -pipe.log_density(latlon, embeddings=torch.eye(3)[condition:condition + 1], method="rk4",
                                steps=32).mean().item()
        assert -0.15 < nll - entropy < 0.25, (condition, nll, entropy)
