"""Per-layer sensitivity and accuracy-aware fallback, measured on the fake-quantized PyTorch model.

The fake-quantized model computes what onnxruntime's integer kernels compute (export checks parity), so every
configuration can be scored without exporting it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from llmzip.progress import progress
from llmzip.quant.modules import replace_linears
from llmzip.quant.qmath import sqnr_db

Batch = dict[str, torch.Tensor]
Make = Callable[[str, nn.Linear], nn.Module]


def logits(model: nn.Module, batches: list[Batch]) -> torch.Tensor:
    keys = ("input_ids", "attention_mask", "token_type_ids")
    with torch.inference_mode():
        return torch.cat([model(**{k: v for k, v in b.items() if k in keys}).logits for b in batches])


def accuracy(model: nn.Module, batches: list[Batch]) -> float:
    """The model's task metric (accuracy, entity F1) on labelled batches: the task's one implementation."""
    from llmzip.tasks import task_of

    config: Any = model.config
    id2label = {int(k): str(v) for k, v in (config.id2label or {}).items()}
    outs = [logits(model, [b]).float().numpy() for b in batches]
    return task_of(config).score(outs, [b["labels"].numpy() for b in batches], id2label)


def with_quantized(fp32: nn.Module, names: list[str], make: Make) -> nn.Module:
    model = copy.deepcopy(fp32)
    replace_linears(model, names, make)
    return model.eval()


def layer_sensitivity(
    fp32: nn.Module, names: list[str], make: Make, probe: list[Batch], evaluation: list[Batch]
) -> list[dict[str, Any]]:
    """Each layer quantized alone: logit SQNR vs fp32 on `probe`, accuracy drop on `evaluation`."""
    reference = logits(fp32, probe)
    base = accuracy(fp32, evaluation)
    rows = []
    with progress() as bar:
        task = bar.add_task("sensitivity (one layer int8 at a time)", total=len(names), info="")
        for name in names:
            model = with_quantized(fp32, [name], make)
            acc = accuracy(model, evaluation)
            rows.append(
                {
                    "layer": name,
                    "logits_sqnr_db": round(sqnr_db(reference, logits(model, probe)), 2),
                    "accuracy": round(acc, 4),
                    "accuracy_drop_pt": round(100 * (base - acc), 2),
                }
            )
            bar.advance(task)
    return rows


def fallback(
    fp32: nn.Module,
    names: list[str],
    make: Make,
    sensitivity: list[dict[str, Any]],
    evaluation: list[Batch],
    *,
    max_drop_pt: float,
) -> tuple[list[str], list[dict[str, Any]]]:
    """Greedy: keep the most sensitive layers in fp32, one more at a time, until the accuracy target holds.

    Order: largest accuracy drop first, lowest SQNR breaking ties. Returns the fp32 layers of the first
    configuration that meets the target (the one with the fewest fp32 layers, hence the fastest) and every
    configuration tried, with its accuracy, for the Pareto list.
    """
    base = accuracy(fp32, evaluation)
    order = [r["layer"] for r in sorted(sensitivity, key=lambda r: (-r["accuracy_drop_pt"], r["logits_sqnr_db"]))]
    tried: list[dict[str, Any]] = []
    for k in range(len(order) + 1):
        kept = order[:k]
        model = with_quantized(fp32, [n for n in names if n not in kept], make)
        acc = accuracy(model, evaluation)
        drop = 100 * (base - acc)
        tried.append(
            {
                "fp32_layers": kept,
                "int8_layers": len(names) - k,
                "accuracy": round(acc, 4),
                "accuracy_drop_pt": round(drop, 2),
                "meets_target": drop <= max_drop_pt,
            }
        )
        if drop <= max_drop_pt:
            return kept, tried
    return order, tried
