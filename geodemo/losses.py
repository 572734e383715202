"""The training objective shared by the three processes, with classifier-free guidance dropout."""

from __future__ import annotations

import torch

from geodemo.network import GeoDenoiser
from geodemo.processes import Process
from geodemo.schedules import Schedule


def drop_conditioning(emb: torch.Tensor, rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each row of emb (B, C) by zeros with probability `rate` (the unconditional model)."""
    if rate <= 0:
        return emb
    keep = torch.rand(emb.shape[0], 1, generator=generator, device=emb.device) >= rate
    return emb * keep.to(emb.dtype)


def training_loss(network: GeoDenoiser, process: Process, schedule: Schedule, x0: torch.Tensor, emb: torch.Tensor,
                  generator: torch.Generator | None = None, cond_drop: float = 0.1) -> torch.Tensor:
    """E_{t ~ U(0,1), noise} |f(y_t, gamma(t), c) - target|^2 / 3 for data x0 (B, 3) on S^2 and emb (B, C).

    All randomness (t, noise, dropout) comes from `generator` on x0's device, so a run is reproducible.
    """
    batch = x0.shape[0]
    t = torch.rand(batch, generator=generator, device=x0.device, dtype=x0.dtype)
    gamma = schedule.gamma(t)
    noise = process.initial_noise((batch,), generator=generator, device=x0.device, dtype=x0.dtype)
    y, target = process.interpolate(x0, noise, gamma)
    cond = drop_conditioning(emb, cond_drop, generator)
    pred = network(y.unsqueeze(1), gamma.unsqueeze(1), cond).squeeze(1)
    return process.loss(pred, target).mean()
