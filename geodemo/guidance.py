"""Classifier-free guidance: one rule for every process, sampler and likelihood."""

from __future__ import annotations

import torch

from geodemo.network import GeoDenoiser


def guided_prediction(network: GeoDenoiser, y: torch.Tensor, gamma: torch.Tensor, emb: torch.Tensor,
                      guidance: float) -> torch.Tensor:
    """(1 + w) f(y, g, c) - w f(y, g, 0); the zero embedding is the unconditional model.

    y (B, N, 3), gamma (B,) or (B, N), emb (B, C). With w = 0 only the conditional pass runs;
    otherwise both passes run as one batch of 2B.
    """
    if guidance == 0:
        return network(y, gamma, emb)
    both = network(torch.cat((y, y)), torch.cat((gamma, gamma)), torch.cat((emb, torch.zeros_like(emb))))
    cond, uncond = both.chunk(2)
    return combine_guidance(cond, uncond, guidance)


def combine_guidance(cond: torch.Tensor, uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """(1 + w) cond - w uncond: the guided value (or tangent) from the conditional and unconditional ones."""
    return (1 + guidance) * cond - guidance * uncond
