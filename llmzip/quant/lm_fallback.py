"""Perplexity-aware quantization for causal LMs: sensitivity per decoder layer, and the greedy fp32 fallback.

The classifier path (llmzip/quant/fallback.py) scores single Linear layers by accuracy; a decoder has hundreds of
Linears whose errors matter as a block, and its metric is perplexity. So the unit here is a decoder layer (all
its Linears together; the lm_head is a unit of its own), each quantized alone and scored by the perplexity of
the PyTorch model (which computes what the export computes at accuracy_level 0) on the eval split's windows.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmzip.artifact import strict_json
from llmzip.config import QuantizeConfig
from llmzip.errors import DataError
from llmzip.progress import progress
from llmzip.quant.sensitivity import with_quantized

SENSITIVITY_FILE = "sensitivity.json"
FALLBACK_FILE = "fallback.json"
DEFAULT_WINDOWS = 4


def units(names: list[str]) -> dict[str, list[str]]:
    """Linear names grouped by decoder layer (`….layers.N`); anything else (lm_head) is a unit of its own."""
    groups: dict[str, list[str]] = {}
    for name in names:
        match = re.match(r"^(.*\.layers\.\d+)\.", name)
        groups.setdefault(match.group(1) if match else name, []).append(name)
    return groups


def eval_windows(config: QuantizeConfig, tokenizer: Any) -> list[dict[str, torch.Tensor]]:
    from llmzip import data as data_mod

    d = config.data
    text, _ = data_mod.load_text(d, d.eval_split)
    chunks = data_mod.token_windows(tokenizer, text, d.max_length, d.skip_tokens)[
        : d.max_eval_samples or DEFAULT_WINDOWS
    ]
    if not chunks:
        raise DataError(f"{data_mod.dataset_location(d)} ({d.eval_split}): no window of {d.max_length} tokens")
    return [{"input_ids": torch.tensor([c]), "attention_mask": torch.ones(1, len(c), dtype=torch.long)} for c in chunks]


def perplexity(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    total, count = 0.0, 0
    with torch.inference_mode():
        for b in batches:
            scored = b["input_ids"].shape[1] - 1
            total += float(model(**b, labels=b["input_ids"]).loss) * scored
            count += scored
    return math.exp(total / count)


def memoized(make: Any) -> Any:
    """`make` computed once per layer (GPTQ codes are not cheap), a fresh copy handed out every time."""
    built: dict[str, nn.Module] = {}

    def cached(name: str, linear: nn.Linear) -> nn.Module:
        if name not in built:
            built[name] = make(name, linear)
        return copy.deepcopy(built[name])

    return cached


def perplexity_aware(
    fp32: nn.Module, names: list[str], make: Any, tokenizer: Any, config: QuantizeConfig, tmp: Path
) -> tuple[list[str], dict[str, Any]]:
    """Sensitivity of every unit (sensitivity.json) and, with max_perplexity_increase, the fewest fp32 units that
    bring the perplexity increase within it (fallback.json, every configuration tried)."""
    evaluation = eval_windows(config, tokenizer)
    make = memoized(make)
    base = perplexity(fp32, evaluation)
    groups = units(names)
    rows: list[dict[str, Any]] = []
    with progress() as bar:
        task = bar.add_task("sensitivity (one decoder layer quantized at a time)", total=len(groups), info="")
        for unit, members in groups.items():
            ppl = perplexity(with_quantized(fp32, members, make), evaluation)
            rows.append(
                {
                    "unit": unit,
                    "layers": len(members),
                    "perplexity": round(ppl, 4),
                    "increase_pct": round(100 * (ppl / base - 1), 3),
                }
            )
            bar.advance(task)
    (tmp / SENSITIVITY_FILE).write_text(
        strict_json({"fp32_perplexity": base, "windows": len(evaluation), "units": rows}, where=SENSITIVITY_FILE)
    )
    extra: dict[str, Any] = {
        "fp32_eval_perplexity": round(base, 4),
        "eval_windows": len(evaluation),
        "most_sensitive": sorted(rows, key=lambda r: -r["increase_pct"])[:5],
    }
    target = config.max_perplexity_increase
    if target is None:
        return names, extra
    order = [r["unit"] for r in sorted(rows, key=lambda r: -r["increase_pct"])]
    tried: list[dict[str, Any]] = []
    kept: list[str] = order
    for k in range(len(order) + 1):
        fp32_units = order[:k]
        quantized = [n for n in names if not any(n in groups[u] for u in fp32_units)]
        ppl = perplexity(with_quantized(fp32, quantized, make), evaluation)
        increase = 100 * (ppl / base - 1)
        tried.append(
            {
                "fp32_units": fp32_units,
                "perplexity": round(ppl, 4),
                "increase_pct": round(increase, 3),
                "meets_target": increase <= target,
            }
        )
        if increase <= target:
            kept = fp32_units
            break
    (tmp / FALLBACK_FILE).write_text(
        strict_json({"target_increase_pct": target, "tried": tried, "chosen_fp32_units": kept}, where=FALLBACK_FILE)
    )
    extra["fallback"] = {"fp32_units": kept, "met": tried[-1]["meets_target"], "configurations_tried": len(tried)}
    return [n for n in names if not any(n in groups[u] for u in kept)], extra
