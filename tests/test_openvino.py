"""The OpenVINO execution provider, added through the session factory only: refused in one line without its plugin,
and (where `llmzip[openvino]` is installed) the same logits as the CPU provider at f32 on the chain's models."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from llmzip.config import EpPrecision, Provider
from llmzip.errors import ProviderError
from llmzip.runtime import sessions
from tests.conftest import invoke

DEMO_VALIDATION = Path(__file__).resolve().parents[1] / "llmzip/resources/demo_sentiment/validation.tsv"


def test_openvino_without_its_plugin_is_refused_in_one_line(
    chain: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime_ep_openvino", None)  # an import of it raises ImportError
    sessions.openvino_cpu.cache_clear()
    try:
        result = invoke("bench", chain["onnx_int8"], "--provider", "openvino", "-o", tmp_path / "b")
    finally:
        sessions.openvino_cpu.cache_clear()
    assert result.exit_code != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error: --provider openvino needs the OpenVINO plugin")
    assert "llmzip[openvino]" in result.stderr and not (tmp_path / "b").exists()


def test_ep_precision_applies_only_to_openvino(chain: dict[str, Path]) -> None:
    result = invoke("bench", chain["onnx_int8"], "--ep-precision", "bf16")
    assert result.exit_code != 0 and "ep_precision" in result.stderr and "--provider openvino" in result.stderr


def test_openvino_f32_computes_what_the_cpu_provider_computes(chain: dict[str, Path]) -> None:
    try:
        sessions.openvino_cpu()
    except ProviderError as err:
        pytest.skip(str(err))
    path = chain["onnx_fp32"] / "model.onnx"
    cpu = sessions.session(path, threads=1)
    ov = sessions.session(path, provider=Provider.OPENVINO, threads=1, precision=EpPrecision.F32)
    assert ov.get_providers()[0] == "OpenVINOExecutionProvider"
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.integers(1, 50, size=(2, 16)).astype(np.int64) for i in cpu.get_inputs()}
    if "attention_mask" in feeds:
        feeds["attention_mask"] = np.ones((2, 16), dtype=np.int64)
    if "token_type_ids" in feeds:
        feeds["token_type_ids"] = np.zeros((2, 16), dtype=np.int64)
    want, got = cpu.run(["logits"], feeds)[0], ov.run(["logits"], feeds)[0]
    assert np.abs(want - got).max() < 1e-3


def test_export_checks_parity_on_openvino(chain: dict[str, Path], tmp_path: Path) -> None:
    try:
        sessions.openvino_cpu()
    except ProviderError as err:
        pytest.skip(str(err))
    import json

    result = invoke("export", chain["int8"], "-o", tmp_path / "ov", "--provider", "openvino")
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((tmp_path / "ov" / "manifest.json").read_text())
    assert manifest["config"]["provider"] == "openvino"
    assert manifest["metrics"]["parity"]["max_abs_diff"] <= manifest["metrics"]["parity"]["tolerance"]
