"""bench: the stable JSON schema, accuracy as a fraction, provider errors that list what exists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmzip.artifact import read_manifest
from tests.conftest import DEMO_VALIDATION, invoke, invoke_json

SCHEMA = {"name", "kind", "provider", "threads", "batch", "seq_len", "latency_ms", "throughput", "size_mb", "accuracy"}


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
        assert set(v["latency_ms"]) >= {"p50", "p90", "p99"}
        assert 0 < v["latency_ms"]["p50"] <= v["latency_ms"]["p90"] <= v["latency_ms"]["p99"]
        assert 0.0 <= v["accuracy"] <= 1.0 and v["throughput"] > 0 and v["size_mb"] > 0
        assert v["threads"] == 1 and v["provider"] == "cpu" and v["seq_len"] == 32
    kinds = {v["name"]: v["kind"] for v in variants}
    assert kinds == {"teacher": "torch", "onnx_fp32": "onnx", "onnx_int8": "onnx"}
    acc = {v["name"]: v["accuracy"] for v in variants}
    assert acc["teacher"] == acc["onnx_fp32"]  # same model, same data: the same predictions
    m = result["machine"]
    assert m["cpu"] and m["logical_cores"] >= 1 and "onnxruntime" in m["versions"]
    assert json.loads((out / "results.json").read_text())["variants"] == variants
    manifest = read_manifest(out)
    assert manifest is not None and manifest["stage"] == "bench" and len(manifest["parents"]) == 3


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
