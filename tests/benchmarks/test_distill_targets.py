"""The bench-distill verdicts are computed, not typed in: check them on made-up results."""

from __future__ import annotations

from llmzip.benchmarks.distill import targets


def _student(name: str, acc: float, layers: int = 3, hidden: int = 384, step: float = 0.5) -> dict:
    return {
        "name": name,
        "accuracy": acc,
        "layers": layers,
        "hidden_size": hidden,
        "train_step_s": {"prediction": step},
    }


def test_targets_from_results() -> None:
    result = {
        "teacher": {"accuracy": 0.90, "hidden_size": 384},
        "students": [
            _student("3L-labels-only", 0.85, step=0.50),
            _student("3L-logit-kd", 0.87, step=0.52),
            _student("3L-logit+hidden+attn-kd", 0.88),
            _student("2L-logit-kd", 0.86, layers=2),
            _student("3L-h192-tinybert-2stage", 0.95, hidden=192),  # narrower: not a "3-layer" comparison
        ],
    }
    t = targets(result)
    assert t["best_3_layer"]["name"] == "3L-logit+hidden+attn-kd"
    assert abs(t["best_3_layer"]["retention"] - 0.88 / 0.90) < 1e-4 and t["best_3_layer"]["met"] is True
    assert t["kd_gain_pt"]["value"] == 3.0 and t["kd_gain_pt"]["met"] is True
    assert t["cached_kd_step_vs_plain"]["value"] == 1.04 and t["cached_kd_step_vs_plain"]["met"] is True
    result["students"][1]["train_step_s"]["prediction"] = 0.6
    assert targets(result)["cached_kd_step_vs_plain"]["met"] is False
