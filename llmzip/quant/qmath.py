"""Scale / zero-point arithmetic, quantize / dequantize and error metrics: pure functions, no I/O.

Conventions (the same as ONNX QuantizeLinear/DequantizeLinear, so PyTorch and onnxruntime agree bit for bit):
    q = clamp(round_half_even(x / S) + Z, qmin, qmax)        x̂ = (q - Z) · S
Asymmetric (the seed formula):  S = (max - min) / (2^b - 1),  Z = qmin - round(min / S), with [min, max] widened to
contain 0 so that zero (padding, ReLU output) is exactly representable.
Symmetric:  S = absmax / (2^(b-1) - 1),  Z = 0, using the restricted range [-(2^(b-1) - 1), 2^(b-1) - 1] so that
+x and -x quantize to ±q (what onnxruntime and TensorRT assume for symmetric weights).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Scales below this would make x / S overflow; a tensor that is all zeros still gets a usable scale.
_EPS = 1e-12


@dataclass(frozen=True)
class QRange:
    """The integer grid of one quantized type."""

    qmin: int
    qmax: int
    dtype: torch.dtype


def qrange(bits: int, *, signed: bool, symmetric: bool) -> QRange:
    if signed:
        qmax = 2 ** (bits - 1) - 1
        qmin = -qmax if symmetric else -(2 ** (bits - 1))
        return QRange(qmin, qmax, torch.int8)
    return QRange(0, 2**bits - 1, torch.uint8)


def asymmetric_qparams(lo: torch.Tensor, hi: torch.Tensor, r: QRange) -> tuple[torch.Tensor, torch.Tensor]:
    """S = (max - min) / (2^b - 1) over the range widened to include 0; Z maps min onto qmin."""
    lo = torch.clamp(lo, max=0.0)
    hi = torch.clamp(hi, min=0.0)
    scale = torch.clamp((hi - lo) / float(r.qmax - r.qmin), min=_EPS)
    zero_point = torch.clamp(r.qmin - torch.round(lo / scale), r.qmin, r.qmax)
    return scale.float(), zero_point.to(torch.int32)


def symmetric_qparams(absmax: torch.Tensor, r: QRange) -> tuple[torch.Tensor, torch.Tensor]:
    """S = absmax / qmax with Z at the middle of the grid (0 for signed, 128 for uint8)."""
    scale = torch.clamp(absmax / float((r.qmax - r.qmin) // 2), min=_EPS)
    zero_point = torch.full_like(scale, (r.qmax + r.qmin + 1) // 2, dtype=torch.int32)
    return scale.float(), zero_point


def dynamic_uint8_qparams(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ONNX DynamicQuantizeLinear: uint8 scale and zero point from this very tensor's range (widened to hold 0)."""
    lo, hi = torch.clamp(x.min(), max=0.0), torch.clamp(x.max(), min=0.0)
    scale = torch.clamp((hi - lo) / 255.0, min=_EPS)
    return scale, torch.clamp(torch.round(-lo / scale), 0, 255)


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, r: QRange) -> torch.Tensor:
    """Integer codes of x; `scale`/`zero_point` broadcast against x (per-tensor or per-channel)."""
    q = torch.round(x / scale) + zero_point.to(x.dtype)
    return torch.clamp(q, r.qmin, r.qmax).to(r.dtype)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    return (q.to(torch.float32) - zero_point.to(torch.float32)) * scale


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, r: QRange) -> torch.Tensor:
    """quantize then dequantize in float, exactly what a QuantizeLinear → DequantizeLinear pair computes."""
    zp = zero_point.to(x.dtype)
    return (torch.clamp(torch.round(x / scale) + zp, r.qmin, r.qmax) - zp) * scale


def weight_qparams(
    weight: torch.Tensor, r: QRange, *, symmetric: bool, per_channel: bool, axis: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight scales from the weight itself: one per output channel (`axis`) or one for the tensor."""
    w = weight.detach().float()
    if per_channel:
        dims = [d for d in range(w.dim()) if d != axis]
        lo, hi = w.amin(dim=dims), w.amax(dim=dims)
    else:
        lo, hi = w.min(), w.max()
    if symmetric:
        return symmetric_qparams(torch.maximum(hi.abs(), lo.abs()), r)
    return asymmetric_qparams(lo, hi, r)


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio, 10·log10(‖x‖² / ‖x - x̂‖²); +inf when they are identical."""
    ref = reference.detach().double()
    noise = (ref - approx.detach().double()).pow(2).sum()
    signal = ref.pow(2).sum()
    if noise == 0:
        return float("inf")
    return float(10.0 * torch.log10(signal / noise))
