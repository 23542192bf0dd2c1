"""Quantization math against hand-computed values (and ONNX's round-half-to-even)."""

from __future__ import annotations

import math

import torch

from llmzip.quant.qmath import (
    asymmetric_qparams,
    dequantize,
    fake_quantize,
    qrange,
    quantize,
    sqnr_db,
    symmetric_qparams,
    weight_qparams,
)

U8 = qrange(8, signed=False, symmetric=False)
S8_SYM = qrange(8, signed=True, symmetric=True)
S8_ASYM = qrange(8, signed=True, symmetric=False)


def test_ranges() -> None:
    assert (U8.qmin, U8.qmax) == (0, 255)
    assert (S8_SYM.qmin, S8_SYM.qmax) == (-127, 127)
    assert (S8_ASYM.qmin, S8_ASYM.qmax) == (-128, 127)


def test_asymmetric_seed_formula() -> None:
    # S = (max - min) / (2^8 - 1) = 4 / 255; Z = 0 - round(-1 / S) = round(63.75) = 64
    scale, zp = asymmetric_qparams(torch.tensor(-1.0), torch.tensor(3.0), U8)
    assert math.isclose(float(scale), 4.0 / 255.0, rel_tol=1e-6)
    assert int(zp) == 64
    q = quantize(torch.tensor([-1.0, 0.0, 3.0, 10.0]), scale, zp, U8)
    assert q.tolist() == [0, 64, 255, 255]  # 3.0 → round(191.25) + 64 = 255; 10.0 clamps
    assert float(dequantize(q, scale, zp)[1]) == 0.0  # zero is exact


def test_asymmetric_range_is_widened_to_contain_zero() -> None:
    scale, zp = asymmetric_qparams(torch.tensor(2.0), torch.tensor(4.0), U8)  # all-positive: min becomes 0
    assert math.isclose(float(scale), 4.0 / 255.0, rel_tol=1e-6)
    assert int(zp) == 0


def test_signed_asymmetric() -> None:
    scale, zp = asymmetric_qparams(torch.tensor(-1.0), torch.tensor(3.0), S8_ASYM)
    assert int(zp) == -128 + 64


def test_symmetric_uses_restricted_range() -> None:
    scale, zp = symmetric_qparams(torch.tensor(1.27), S8_SYM)
    assert math.isclose(float(scale), 0.01, rel_tol=1e-6) and int(zp) == 0
    q = quantize(torch.tensor([1.27, -1.27, 0.005, 0.015, -0.005]), scale, zp, S8_SYM)
    assert q.tolist() == [127, -127, 0, 2, 0]  # 0.5 and 1.5 round half to even, like ONNX QuantizeLinear


def test_per_channel_weight_scales() -> None:
    w = torch.tensor([[0.5, -1.0, 0.25], [2.54, 0.0, -0.1]])
    scale, zp = weight_qparams(w, S8_SYM, symmetric=True, per_channel=True, axis=0)
    assert torch.allclose(scale, torch.tensor([1.0 / 127, 2.54 / 127]))
    assert zp.tolist() == [0, 0]
    scale_t, _ = weight_qparams(w, S8_SYM, symmetric=True, per_channel=False)
    assert math.isclose(float(scale_t), 2.54 / 127, rel_tol=1e-6)
    q = quantize(w, scale.reshape(-1, 1), zp.reshape(-1, 1), S8_SYM)
    assert q[0].tolist() == [64, -127, 32] and q[1].tolist() == [127, 0, -5]


def test_fake_quantize_is_quantize_then_dequantize() -> None:
    x = torch.linspace(-3, 5, 101)
    scale, zp = asymmetric_qparams(x.min(), x.max(), U8)
    assert torch.equal(fake_quantize(x, scale, zp, U8), dequantize(quantize(x, scale, zp, U8), scale, zp))
    assert float((fake_quantize(x, scale, zp, U8) - x).abs().max()) <= float(scale) / 2 + 1e-6


def test_sqnr() -> None:
    x = torch.tensor([3.0, 4.0])  # ‖x‖² = 25
    assert math.isclose(sqnr_db(x, x + torch.tensor([0.5, 0.0])), 10 * math.log10(25 / 0.25), rel_tol=1e-9)
    assert sqnr_db(x, x) == float("inf")
