"""bench_report: paired speedup intervals, the "within noise" rule, warnings and gates, on synthetic numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmzip.bench import report as br


def _draws(n: int, seed: int, scale: float = 1.0) -> np.ndarray:
    return scale * np.random.default_rng(seed).lognormal(mean=0.0, sigma=0.2, size=n)


def test_ci_identical_distributions_is_not_significant() -> None:
    fields = br.speedup_fields(_draws(60, seed=1), _draws(60, seed=2), seed=0)
    lo, hi = fields["speedup_ci95"]
    assert lo < 1.0 < hi and not fields["speedup_significant"]
    assert lo <= fields["speedup_vs_baseline"] <= hi


def test_ci_twice_as_fast_is_significant() -> None:
    base = _draws(30, seed=1)
    fields = br.speedup_fields(base, _draws(30, seed=2, scale=0.5), seed=0)
    lo, hi = fields["speedup_ci95"]
    assert 1.5 < lo <= fields["speedup_vs_baseline"] <= hi < 2.7 and fields["speedup_significant"]
    slower = br.speedup_fields(_draws(30, seed=2, scale=0.5), base, seed=0)
    assert slower["speedup_ci95"][1] < 1.0 and slower["speedup_significant"]


def test_ci_keeps_rounds_paired() -> None:
    # Each round's machine noise hits both variants (a busy second slows the whole round): pairing cancels it.
    noise = np.random.default_rng(0).lognormal(0.0, 0.6, size=40)
    lo, hi = br.speedup_ci(2.0 * noise, 1.9 * noise)
    assert lo == pytest.approx(2.0 / 1.9) and hi == pytest.approx(2.0 / 1.9)
    unpaired_lo, unpaired_hi = br.speedup_ci(2.0 * noise, 1.9 * np.roll(noise, 7))
    assert unpaired_lo < 1.0 < unpaired_hi  # the same numbers, shuffled out of their rounds: lost in the noise


def test_ci_rejects_unpaired_arrays() -> None:
    with pytest.raises(ValueError, match="equal length"):
        br.speedup_ci(np.ones(5), np.ones(4))
    with pytest.raises(ValueError, match="equal length"):
        br.speedup_ci(np.ones(1), np.ones(1))


def _row(name: str, batch: int, p50: float, *, acc: float = 0.9, kind: str = "onnx", precision: str = "fp32") -> Any:
    return {
        "name": name,
        "kind": kind,
        "precision": precision,
        "batch": batch,
        "seq_len": 16,
        "latency_ms": {"p50": p50, "p90": p50, "p99": p50, "mean": p50, "std": 0.0, "iqr": 0.1},
        "throughput": 1.0,
        "size_mb": 1.0,
        "accuracy": acc,
        "eval_samples": 10,
    }


def _result(rows: list[dict[str, Any]], speedups: dict[tuple[str, int], tuple[float, float, float]]) -> Any:
    for r in rows:
        s, lo, hi = speedups[(r["name"], r["batch"])]
        r.update(speedup_vs_baseline=s, speedup_ci95=[lo, hi], speedup_significant=lo > 1 or hi < 1)
    return {"baseline": rows[0]["name"], "variants": rows}


def test_speedup_text() -> None:
    row = {"name": "q", "speedup_vs_baseline": 1.04, "speedup_ci95": [0.97, 1.1], "speedup_significant": False}
    assert br.speedup_text(row, "base") == br.WITHIN_NOISE == "≈1× (within noise)"
    row.update(speedup_vs_baseline=1.5, speedup_ci95=[1.4, 1.61], speedup_significant=True)
    assert br.speedup_text(row, "base") == "1.50× [1.40–1.61]"
    assert br.speedup_text({**row, "name": "base"}, "base") == "baseline"


def test_gates_name_the_failed_metric_and_batch() -> None:
    rows = [_row("fp32", 1, 2.0), _row("int8", 1, 1.0, acc=0.88), _row("fp32", 8, 8.0), _row("int8", 8, 7.0)]
    result = _result(
        rows,
        {("fp32", 1): (1, 1, 1), ("int8", 1): (2.0, 1.9, 2.1), ("fp32", 8): (1, 1, 1), ("int8", 8): (1.12, 0.9, 1.3)},
    )
    failures = br.gate_failures(result, min_speedup=1.3, max_accuracy_drop=0.5)
    assert failures == [
        f"speedup of int8 over fp32 at batch 8 is 1.12× ({br.WITHIN_NOISE}) < --min-speedup 1.3",
        "accuracy drop of int8 vs fp32 is 2.00 points (88.00% vs 90.00%) > --max-accuracy-drop 0.5",
    ]
    assert br.gate_failures(result, min_speedup=1.1, max_accuracy_drop=2.0) == []
    assert br.gate_failures(result, min_speedup=None, max_accuracy_drop=None) == []


def test_int8_slower_than_fp32_warns_only_when_measurably_slower() -> None:
    rows = [
        _row("fp32", 4, 1.0),
        _row("int8", 4, 2.0, precision="int8"),
        _row("torch", 4, 0.5, kind="torch"),
        _row("int8-fast", 4, 0.5, precision="int8"),
    ]
    fp32 = _draws(30, seed=1)
    rounds = [fp32, 2 * _draws(30, seed=2), 0.5 * fp32, 0.5 * _draws(30, seed=3)]
    warnings = br.int8_slower_warnings(rows, rounds, ["avx2"], seed=0)
    assert len(warnings) == 1
    assert "int8 int8 is slower than fp32 fp32 at batch 4" in warnings[0] and "no VNNI/AMX" in warnings[0]
    same = [fp32, _draws(30, seed=4), fp32, fp32]  # int8 within noise of fp32: no warning
    assert br.int8_slower_warnings(rows, same, ["avx512_vnni"], seed=0) == []


def test_load_and_bf16_warnings() -> None:
    quiet = {"mean_pct": 55.0, "max_pct": 60.0, "own_pct": 50.0, "other_pct": 5.0}
    busy = {"mean_pct": 95.0, "max_pct": 100.0, "own_pct": 50.0, "other_pct": 45.0}
    assert br.load_warnings(quiet, 1) == [] and br.load_warnings(None, 1) == []
    assert "45%" in br.load_warnings(busy, 1)[0]
    assert br.bf16_warnings(["fp32", "bf16"], ["avx2"], "cpu") != []
    assert br.bf16_warnings(["bf16"], ["avx512_bf16"], "cpu") == br.bf16_warnings(["bf16"], ["amx_bf16"], "cpu") == []
    assert br.bf16_warnings(["fp32"], ["avx2"], "cpu") == br.bf16_warnings(["bf16"], [], "cuda") == []


def _full_result() -> Any:
    rows = [_row("fp32", 1, 2.0), _row("int8", 1, 1.9, precision="int8")]
    result = _result(rows, {("fp32", 1): (1, 1, 1), ("int8", 1): (1.05, 0.95, 1.2)})
    result.update(
        machine={
            "cpu": "Test CPU 9000",
            "isa": ["avx2", "avx512_vnni"],
            "logical_cores": 2,
            "usable_cores": 2,
            "os": "Linux",
            "versions": {"onnxruntime": "1.0"},
            "cpu_load": {"mean_pct": 50.0, "max_pct": 60.0, "own_pct": 48.0, "other_pct": 2.0},
        },
        config={"threads": 2, "provider": "cpu", "iterations": 30, "seq_len": 16, "torch_dtype": "fp32"},
        warnings=["something to know"],
        gates={"baseline": "fp32", "candidate": "int8", "failures": ["speedup of int8 ..."]},
    )
    return result


def test_markdown_report() -> None:
    text = br.render_markdown(_full_result())
    assert "| int8 | onnx int8 | 1×16 | 1.90 |" in text and br.WITHIN_NOISE in text and "1.05×" not in text
    assert "Test CPU 9000" in text and "VNNI yes (avx512_vnni) · AMX no · AVX512-BF16 no" in text
    assert "threads: 2" in text and "onnxruntime 1.0" in text and "- something to know" in text
    assert "FAILED: speedup of int8" in text


def test_write_report_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(br.plots, "available", lambda: False)
    files, notes = br.write_report(_full_result(), tmp_path)
    assert files == [br.REPORT_FILE] and (tmp_path / br.REPORT_FILE).is_file()
    assert not (tmp_path / br.PLOT_FILE).exists() and "matplotlib" in notes[0]


def test_write_report_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    files, notes = br.write_report(_full_result(), tmp_path)
    assert files == [br.REPORT_FILE, br.PLOT_FILE] and notes == []
    assert (tmp_path / br.PLOT_FILE).read_bytes()[:4] == b"\x89PNG"
