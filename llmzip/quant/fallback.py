"""Accuracy-aware quantization: per-layer sensitivity report and the greedy fp32 fallback with its Pareto list.

Scored on the fake-quantized PyTorch model (export checks it computes what onnxruntime computes); latency of each
tried configuration is measured on a scratch ONNX export, because the fake-quantized model's speed says nothing
about the integer kernels'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from llmzip import data as data_mod
from llmzip.artifact import strict_json
from llmzip.bench import plots
from llmzip.config import QuantizeConfig
from llmzip.progress import progress
from llmzip.quant import sensitivity

SENSITIVITY_FILE = "sensitivity.json"
FALLBACK_FILE = "fallback.json"


def eval_batches(config: QuantizeConfig, tokenizer: Any, model: Any, size: int = 64) -> list[dict[str, Any]]:
    """The eval split as labelled tensor batches, encoded by the model's task."""
    from llmzip.tasks import task_of

    d = config.data
    loaded = data_mod.load_split(d, d.eval_split, limit=d.max_eval_samples)
    assert loaded is not None
    ds, task = loaded[0], task_of(model.config)
    label2id = {str(k): int(v) for k, v in (model.config.label2id or {}).items()}
    out = []
    for i in range(0, len(ds), size):
        enc = task.encode(
            tokenizer, ds.select(range(i, min(i + size, len(ds)))), d, label2id, max_length=d.max_length, padding=True
        )
        out.append({k: torch.tensor(enc[k]) for k in enc.column_names})
    return out


def accuracy_aware(
    fp32: nn.Module,
    names: list[str],
    make: Any,
    probe: list[dict[str, Any]],
    tokenizer: Any,
    config: QuantizeConfig,
    tmp: Path,
) -> tuple[list[str], dict[str, Any]]:
    """Sensitivity report (+ PNG) and, with max_accuracy_drop, the greedy fp32 fallback and its Pareto list."""
    evaluation = eval_batches(config, tokenizer, fp32)
    base = sensitivity.accuracy(fp32, evaluation)
    rows = sensitivity.layer_sensitivity(fp32, names, make, probe, evaluation)
    (tmp / SENSITIVITY_FILE).write_text(strict_json({"fp32_accuracy": base, "layers": rows}, where=SENSITIVITY_FILE))
    if plots.available():
        plots.bars_png(
            tmp / "sensitivity.png",
            [r["layer"] for r in rows],
            [r["accuracy_drop_pt"] for r in rows],
            title="accuracy drop with only this layer int8",
            ylabel="points",
        )
    extra: dict[str, Any] = {
        "fp32_eval_accuracy": round(base, 4),
        "eval_samples": sum(len(b["labels"]) for b in evaluation),
        "most_sensitive": sorted(rows, key=lambda r: -r["accuracy_drop_pt"])[:5],
    }
    if config.max_accuracy_drop is None:
        return names, extra
    kept, tried = sensitivity.fallback(fp32, names, make, rows, evaluation, max_drop_pt=config.max_accuracy_drop)
    if config.fallback_latency:
        measure_latencies(fp32, names, make, tried, evaluation[0], tokenizer, tmp)
        meeting = [t for t in tried if t["meets_target"]]
        if meeting:  # the fastest configuration that meets the target (greedy order makes it the last tried)
            kept = min(meeting, key=lambda t: t["latency_ms"])["fp32_layers"]
    chosen = next((t for t in tried if t["fp32_layers"] == kept), tried[-1])
    (tmp / FALLBACK_FILE).write_text(
        strict_json(
            {"target_drop_pt": config.max_accuracy_drop, "tried": tried, "chosen_fp32_layers": kept}, where="fallback"
        )
    )
    extra["fallback"] = {
        "fp32_layers": kept,
        "eval_accuracy": chosen["accuracy"],
        "met": chosen["meets_target"],
        "configurations_tried": len(tried),
    }
    return [n for n in names if n not in kept], extra


def measure_latencies(
    fp32: nn.Module,
    names: list[str],
    make: Any,
    tried: list[dict[str, Any]],
    batch: dict[str, Any],
    tokenizer: Any,
    tmp: Path,
) -> None:
    """Add onnxruntime latency (1 thread, one real example) to every tried configuration, and mark the Pareto set.

    Each configuration is exported to a scratch ONNX file: the fake-quantized PyTorch model's speed says nothing
    about the integer kernels'.
    """
    from llmzip.onnx.export import for_export, input_names, ort_latency_ms, write_onnx

    inputs = input_names(tokenizer)
    feeds = {n: batch[n][:1].numpy().astype(np.int64) for n in inputs}
    scratch = tmp / ".latency.onnx"
    with progress() as bar:
        task = bar.add_task("latency of each fallback configuration", total=len(tried), info="")
        for t in tried:
            model = sensitivity.with_quantized(fp32, [n for n in names if n not in t["fp32_layers"]], make)
            for_export(model)
            write_onnx(model, inputs, feeds, scratch, opset=17, source=tmp)
            t["latency_ms"] = round(ort_latency_ms(scratch, feeds), 3)
            t["latency_input"] = f"1×{feeds[inputs[0]].shape[1]}, 1 thread, median of 30"
            bar.advance(task)
    scratch.unlink()
    for t in tried:
        t["pareto"] = not any(
            o["accuracy"] >= t["accuracy"] and o["latency_ms"] < t["latency_ms"] for o in tried if o is not t
        )
