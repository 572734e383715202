"""The PLONK denoiser: an MLP of adaptive-LayerNorm blocks conditioned on (image embedding, gamma).

Parameter names equal the authors' released `model.safetensors` keys, so their weights load as-is.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Iterator, Literal, NamedTuple

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


class Modulations(NamedTuple):
    """The adaLN modulations of one (image, gamma) pair, computed once and broadcast over its points.

    blocks[k] = (1 + scale, shift, gate) of block k and final = (1 + scale, shift) of the head, each (..., dim)
    with the leading shape of the conditioning, e.g. (B, 1, dim) for one gamma per image.
    """

    blocks: tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], ...]
    final: tuple[torch.Tensor, torch.Tensor]

    def map(self, fn) -> "Modulations":
        """The same modulations with fn applied to every tensor (indexing, reshaping, casting)."""
        return Modulations(tuple(tuple(fn(m) for m in block) for block in self.blocks), tuple(fn(m) for m in self.final))

    def unbind(self) -> list["Modulations"]:
        """The K modulations stacked along dim 0 of every tensor, (K, ...), as K Modulations of views."""
        blocks = [tuple(zip(*(m.unbind() for m in block))) for block in self.blocks]
        finals = list(zip(*(m.unbind() for m in self.final)))
        return [Modulations(tuple(block[k] for block in blocks), final) for k, final in enumerate(finals)]


Precision = Literal["native", "bf16x3", "bf16", "tf32"]
"""How the blocks' matmuls run: in the weights' own dtype, as three bfloat16 products (bf16x3_weight; float32
accuracy), as one bfloat16 product with float32 accumulation (relative error ~2^-8), or as one TF32 product (CUDA,
inside tf32_matmuls; relative error ~2^-11); the rest of the pass (inputs, LayerNorms, activations, output) stays in
the weights' dtype. On a CPU "bf16" is emulated in float32 (hidden_product), except in the log-density's tangent pass
(geodemo.tangent_pass: real bfloat16 products and outputs)."""


@contextlib.contextmanager
def tf32_matmuls(enabled: bool = True) -> Iterator[None]:
    """CUDA float32 matmuls on TF32 tensor cores inside the block (torch.backends.cuda.matmul.allow_tf32, restored
    after it). The flag is process-wide: another thread's float32 matmul on CUDA during the block also runs in TF32;
    kernels captured in a CUDA graph inside the block keep TF32 at every replay."""
    if not enabled:
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def split_bf16(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 t = hi + lo + O(2^-16 |t|) in bfloat16: hi = t rounded to bf16 (8 significant bits), lo = bf16(t - hi).

    The rounding is done on the float32 bits (integer ops), so that no compiler can fold it away as a cast pair.
    """
    hi = ((t.view(torch.int32) + 0x8000) & -0x10000).view(torch.float32)
    return hi.to(torch.bfloat16), (t - hi).to(torch.bfloat16)


def bf16x3_weight(weight: torch.Tensor) -> torch.Tensor:
    """(3 in, out) bfloat16 [W_hi; W_lo; W_hi]^T for hidden_product's "bf16x3" matmul."""
    w_hi, w_lo = split_bf16(weight.float())
    return torch.cat((w_hi, w_lo, w_hi), dim=1).t().contiguous()


def hidden_product(x: torch.Tensor, weight: torch.Tensor, precision: Precision,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """x W^T (+ bias), weight in hidden_weights' form for `precision`. "bf16x3": x_hi W_hi^T + x_hi W_lo^T + x_lo W_hi^T
    (x = x_hi + x_lo, W = W_hi + W_lo in bfloat16) as one bfloat16 matmul with float32 accumulation: relative error
    ~2^-16 (TF32: 2^-11) at three bf16 products' cost. "bf16": bf16(x) bf16(W)^T, float32 accumulation, error ~2^-8.
    "tf32": F.linear inside tf32_matmuls (TF32 tensor cores on CUDA, float32 elsewhere). Float32 output on CUDA;
    emulated in float32 elsewhere (for tests: no faster there)."""
    if precision in ("native", "tf32"):
        with tf32_matmuls(precision == "tf32"):
            return F.linear(x, weight, bias)
    if precision == "bf16x3":
        x_hi, x_lo = split_bf16(x)
        a = torch.cat((x_hi, x_hi, x_lo), dim=-1).flatten(0, -2)
    else:
        a = x.to(torch.bfloat16).flatten(0, -2)
    out = torch.mm(a, weight, out_dtype=torch.float32) if a.is_cuda else a.float() @ weight.float()
    out = out.view(*x.shape[:-1], -1)
    return out if bias is None else out + bias


LAYER_NORM_EPS = 1e-5
"""The eps of the network's LayerNorms (F.layer_norm's default): the hand-written passes use the same."""


def _layer_norm_jvp(x: torch.Tensor, dx: torch.Tensor, eps: float = LAYER_NORM_EPS
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Affine-free LayerNorm xh = (x - mean) / sqrt(var + eps) and its tangents
    d xh = (dc - xh mean(xh dc)) / sqrt(var + eps), dc = dx - mean(dx); x (..., D), dx (T, ..., D)."""
    xh, _, inv_std = torch.native_layer_norm(x, x.shape[-1:], None, None, eps)
    dc = dx - dx.mean(-1, keepdim=True)
    return xh, (dc - xh * (xh * dc).mean(-1, keepdim=True)) * inv_std


def _gelu_jvp(u: torch.Tensor, du: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact GELU u Phi(u) and its tangents (Phi(u) + u phi(u)) du."""
    cdf = 0.5 * (1 + torch.erf(u * 0.7071067811865476))
    pdf = torch.exp(-0.5 * u * u) * 0.3989422804014327
    return u * cdf, (cdf + u * pdf) * du


class AdaLNBlock(nn.Module):
    """x <- x + MLP((1 + a) LN(x) + b) * c, with (a, b, c) = Linear(SiLU(cond)) split in three.

    The parameters live here; GeoDenoiser.forward_modulated applies them (the modulations come precomputed).
    """

    def __init__(self, dim: int, expansion: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(dim, dim * expansion), nn.GELU(), nn.Dropout(0.0), nn.Linear(dim * expansion, dim)
        )
        self.ada_map = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim))
        nn.init.zeros_(self.mlp[3].weight)
        nn.init.zeros_(self.mlp[3].bias)

    def modulation(self, activation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(1 + scale, shift, gate) = split of Linear(activation), activation = SiLU(cond), each (..., dim)."""
        scale, shift, gate = self.ada_map[1](activation).chunk(3, dim=-1)
        return 1 + scale, shift, gate


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
        """cond = Linear(emb) + TimeEmbedder(gamma): (B, 1, dim) for gamma (B,), (B, N, dim) for (B, N), (B, K, S, dim)
        for (B, K, S)."""
        if gamma.dim() == 1:
            gamma = gamma.unsqueeze(1)
        return self.cond_mapper(emb).view(emb.shape[0], *(1,) * (gamma.dim() - 1), -1) + self.time_embedder(gamma)

    def forward(self, y: torch.Tensor, gamma: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.forward_modulated(y, self.modulations(gamma.to(y.dtype), emb.to(y.dtype)))

    def modulations(self, gamma: torch.Tensor, emb: torch.Tensor) -> Modulations:
        """Every adaLN modulation of (gamma, emb): the part of the network that does not see the points.

        gamma (B,) gives (B, 1, dim) tensors that broadcast over the points; gamma (B, N) gives (B, N, dim).
        """
        return self._modulations_of(F.silu(self.conditioning(gamma, emb)))

    def averaged_modulations(self, gamma: torch.Tensor, emb: torch.Tensor) -> Modulations:
        """The modulations of (gamma, emb) averaged over gamma's last axis: gamma (B, K, S), emb (B, C) -> (B, K, dim)
        tensors. Every adaLN map is Linear(SiLU(cond)), affine in SiLU(cond), so the mean of the modulations is the
        map of the mean of SiLU(cond): one adaLN product per K instead of per K S."""
        return self._modulations_of(F.silu(self.conditioning(gamma, emb)).mean(2))

    def _modulations_of(self, activation: torch.Tensor) -> Modulations:
        """The blocks' and the head's adaLN maps of activation = SiLU(cond)."""
        scale, shift = self.final_adaln[1](activation).chunk(2, dim=-1)
        return Modulations(tuple(block.modulation(activation) for block in self.blocks), (1 + scale, shift))

    def forward_modulated(self, y: torch.Tensor, mods: Modulations,
                          weights: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None,
                          precision: Precision = "native") -> torch.Tensor:
        """The per-point part: y (..., N, 3) -> (..., N, 3) given precomputed modulations that broadcast
        against (..., N, dim). weights / precision: how the blocks' matmuls run (hidden_weights(precision),
        hidden_product); everything else runs in the network's dtype."""
        x = self.initial_mapper(y.to(self.initial_mapper.weight.dtype))
        for block, (scale1, shift, gate), (w_in, w_out) in zip(self.blocks, mods.blocks,
                                                               weights or self.hidden_weights(precision)):
            h = torch.addcmul(shift, scale1, F.layer_norm(x, x.shape[-1:]))
            a = F.gelu(hidden_product(h, w_in, precision, block.mlp[0].bias))
            x = torch.addcmul(x, hidden_product(a, w_out, precision, block.mlp[3].bias), gate)
        scale1, shift = mods.final
        return self.final_linear(torch.addcmul(shift, scale1, F.layer_norm(x, x.shape[-1:]))).to(y.dtype)

    def hidden_weights(self, precision: Precision = "native") -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """Each block's two MLP weights in the form hidden_product takes for `precision` (the bfloat16 forms:
        float32 networks only)."""
        if precision in ("native", "tf32"):
            return tuple((b.mlp[0].weight, b.mlp[3].weight) for b in self.blocks)
        if precision not in ("bf16x3", "bf16"):
            raise ValueError(f"precision must be 'native', 'bf16x3', 'bf16' or 'tf32', got {precision!r}")
        if self.initial_mapper.weight.dtype != torch.float32:
            raise ValueError(f"precision {precision!r} needs a float32 network")
        form = bf16x3_weight if precision == "bf16x3" else lambda w: w.t().to(torch.bfloat16).contiguous()
        return tuple((form(b.mlp[0].weight), form(b.mlp[3].weight)) for b in self.blocks)

    def jvp_modulated(self, y: torch.Tensor, tangents: torch.Tensor, mods: Modulations,
                      weights: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None,
                      precision: Precision = "native") -> tuple[torch.Tensor, torch.Tensor]:
        """f(y) and the directional derivatives J_f(y) t for T tangent fields at once (forward mode by hand).

        y (..., N, 3), tangents (T, ..., N, 3) -> (f(y) (..., N, 3), J t (T, ..., N, 3)). Cost: 1 + T forward passes
        of the point layers, batched into one matmul per layer; the modulations do not depend on y.
        weights / precision: how the blocks' matmuls run (hidden_weights(precision), hidden_product); the input and
        output layers (3 features) always run in the network's dtype.
        """
        w0, b0 = self.initial_mapper.weight, self.initial_mapper.bias
        x, dx = F.linear(y, w0, b0), F.linear(tangents, w0)
        for block, (scale1, shift, gate), (w_in, w_out) in zip(self.blocks, mods.blocks,
                                                               weights or self.hidden_weights(precision)):
            lin_in, lin_out = block.mlp[0], block.mlp[3]
            xh, dxh = _layer_norm_jvp(x, dx)
            both = hidden_product(torch.cat((torch.addcmul(shift, scale1, xh).unsqueeze(0), scale1 * dxh)), w_in,
                                  precision)
            u = both[0] + lin_in.bias
            a, da = _gelu_jvp(u, both[1:])
            out = hidden_product(torch.cat((a.unsqueeze(0), da)), w_out, precision)
            x = torch.addcmul(x, out[0] + lin_out.bias, gate)
            dx = torch.addcmul(dx, out[1:], gate)
        scale1, shift = mods.final
        xh, dxh = _layer_norm_jvp(x, dx)
        return self.final_linear(torch.addcmul(shift, scale1, xh)), F.linear(scale1 * dxh, self.final_linear.weight)
