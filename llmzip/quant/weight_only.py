"""4-bit weight-only Linear: block-wise scales along the input dimension, exported as onnxruntime's MatMulNBits.

Why this layout: MatMulNBits (com.microsoft) is the kernel onnxruntime runs for low-bit weights on CPU and GPU. Its
weight is uint4 codes packed two per byte along K in blocks of `block_size`, one scale (and optionally one packed
zero point) per block, for each output feature N. Storing the buffers in exactly that layout keeps PyTorch's
forward and the exported graph the same numbers with no conversion step at export time. Activations stay float
(weight-only): the win is size and memory bandwidth, not integer arithmetic.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from llmzip.quant import qmath

BITS = 4
SYMMETRIC_ZERO_POINT = 8  # what MatMulNBits assumes when the zero_points input is absent


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes in [0, 15], even last dimension → half as many bytes, first code in the low nibble."""
    c = codes.to(torch.uint8)
    return c[..., 0::2] | (c[..., 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    low, high = packed & 0x0F, packed >> 4
    return torch.stack([low, high], dim=-1).flatten(-2)


def block_codes(
    weight: torch.Tensor, block_size: int, *, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[N, K] float weight → (codes [N, k_blocks, block] in [0, 15], scales [N, k_blocks], zero points [N, k_blocks]).

    K is zero-padded up to a whole number of blocks (MatMulNBits does the same); padding quantizes to the zero point.
    """
    n, k = weight.shape
    blocks = -(-k // block_size)
    w = torch.zeros(n, blocks * block_size)
    w[:, :k] = weight.detach().float()
    w = w.reshape(n, blocks, block_size)
    if symmetric:
        grid = qmath.qrange(BITS, signed=True, symmetric=True)  # [-7, 7] so that ±x → ±q
        scale, _ = qmath.symmetric_qparams(w.abs().amax(-1), grid)
        zero_point = torch.full_like(scale, SYMMETRIC_ZERO_POINT, dtype=torch.int32)
    else:
        scale, zero_point = qmath.asymmetric_qparams(
            w.amin(-1), w.amax(-1), qmath.qrange(BITS, signed=False, symmetric=False)
        )
    unsigned = qmath.QRange(0, 2**BITS - 1, torch.uint8)
    codes = qmath.quantize(w, scale[..., None], zero_point[..., None], unsigned)
    return codes, scale, zero_point


class _MatMulNBits(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        packed: torch.Tensor,
        scales: torch.Tensor,
        zero_points: torch.Tensor | None,
        k: int,
        n: int,
        block_size: int,
    ) -> torch.Tensor:
        return torch.matmul(x, dequantize_packed(packed, scales, zero_points, k).t())

    @staticmethod
    def symbolic(g: Any, x: Any, packed: Any, scales: Any, zero_points: Any, k: int, n: int, block_size: int) -> Any:
        inputs = [x, packed, scales] + ([zero_points] if zero_points is not None else [])
        return g.op("com.microsoft::MatMulNBits", *inputs, K_i=k, N_i=n, bits_i=BITS, block_size_i=block_size).setType(
            x.type()
        )


def dequantize_packed(
    packed: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor | None, k: int
) -> torch.Tensor:
    """The float [N, K] weight the packed codes stand for."""
    codes = unpack_nibbles(packed).float()  # [N, k_blocks, block]
    if zero_points is None:
        zp = torch.full_like(scales, float(SYMMETRIC_ZERO_POINT))
    else:
        zp = unpack_nibbles(zero_points)[:, : scales.shape[1]].float()
    w = (codes - zp[..., None]) * scales[..., None]
    return w.reshape(w.shape[0], -1)[:, :k]


class WeightOnlyLinear(nn.Module):
    """y = x @ dq(W4)ᵀ + b, float activations, 4-bit weights with one scale per block of `block_size` inputs."""

    weight_packed: torch.Tensor
    weight_scale: torch.Tensor
    weight_zero_point: torch.Tensor | None

    def __init__(self, in_features: int, out_features: int, *, bias: bool, block_size: int, symmetric: bool) -> None:
        super().__init__()
        self.in_features, self.out_features, self.block_size = in_features, out_features, block_size
        blocks = -(-in_features // block_size)
        self.register_buffer("weight_packed", torch.zeros(out_features, blocks, block_size // 2, dtype=torch.uint8))
        self.register_buffer("weight_scale", torch.ones(out_features, blocks))
        zp = None if symmetric else torch.zeros(out_features, -(-blocks // 2), dtype=torch.uint8)
        self.register_buffer("weight_zero_point", zp)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_float(cls, linear: nn.Linear, *, block_size: int, symmetric: bool) -> WeightOnlyLinear:
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            block_size=block_size,
            symmetric=symmetric,
        )
        codes, scale, zero_point = block_codes(linear.weight, block_size, symmetric=symmetric)
        with torch.no_grad():
            layer.weight_packed.copy_(pack_nibbles(codes))
            layer.weight_scale.copy_(scale)
            if layer.weight_zero_point is not None:
                blocks = scale.shape[1]
                padded = torch.zeros(scale.shape[0], blocks + blocks % 2, dtype=torch.uint8)
                padded[:, :blocks] = zero_point.to(torch.uint8)
                layer.weight_zero_point.copy_(pack_nibbles(padded))
            if linear.bias is not None and layer.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _MatMulNBits.apply(
            x,
            self.weight_packed,
            self.weight_scale,
            self.weight_zero_point,
            self.in_features,
            self.out_features,
            self.block_size,
        )
        return y + self.bias if self.bias is not None else y

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize_packed(self.weight_packed, self.weight_scale, self.weight_zero_point, self.in_features)

    def extra_repr(self) -> str:
        kind = "symmetric" if self.weight_zero_point is None else "asymmetric"
        return (
            f"in={self.in_features}, out={self.out_features}, weight=int4 {kind} blocks of {self.block_size}, "
            "input=float"
        )
