"""How far a quantized model is from its fp32 original, measured on the calibration batches, one batch at a time.

Streaming on purpose: a causal LM's per-layer outputs and [tokens × vocabulary] logits over all calibration
windows would take tens of GB if kept; the sums behind SQNR and agreement take a few numbers per layer.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from llmzip.errors import ModelError
from llmzip.quant import qmath
from llmzip.quant.modules import QuantLinear
from llmzip.quant.weight_only import WeightOnlyLinear

Batch = dict[str, torch.Tensor]


class _Sums:
    """Σ ref², Σ (ref − got)² and the largest |ref − got|: SQNR and max error without keeping the tensors."""

    def __init__(self) -> None:
        self.signal, self.noise, self.max_abs = 0.0, 0.0, 0.0

    def add(self, ref: torch.Tensor, got: torch.Tensor) -> None:
        diff = (ref.double() - got.double()).abs()
        self.signal += float(ref.double().pow(2).sum())
        self.noise += float(diff.pow(2).sum())
        self.max_abs = max(self.max_abs, float(diff.max()) if diff.numel() else 0.0)

    def sqnr_db(self) -> float:
        return float("inf") if self.noise == 0 else 10.0 * math.log10(max(self.signal, 1e-300) / self.noise)


def _kept(out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Non-padding positions of a [batch, sequence, …] output (anything else as it is)."""
    return out[mask] if out.dim() == 3 and out.shape[:2] == mask.shape else out


def _next_token_nll(logits: torch.Tensor, batch: Batch) -> tuple[float, int]:
    """Σ −log p(token t+1 | ≤ t) over real positions of a causal LM's batch, and how many were scored."""
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    scored = mask[:, 1:] & mask[:, :-1]
    logp = torch.log_softmax(logits[:, :-1].double(), dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
    return float(-(logp[scored]).sum()), int(scored.sum())


def error_report(
    fp32: nn.Module, quantized: nn.Module, names: list[str], batches: list[Batch], *, next_token: bool = False
) -> dict[str, Any]:
    """Per-layer weight and output SQNR (output error is cumulative: everything quantized upstream counts), logit
    SQNR, max |Δlogit| and argmax agreement (per sequence for a classifier, per token for a causal LM); with
    `next_token` (a causal LM), also both models' perplexity on the batches."""
    layer_sums = {n: _Sums() for n in names}
    logit_sums = _Sums()
    agree = total = 0
    nll = {"fp32": 0.0, "quantized": 0.0}
    scored = 0
    reference: dict[str, torch.Tensor] = {}
    mask_holder: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Any:
        def hook(module: nn.Module, args: Any, out: torch.Tensor) -> None:
            reference[name] = _kept(out.detach(), mask_holder["m"])

        return hook

    def compare(name: str) -> Any:
        def hook(module: nn.Module, args: Any, out: torch.Tensor) -> None:
            layer_sums[name].add(reference.pop(name), _kept(out.detach(), mask_holder["m"]))

        return hook

    with torch.no_grad():
        for batch in batches:
            mask_holder["m"] = batch["attention_mask"].bool()
            handles = [fp32.get_submodule(n).register_forward_hook(keep(n)) for n in names]
            try:
                full = fp32(**batch).logits
                ref_logits = _kept(full, mask_holder["m"])
                if next_token:
                    value, count = _next_token_nll(full, batch)
                    nll["fp32"] += value
            finally:
                for h in handles:
                    h.remove()
            handles = [quantized.get_submodule(n).register_forward_hook(compare(n)) for n in names]
            try:
                full = quantized(**batch).logits
                got_logits = _kept(full, mask_holder["m"])
                if next_token:
                    nll["quantized"] += _next_token_nll(full, batch)[0]
                    scored += count
            finally:
                for h in handles:
                    h.remove()
            reference.clear()
            logit_sums.add(ref_logits, got_logits)
            agree += int((ref_logits.argmax(-1) == got_logits.argmax(-1)).sum())
            total += int(ref_logits.argmax(-1).numel())
    layers: dict[str, dict[str, Any]] = {}
    for name in names:
        q_layer, fp_layer = quantized.get_submodule(name), fp32.get_submodule(name)
        assert isinstance(q_layer, (QuantLinear, WeightOnlyLinear)) and isinstance(fp_layer, nn.Linear)
        layers[name] = {
            "weight_sqnr_db": round(qmath.sqnr_db(fp_layer.weight, q_layer.dequantized_weight()), 2),
            "output_sqnr_db": round(layer_sums[name].sqnr_db(), 2),
        }
        if isinstance(q_layer, QuantLinear):
            layers[name].update(input_scale=float(q_layer.input_scale), input_zero_point=int(q_layer.input_zero_point))
    perplexity = (
        {k: round(math.exp(min(v / max(1, scored), 700.0)), 4) for k, v in nll.items()} | {"tokens": scored}
        if next_token
        else None
    )
    return {
        "layers": layers,
        **({"perplexity": perplexity} if perplexity is not None else {}),
        "logits_sqnr_db": round(logit_sums.sqnr_db(), 2),
        "logits_max_abs_diff": logit_sums.max_abs,
        "argmax_agreement": agree / max(1, total),
        "samples": total,
    }


def first_collapse(layers: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """The first layer (forward order) whose output SQNR fell below half its own weight SQNR (in dB): where
    something around the quantized layers, not the rounding, went wrong; else the layer with the lowest."""
    for name, layer in layers.items():
        weight, output = float(layer["weight_sqnr_db"]), float(layer["output_sqnr_db"])
        if output < 0.5 * weight:
            return name, layer
    name = min(layers, key=lambda n: float(layers[n]["output_sqnr_db"]))
    return name, layers[name]


def perplexity_gate(report: dict[str, Any], ratio: float, windows: int, *, held: bool) -> None:
    """A causal LM whose perplexity on the measured windows rises beyond `ratio` × its fp32 model's is broken, not
    merely rounded (int4 costs percents, not multiples): fail, naming the first layer whose output SQNR collapses."""
    ppl = report["perplexity"]
    if ppl["quantized"] <= ratio * ppl["fp32"]:
        return
    name, layer = first_collapse(report["layers"])
    where = "held-back calibration windows" if held else "calibration windows"
    raise ModelError(
        f"the quantized model's perplexity on {windows} {where} is {ppl['quantized']:.4g} vs {ppl['fp32']:.4g} in "
        f"fp32 (> {ratio:g}×, --max-perplexity-ratio); output SQNR collapses first at {name} "
        f"({layer['output_sqnr_db']} dB, its weight {layer['weight_sqnr_db']} dB): something the model computes "
        "around that layer is lost, report it with the model's config"
    )
