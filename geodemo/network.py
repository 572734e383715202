"""The PLONK denoiser: an MLP of adaptive-LayerNorm blocks conditioned on (image embedding, gamma).

Parameter names equal the authors' released `model.safetensors` keys, so their weights load as-is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class NetworkConfig:
    """The hub `config.json` fields: {cond_dim, depth, dim, expansion, input_dim}."""

    dim: int = 512
    depth: int = 12
    cond_dim: int = 1024
    expansion: int = 4
    input_dim: int = 3

    @classmethod
    def from_dict(cls, config: dict) -> "NetworkConfig":
        known = {k: int(config[k]) for k in ("dim", "depth", "cond_dim", "expansion", "input_dim") if k in config}
        return cls(**known)

    def to_dict(self) -> dict:
        return asdict(self)


class PositionalEncoding(nn.Module):
    """EDM sin/cos embedding: [cos(x f_k), sin(x f_k)], f_k = (1/max_positions)^(2k/width), k < width/2."""

    def __init__(self, width: int, max_positions: float = 10000.0):
        super().__init__()
        k = torch.arange(width // 2, dtype=torch.float32)
        self.register_buffer("freqs", (1.0 / max_positions) ** (2 * k / width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = x.unsqueeze(-1) * self.freqs.to(x.dtype)
        return torch.cat((angles.cos(), angles.sin()), dim=-1)


class TimeEmbedder(nn.Module):
    """gamma -> standardise(PosEnc(1000 gamma)) -> Linear -> SiLU -> Linear (width dim/4 -> dim)."""

    def __init__(self, dim: int, scale: float = 1000.0):
        super().__init__()
        width = dim // 4
        self.scale = scale
        self.encode_time = PositionalEncoding(width)
        self.map_time = nn.Sequential(nn.Linear(width, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, gamma: torch.Tensor) -> torch.Tensor:
        e = self.encode_time(gamma * self.scale)
        e = (e - e.mean(-1, keepdim=True)) / e.std(-1, keepdim=True)
        return self.map_time(e)


class AdaLNBlock(nn.Module):
    """x <- x + MLP((1 + a) LN(x) + b) * c, with (a, b, c) = Linear(SiLU(cond)) split in three."""

    def __init__(self, dim: int, expansion: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(dim, dim * expansion), nn.GELU(), nn.Dropout(0.0), nn.Linear(dim * expansion, dim)
        )
        self.ada_map = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim))
        nn.init.zeros_(self.mlp[3].weight)
        nn.init.zeros_(self.mlp[3].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift, gate = self.ada_map(cond).chunk(3, dim=-1)
        h = (1 + scale) * F.layer_norm(x, x.shape[-1:]) + shift
        return x + self.mlp(h) * gate


class GeoDenoiser(nn.Module):
    """f(y, gamma, emb) -> R^3. Shapes: y (B, N, 3), gamma (B,) or (B, N), emb (B, cond_dim).

    The conditioning (embedding + time) is computed once per image and broadcast over its N points
    when gamma is (B,); a (B, N) gamma gives each point its own noise level (training).
    """

    def __init__(self, config: NetworkConfig = NetworkConfig()):
        super().__init__()
        self.config = config
        dim = config.dim
        self.time_embedder = TimeEmbedder(dim)
        self.cond_mapper = nn.Linear(config.cond_dim, dim)
        self.initial_mapper = nn.Linear(config.input_dim, dim)
        self.blocks = nn.ModuleList(AdaLNBlock(dim, config.expansion) for _ in range(config.depth))
        self.final_adaln = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.final_linear = nn.Linear(dim, config.input_dim)

    def conditioning(self, gamma: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """cond = Linear(emb) + TimeEmbedder(gamma): (B, 1, dim) for gamma (B,), (B, N, dim) for (B, N)."""
        c = self.cond_mapper(emb).unsqueeze(1)
        if gamma.dim() == 1:
            gamma = gamma.unsqueeze(1)
        return c + self.time_embedder(gamma)

    def forward(self, y: torch.Tensor, gamma: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        cond = self.conditioning(gamma.to(y.dtype), emb.to(y.dtype))
        x = self.initial_mapper(y)
        for block in self.blocks:
            x = block(x, cond)
        scale, shift = self.final_adaln(cond).chunk(2, dim=-1)
        x = (1 + scale) * F.layer_norm(x, x.shape[-1:]) + shift
        return self.final_linear(x)
