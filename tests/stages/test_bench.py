"""bench: the stable JSON schema, report.md, noise-aware speedups, CI gates, bf16 and bare ONNX variants."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llmzip.artifact import open_artifact, read_manifest
from llmzip.bench import plots
from llmzip.bench.report import PLOT_FILE, REPORT_FILE, WITHIN_NOISE
from llmzip.config import BenchConfig, DataConfig
from llmzip.errors import ArtifactError
from llmzip.runtime.machine import has_fast_bf16
from llmzip.stages import bench as stage
from tests.conftest import DEMO_VALIDATION, invoke, invoke_json

SCHEMA = {
    "name",
    "kind",
    "precision",
    "path",
    "provider",
    "threads",
    "batch",
    "seq_len",
    "latency_ms",
    "throughput",
    "size_mb",
    "accuracy",
    "eval_samples",
    "speedup_vs_baseline",
    "speedup_ci95",
    "speedup_significant",
}
QUICK = ("--data", DEMO_VALIDATION, "--batch-sizes", "1,2", "--seq-len", 16, "--iterations", 3, "--warmup", 0)


def test_schema_and_values(chain: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "bench"
    result = invoke_json(
        "bench",
        chain["teacher"],
        chain["onnx_fp32"],
        chain["onnx_int8"],
        "--data",
        DEMO_VALIDATION,
        "--batch-sizes",
        "1,4",
        "--seq-len",
        32,
        "--iterations",
        4,
        "--warmup",
        1,
        "-o",
        out,
    )
    variants = result["variants"]
    assert len(variants) == 6
    assert {(v["name"], v["batch"]) for v in variants} == {
        (n, b) for n in ("teacher", "onnx_fp32", "onnx_int8") for b in (1, 4)
    }
    for v in variants:
        assert SCHEMA <= set(v)
        assert set(v["latency_ms"]) == {"p50", "p90", "p99", "mean", "std", "iqr"}
        lo, hi = v["speedup_ci95"]
        assert lo <= hi and isinstance(v["speedup_significant"], bool)
        assert v["speedup_significant"] == (lo > 1 or hi < 1)
        if v["name"] == "teacher":  # the baseline against itself: exactly 1, never "significant"
            assert v["speedup_vs_baseline"] == 1.0 and (lo, hi) == (1.0, 1.0) and not v["speedup_significant"]
        assert 0 < v["latency_ms"]["p50"] <= v["latency_ms"]["p90"] <= v["latency_ms"]["p99"]
        assert 0.0 <= v["accuracy"] <= 1.0 and v["throughput"] > 0 and v["size_mb"] > 0
        assert v["threads"] == 1 and v["provider"] == "cpu" and v["seq_len"] == 32
    kinds = {v["name"]: v["kind"] for v in variants}
    assert kinds == {"teacher": "torch", "onnx_fp32": "onnx", "onnx_int8": "onnx"}
    acc = {v["name"]: v["accuracy"] for v in variants}
    assert acc["teacher"] == acc["onnx_fp32"]  # same model, same data: the same predictions
    m = result["machine"]
    assert m["cpu"] and m["logical_cores"] >= 1 and "onnxruntime" in m["versions"]
    assert set(m["cpu_load"]) == {"mean_pct", "max_pct", "own_pct", "other_pct"}
    assert "load_avg_1m_end" in m and isinstance(result["warnings"], list) and "gates" not in result
    assert json.loads((out / "results.json").read_text())["variants"] == variants
    manifest = read_manifest(out)
    assert manifest is not None and manifest["stage"] == "bench" and len(manifest["parents"]) == 3

    report = (out / REPORT_FILE).read_text()
    header = next(line for line in report.splitlines() if line.startswith("| variant"))
    for column in ("precision", "batch×seq", "p50", "p99", "spread (IQR)", "speedup", "size MB", "accuracy"):
        assert column in header
    rows = [line for line in report.splitlines() if line.startswith(("| teacher", "| onnx_"))]
    assert len(rows) == 6 and all("| 1×32 |" in r or "| 4×32 |" in r for r in rows)
    for v in variants:  # a speedup inside the noise is never printed as a number
        row = next(r for r in rows if r.startswith(f"| {v['name']} |") and f"| {v['batch']}×32 |" in r)
        if v["name"] != "teacher":
            assert (WITHIN_NOISE in row) == (not v["speedup_significant"])
    assert "## Machine" in report and m["cpu"] in report and "VNNI" in report and "AMX" in report
    assert "AVX512-BF16" in report and "threads: 1" in report
    assert "int8 saturates here" in header and "int8 u8×s8 kernel" in report
    sat = next(v for v in variants if v["name"] == "onnx_int8")["int8_saturation"]
    assert sat["u8s8_matmuls"] == 6 and sat["saturating_matmuls"] == 0 and not sat["saturates_here"]
    assert "int8_saturation" not in next(v for v in variants if v["name"] == "onnx_fp32")
    assert f"onnxruntime {m['versions']['onnxruntime']}" in report
    if plots.available():
        assert (out / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and result["notes"] == []
    else:
        assert not (out / PLOT_FILE).exists() and PLOT_FILE in result["notes"][0]


def test_gates(chain: dict[str, Path], tmp_path: Path) -> None:
    dirs = (chain["onnx_fp32"], chain["onnx_int8"])
    result = invoke("bench", *dirs, *QUICK, "--min-speedup", 1000, "-o", tmp_path / "fail")
    assert result.exit_code == 8
    err = " ".join(result.stderr.split())  # rich may wrap the red line
    assert "gate failed: speedup of onnx_int8 over onnx_fp32 at batch 1 is" in err and "< --min-speedup 1000" in err
    assert "at batch 2" in err  # every batch size is checked
    assert "onnx_int8" in result.stdout  # the table is printed before the gate fails the run
    written = json.loads((tmp_path / "fail" / "results.json").read_text())
    assert written["gates"]["passed"] is False and written["gates"]["candidate"] == "onnx_int8"
    assert "FAILED: speedup of onnx_int8" in (tmp_path / "fail" / REPORT_FILE).read_text()

    result = invoke("bench", *dirs, *QUICK, "--min-speedup", 0.0001, "--max-accuracy-drop", 100, "--json")
    assert result.exit_code == 0, result.stderr
    gates = json.loads(result.stdout)["gates"]
    assert gates == {
        "baseline": "onnx_fp32",
        "candidate": "onnx_int8",
        "min_speedup": 0.0001,
        "max_accuracy_drop": 100.0,
        "passed": True,
        "failures": [],
    }

    result = invoke("bench", *dirs, *QUICK, "--max-accuracy-drop", 0, "--min-speedup", 1000, "--json")
    assert result.exit_code == 8 and json.loads(result.stdout)["gates"]["passed"] is False  # --json: JSON only

    result = invoke("bench", chain["onnx_int8"], *QUICK, "--min-speedup", 1.2)
    assert result.exit_code == 2 and "at least two" in result.stderr
    result = invoke("bench", *dirs, *QUICK, "--max-accuracy-drop", -1)
    assert result.exit_code == 2 and "max_accuracy_drop" in result.stderr


def test_torch_bf16(chain: dict[str, Path]) -> None:
    result = invoke_json("bench", chain["teacher"], chain["int8"], *QUICK, "--torch-dtype", "bf16")
    by_name = {v["name"]: v for v in result["variants"]}
    assert by_name["teacher"]["kind"] == "torch" and by_name["teacher"]["precision"] == "bf16"
    assert 0.0 <= by_name["teacher"]["accuracy"] <= 1.0
    assert result["config"]["torch_dtype"] == "bf16"
    # Fake-quantized models keep fp32 scales: bf16 is not applied to them, and the result says so.
    assert by_name["int8"]["precision"] == "int8-fake-quant"
    assert any("int8: fake-quantized" in w for w in result["warnings"])
    slow_bf16 = any("no avx512_bf16/amx_bf16" in w for w in result["warnings"])
    assert slow_bf16 == (not has_fast_bf16(result["machine"]["isa"]))


def test_measure_bare_onnx_files(chain: dict[str, Path], tmp_path: Path) -> None:
    """A script's path: bare .onnx files (no manifest) + a tokenizer folder, measured next to an llmzip artifact."""
    config = BenchConfig(
        data=DataConfig(dataset=str(DEMO_VALIDATION)), batch_sizes=[2], seq_len=16, iterations=3, warmup=0
    )
    for name in ("onnx_fp32", "onnx_int8"):
        (tmp_path / name).mkdir()
        for file in chain[name].glob("model.onnx*"):
            shutil.copy(file, tmp_path / name / file.name)
    variants = [
        stage.load_variant(open_artifact(chain["teacher"], verb="bench", accepts=stage.ACCEPTS), "torch", config),
        *(
            stage.onnx_file_variant(tmp_path / n / "model.onnx", tokenizer_dir=chain["teacher"], name=n, config=config)
            for n in ("onnx_fp32", "onnx_int8")
        ),
    ]
    assert [v.precision for v in variants] == ["fp32", "fp32", "int8"]  # read from the graphs' ops
    eval_ds, _ = stage.load_eval_data(config)
    inputs = [stage.eval_inputs(v, eval_ds, config) for v in variants]
    result = stage.measure(variants, [f for f, _ in inputs], config, labels=[y for _, y in inputs])
    rows = {v["name"]: v for v in result["variants"]}
    assert result["baseline"] == "torch" and set(rows) == {"torch", "onnx_fp32", "onnx_int8"}
    assert rows["onnx_fp32"]["accuracy"] == rows["torch"]["accuracy"]  # same teacher weights, same predictions
    assert rows["onnx_int8"]["path"] == str(tmp_path / "onnx_int8" / "model.onnx")
    with pytest.raises(ArtifactError, match="no such ONNX file"):
        stage.onnx_file_variant(tmp_path / "missing.onnx", tokenizer_dir=chain["teacher"], name="x", config=config)


def test_names_and_errors(chain: dict[str, Path]) -> None:
    result = invoke("bench", chain["onnx_int8"], "--name", "a", "--name", "b", "--data", DEMO_VALIDATION)
    assert result.exit_code == 2 and "--name" in result.stderr
    result = invoke("bench", chain["calib"], "--data", DEMO_VALIDATION)
    assert result.exit_code == 3 and "is a calibrate artifact" in result.stderr


def test_missing_provider_lists_available(chain: dict[str, Path]) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    result = invoke("bench", chain["onnx_int8"], "--provider", "cuda", "--data", DEMO_VALIDATION)
    assert result.exit_code == 7
    assert "CUDAExecutionProvider" in result.stderr and "CPUExecutionProvider" in result.stderr


def test_built_in_baselines(chain: dict[str, Path]) -> None:
    result = invoke_json(
        "bench",
        chain["teacher"],
        chain["onnx_fp32"],
        chain["onnx_int8"],
        "--baseline",
        "ort-dynamic-int8",
        "--baseline",
        "torch-bf16",
        "--data",
        DEMO_VALIDATION,
        "--batch-sizes",
        "1",
        "--seq-len",
        16,
        "--iterations",
        3,
        "--warmup",
        0,
    )
    by_name = {v["name"]: v for v in result["variants"]}
    assert by_name["onnx_fp32-ort-dynamic-int8"]["precision"] == "int8"
    assert by_name["teacher-bf16"]["precision"] == "bf16"
    assert result["variants"][-1]["name"] == "onnx_int8"  # the gates' candidate is still the last directory
    bad = invoke("bench", chain["onnx_int8"], "--baseline", "tensorrt-fp16", "--data", DEMO_VALIDATION)
    assert bad.exit_code == 2 and "baselines" in bad.stderr


def test_warns_when_an_int8_variant_saturates_on_this_cpu(
    chain: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On an AVX2 host (simulated: the check itself runs the kernel model), a model quantized for VNNI saturates."""
    from llmzip.config import CpuTarget
    from llmzip.runtime import hardware

    native, onnx_dir = tmp_path / "vnni", tmp_path / "vnni-onnx"
    assert invoke("quantize", chain["student"], chain["calib"], "-o", native, "--target-cpu", "vnni").exit_code == 0
    assert invoke("export", native, "-o", onnx_dir).exit_code == 0  # on this (real) CPU parity holds
    monkeypatch.setattr(hardware, "this_cpu", lambda: CpuTarget.AVX2)
    result = invoke_json("bench", chain["onnx_int8"], onnx_dir, *QUICK)
    rows = {v["name"]: v for v in result["variants"]}
    assert not rows["onnx_int8"]["int8_saturation"]["saturates_here"]  # the portable default
    sat = rows["vnni-onnx"]["int8_saturation"]
    assert sat["saturates_here"] and sat["this_cpu"] == "avx2" and sat["saturating_matmuls"] > 0
    warning = next(w for w in result["warnings"] if "saturate" in w)
    assert "vnni-onnx" in warning and "--target-cpu any" in warning and result["machine"]["cpu_class"] == "avx2"
