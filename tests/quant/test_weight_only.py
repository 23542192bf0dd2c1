"""4-bit weight-only math: nibble packing in MatMulNBits' layout and block-wise scales against hand values."""

from __future__ import annotations

import torch
from torch import nn

from llmzip.quant.weight_only import WeightOnlyLinear, block_codes, pack_nibbles, unpack_nibbles


def test_nibbles_pack_low_first_and_round_trip() -> None:
    codes = torch.tensor([[1, 2, 15, 0]], dtype=torch.uint8)
    packed = pack_nibbles(codes)
    assert packed.tolist() == [[0x21, 0x0F]]  # first code in the low nibble
    assert torch.equal(unpack_nibbles(packed), codes)


def test_symmetric_block_codes_match_hand_formula() -> None:
    # one row, two blocks of 16: the largest-magnitude weight lands exactly on code 0 (−8 steps), so the scale is
    # w*/−8 (negative for a positive w*) and all 16 codes are in use
    w = torch.zeros(1, 32)
    w[0, 0], w[0, 1], w[0, 16], w[0, 17] = 8.0, -3.0, -16.0, 6.0
    codes, scale, zp = block_codes(w, 16, symmetric=True)
    assert scale.tolist() == [[-1.0, 2.0]] and zp.tolist() == [[8, 8]]
    assert codes[0, 0, :2].tolist() == [0, 11] and codes[0, 1, :2].tolist() == [0, 11]  # 6/2 = 3 → 8 + 3
    assert codes[0, 0, 2].item() == 8  # 0 stays exactly 0


def test_asymmetric_and_padded_k_dequantize_within_half_a_step() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(40, 6)  # 40 inputs: not a multiple of the block, padded to 3 blocks of 16
    layer = WeightOnlyLinear.from_float(linear, block_size=16, symmetric=False)
    w = linear.weight.detach()
    step = layer.weight_scale.repeat_interleave(16, dim=1)[:, :40]
    assert layer.weight_zero_point is not None and layer.weight_zero_point.shape == (6, 2)  # 3 blocks → 2 bytes
    assert ((layer.dequantized_weight() - w).abs() <= step / 2 + 1e-6).all()
    x = torch.randn(3, 40)
    assert torch.allclose(layer(x), x @ layer.dequantized_weight().t() + linear.bias, atol=1e-5)
