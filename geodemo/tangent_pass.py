"""The log-density's per-point forward-mode pass on a CPU: f(y) and J_f(y) t for T tangents, GeoDenoiser.jvp_modulated's
maths with less work per evaluation, for the blocks' matmuls in the network's own dtype ("native"; the other
precisions, CUDA and torch.compile keep jvp_modulated, geodemo.likelihood.ODEField):

* the primal and its tangents travel as one stack (1 + T, ..., width) through every product; an affine layer
  x W^T + b and its tangent dx W^T are one product with [W, b] of homogeneous inputs [x, 1] / [dx, 0] (the tangent
  of a constant is 0): the input layer, the blocks' first layers and the output layer (the blocks' second layers
  add gate * b to the primal's residual stream alone);
* the first block's input product is folded through the 3-d input layer (point_pass.first_block_terms):
  u = r(y) [y, 1] A + e with r = (var(x0) + eps)^-1/2, x0 = W0 y + b0; its tangent is du = (dr [y, 1] + r [dy, 0]) A
  with dr = -r^3 (x0 - mean x0).dx0 / D = -r^2 mean(xh dx0), xh = LN(x0), dx0 = W0 dy; so the stack [r [y, 1], 1;
  dr [y, 1] + r [dy, 0], 0] meets a (5, H) matrix [A; e] instead of a (D, H) one;
* LayerNorm's Jacobian r (I - 11^T / D - xh xh^T / D) is symmetric, so its tangents are ATen's LayerNorm backward
  of them (one kernel); GELU's tangent Phi'(u) du is ATen's GELU backward (one kernel);
* the buffers and their views are made once per shape, and the residual stream is updated in place.
The products stay ATen's (MKL): at the map's 3-600 stacked rows oneDNN's (point_pass.fused_linear, the sampler's)
was no faster, and slower below about 100 rows (benchmarks/README.md).
With precision="bf16" (a float32 network on a CPU with bfloat16 matmul instructions, fast_bf16_cpu) the blocks' two
products take bfloat16 inputs and give bfloat16 outputs (oneDNN, float32 accumulation: relative error ~2^-8 per
product, 2.5x the float32 rate on one AVX512-BF16 core); the residual stream, LayerNorms, the folded first block and
the output layer stay float32.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch.nn import functional as F

from geodemo.network import LAYER_NORM_EPS, GeoDenoiser, Modulations, Precision
from geodemo.point_pass import first_block_terms

_GELU = torch.ops.aten.gelu.out
_GELU_TANGENT = torch.ops.aten.gelu_backward.grad_input
_LAYER_NORM_TANGENT = torch.ops.aten.native_layer_norm_backward.default


def homogeneous(layer: torch.nn.Linear, dtype: torch.dtype | None = None) -> torch.Tensor:
    """[W, b] (out, in + 1): x W^T + b = [x, 1] [W, b]^T, in `dtype` (default: the layer's)."""
    return torch.cat((layer.weight, layer.bias.unsqueeze(1)), dim=1).to(dtype).contiguous()


@functools.cache
def fast_bf16_cpu() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX512-BF16 or AMX); elsewhere oneDNN emulates
    them, slower than float32."""
    return any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported",
                                                                        "_is_amx_tile_supported"))


class Normed(NamedTuple):
    """A stack (1 + T, R, N, dim + 1) [shift + scale1 LN(x0), 1; scale1 dLN[dx_i], 0] with views of its primal and
    tangent parts."""

    stack: torch.Tensor
    primal: torch.Tensor
    tangents: torch.Tensor

    @classmethod
    def allocate(cls, shape: tuple[int, ...], dim: int, like: torch.Tensor) -> "Normed":
        """The buffer for stacks of `shape` (1 + T, R, N) and width dim, in like's dtype and device, its homogeneous
        column set."""
        stack = like.new_zeros(*shape, dim + 1)
        stack[0, ..., dim] = 1.0
        return cls(stack, stack[0, ..., :dim], stack[1:, ..., :dim])


class Stack(NamedTuple):
    """One shape's buffers, stacks (1 + T, R, N, width) of the primal (index 0) and its T tangents, with views of
    their parts. points, lifted and normed end in the homogeneous column (1 in the primal, 0 in the tangents, set
    once); hidden holds [GELU(u); GELU'(u) du]. normed and hidden are in the blocks' product dtype; output_normed
    (the output layer's input) in the network's."""

    points: torch.Tensor
    y: torch.Tensor
    dy: torch.Tensor
    lifted: torch.Tensor
    lifted_head: torch.Tensor
    lifted_tangents: torch.Tensor
    normed: Normed
    hidden: torch.Tensor
    hidden_primal: torch.Tensor
    hidden_tangents: torch.Tensor
    output_normed: Normed

    @classmethod
    def allocate(cls, shape: tuple[int, ...], dim: int, hidden: int, like: torch.Tensor, product_dtype: torch.dtype
                 ) -> "Stack":
        """The buffers for stacks of `shape` (1 + T, R, N) and widths 3, 4 (points, lifted), dim and hidden; like:
        the network's dtype and device."""
        points, lifted = (like.new_zeros(*shape, width + 1) for width in (3, 4))
        for buffer, width in ((points, 3), (lifted, 4)):
            buffer[0, ..., width] = 1.0
        normed = Normed.allocate(shape, dim, like.new_empty(0, dtype=product_dtype))
        output_normed = normed if product_dtype == like.dtype else Normed.allocate(shape, dim, like)
        out = like.new_empty(*shape, hidden, dtype=product_dtype)
        return cls(points, points[0, ..., :3], points[1:, ..., :3], lifted, lifted[..., :4], lifted[1:, ..., :4],
                   normed, out, out[0], out[1:], output_normed)


class TangentPointPass:
    """(f(y), J_f(y) t) of a GeoDenoiser at y (R, N, 3) for tangents t (T, R, N, 3), given one time's modulations
    (R, 1, dim) and its folded first block (first_terms). Equal to network.jvp_modulated(y, t, mods) up to
    rounding (float64 tests); its buffers belong to one caller at a time. precision: "native" (the network's dtype)
    or "bf16" (the blocks' products in bfloat16, a float32 network only)."""

    def __init__(self, network: GeoDenoiser, precision: Precision = "native"):
        if precision not in ("native", "bf16"):
            raise ValueError(f"the tangent pass runs 'native' or 'bf16' products, got {precision!r}")
        if precision == "bf16" and network.initial_mapper.weight.dtype != torch.float32:
            raise ValueError("precision 'bf16' needs a float32 network")
        self.network = network
        self.product_dtype = torch.bfloat16 if precision == "bf16" else network.initial_mapper.weight.dtype
        self.input_layer = homogeneous(network.initial_mapper)
        self.layers = tuple((homogeneous(block.mlp[0], self.product_dtype),
                             block.mlp[3].weight.to(self.product_dtype).contiguous(), block.mlp[3].bias)
                            for block in network.blocks)
        self.output_layer = homogeneous(network.final_linear)
        self.stacks: dict[tuple[torch.Size, torch.Size], Stack] = {}

    def first_terms(self, mods: Modulations) -> torch.Tensor:
        """[A; e] (..., 5, H) of the first block (point_pass.first_block_terms) for modulations (..., 1, dim), e.g.
        the K stage times of a solve stacked (K, R, 1, dim) at once."""
        return torch.cat(first_block_terms(self.network, *mods.blocks[0][:2]), dim=-2)

    def _stack(self, y: torch.Tensor, tangents: torch.Tensor) -> Stack:
        """The buffers for these shapes (made on first use)."""
        key = (y.shape, tangents.shape)
        if key not in self.stacks:
            self.stacks[key] = Stack.allocate((1 + tangents.shape[0], *y.shape[:-1]), self.network.config.dim,
                                              self.layers[0][0].shape[0], self.input_layer, self.product_dtype)
        return self.stacks[key]

    @staticmethod
    def _normed(x0: torch.Tensor, dx: torch.Tensor, scale1: torch.Tensor, shift: torch.Tensor, normed: Normed
                ) -> torch.Tensor:
        """normed's stack [shift + scale1 LN(x0), 1; scale1 dLN[dx_i], 0] for the residual stream x0 (R, N, D) and its
        tangents dx (T, R, N, D); LN's Jacobian dLN is symmetric, so dLN[dx] is LN's backward of dx."""
        xh, mean, inv_std = torch.native_layer_norm(x0, x0.shape[-1:], None, None, LAYER_NORM_EPS)
        torch.addcmul(shift, scale1, xh, out=normed.primal)
        stats = dx.shape[:-1] + (1,)  # the backward kernel reads mean and 1/std as contiguous arrays
        dxh = _LAYER_NORM_TANGENT(dx, x0.expand_as(dx), x0.shape[-1:], mean.expand(stats).contiguous(),
                                  inv_std.expand(stats).contiguous(), None, None, (True, False, False))[0]
        torch.mul(dxh, scale1, out=normed.tangents)
        return normed.stack

    def __call__(self, y: torch.Tensor, tangents: torch.Tensor, mods: Modulations, first: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        stack = self._stack(y, tangents)
        stack.y.copy_(y)
        stack.dy.copy_(tangents)
        x = F.linear(stack.points, self.input_layer)  # [x0; dx]: the residual stream and its tangents
        x0, dx = x[0], x[1:]
        xh, _, inv_std = torch.native_layer_norm(x0, x0.shape[-1:], None, None, LAYER_NORM_EPS)
        d_inv_std = torch.linalg.vecdot(dx, xh).unsqueeze(-1).mul_(inv_std.square().mul_(-1.0 / x0.shape[-1]))
        torch.mul(stack.points, inv_std, out=stack.lifted_head)
        stack.lifted_tangents.addcmul_(d_inv_std, stack.points[0])
        u = torch.matmul(stack.lifted, first)
        for i, ((scale1, shift, gate), (w_in, w_out, b_out)) in enumerate(zip(mods.blocks, self.layers)):
            if i > 0:
                u = F.linear(self._normed(x0, dx, scale1, shift, stack.normed), w_in)
            elif u.dtype != self.product_dtype:  # the folded first block's product, in the network's dtype
                u = u.to(self.product_dtype)
            u0, du = u[0], u[1:]
            _GELU(u0, out=stack.hidden_primal)
            _GELU_TANGENT(du, u0.expand_as(du), grad_input=stack.hidden_tangents)
            x.addcmul_(F.linear(stack.hidden, w_out), gate)
            x0.addcmul_(gate, b_out)
        out = F.linear(self._normed(x0, dx, *mods.final, stack.output_normed), self.output_layer)
        return out[0], out[1:]
