"""QuantLinear: the int8 layer that PyTorch evaluates (fake-quantized) and that exports as ONNX QDQ.

Why hand-written instead of torch.ao / torchao: we need one module whose eager forward and whose ONNX graph are
the same arithmetic, with our own scales, and whose export is the QDQ pattern onnxruntime fuses into integer
kernels (QuantizeLinear → DequantizeLinear → MatMul ← DequantizeLinear(int8 initializer) becomes
MatMulIntegerToFloat / QLinearMatMul). The autograd functions carry an ONNX `symbolic` for that, and a
straight-through gradient so the same module serves quantization-aware training later.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from llmzip.errors import ConfigError
from llmzip.quant.qmath import (
    QRange,
    dequantize,
    dynamic_uint8_qparams,
    fake_quantize,
    qrange,
    quantize,
    weight_qparams,
)


class _FakeQuant(torch.autograd.Function):
    """Per-tensor activation quantize → dequantize; gradient passes through inside the clamp range (STE)."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int
    ) -> torch.Tensor:
        r = QRange(qmin, qmax, torch.uint8 if qmin == 0 else torch.int8)
        q = torch.round(x / scale) + zero_point.to(x.dtype)
        ctx.save_for_backward((q >= qmin) & (q <= qmax))
        return fake_quantize(x, scale, zero_point, r)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None

    @staticmethod
    def symbolic(g: Any, x: Any, scale: Any, zero_point: Any, qmin: int, qmax: int) -> Any:
        q = g.op("QuantizeLinear", x, scale, zero_point)
        return g.op("DequantizeLinear", q, scale, zero_point)


class _DynamicFakeQuant(torch.autograd.Function):
    """uint8 quantize → dequantize with the range of this very tensor (ONNX DynamicQuantizeLinear semantics).

    Exported as DynamicQuantizeLinear → DequantizeLinear, which onnxruntime fuses with the weight's
    DequantizeLinear and the MatMul into one DynamicQuantizeMatMul integer kernel.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        scale, zero_point = dynamic_uint8_qparams(x)
        return (torch.clamp(torch.round(x / scale) + zero_point, 0, 255) - zero_point) * scale

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad  # the range always covers x: nothing is clipped, the straight-through gradient is exact

    @staticmethod
    def symbolic(g: Any, x: Any) -> Any:
        q, scale, zero_point = g.op("DynamicQuantizeLinear", x, outputs=3)
        return g.op("DequantizeLinear", q, scale, zero_point)


class _Dequant(torch.autograd.Function):
    """int8 weight (stored [in, out]) → float; per-channel scales run along axis 1, the output features."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
        return dequantize(q, scale, zero_point)

    @staticmethod
    def symbolic(g: Any, q: Any, scale: Any, zero_point: Any) -> Any:
        return g.op("DequantizeLinear", q, scale, zero_point, axis_i=1)


class QuantLinear(nn.Module):
    """y = fq(x) @ dq(W_q) + b with static activation qparams and int8 weights.

    The weight is stored transposed ([in, out]) because that is the layout ONNX MatMul consumes: a Transpose
    between DequantizeLinear and MatMul would stop onnxruntime from fusing the pair into an integer kernel.
    """

    weight_q: torch.Tensor
    weight_scale: torch.Tensor
    weight_zero_point: torch.Tensor
    input_scale: torch.Tensor
    input_zero_point: torch.Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool,
        per_channel: bool,
        activation_signed: bool,
        smooth: bool = False,
        dynamic: bool = False,
    ) -> None:
        super().__init__()
        self.dynamic = dynamic  # activation qparams computed per call instead of fixed by calibration
        # SmoothQuant: the input is divided per channel by s (a Mul before QuantizeLinear in ONNX) and the weight
        # columns were multiplied by s before quantization, so x @ W is unchanged but x has no outlier channels.
        self.input_smooth: torch.Tensor | None
        if smooth:
            self.register_buffer("input_smooth", torch.ones(in_features))
        else:
            self.input_smooth = None
        self.in_features, self.out_features = in_features, out_features
        n = out_features if per_channel else 1
        self.register_buffer("weight_q", torch.zeros(in_features, out_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(n))
        self.register_buffer("weight_zero_point", torch.zeros(n, dtype=torch.int8))
        act_dtype = torch.int8 if activation_signed else torch.uint8
        self.register_buffer("input_scale", torch.ones(()))
        self.register_buffer("input_zero_point", torch.zeros((), dtype=act_dtype))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        # Signed activations clamp to [-128, 127], what ONNX QuantizeLinear saturates an int8 output to (their scale
        # is still absmax / 127, zero point 0): a restricted [-127, 127] clamp here would differ from onnxruntime by
        # one step on every value clipped below the calibrated range (percentile ranges clip on purpose).
        self.activation_range = qrange(8, signed=activation_signed, symmetric=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.activation_range
        if self.input_smooth is not None:
            x = x * self.input_smooth
        if self.dynamic:
            x = _DynamicFakeQuant.apply(x)
        else:
            x = _FakeQuant.apply(x, self.input_scale, self.input_zero_point, r.qmin, r.qmax)
        scale = self.weight_scale if self.weight_scale.numel() > 1 else self.weight_scale.reshape(())
        zero_point = (
            self.weight_zero_point if self.weight_zero_point.numel() > 1 else self.weight_zero_point.reshape(())
        )
        w = _Dequant.apply(self.weight_q, scale, zero_point)
        y = torch.matmul(x, w)
        return y + self.bias if self.bias is not None else y

    def set_weight(
        self, weight: torch.Tensor, *, bits: int, symmetric: bool, narrow_rows: torch.Tensor | None = None
    ) -> None:
        """Quantize a float [out, in] weight (already multiplied by the smoothing factors) into the int8 buffers.

        `narrow_rows` ([out] bool) get 7 bits on the same int8 storage: the fix for CPUs whose int16 pair sums
        saturate (255·(64 + 64) ≤ 32,767); the exported graph is unchanged apart from those rows' values. With one
        scale for the whole tensor (per-tensor), any narrow row narrows the tensor.
        """
        per_channel = self.weight_scale.numel() > 1
        w = weight.detach().float()
        shape = (-1, 1) if per_channel else ()

        def grid(b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            r = qrange(b, signed=True, symmetric=symmetric)
            scale, zero_point = weight_qparams(w, r, symmetric=symmetric, per_channel=per_channel)
            return quantize(w, scale.reshape(shape), zero_point.reshape(shape), r), scale, zero_point

        q, scale, zero_point = grid(bits)
        if narrow_rows is not None and bool(narrow_rows.any()):
            q7, scale7, zero_point7 = grid(7)
            rows = narrow_rows if per_channel else torch.ones((), dtype=torch.bool)
            q = torch.where(rows.reshape(shape) if per_channel else rows, q7, q)
            scale, zero_point = torch.where(rows, scale7, scale), torch.where(rows, zero_point7, zero_point)
        with torch.no_grad():
            self.weight_q.copy_(q.t())
            self.weight_scale.copy_(scale.reshape(-1))
            self.weight_zero_point.copy_(zero_point.reshape(-1).to(torch.int8))

    def stored_weight(self) -> torch.Tensor:
        """The float weight the int8 codes stand for, [out, in], in the smoothed input space (what set_weight takes)."""
        return dequantize(self.weight_q.t(), self.weight_scale[:, None], self.weight_zero_point[:, None])

    def input_codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The uint8 codes (as float) and the scale that onnxruntime's integer GEMM reads for input `x`.

        int8 (symmetric) inputs are returned shifted by +128: onnxruntime's QDQ optimizer turns int8 activations
        into uint8 with zero point + 128 (its "qdq_s8_to_u8" conversion) before the same u8×s8 kernel.
        """
        if self.input_smooth is not None:
            x = x * self.input_smooth
        if self.dynamic:
            scale, zero_point = dynamic_uint8_qparams(x)
        else:
            scale, zero_point = self.input_scale, self.input_zero_point.to(x.dtype)
        r = self.activation_range
        codes = torch.clamp(torch.round(x / scale) + zero_point, r.qmin, r.qmax)
        return (codes + 128 if r.qmin < 0 else codes), scale

    def dequantized_weight(self) -> torch.Tensor:
        """The weight this layer really uses on the original input, in nn.Linear's [out, in] layout."""
        w = dequantize(self.weight_q, self.weight_scale, self.weight_zero_point).t()
        return w * self.input_smooth if self.input_smooth is not None else w

    def extra_repr(self) -> str:
        kind = "per-channel" if self.weight_scale.numel() > 1 else "per-tensor"
        act = "int8" if self.activation_range.qmin < 0 else "uint8"
        mode = "dynamic" if self.dynamic else "static"
        return f"in={self.in_features}, out={self.out_features}, weight=int8 {kind}, input={act} {mode}"


def replace_linears(model: nn.Module, names: list[str], make: Any) -> None:
    """Swap the named nn.Linear submodules for `make(name, linear)`."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make(name, getattr(parent, child)))


class _GatherDequant(torch.autograd.Function):
    """Look up int8 rows, then dequantize only those rows with their per-row scales.

    Exported as Gather(int8 table) → Cast → Mul(Gather(scales)): dequantizing the whole table first
    (DequantizeLinear → Gather) would make onnxruntime expand all 30k rows to float on every call.
    """

    @staticmethod
    def forward(ctx: Any, ids: torch.Tensor, table: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        return table[ids].to(torch.float32) * scales[ids].unsqueeze(-1)

    @staticmethod
    def symbolic(g: Any, ids: Any, table: Any, scales: Any) -> Any:
        rows = g.op("Cast", g.op("Gather", table, ids, axis_i=0), to_i=1)  # 1 = FLOAT
        row_scales = g.op(
            "Unsqueeze",
            g.op("Gather", scales, ids, axis_i=0),
            g.op("Constant", value_t=torch.tensor([-1], dtype=torch.int64)),
        )
        return g.op("Mul", rows, row_scales)


class QuantEmbedding(nn.Module):
    """int8 embedding table with one symmetric scale per row (a word's vector keeps its own range)."""

    weight_q: torch.Tensor
    row_scale: torch.Tensor

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.register_buffer("weight_q", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("row_scale", torch.ones(num_embeddings))
        self.embed_scale = 1.0  # a multiplier the replaced embedding applied (see scaled_like); not stored

    @classmethod
    def from_float(cls, embedding: nn.Embedding) -> QuantEmbedding:
        weight = embedding.weight.detach().float()
        layer = cls(weight.shape[0], weight.shape[1])
        scale = torch.clamp(weight.abs().amax(1) / 127.0, min=1e-12)
        with torch.no_grad():
            layer.weight_q.copy_(torch.clamp(torch.round(weight / scale[:, None]), -127, 127).to(torch.int8))
            layer.row_scale.copy_(scale)
        return layer

    @property
    def weight(self) -> torch.Tensor:  # what transformers reads for shapes/dtypes (e.g. tied-weight checks)
        return self.weight_q.to(torch.float32) * self.row_scale[:, None]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = _GatherDequant.apply(ids, self.weight_q, self.row_scale)
        return out * self.embed_scale if self.embed_scale != 1.0 else out


def scaled_like(new: nn.Module, old: nn.Module) -> nn.Module:
    """A quantized word table keeps the multiplier the embedding it replaces applies in its forward (Gemma's
    √hidden `embed_scale`): without it the residual stream starts √hidden too small and every layer after the
    first norm-free path is wrong, while each layer's own error still looks fine."""
    scale = getattr(old, "embed_scale", None)
    if scale is not None:
        new.embed_scale = float(scale)
    return new


def select(model: nn.Module, names: list[str], exclude: list[str]) -> list[str]:
    """Drop the names an exclude entry matches: a regex on the module name, or `type:Class` on the class name of
    the module or of its parent (e.g. `type:BertOutput` keeps every FFN output projection in fp32)."""
    types = {e.removeprefix("type:") for e in exclude if e.startswith("type:")}
    try:
        patterns = [re.compile(p) for p in exclude if not p.startswith("type:")]
    except re.error as err:
        raise ConfigError(f"exclude: {err.pattern!r} is not a valid regular expression ({err})") from None

    def classes(name: str) -> set[str]:
        parent = name.rpartition(".")[0]
        return {type(model.get_submodule(name)).__name__, type(model.get_submodule(parent)).__name__}

    return [n for n in names if not any(p.search(n) for p in patterns) and not (types & classes(n))]
