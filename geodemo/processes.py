"""The three generative processes of PLONK: interpolant, regression target, sampler step, ODE field.

Convention: gamma = 1 is data x0 (a unit vector), gamma ~ 0 is noise. Each process defines
  * `interpolate(x0, noise, gamma)` -> (y, target): the noisy point and what the network regresses,
  * `step(y, pred, gamma_now, gamma_next)`: one deterministic sampler update,
  * `velocity(y, pred, gamma)`: dy/dgamma of the probability-flow ODE given the network output.
The R^3 processes (AmbientProcess) also give the scales (a, s) of y = a x0 + s n, which the likelihood needs.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

from geodemo.sphere import geodesic_velocity, project, sample_uniform


class Process(ABC):
    """What every process defines: its noise, interpolant, sampler step, ODE field and regression loss."""

    name: str = ""
    on_sphere: bool = False
    """True when the points live on S^2 (the density is taken there); False for the R^3 processes."""
    likelihood_step_power: int = 1
    """Fixed-step likelihood solves take equal steps in q with t = t_start + (t_end - t_start) warp(q)
    (geodemo.likelihood.time_warp): powers above 1 put the steps near the data end, below -1 near the noise end."""
    likelihood_time_filter: bool = False
    """Fixed-step likelihood solves of a GeoDenoiser take each stage's time conditioning averaged over its step
    (geodemo.likelihood.filtered_modulations) instead of sampled at the stage time (other networks: sampled)."""

    @abstractmethod
    def initial_noise(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                      device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Noise points of shape (*shape, 3), the sampler's start at gamma = 0."""

    @abstractmethod
    def interpolate(self, x0: torch.Tensor, noise: torch.Tensor, gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, target) at noise level gamma (...,) for data x0 and noise (..., 3)."""

    @abstractmethod
    def step(self, y: torch.Tensor, pred: torch.Tensor, gamma_now: torch.Tensor, gamma_next: torch.Tensor) -> torch.Tensor:
        """One deterministic sampler update from gamma_now to gamma_next given the network output pred."""

    @abstractmethod
    def velocity(self, y: torch.Tensor, pred: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """dy/dgamma of the probability-flow ODE given the network output pred; linear in (y, pred)."""

    @staticmethod
    def loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-point squared error averaged over the 3 coordinates: |pred - target|^2 / 3."""
        return (pred - target).pow(2).mean(-1)


class AmbientProcess(Process):
    """A process in R^3 with y = a(gamma) x0 + s(gamma) n, n ~ N(0, I): Gaussian noise, and the marginal's scales
    that the likelihood's radial integral and base density need."""

    ode_end_gamma: float = 0.0
    """Noise level where the likelihood ODE stops (0: at t = 1)."""

    def initial_noise(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                      device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard Gaussian points of R^3, shape (*shape, 3)."""
        return torch.randn(*shape, 3, generator=generator, device=device, dtype=dtype)

    @abstractmethod
    def signal_and_noise(self, gamma: float) -> tuple[float, float]:
        """(a, s) with y = a x0 + s n at noise level gamma."""

    @abstractmethod
    def gamma_at_noise(self, sigma: float) -> float:
        """The gamma at which the noise scale s equals sigma."""

    def base_variance(self, gamma: float) -> float:
        """Per-coordinate variance a^2/3 + s^2 of y = a x0 + s n for x0 uniform on S^2: the Gaussian used as
        the base density where the likelihood ODE stops."""
        a, s = self.signal_and_noise(gamma)
        return a**2 / 3 + s**2


class DiffusionR3(AmbientProcess):
    """Variance-preserving diffusion in R^3: y = sqrt(g) x0 + sqrt(1 - g) n; the network predicts n."""

    name = "diffusion_r3"
    ode_end_gamma = 1e-3
    """The VP ODE amplifies the network's error by 1/sqrt(gamma) near gamma = 0: stop at 1e-3, where the
    marginal is N(0, (1 - 2 gamma / 3) I) up to O(gamma^2)."""
    likelihood_step_power = 1
    """Equal steps: steps dense at the noise end, where the VP field grows as 1 / gamma (power -2), were more accurate
    on the shipped model (32 RK4 steps: 0.024 nats max off instead of 0.056), but its map's check then doubled more
    often (51.8 s instead of 44.2 s; benchmarks/README.md)."""

    def interpolate(self, x0, noise, gamma):
        g = gamma.unsqueeze(-1)
        return g.sqrt() * x0 + (1 - g).sqrt() * noise, noise

    def step(self, y, pred, gamma_now, gamma_next):
        """DDIM: x0_hat = clamp((y - sqrt(1-g) n_hat)/sqrt(g), -1, 1), n_hat recomputed from it,
        y' = sqrt(g') x0_hat + sqrt(1-g') n_hat."""
        x0_hat = ((y - torch.sqrt(1 - gamma_now) * pred) / torch.sqrt(gamma_now)).clamp(-1, 1)
        n_hat = (y - torch.sqrt(gamma_now) * x0_hat) / torch.sqrt(1 - gamma_now)
        return torch.sqrt(gamma_next) * x0_hat + torch.sqrt(1 - gamma_next) * n_hat

    def velocity(self, y, pred, gamma):
        """Probability-flow ODE of the VP process: dy/dg = y / (2g) - n_hat / (2 g sqrt(1 - g))."""
        return y / (2 * gamma) - pred / (2 * gamma * torch.sqrt(1 - gamma))

    def signal_and_noise(self, gamma):
        return math.sqrt(gamma), math.sqrt(1 - gamma)

    def gamma_at_noise(self, sigma):
        return 1 - sigma**2


class FlowR3(AmbientProcess):
    """Flow matching in R^3: y = g x0 + (1 - g) n; the network predicts the velocity x0 - n."""

    name = "flow_r3"
    likelihood_step_power = 2
    """The field sharpens toward the data: steps dense at the data end (shipped model, 32 RK4 steps, 160 points of the
    10 examples: 0.008 / 0.003 nats max / mean off, 0.041 / 0.010 with equal steps in t; its app map 30 s instead of
    51 s; benchmarks/README.md)."""

    def interpolate(self, x0, noise, gamma):
        g = gamma.unsqueeze(-1)
        return g * x0 + (1 - g) * noise, x0 - noise

    def step(self, y, pred, gamma_now, gamma_next):
        """Euler in gamma: y' = y + (g' - g) v."""
        return y + (gamma_next - gamma_now) * pred

    def velocity(self, y, pred, gamma):
        return pred

    def signal_and_noise(self, gamma):
        return gamma, 1 - gamma

    def gamma_at_noise(self, sigma):
        return 1 - sigma


class RiemannianFlowS2(Process):
    """Riemannian flow matching on S^2: y = exp_n(g log_n(x0)) from uniform noise n; target dy/dg."""

    name = "rfm_s2"
    on_sphere = True
    likelihood_time_filter = True
    """The shipped model's field follows its time embedding's oscillation (sin/cos of 1000 gamma: about 160 periods
    over t in [0, 1]), which 32-64 RK4 steps alias: with the conditioning averaged over each step, 64 steps are
    0.006-0.009 nats from a float64 dopri5 solve instead of 0.066-0.070 (3 views; benchmarks/README.md). Not on
    the R^3 processes: no gain for flow_r3's map, a slower, less accurate one for diffusion_r3's."""

    def initial_noise(self, shape, generator=None, device=None, dtype=torch.float32):
        """Uniform points on S^2."""
        return sample_uniform(shape, generator=generator, device=device, dtype=dtype)

    def interpolate(self, x0, noise, gamma):
        return geodesic_velocity(noise, x0, gamma)

    def step(self, y, pred, gamma_now, gamma_next):
        """Euler in R^3 then back to the sphere: y' = (y + (g' - g) v) / |y + (g' - g) v|."""
        return project(y + (gamma_next - gamma_now) * pred)

    def velocity(self, y, pred, gamma):
        """dy/dg = v, the network output (the likelihood module makes it tangent to S^2)."""
        return pred


PROCESSES: dict[str, type[Process]] = {p.name: p for p in (RiemannianFlowS2, FlowR3, DiffusionR3)}


def process_from_name(name: str) -> Process:
    if name not in PROCESSES:
        raise ValueError(f"unknown process {name!r}; choose one of {sorted(PROCESSES)}")
    return PROCESSES[name]()
