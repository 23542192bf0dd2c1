"""quantize and export: what a saturating x86 int8 kernel does to a quantized model, and the per-channel fix.

The kernel model (llmzip/quant/kernels.py) says, for given uint8 codes and int8 weights, what an AVX2 machine
computes. `Emulation` runs it inside the PyTorch fake-quantized model (forward hooks on every QuantLinear, a
kernel hook on every int8 attention), so the model's logits become the logits onnxruntime would return on that
CPU, and it records the uint8 code range each input channel really takes.

`fix_saturation` decides from what the layers really compute on the calibration samples, not from the worst
case (255·(|w₀| + |w₁|) > 32,767 holds somewhere in every per-channel layer of MiniLM): an output channel
(weight row) is fixed when one of its K pairs can exceed int16 for codes within the ranges its inputs took on
the calibration samples. The fix is 7 bits for that row only (255·(64 + 64) = 32,640 fits int16, so a fixed row
never saturates on any input); the other rows keep 8 bits, and the kernel and graph are unchanged. Ranges are
re-read after each round of fixes (a fixed row changes what later layers see) until no row is at risk, so the
calibration samples run without a single saturated pair and the emulated logits equal the unsaturated ones. An
int8 attention whose Q·Kᵀ saturated gets a 7-bit key (its scale is per tensor: one row). Measured alternatives
(README): u8×u8 weights are exact but run 8× slower on AMX machines; s8 activations fall back to a scalar kernel.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from llmzip.config import CpuTarget
from llmzip.quant.attention import AttentionQuant, key_codes
from llmzip.quant.kernels import (
    INT16_MAX,
    INT16_MIN,
    batched_saturation_excess,
    pair_bounds,
    saturation_excess,
    worst_case_pairs,
)
from llmzip.quant.modules import QuantLinear

FIX_BITS = 7
KEY_QMAX = 2 ** (FIX_BITS - 1) - 1
SCORES = ":scores"  # suffix naming an attention module's Q·Kᵀ product in reports
_MAX_ROUNDS = 8  # rounds of re-reading ranges after fixes (each fix changes what later layers see)

Batch = dict[str, torch.Tensor]


@dataclass
class LayerStats:
    """Saturation of one int8 matmul over the real (non-padding) tokens of the emulated batches."""

    pairs: int = 0  # pair sums the kernel clamped
    outputs: int = 0  # output elements that differ from the exact product
    elements: int = 0  # output elements seen
    error: float = 0.0  # Σ (dequantized saturation error)²
    signal: float = 0.0  # Σ (exact output)²
    lo: np.ndarray | None = field(default=None, repr=False)  # smallest uint8 code per input channel
    hi: np.ndarray | None = field(default=None, repr=False)  # largest

    def observe(self, codes: np.ndarray) -> None:
        lo, hi = codes.min(0), codes.max(0)
        self.lo = lo if self.lo is None else np.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else np.maximum(self.hi, hi)

    def summary(self) -> dict[str, Any]:
        ratio = self.error / self.signal if self.signal > 0 else 0.0
        return {
            "saturated_pairs": self.pairs,
            "saturated_outputs": self.outputs,
            "output_share": round(self.outputs / self.elements, 6) if self.elements else 0.0,
            "saturation_sqnr_db": round(10 * math.log10(1 / ratio), 2) if ratio > 0 else None,
        }


def _rows(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Boolean over the flattened leading dims of x: True for real tokens (all True without a matching mask)."""
    lead = x.shape[:-1]
    if mask is not None and len(lead) == 2 and tuple(lead) == tuple(mask.shape):
        return mask.reshape(-1)
    return torch.ones(int(np.prod(lead)) if lead else 1, dtype=torch.bool)


class Emulation:
    """While entered, every u8×s8 matmul of `model` records its input code ranges and, with `kernel=True`, what
    the saturating kernel does to it; with `apply=True` it also returns the kernel's result, so the logits are
    the saturating CPU's logits."""

    def __init__(self, model: nn.Module, *, kernel: bool = True, apply: bool = True) -> None:
        self.model, self.kernel, self.apply = model, kernel, apply and kernel
        self.stats: dict[str, LayerStats] = {}
        self.mask: torch.Tensor | None = None  # [batch, seq] real tokens of the current batch
        self._handles: list[Any] = []
        self._attention: list[AttentionQuant] = []

    def __enter__(self) -> Emulation:
        for name, module in self.model.named_modules():
            if isinstance(module, QuantLinear):
                self._handles.append(module.register_forward_hook(self._linear(name)))
            elif isinstance(module, AttentionQuant) and self.kernel:
                module.kernel = self._scores(name.rpartition(".")[0] + SCORES)
                self._attention.append(module)
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        for module in self._attention:
            module.kernel = None
        self._handles, self._attention = [], []

    def _linear(self, name: str) -> Callable[..., torch.Tensor | None]:
        def hook(module: QuantLinear, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor | None:
            x = args[0]
            codes, scale = module.input_codes(x)
            rows = _rows(x, self.mask)
            a = codes.reshape(-1, x.shape[-1])[rows].numpy().astype(np.int64)
            stats = self.stats.setdefault(name, LayerStats())
            if a.size:
                stats.observe(a)
            if not self.kernel:
                return None
            sat = saturation_excess(a, module.weight_q.numpy())
            error = torch.from_numpy(sat.excess.astype(np.float64)) * (scale.double() * module.weight_scale.double())
            flat = out.reshape(-1, out.shape[-1])
            stats.pairs += sat.pairs
            stats.outputs += sat.outputs
            stats.elements += int(sat.excess.size)
            stats.error += float(error.pow(2).sum())
            stats.signal += float(flat[rows].double().pow(2).sum())
            if not self.apply or sat.pairs == 0:
                return None
            fixed = flat.clone()
            fixed[rows] = flat[rows] - error.to(out.dtype)
            return fixed.reshape(out.shape)

        return hook

    def _scores(self, name: str) -> Callable[[AttentionQuant, torch.Tensor, torch.Tensor, float], torch.Tensor]:
        def kernel(quant: AttentionQuant, query: torch.Tensor, key_t: torch.Tensor, scaling: float) -> torch.Tensor:
            exact = torch.matmul(quant.left(query), quant.right(key_t, "key", times=scaling))
            q = torch.clamp(torch.round(query / quant.query_scale) + quant.query_zero_point.float(), 0, 255)
            codes = key_codes(quant.key_qmax)
            k = torch.clamp(torch.round(key_t / quant.key_scale), codes.qmin, codes.qmax)
            sat = batched_saturation_excess(q.numpy().astype(np.int32), k.numpy().astype(np.int32))
            error = torch.from_numpy(sat.excess.astype(np.float64)) * float(
                quant.query_scale * quant.key_scale * scaling
            )
            real = torch.ones(exact.shape, dtype=torch.bool)
            if self.mask is not None and self.mask.shape[-1] == exact.shape[-1]:
                real = (self.mask[:, None, :, None] & self.mask[:, None, None, :]).expand(exact.shape)
            stats = self.stats.setdefault(name, LayerStats())
            stats.pairs += sat.pairs  # padding rows included: a masked score never reaches the output
            stats.outputs += int(np.count_nonzero(sat.excess[real.numpy()]))
            stats.elements += int(real.sum())
            stats.error += float(error[real].pow(2).sum())
            stats.signal += float(exact[real].double().pow(2).sum())
            return exact - error.to(exact.dtype) if self.apply else exact

        return kernel


def run(model: nn.Module, batches: list[Batch], emulation: Emulation | None = None) -> torch.Tensor:
    """Logits over all batches ([rows, classes]), with `emulation` (entered) told each batch's padding mask."""
    out = []
    with torch.no_grad():
        for batch in batches:
            if emulation is not None:
                emulation.mask = batch["attention_mask"].bool()
            logits = model(**batch).logits
            out.append(logits.reshape(-1, logits.shape[-1]))
    return torch.cat(out)


def emulate(model: nn.Module, batches: list[Batch]) -> tuple[torch.Tensor, torch.Tensor, dict[str, LayerStats]]:
    """(unsaturated logits, the saturating CPU's logits, per-matmul stats) over `batches`."""
    exact = run(model, batches)
    with Emulation(model) as emulation:
        saturated = run(model, batches, emulation)
    return exact, saturated, emulation.stats


def logit_change(exact: torch.Tensor, saturated: torch.Tensor) -> dict[str, float]:
    """How far the saturating CPU's logits are from the unsaturated ones (relative to the largest |logit|)."""
    diff = float((saturated - exact).abs().max()) if exact.numel() else 0.0
    return {
        "max_abs_diff": round(diff, 6),
        "relative": round(diff / max(1.0, float(exact.abs().max())), 6),
        "argmax_agreement": round(float((saturated.argmax(-1) == exact.argmax(-1)).float().mean()), 6),
    }


def rows_at_risk(weight_q: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """[N] bool: output channels with a K pair whose sum can leave int16 for codes within [lo_k, hi_k]."""
    b = weight_q.astype(np.int64)
    lo64, hi64 = lo.astype(np.int64), hi.astype(np.int64)
    if b.shape[0] % 2:
        b = np.pad(b, ((0, 1), (0, 0)))
        lo64, hi64 = np.pad(lo64, (0, 1)), np.pad(hi64, (0, 1))
    lowest, highest = pair_bounds(b, lo64, hi64)
    return np.asarray(((highest > INT16_MAX) | (lowest < INT16_MIN)).any(0))


def widened(module: QuantLinear, lo: np.ndarray, hi: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel code ranges stretched `margin`× away from the code of 0.0 (the zero point; for dynamic
    activations, whose zero point moves, the middle of the range): held-out text reaches further than the
    calibration samples (SST-2 dev sentences are twice as long as its training phrases)."""
    shift = 128.0 if module.activation_range.qmin < 0 else 0.0  # int8 inputs run as uint8 + 128
    zero = float(module.input_zero_point) + shift if not module.dynamic else (lo + hi) / 2.0
    wide_lo = np.clip(np.floor(zero - margin * (zero - lo)), 0, 255)
    wide_hi = np.clip(np.ceil(zero + margin * (hi - zero)), 0, 255)
    return wide_lo.astype(np.int64), wide_hi.astype(np.int64)


def fixable(model: nn.Module) -> list[str]:
    """Every matmul that runs u8×s8: QuantLinear layers (int8 inputs too, see QuantLinear.input_codes) and int8
    attention Q·Kᵀ."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            names.append(name)
        elif isinstance(module, AttentionQuant):
            names.append(name.rpartition(".")[0] + SCORES)
    return names


def _key(model: nn.Module, name: str) -> AttentionQuant:
    quant = model.get_submodule(name.removesuffix(SCORES)).get_submodule("llmzip_attention")
    assert isinstance(quant, AttentionQuant)
    return quant


def _narrow_key(quant: AttentionQuant) -> None:
    with torch.no_grad():
        quant.key_scale.mul_(quant.key_qmax / KEY_QMAX)  # same calibrated range on the 7-bit grid
    quant.key_qmax = KEY_QMAX


def fix_saturation(
    model: nn.Module,
    batches: list[Batch],
    *,
    fix_all: bool,
    margin: float,
    float_weights: dict[str, torch.Tensor],
    symmetric: bool,
    on_step: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Give 7 bits to the weight rows (and attention keys) that can saturate on the calibration samples' ranges;
    with `fix_all`, to every row (NNCF's overflow_fix="enable"). Changes `model` in place; returns the report.

    `float_weights` are the smoothed fp32 weights to requantize from; a layer without one (after QAT) is
    requantized from its own 8-bit codes.
    """
    names = fixable(model)
    linears: dict[str, QuantLinear] = {}
    for name in names:
        module = model.get_submodule(name) if not name.endswith(SCORES) else None
        if isinstance(module, QuantLinear):
            linears[name] = module
    sources = {n: float_weights[n] if n in float_weights else m.stored_weight() for n, m in linears.items()}
    worst_case = sum(1 for m in linears.values() if worst_case_pairs(m.weight_q.numpy()) > 0)
    on_step(f"emulating the saturating AVX2 kernel on {len(names)} int8 matmuls")
    exact, saturated, first = emulate(model, batches)
    narrow = {n: torch.full((m.out_features,), fix_all, dtype=torch.bool) for n, m in linears.items()}
    keys = [n for n in names if n.endswith(SCORES) and (fix_all or first.get(n, LayerStats()).pairs)]
    for name in keys:
        _narrow_key(_key(model, name))
    rounds = 0
    while not fix_all and rounds < _MAX_ROUNDS:
        with Emulation(model, kernel=False) as ranges:
            run(model, batches, ranges)
        added = 0
        for name, module in linears.items():
            stats = ranges.stats.get(name)
            if stats is None or stats.lo is None or stats.hi is None:
                continue
            lo, hi = widened(module, stats.lo, stats.hi, margin)
            risk = torch.from_numpy(rows_at_risk(module.weight_q.numpy(), lo, hi))
            added += int((risk & ~narrow[name]).sum())
            narrow[name] |= risk
        rounds += 1
        on_step(f"  round {rounds}: {added} more weight rows can saturate within {margin}× the calibrated ranges")
        if not added:
            break
        _requantize(linears, sources, narrow, symmetric)
    if fix_all:
        _requantize(linears, sources, narrow, symmetric)
    on_step("verifying the fixed model under the emulated kernel")
    exact_after, saturated_after, final = emulate(model, batches)
    fixed_rows = {n: int(r.sum()) for n, r in narrow.items() if r.any()}
    return {
        "rule": "all" if fix_all else "measured",
        "margin": None if fix_all else margin,
        "fix": f"{FIX_BITS}-bit weights on the rows at risk (7-bit key for an attention Q·Kᵀ)",
        "int8_matmuls": len(names),
        "worst_case_layers": worst_case,  # Linear layers that saturate for *some* uint8 input at 8 bits
        "saturating_matmuls": sum(1 for n in names if first.get(n, LayerStats()).pairs),
        "fixed_matmuls": len(fixed_rows) + len(keys),
        "fixed_rows": sum(fixed_rows.values()),
        "total_rows": sum(m.out_features for m in linears.values()),
        "rounds": rounds,
        "logits_before": logit_change(exact, saturated),
        "logits_after": logit_change(exact_after, saturated_after),
        "saturated_pairs_after": sum(s.pairs for s in final.values()),
        "layers": {
            n: {**first[n].summary(), "fixed_rows": fixed_rows.get(n, 0), "key_bits": FIX_BITS if n in keys else 8}
            for n in names
            if n in first
        },
    }


def _requantize(
    linears: dict[str, QuantLinear],
    sources: dict[str, torch.Tensor],
    narrow: dict[str, torch.Tensor],
    symmetric: bool,
) -> None:
    for name, module in linears.items():
        if narrow[name].any():
            module.set_weight(sources[name], bits=8, symmetric=symmetric, narrow_rows=narrow[name])


def target_report(
    model: nn.Module, batches: list[Batch], quantized_for: CpuTarget
) -> tuple[dict[str, Any], torch.Tensor]:
    """export: per CPU class, whether the model's int8 matmuls saturate on `batches` and what that does to the
    logits; also returns the saturating CPU's logits (for telling a hardware mismatch from a bug)."""
    from llmzip.runtime.hardware import KERNELS, saturates

    exact, saturated, stats = emulate(model, batches)
    linears = [m for m in model.modules() if isinstance(m, QuantLinear)]
    hit = sorted(n for n, s in stats.items() if s.pairs)
    saturating = {
        "saturating_matmuls": len(hit),
        "saturated_pairs": sum(s.pairs for s in stats.values()),
        "logits": logit_change(exact, saturated),
        "matmuls": hit,
        "worst_case_layers": sum(1 for m in linears if worst_case_pairs(m.weight_q.numpy()) > 0),
    }
    targets = {
        t.value: {"kernel": KERNELS[t], **(saturating if saturates(t) else {"saturating_matmuls": 0})}
        for t in CpuTarget
        if t is not CpuTarget.NATIVE
    }
    return {"quantized_for": quantized_for.value, "u8s8_matmuls": len(fixable(model)), "targets": targets}, saturated
