"""Deterministic samplers: start from noise at t = 1 and step over t_k = 1 - k/steps to t = 0."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from geodemo.guidance import guided_prediction
from geodemo.network import GeoDenoiser
from geodemo.processes import Process
from geodemo.schedules import Schedule
from geodemo.sphere import project


@dataclass
class SampleOutput:
    """End points on S^2 (B, N, 3) and, when recorded, every state (B, steps + 1, N, 3) in R^3."""

    xyz: torch.Tensor
    trajectory: torch.Tensor | None = None


def gamma_grid(schedule: Schedule, steps: int, device: torch.device | str | None = None) -> torch.Tensor:
    """gamma(1 - k/steps) for k = 0..steps (noise to data), float32 as the sampler runs."""
    t = 1 - torch.arange(steps + 1, dtype=torch.float32, device=device) / steps
    return schedule.gamma(t)


def make_generator(seed: int | torch.Generator | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded with `seed` (an int), passed through (a Generator), or freshly seeded (None)."""
    if isinstance(seed, torch.Generator):
        return seed
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator


@torch.no_grad()
def sample(network: GeoDenoiser, process: Process, schedule: Schedule, emb: torch.Tensor, num_samples: int,
           steps: int = 32, guidance: float = 0.0, seed: int | torch.Generator | None = None,
           initial_noise: torch.Tensor | None = None, trajectory: bool = False) -> SampleOutput:
    """Draw num_samples points per embedding. emb (B, C); initial_noise, if given, (B, N, 3).

    Noise is drawn on the CPU from `seed` so that the same seed gives the same samples on any device.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    device, dtype = emb.device, torch.float32
    batch = emb.shape[0]
    if initial_noise is None:
        initial_noise = process.initial_noise((batch, num_samples), generator=make_generator(seed))
    y = initial_noise.to(device=device, dtype=dtype)
    gammas = gamma_grid(schedule, steps, device=device)
    states = [y] if trajectory else None
    for k in range(steps):
        g_now, g_next = gammas[k], gammas[k + 1]
        pred = guided_prediction(network, y, g_now.expand(batch), emb.to(dtype), guidance)
        y = process.step(y, pred, g_now, g_next)
        if states is not None:
            states.append(y)
    traj = torch.stack(states, dim=1) if states is not None else None
    return SampleOutput(xyz=project(y), trajectory=traj)
