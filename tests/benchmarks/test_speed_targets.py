"""bench-speed: verdicts computed from the measured rows, run-to-run agreement, and the per-op profile split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from llmzip.benchmarks.speed import agreement, op_profile, targets
from llmzip.modeling import load_tokenizer


def _row(name: str, batch: int, p50: float, acc: float, threads: int = 1) -> dict[str, Any]:
    return {
        "name": name,
        "batch": batch,
        "seq_len": 128,
        "threads": threads,
        "latency_ms": {"p50": p50},
        "accuracy": acc,
    }


def _rows(mine_1: float, mine_8: float) -> list[dict[str, Any]]:
    rows = []
    for batch, scale in ((1, 1.0), (8, 8.0)):
        rows += [
            _row("ort-fp32", batch, 30 * scale, 0.90),
            _row("torch-bf16", batch, 20 * scale, 0.90),
            _row("ort-dynamic-int8", batch, 13 * scale, 0.89),
            _row("optimum-dynamic-int8", batch, 12 * scale, 0.88),
            _row("llmzip-int8", batch, mine_1 if batch == 1 else mine_8, 0.898),
        ]
    return rows


def test_targets_use_the_faster_peer_and_the_gemm_ratio() -> None:
    profile = {
        "1x128": {"llmzip-int8": {"latency_over_gemm": 1.4}},
        "8x128": {"llmzip-int8": {"latency_over_gemm": 1.6}},
    }
    t = targets(_rows(9.0, 96.0), profile)
    assert t["1x128"]["best_dynamic_peer"] == "optimum-dynamic-int8"
    assert t["1x128"]["met_1.3x"] and abs(t["1x128"]["speedup_vs_best_dynamic_peer"] - 12 / 9) < 1e-3
    assert not t["8x128"]["met_1.3x"]  # 96 vs 96: no speedup
    assert t["accuracy_drop_pt"] == 0.2 and t["accuracy_within_0.5pt"]
    assert not t["met_latency_le_1.5x_gemm"]  # 8x128 is 1.6


def test_agreement_reports_the_worst_cell(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"variants": _rows(10.0, 80.0)}))
    b.write_text(json.dumps({"variants": _rows(10.5, 95.0)}))
    result = agreement(a, b)
    assert result["worst_cell"] == "llmzip-int8/1/8/128" and not result["within_10pct"]
    assert abs(result["max_rel_diff"] - 15 / 80) < 1e-3


def test_profile_splits_gemm_from_other_kernels(chain: dict[str, Path]) -> None:
    enc = load_tokenizer(chain["onnx_int8"])(["a fine film", "dull"], padding=True, return_tensors="np")
    feeds = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    p = op_profile(chain["onnx_int8"] / "model.onnx", feeds, threads=1, runs=3)
    assert p["ops_ms"]["MatMulIntegerToFloat"] > 0 and p["gemm_ms"] >= p["ops_ms"]["MatMulIntegerToFloat"]
    assert p["other_kernels_ms"] > 0 and "LayerNormalization" in p["ops_ms"]
    assert not list(chain["onnx_int8"].glob(".profile-*"))  # the profiler's trace is removed
