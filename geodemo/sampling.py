"""Deterministic samplers: start from noise at t = 1 and step over t_k = 1 - k/steps to t = 0."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from geodemo.guidance import guidance_batch, guided_output, repeat_for_guidance
from geodemo.network import GeoDenoiser, Modulations
from geodemo.processes import Process
from geodemo.schedules import Schedule
from geodemo.sphere import project


@dataclass
class SampleOutput:
    """End points on S^2 (B, N, 3) and, when recorded, every state (B, steps + 1, N, 3) in R^3."""

    xyz: torch.Tensor
    trajectories: torch.Tensor | None = None


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


MODULATION_BYTES = 64 * 2**20
"""Memory for the modulations computed ahead of the step loop; more steps are computed in several chunks."""


def step_modulations(network: GeoDenoiser, gammas: torch.Tensor, emb: torch.Tensor, guidance: float,
                     dtype: torch.dtype) -> Iterator[Modulations]:
    """The modulations of every step k (gamma_k, guidance_batch(emb)), batched over steps: (B, 1, dim) tensors,
    (2B, 1, dim) with guidance, in dtype.

    They do not depend on the points, so they are computed in a few large matmuls before the points move
    (chunks of steps bounded by MODULATION_BYTES), in the network's own dtype, and cast to dtype afterwards.
    """
    conds = guidance_batch(emb, guidance)
    rows = conds.shape[0]
    per_step = rows * network.config.dim * (3 * network.config.depth + 2) * 4
    chunk = max(1, MODULATION_BYTES // per_step)
    for part in gammas.split(chunk):
        flat = network.modulations(part.to(conds.dtype).repeat_interleave(rows), conds.repeat(len(part), 1))
        stacked = flat.map(lambda m: m.to(dtype).reshape(len(part), rows, *m.shape[1:]))
        for k in range(len(part)):
            yield stacked.map(lambda m: m[k])


def guided_step_predictions(network: GeoDenoiser, gammas: torch.Tensor, emb: torch.Tensor, guidance: float,
                            compute_dtype: torch.dtype | None = None) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """For each gamma_k, the guided prediction y -> (1 + w) f(y, g_k, c) - w f(y, g_k, 0) of (B, N, 3) points,
    equal to guidance.guided_prediction with the conditioning precomputed and shared by the N points.
    compute_dtype: dtype of the per-point layers (e.g. torch.bfloat16); None keeps the network's."""
    dtype = compute_dtype or network.initial_mapper.weight.dtype
    weights = network.point_weights(dtype)
    for mods in step_modulations(network, gammas, emb.to(network.initial_mapper.weight.dtype), guidance, dtype):
        def predict(y: torch.Tensor, mods: Modulations = mods) -> torch.Tensor:
            out = network.forward_modulated(repeat_for_guidance(y, guidance), mods, weights)
            return guided_output(out, guidance)

        yield predict


@torch.no_grad()
def sample(network: GeoDenoiser, process: Process, schedule: Schedule, emb: torch.Tensor, num_samples: int,
           steps: int = 32, guidance: float = 0.0, seed: int | torch.Generator | None = None,
           initial_noise: torch.Tensor | None = None, trajectories: bool = False,
           compute_dtype: torch.dtype | None = None) -> SampleOutput:
    """Draw num_samples points per embedding. emb (B, C); initial_noise, if given, (B, N, 3).

    Noise is drawn on the CPU from `seed` so that the same seed gives the same samples on any device.
    The state stays float32; compute_dtype=torch.bfloat16 runs the per-point layers in bfloat16 (faster,
    not bit-equal: see benchmarks/README.md for the size of the change).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    device, dtype = emb.device, torch.float32
    batch = emb.shape[0]
    if initial_noise is None:
        initial_noise = process.initial_noise((batch, num_samples), generator=make_generator(seed))
    y = initial_noise.to(device=device, dtype=dtype)
    gammas = gamma_grid(schedule, steps, device=device)
    states = [y] if trajectories else None
    predictions = guided_step_predictions(network, gammas[:-1], emb, guidance, compute_dtype)
    for k, predict in enumerate(predictions):
        y = process.step(y, predict(y), gammas[k], gammas[k + 1])
        if states is not None:
            states.append(y)
    return SampleOutput(xyz=project(y), trajectories=torch.stack(states, dim=1) if states is not None else None)
