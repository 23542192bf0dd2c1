"""bench-embed's targets read the right rows (Spearman ×100 points, speed ratios, the load check)."""

from __future__ import annotations

from typing import Any

from llmzip.benchmarks.common import rows_by_variant
from llmzip.benchmarks.embed import targets


def _bench_rows(rows: dict[str, tuple[float, float]]) -> list[dict[str, Any]]:
    """(spearman 0–1, p50 ms at 1×128) per variant, as `measure` reports them."""
    return [
        {
            "name": name,
            "kind": "onnx",
            "precision": "int8",
            "accuracy": acc,
            "size_mb": 1.0,
            "batch": 1,
            "seq_len": 128,
            "latency_ms": {"p50": ms, "p90": ms},
            "throughput": 1000 / ms,
            "speedup_vs_baseline": 27.0 / ms,
            "speedup_ci95": [0.0, 0.0],
        }
        for name, (acc, ms) in rows.items()
    ]


def test_targets() -> None:
    measured = {
        "teacher-st-torch-fp32": (0.8200, 27.0),
        "teacher-ort-fp32": (0.8200, 27.5),
        "teacher-ort-dynamic-int8": (0.8150, 16.0),
        "teacher-llmzip-int8": (0.8160, 13.0),  # −0.4 points, 2.08× ST, faster than dynamic
        "student-llmzip-int8": (0.8010, 8.5),  # −1.9 points, 3.18×
    }
    rows = rows_by_variant({"variants": _bench_rows(measured)}, metric="spearman", scale=100.0, baseline="st")
    assert rows["teacher-llmzip-int8"]["spearman"] == 81.6 and rows["teacher-llmzip-int8"]["samples_per_s"]["1x128"]
    t = targets(rows, {"ok": True})
    assert t["int8_within_0.5_of_fp32"]["met"] and t["int8_2x_faster_than_st_torch_at_1x128"]["met"]
    assert t["int8_faster_than_quantize_dynamic"]["met"] and t["student_within_2.0_of_teacher_at_3x"]["met"]
    measured["student-llmzip-int8"] = (0.7990, 8.5)  # −2.1 points
    measured["teacher-llmzip-int8"] = (0.8140, 13.0)  # −0.6 points
    t = targets(rows_by_variant({"variants": _bench_rows(measured)}, metric="spearman", scale=100.0, baseline="st"), {})
    assert not t["int8_within_0.5_of_fp32"]["met"] and not t["student_within_2.0_of_teacher_at_3x"]["met"]
