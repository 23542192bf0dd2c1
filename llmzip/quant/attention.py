"""int8 attention matmuls (Q·Kᵀ and P·V): observed at calibration, fake-quantized in PyTorch, QDQ in ONNX.

Why through transformers' AttentionInterface instead of patching model classes: every model family that routes
attention through `ALL_ATTENTION_FUNCTIONS` (BERT, Llama, Qwen, …) calls our function with the projected query,
key and value, so one function observes and quantizes them for all of them, and a model without the interface is
simply left alone. The arithmetic is transformers' eager attention with fake quantization on the four matmul
inputs, chosen for onnxruntime's fast integer path: the left operand uint8 asymmetric (query, softmax output),
the right operand int8 symmetric (key, value). DequantizeLinear → MatMul ← DequantizeLinear fuses into
MatMulIntegerToFloat even when both operands are activations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from llmzip.quant import qmath
from llmzip.quant.modules import _FakeQuant
from llmzip.quant.observers import HistogramObserver

NAME = "llmzip_int8"  # the attention implementation name registered with transformers
ATTR = "llmzip_attention"  # child module (AttentionQuant) or observer dict attached to each attention module
TENSORS = ("query", "key", "value")
U8 = qmath.qrange(8, signed=False, symmetric=False)
S8 = qmath.qrange(8, signed=True, symmetric=True)
# What QuantizeLinear clamps an int8 activation to (the scale stays absmax / 127): the fake quantizer must agree.
S8_CLAMP = qmath.qrange(8, signed=True, symmetric=False)


def key_codes(qmax: int) -> qmath.QRange:
    """The codes a key quantized to `qmax` really takes in the graph: [-128, 127] for 8 bits (QuantizeLinear's
    saturation), [-qmax, qmax] for a 7-bit key (its Clip runs before QuantizeLinear)."""
    return S8_CLAMP if qmax >= S8.qmax else qmath.QRange(-qmax, qmax, torch.int8)


class _FakeQuantTimes(torch.autograd.Function):
    """int8 quantize → dequantize (codes per `key_codes`), times a constant: QuantizeLinear(s) → DequantizeLinear(s·c).

    Used for the key with c = the softmax scaling 1/√d: onnxruntime then runs Q·Kᵀ as one MatMulIntegerToFloat
    with no separate Mul over the [batch, heads, seq, seq] scores. A 7-bit key (qmax 63, the fix for CPUs whose
    int16 pair sums saturate) adds a Clip before QuantizeLinear, which only saturates at the int8 type's bounds.
    """

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, times: float, qmax: int
    ) -> torch.Tensor:
        return qmath.fake_quantize(x, scale, zero_point, key_codes(qmax)) * times

    @staticmethod
    def symbolic(g: Any, x: Any, scale: Any, zero_point: Any, times: float, qmax: int) -> Any:
        if qmax < S8.qmax:
            bound = g.op("Mul", scale, g.op("Constant", value_t=torch.tensor(float(qmax), dtype=torch.float32)))
            x = g.op("Clip", x, g.op("Neg", bound), bound)
        q = g.op("QuantizeLinear", x, scale, zero_point)
        scaled = g.op("Mul", scale, g.op("Constant", value_t=torch.tensor(times, dtype=torch.float32)))
        return g.op("DequantizeLinear", q, scaled, zero_point)


class AttentionQuant(nn.Module):
    """Static qparams of one attention module's matmul inputs (softmax output: fixed [0, 1] on uint8)."""

    query_scale: torch.Tensor
    query_zero_point: torch.Tensor
    key_scale: torch.Tensor
    value_scale: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        # Largest |key code|: 127, or 63 where the target CPU's int16 pair sums would saturate (quantization.json).
        self.key_qmax = S8.qmax
        # Set only while llmzip emulates a CPU's integer kernel (llmzip/quant/saturation.py): given the float
        # query, transposed key and scaling, returns the scores that kernel would compute. Never exported.
        self.kernel: Callable[[AttentionQuant, torch.Tensor, torch.Tensor, float], torch.Tensor] | None = None
        self.register_buffer("query_scale", torch.ones(()))
        self.register_buffer("query_zero_point", torch.zeros((), dtype=torch.uint8))
        self.register_buffer("key_scale", torch.ones(()))
        self.register_buffer("value_scale", torch.ones(()))

    @classmethod
    def from_ranges(cls, ranges: dict[str, tuple[float, float]]) -> AttentionQuant:
        layer = cls()
        lo, hi = ranges["query"]
        q_scale, q_zp = qmath.asymmetric_qparams(torch.tensor(lo), torch.tensor(hi), U8)
        with torch.no_grad():
            layer.query_scale.copy_(q_scale)
            layer.query_zero_point.copy_(q_zp.to(torch.uint8))
            for t in ("key", "value"):
                absmax = torch.tensor(max(abs(ranges[t][0]), abs(ranges[t][1])))
                getattr(layer, f"{t}_scale").copy_(qmath.symmetric_qparams(absmax, S8)[0])
        return layer

    def left(self, x: torch.Tensor) -> torch.Tensor:
        return _FakeQuant.apply(x, self.query_scale, self.query_zero_point, U8.qmin, U8.qmax)

    def right(self, x: torch.Tensor, which: str, times: float = 1.0) -> torch.Tensor:
        """int8 fake quantization; `times` scales the dequantized value (folded into DequantizeLinear's scale)."""
        zero = torch.zeros((), dtype=torch.int8)
        scale = getattr(self, f"{which}_scale")
        qmax = self.key_qmax if which == "key" else S8.qmax
        if times == 1.0 and qmax == S8.qmax:
            return _FakeQuant.apply(x, scale, zero, S8_CLAMP.qmin, S8_CLAMP.qmax)
        return _FakeQuantTimes.apply(x, scale, zero, times, qmax)

    def scores(self, query: torch.Tensor, key_t: torch.Tensor, scaling: float) -> torch.Tensor:
        """Q·Kᵀ·scaling on int8 operands (or what an emulated CPU kernel makes of it)."""
        if self.kernel is not None:
            return self.kernel(self, query, key_t, scaling)
        return torch.matmul(self.left(query), self.right(key_t, "key", times=scaling))

    def probabilities(self, p: torch.Tensor) -> torch.Tensor:
        scale, zero = torch.tensor(1.0 / 255.0), torch.zeros((), dtype=torch.uint8)
        return _FakeQuant.apply(p, scale, zero, U8.qmin, U8.qmax)


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Grouped-query attention: each key/value head serves `groups` query heads."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' eager attention ([batch, heads, seq, dim] in), observed or fake-quantized per ATTR."""
    groups = int(getattr(module, "num_key_value_groups", 1))
    key, value = _repeat_kv(key, groups), _repeat_kv(value, groups)
    hook = getattr(module, ATTR, None)
    if isinstance(hook, dict):  # calibration: observers per tensor + the current padding mask
        mask = hook.get("mask")
        for name, x in zip(TENSORS, (query, key, value)):
            tokens = x.detach().transpose(1, 2)  # [batch, seq, heads, dim]
            hook[name].update(tokens[mask] if mask is not None and tokens.shape[:2] == mask.shape else tokens)
    quant = hook if isinstance(hook, AttentionQuant) else None
    scaling = scaling if scaling is not None else query.size(-1) ** -0.5
    key_t = key.transpose(2, 3)
    if quant is not None:  # quantize after the transpose (DQ must feed the MatMul); the scaling rides on K's scale
        weights = quant.scores(query, key_t, float(scaling))
    else:
        weights = torch.matmul(query, key_t) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask[:, :, :, : key.shape[-2]]
    weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    probs, value_q = (quant.probabilities(weights), quant.right(value, "value")) if quant else (weights, value)
    out = torch.matmul(probs, value_q).transpose(1, 2).contiguous()
    return out, weights


def register() -> None:
    """Make NAME a valid attn_implementation: our function, with eager's additive float mask."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(NAME, attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, eager_mask)


def _calls_attention(module: nn.Module) -> bool:
    """An attention module in transformers' sense: it holds the query and key projections it feeds us."""
    children = dict(module.named_children())
    return any(k in children for k in ("query", "q_proj")) and any(k in children for k in ("key", "k_proj"))


def attention_module_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if m is not model and _calls_attention(m)]


class Observing:
    """Query/key/value histograms of every attention module, recorded while the model runs (see `observing`)."""

    def __init__(self, names: list[str], bins: int) -> None:
        self.entries: dict[str, dict[str, Any]] = {n: {t: HistogramObserver(bins) for t in TENSORS} for n in names}

    def set_mask(self, mask: torch.Tensor | None) -> None:
        """Padding positions of the next batch ([batch, seq] bool), excluded like they are for Linear inputs."""
        for entry in self.entries.values():
            entry["mask"] = mask

    def observers(self) -> dict[str, HistogramObserver]:
        return {f"{n}:{t}": e[t] for n, e in self.entries.items() for t in TENSORS}


@contextmanager
def observing(model: Any, bins: int) -> Iterator[Observing]:
    """While active, every attention call feeds its query/key/value into histograms (nothing else changes)."""
    register()
    previous = model.config._attn_implementation
    names = attention_module_names(model)
    state = Observing(names, bins)
    for name in names:
        object.__setattr__(model.get_submodule(name), ATTR, state.entries[name])
    model.set_attn_implementation(NAME)
    try:
        yield state
    finally:
        for name in names:
            object.__delattr__(model.get_submodule(name), ATTR)
        model.set_attn_implementation(previous)


def attach(model: Any, quants: dict[str, AttentionQuant]) -> None:
    """Give each named attention module its qparams and switch the model to the quantized attention function."""
    register()
    for name, quant in quants.items():
        model.get_submodule(name).add_module(ATTR, quant)
    model.set_attn_implementation(NAME)
