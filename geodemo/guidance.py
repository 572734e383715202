"""Classifier-free guidance: one rule for every process, sampler and likelihood.

A guided evaluation runs the conditional and the unconditional model (the zero embedding) as one batch of 2B:
the embeddings are [emb; 0] (guidance_batch), every other batched input is repeated [x; x] (repeat_for_guidance),
and the output's halves are combined as (1 + w) cond - w uncond (guided_output). With w = 0 only the
conditional half runs.
"""

from __future__ import annotations

import torch

from geodemo.network import GeoDenoiser


def guidance_batch(emb: torch.Tensor, guidance: float) -> torch.Tensor:
    """The embeddings a guided evaluation runs on: emb (B, C) when w = 0, else [emb; 0] (2B, C)."""
    return emb if guidance == 0 else torch.cat((emb, torch.zeros_like(emb)))


def repeat_for_guidance(x: torch.Tensor, guidance: float, dim: int = 0) -> torch.Tensor:
    """A batched input matching guidance_batch: x when w = 0, else [x; x] along its batch dimension dim."""
    return x if guidance == 0 else torch.cat((x, x), dim=dim)


def guided_output(out: torch.Tensor, guidance: float, dim: int = 0) -> torch.Tensor:
    """The guided value of an output computed on guidance_batch: out when w = 0, else (1 + w) cond - w uncond
    with [cond; uncond] = out along its batch dimension dim (also right for a tangent: the rule is linear)."""
    if guidance == 0:
        return out
    cond, uncond = out.chunk(2, dim=dim)
    return (1 + guidance) * cond - guidance * uncond


def guided_prediction(network: GeoDenoiser, y: torch.Tensor, gamma: torch.Tensor, emb: torch.Tensor,
                      guidance: float) -> torch.Tensor:
    """(1 + w) f(y, g, c) - w f(y, g, 0) for y (B, N, 3), gamma (B,) or (B, N), emb (B, C)."""
    out = network(repeat_for_guidance(y, guidance), repeat_for_guidance(gamma, guidance), guidance_batch(emb, guidance))
    return guided_output(out, guidance)
