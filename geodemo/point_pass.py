"""The sampler's per-point pass: the guided prediction (1 + w) f(y, g_k, c) - w f(y, g_k, 0) of N points at each step
k of a chunk of precomputed modulations, with the network's own arithmetic and less work per step than
GeoDenoiser.forward_modulated on [y; y]:

* the first block's input product is folded through the 3-d input layer (first_block_terms): (N, 4) x (4, H)
  products instead of (2N, D) x (D, H), and one LayerNorm of the N shared points instead of 2N;
* every row (image, guidance half) and point in one batched product per layer;
* on a CPU in float32, each MLP layer is one oneDNN call with GELU fused (fused_linear), and the residual stream is
  updated in place in a buffer kept from step to step.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from geodemo.guidance import guided_output
from geodemo.network import LAYER_NORM_EPS, GeoDenoiser, Modulations, Precision, hidden_product


def first_block_terms(network: GeoDenoiser, scale1: torch.Tensor, shift: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, e) with (shift + scale1 LN(W0 y + b0)) W1^T + b1 = r(y) [y, 1] A + e, r = 1 / sqrt(var(W0 y + b0) + eps).

    LN's centring of the affine x0 = W0 y + b0 is affine too: x0 - mean(x0) = C y + c with C = W0 minus its mean
    row, c = b0 - mean(b0); so A = [C^T; c^T] diag(scale1) W1^T (4, H) and e = shift W1^T + b1 (1, H), for W0, b0
    the input layer and W1, b1 the first block's first linear layer. scale1, shift (..., 1, D) -> A (..., 4, H),
    e (..., 1, H)."""
    w0, b0 = network.initial_mapper.weight, network.initial_mapper.bias
    w1, b1 = network.blocks[0].mlp[0].weight, network.blocks[0].mlp[0].bias
    centred = torch.cat((w0 - w0.mean(0), (b0 - b0.mean()).unsqueeze(1)), dim=1).t()
    return (centred * scale1) @ w1.t(), F.linear(shift, w1, b1)


def fused_linear_available(weight: torch.Tensor, precision: Precision) -> bool:
    """Whether fused_linear can run products with `weight`: native float32 on a CPU built with oneDNN (and a torch
    that still has the op)."""
    return (precision == "native" and weight.device.type == "cpu" and weight.dtype == torch.float32
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def fused_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, gelu: bool) -> torch.Tensor:
    """x W^T + b, then GELU(.) (exact, erf) when `gelu`, as one oneDNN matmul with the bias and GELU in its epilogue:
    the kernel torch.compile's CPU backend calls, here without compiling. float32 on a CPU only
    (fused_linear_available); ~10% faster than MKL's product at the sampler's shapes (benchmarks/README.md)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu" if gelu else "none", [], "none" if gelu else "")


HiddenWeights = tuple[tuple[torch.Tensor, torch.Tensor], ...]
"""Each block's two MLP weights in GeoDenoiser.hidden_weights' form."""


class GuidedPointPass:
    """predict(k, y): the guided prediction of points y (B, N, 3) at step k of modulations stacked (K, rows, 1, dim),
    rows = B (w = 0) or 2B ([cond; uncond], geodemo.guidance). weights / precision: GeoDenoiser.hidden_weights
    (precision) for the blocks after the first; the folded first product runs in the network's dtype.

    Equal to guided_output(network.forward_modulated([y; y], mods_k)) up to rounding (float64 tests); its buffer
    belongs to one caller at a time."""

    def __init__(self, network: GeoDenoiser, mods: Modulations, weights: HiddenWeights, precision: Precision,
                 guidance: float):
        self.network, self.mods, self.weights = network, mods, weights
        self.precision, self.guidance = precision, guidance
        self.first = first_block_terms(network, *mods.blocks[0][:2])
        self.fused = fused_linear_available(network.initial_mapper.weight, precision)
        self.streams: dict[torch.Size, torch.Tensor] = {}

    def _stream(self, y: torch.Tensor) -> torch.Tensor:
        """The residual stream's buffer (rows, N, D) for y's shape."""
        if y.shape not in self.streams:
            rows, dim = self.mods.final[0].shape[1], self.network.config.dim
            self.streams[y.shape] = self.network.initial_mapper.weight.new_empty(rows, y.shape[1], dim)
        return self.streams[y.shape]

    def _linear(self, x: torch.Tensor, weight: torch.Tensor, layer: torch.nn.Linear, gelu: bool) -> torch.Tensor:
        """GELU(x W^T + b) or x W^T + b for `layer`'s bias b and its weight in hidden_weights' form."""
        if self.fused:
            return fused_linear(x.flatten(0, -2), weight, layer.bias, gelu).view(*x.shape[:-1], -1)
        out = hidden_product(x, weight, self.precision, layer.bias)
        return F.gelu(out) if gelu else out

    def __call__(self, k: int, y: torch.Tensor) -> torch.Tensor:
        network, x = self.network, self._stream(y)
        batch, groups, dim = y.shape[0], x.shape[0] // y.shape[0], x.shape[-1]
        points = y.to(x.dtype)
        x0 = network.initial_mapper(points)
        inv_std = torch.native_layer_norm(x0, (dim,), None, None, LAYER_NORM_EPS)[2]
        lifted = (F.pad(points, (0, 1), value=1.0) * inv_std).expand(groups, *points.shape[:2], 4).flatten(0, 1)
        hidden = F.gelu(torch.baddbmm(self.first[1][k], lifted, self.first[0][k]))
        residual = x0.expand(groups, *x0.shape).flatten(0, 1)
        for i, (block, (scale1, shift, gate), (w_in, w_out)) in enumerate(zip(network.blocks, self.mods.blocks,
                                                                             self.weights)):
            if i > 0:
                norm = torch.addcmul(shift[k], scale1[k], F.layer_norm(x, (dim,)))
                hidden, residual = self._linear(norm, w_in, block.mlp[0], gelu=True), x
            torch.addcmul(residual, self._linear(hidden, w_out, block.mlp[3], gelu=False), gate[k], out=x)
        scale1, shift = (m[k] for m in self.mods.final)
        out = network.final_linear(torch.addcmul(shift, scale1, F.layer_norm(x, (dim,))))
        return guided_output(out, self.guidance).to(y.dtype)
