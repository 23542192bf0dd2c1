"""4- and 8-bit weight-only Linear: block-wise scales along the input dimension, exported as onnxruntime's
MatMulNBits.

Why this layout: MatMulNBits (com.microsoft) is the kernel onnxruntime runs for low-bit weights on CPU and GPU. Its
weight is unsigned codes (uint4 packed two per byte, or uint8) along K in blocks of `block_size`, one scale (and
optionally one zero point, packed the same way) per block, for each output feature N. Storing the buffers in
exactly that layout keeps PyTorch's forward and the exported graph the same numbers with no conversion step at
export time. Activations stay float (weight-only): the win is size and memory bandwidth, not integer arithmetic.
The codes can come from plain rounding (`block_codes`) or from GPTQ's error feedback (llmzip/quant/gptq.py).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from llmzip.quant import qmath

BITS = 4
SUPPORTED_BITS = (4, 8)


def default_zero_point(bits: int) -> int:
    """What MatMulNBits assumes when the zero_points input is absent: the middle of the unsigned grid."""
    return 2 ** (bits - 1)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned codes → MatMulNBits bytes along the last dimension (two nibbles per byte for 4 bits)."""
    return pack_nibbles(codes) if bits == 4 else codes.to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int) -> torch.Tensor:
    return unpack_nibbles(packed) if bits == 4 else packed


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes in [0, 15], even last dimension → half as many bytes, first code in the low nibble."""
    c = codes.to(torch.uint8)
    return c[..., 0::2] | (c[..., 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    low, high = packed & 0x0F, packed >> 4
    return torch.stack([low, high], dim=-1).flatten(-2)


def block_qparams(w: torch.Tensor, *, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor, qmath.QRange]:
    """Scale and zero point of each block of `w` [..., block] (reduced over the last dimension), and the grid."""
    if symmetric:
        # All 2^b codes around a fixed zero point: the block's largest-magnitude weight w* maps exactly onto the
        # grid's far end, −2^(b−1), through a scale of w*/−2^(b−1) (negative when w* > 0), so the other side
        # reaches +2^(b−1)−1 steps. One more level than a [−7, 7] grid (a step 12.5% finer at 4 bits); onnxruntime's
        # own block quantizer makes the same choice, and MatMulNBits takes signed scales as they are.
        half = 2 ** (bits - 1)
        extreme = w.gather(-1, w.abs().argmax(-1, keepdim=True)).squeeze(-1)
        scale = torch.where(extreme == 0, torch.ones_like(extreme), extreme / -half).float()
        zero_point = torch.full_like(scale, default_zero_point(bits), dtype=torch.int32)
    else:
        scale, zero_point = qmath.asymmetric_qparams(
            w.amin(-1), w.amax(-1), qmath.qrange(bits, signed=False, symmetric=False)
        )
    return scale, zero_point, qmath.QRange(0, 2**bits - 1, torch.uint8)


def block_codes(
    weight: torch.Tensor, block_size: int, *, symmetric: bool, bits: int = BITS
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[N, K] float weight → (codes [N, k_blocks, block] in [0, 2^bits), scales and zero points [N, k_blocks]).

    K is zero-padded up to a whole number of blocks (MatMulNBits does the same); padding quantizes to the zero point.
    """
    n, k = weight.shape
    blocks = -(-k // block_size)
    w = torch.zeros(n, blocks * block_size)
    w[:, :k] = weight.detach().float()
    w = w.reshape(n, blocks, block_size)
    scale, zero_point, unsigned = block_qparams(w, bits=bits, symmetric=symmetric)
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
        offset: torch.Tensor | None,
        k: int,
        n: int,
        block_size: int,
        bits: int,
        accuracy_level: int,
    ) -> torch.Tensor:
        return torch.matmul(x, dequantize_packed(packed, scales, zero_points, k, bits, offset).t())

    @staticmethod
    def symbolic(
        g: Any,
        x: Any,
        packed: Any,
        scales: Any,
        zero_points: Any,
        offset: Any,
        k: int,
        n: int,
        block_size: int,
        bits: int,
        accuracy_level: int,
    ) -> Any:
        attrs = {"K_i": k, "N_i": n, "bits_i": bits, "block_size_i": block_size}
        if accuracy_level:
            attrs["accuracy_level_i"] = accuracy_level
        inputs = [x, packed, scales] + ([zero_points] if zero_points is not None else [])
        out = g.op("com.microsoft::MatMulNBits", *inputs, **attrs)
        if offset is not None:
            # Σ_b (Σ_{k∈b} x_k)·o_{b,n}: one small product keeps the fast integer kernel exact
            lead = g.op(
                "Slice",
                g.op("Shape", x),
                g.op("Constant", value_t=torch.tensor([0], dtype=torch.int64)),
                g.op("Constant", value_t=torch.tensor([-1], dtype=torch.int64)),
            )
            blocks = g.op("Constant", value_t=torch.tensor([k // block_size, block_size], dtype=torch.int64))
            axis = g.op("Constant", value_t=torch.tensor([-1], dtype=torch.int64))
            shape = g.op("Concat", lead, blocks, axis_i=0)
            sums = g.op("ReduceSum", g.op("Reshape", x, shape), axis, keepdims_i=0)
            out = g.op("Add", out, g.op("MatMul", sums, g.op("Transpose", offset, perm_i=[1, 0])))
        # Output shape = x's with the last dimension N (x's own type would tell onnxruntime's shape inference K).
        sizes = x.type().varyingSizes()
        return out.setType(x.type().with_sizes([*sizes[:-1], n]) if sizes else x.type())


def dequantize_packed(
    packed: torch.Tensor,
    scales: torch.Tensor,
    zero_points: torch.Tensor | None,
    k: int,
    bits: int = BITS,
    offset: torch.Tensor | None = None,
) -> torch.Tensor:
    """The float [N, K] weight the packed codes stand for: (code − zero point)·scale (+ the block's offset)."""
    codes = unpack_codes(packed, bits).float()  # [N, k_blocks, block]
    if zero_points is None:
        zp = torch.full_like(scales, float(default_zero_point(bits)))
    elif zero_points.is_floating_point():  # float zero points, one per block (see WeightOnlyLinear.forward)
        zp = zero_points
    else:
        zp = unpack_codes(zero_points, bits)[:, : scales.shape[1]].float()
    w = (codes - zp[..., None]) * scales[..., None]
    if offset is not None:
        w = w + offset[..., None]
    return w.reshape(w.shape[0], -1)[:, :k]


class WeightOnlyLinear(nn.Module):
    """y = x @ dq(W)ᵀ + b, float activations, 4- or 8-bit weights with one scale per block of `block_size` inputs."""

    weight_packed: torch.Tensor
    weight_scale: torch.Tensor
    weight_zero_point: torch.Tensor | None
    # A float per block added to every weight of the block: a GGUF type's minimum (Q4_1, Q4_K ...), kept exactly
    # (llmzip/sources/gguf_blocks.py). Exported as a small correction product beside the integer kernel (or, with
    # `float_zero_points`, folded into float zero points, which onnxruntime's CPU kernel runs much slower).
    weight_offset: torch.Tensor | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool,
        block_size: int,
        symmetric: bool,
        bits: int = BITS,
        offset: bool = False,
    ) -> None:
        super().__init__()
        assert bits in SUPPORTED_BITS, bits
        self.in_features, self.out_features, self.block_size, self.bits = in_features, out_features, block_size, bits
        # MatMulNBits' accuracy_level (4: activations quantized to int8 per block inside the kernel, the fast CPU
        # path); set by export, not stored: PyTorch's forward is the exact float product either way.
        self.accuracy_level = 0
        self.float_zero_points = False  # the export form of an offset; set by export, not stored
        blocks = -(-in_features // block_size)
        per_byte = 8 // bits
        self.register_buffer(
            "weight_packed", torch.zeros(out_features, blocks, block_size // per_byte, dtype=torch.uint8)
        )
        self.register_buffer("weight_scale", torch.ones(out_features, blocks))
        zp = None if symmetric else torch.zeros(out_features, -(-blocks // per_byte), dtype=torch.uint8)
        self.register_buffer("weight_zero_point", zp)
        if offset and in_features % block_size:
            raise ValueError("a block offset needs whole blocks of inputs")
        self.register_buffer("weight_offset", torch.zeros(out_features, blocks) if offset else None)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_float(cls, linear: nn.Linear, *, block_size: int, symmetric: bool, bits: int = BITS) -> WeightOnlyLinear:
        codes, scale, zero_point = block_codes(linear.weight, block_size, symmetric=symmetric, bits=bits)
        return cls.from_codes(linear, codes, scale, zero_point, block_size=block_size, symmetric=symmetric, bits=bits)

    @classmethod
    def from_codes(
        cls,
        linear: nn.Linear,
        codes: torch.Tensor,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        *,
        block_size: int,
        symmetric: bool,
        bits: int,
    ) -> WeightOnlyLinear:
        """The layer holding given codes [N, k_blocks, block], scales and zero points [N, k_blocks]."""
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            block_size=block_size,
            symmetric=symmetric,
            bits=bits,
        )
        with torch.no_grad():
            layer.weight_packed.copy_(pack_codes(codes, bits))
            layer.weight_scale.copy_(scale)
            if layer.weight_zero_point is not None:
                blocks = scale.shape[1]
                padded = torch.zeros(scale.shape[0], layer.weight_zero_point.shape[1] * (8 // bits), dtype=torch.uint8)
                padded[:, :blocks] = zero_point.to(torch.uint8)
                layer.weight_zero_point.copy_(pack_codes(padded, bits))
            if linear.bias is not None and layer.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zero_points, offset = self.weight_zero_point, self.weight_offset
        if offset is not None and self.float_zero_points:
            zero_points, offset = self.float_zero_point_tensor(), None
        y = _MatMulNBits.apply(
            x,
            self.weight_packed,
            self.weight_scale,
            zero_points,
            offset,
            self.in_features,
            self.out_features,
            self.block_size,
            self.bits,
            self.accuracy_level,
        )
        return y + self.bias if self.bias is not None else y

    def float_zero_point_tensor(self) -> torch.Tensor:
        """(q − zp)·s + o = (q − (zp − o/s))·s: the offsets folded into float zero points [N, blocks]."""
        blocks = self.weight_scale.shape[1]
        if self.weight_zero_point is None:
            zp = torch.full_like(self.weight_scale, float(default_zero_point(self.bits)))
        else:
            zp = unpack_codes(self.weight_zero_point, self.bits)[:, :blocks].float()
        scale = self.weight_scale
        if self.weight_offset is None:
            return zp
        if bool(((scale == 0) & (self.weight_offset != 0)).any()):
            raise ValueError("a block with scale 0 and an offset has no float zero point")
        return zp - self.weight_offset / torch.where(scale == 0, torch.ones_like(scale), scale)

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize_packed(
            self.weight_packed,
            self.weight_scale,
            self.weight_zero_point,
            self.in_features,
            self.bits,
            self.weight_offset,
        )

    def extra_repr(self) -> str:
        kind = "symmetric" if self.weight_zero_point is None else "asymmetric"
        kind += " + block offsets" if self.weight_offset is not None else ""
        return (
            f"in={self.in_features}, out={self.out_features}, weight=int{self.bits} {kind} blocks of "
            f"{self.block_size}, input=float"
        )


class SharedEmbedding(nn.Module):
    """A tied word embedding that reads the quantized lm_head's rows (what onnxruntime's GatherBlockQuantized does),
    so a tied model ships one table, not an int4 head plus a second embedding.

    The head is kept outside the module tree: the codes are saved once, under the head's name.
    """

    def __init__(self, head: WeightOnlyLinear) -> None:
        super().__init__()
        object.__setattr__(self, "_head", head)
        self.num_embeddings, self.embedding_dim = head.out_features, head.in_features
        self.embed_scale = 1.0  # a multiplier the replaced embedding applied (quant.modules.scaled_like)

    @property
    def head(self) -> WeightOnlyLinear:
        head: WeightOnlyLinear = self.__dict__["_head"]
        return head

    @property
    def weight(self) -> torch.Tensor:  # what transformers reads for shapes/dtypes
        return self.head.dequantized_weight()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.head
        out: torch.Tensor = _GatherBlockQuantized.apply(
            ids,
            h.weight_packed,
            h.weight_scale,
            h.weight_zero_point,
            h.weight_offset,
            h.in_features,
            h.bits,
            h.block_size,
        )
        return out * self.embed_scale if self.embed_scale != 1.0 else out


class BlockEmbedding(SharedEmbedding):
    """A word embedding with block-quantized rows of its own (an untied table whose GGUF blocks are kept exactly),
    read like a shared one; the table is a child module, so its codes are saved under the embedding's name."""

    def __init__(self, table: WeightOnlyLinear) -> None:
        super().__init__(table)
        self.table = table

    @property
    def head(self) -> WeightOnlyLinear:
        return self.table


class _GatherBlockQuantized(torch.autograd.Function):
    """Rows of a block-quantized table, dequantized; exported as onnxruntime's GatherBlockQuantized (+ the rows'
    block offsets, gathered and added, when the table has them)."""

    @staticmethod
    def forward(
        ctx: Any,
        ids: torch.Tensor,
        packed: torch.Tensor,
        scales: torch.Tensor,
        zero_points: torch.Tensor | None,
        offset: torch.Tensor | None,
        k: int,
        bits: int,
        block_size: int,
    ) -> torch.Tensor:
        flat = ids.reshape(-1)
        zp = zero_points[flat] if zero_points is not None else None
        rows = dequantize_packed(packed[flat], scales[flat], zp, k, bits, None if offset is None else offset[flat])
        return rows.reshape(*ids.shape, k)

    @staticmethod
    def symbolic(
        g: Any,
        ids: Any,
        packed: Any,
        scales: Any,
        zero_points: Any,
        offset: Any,
        k: int,
        bits: int,
        block_size: int,
    ) -> Any:
        shape = g.op("Constant", value_t=torch.tensor([0, -1], dtype=torch.int64))  # [N, K·bits/8] bytes
        data = g.op("Reshape", packed, shape)
        inputs = [data, ids, scales] + ([zero_points] if zero_points is not None else [])
        out = g.op(
            "com.microsoft::GatherBlockQuantized",
            *inputs,
            bits_i=bits,
            block_size_i=block_size,
            gather_axis_i=0,
            quantize_axis_i=1,
        )
        if offset is not None:  # [*ids, blocks] offsets, each repeated over its block's inputs
            rows = g.op(
                "Unsqueeze", g.op("Gather", offset, ids, axis_i=0), g.op("Constant", value_t=torch.tensor([-1]))
            )
            ones = g.op("Constant", value_t=torch.ones(block_size))
            expanded = g.op("Mul", rows, ones)
            flat = g.op("Concat", g.op("Shape", ids), g.op("Constant", value_t=torch.tensor([k])), axis_i=0)
            out = g.op("Add", out, g.op("Reshape", expanded, flat))
        if scales.type().sizes()[-1] * block_size > k:
            # K padded up to whole blocks (a layer narrower than one block): the table rows are the first K values
            start, end, axis = (g.op("Constant", value_t=torch.tensor([v], dtype=torch.int64)) for v in (0, k, -1))
            out = g.op("Slice", out, start, end, axis)
        sizes = ids.type().varyingSizes()  # [*ids, K] in the scales' float type
        return out.setType(scales.type().with_sizes([*sizes, k]) if sizes else scales.type())
