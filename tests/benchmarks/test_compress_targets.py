"""bench-compress's issue-20 targets read the right rows: mean accuracies over seeds, size and speed limits."""

from __future__ import annotations

from typing import Any

from llmzip.benchmarks.compress import targets


def _row(name: str, acc: float, size: float, speedup: float, sd: float | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "accuracy": acc,
        "accuracy_sd": sd,
        "size_mb": size,
        "speedup_vs_teacher_torch_fp32": {"1x128": speedup, "8x128": speedup},
    }


def test_targets_on_mean_accuracies() -> None:
    teacher = {"accuracy": 0.8922, "onnx_size_mb": 91.0}
    rows = [
        _row("teacher-int8", 0.8911, 24.2, 2.0),
        _row("6L-pruned", 0.8840, 4.9, 4.1, sd=0.004),  # ≤ 5 MB at ≥ 0.883; within 1.0 pt; 18.6× smaller
        _row("6L-pruned-labels-only", 0.8700, 4.9, 4.1, sd=0.006),
        _row("3L-tiny", 0.8400, 2.0, 9.0),
    ]
    t = targets(teacher, rows)
    assert t["5mb_at_0.883"]["met"] and t["5mb_at_0.883"]["candidate"] == "6L-pruned"
    assert t["size_10x_within_1.5pt"]["met"] and t["size_10x_within_1.5pt"]["candidate"] == "6L-pruned"
    assert t["speed_4x_within_1.0pt"]["met"] and t["speed_4x_within_1.0pt"]["candidate"] == "6L-pruned"
    (pair,) = t["kd_gain_over_labels_only"]["pairs"]
    assert pair["gain_pt"] == 1.4 and pair["kd_sd"] == 0.004 and t["kd_gain_over_labels_only"]["met"]
    rows[1] = _row("6L-pruned", 0.8820, 4.9, 3.9)  # just below every line
    rows[2] = _row("6L-pruned-labels-only", 0.8750, 4.9, 4.1)  # KD +0.7 pt
    t = targets(teacher, rows)
    assert not t["5mb_at_0.883"]["met"] and not t["speed_4x_within_1.0pt"]["met"]
    assert not t["kd_gain_over_labels_only"]["met"]
