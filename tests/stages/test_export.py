"""export: valid ONNX, dynamic axes, int8 ops with quantize's scales, onnxruntime integer kernels, parity."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from safetensors.torch import load_file

from llmzip.artifact import open_artifact, read_manifest
from llmzip.modeling import load_model, load_tokenizer
from llmzip.onnx.export import INT8_OPS, optimized_op_counts
from tests.conftest import invoke

SENTENCES = ["an utterly charming film", "dull , slow and far too long", "fine", "the best meal i have had all year"]


def _feeds(directory: Path, texts: list[str]) -> dict[str, np.ndarray]:
    enc = load_tokenizer(directory)(texts, padding=True, return_tensors="np")
    return {k: enc[k].astype(np.int64) for k in ("input_ids", "token_type_ids", "attention_mask")}


def _ort(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]


def _torch(directory: Path, stage: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    model = load_model(open_artifact(directory, verb="test", accepts=(stage,)))
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()


def test_int8_graph_is_valid_and_carries_quantize_scales(chain: dict[str, Path]) -> None:
    model = onnx.load(str(chain["onnx_int8"] / "model.onnx"))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version >= 17
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["QuantizeLinear"] >= 1 and ops["MatMulIntegerToFloat"] == 6  # each Linear's bias folded in
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    int8_weights = [a for a in inits.values() if a.dtype == np.int8 and a.ndim == 2]
    assert len(int8_weights) == 6 + 1  # the Linear weights and the word-embedding table (int8 by default)
    # every activation scale quantize chose appears in the graph, bit for bit
    state = load_file(str(chain["int8"] / "model.safetensors"))
    graph_scalars = {float(a) for a in inits.values() if a.dtype == np.float32 and a.ndim == 0}
    graph_scalars |= {
        float(numpy_helper.to_array(a.attribute[0].t))
        for a in model.graph.node
        if a.op_type == "Constant" and a.attribute[0].t.dims == [] and a.attribute[0].t.data_type == 1
    }
    for key, value in state.items():
        if key.endswith("input_scale"):
            assert float(value) in graph_scalars, key


def test_plain_qdq_export_matches_the_folded_graph(chain: dict[str, Path], tmp_path: Path) -> None:
    result = invoke("export", chain["int8"], "-o", tmp_path / "qdq", "--plain-qdq")
    assert result.exit_code == 0, result.stderr
    plain = onnx.load(str(tmp_path / "qdq" / "model.onnx"))
    ops = Counter(n.op_type for n in plain.graph.node)
    assert ops["DequantizeLinear"] >= 12 and "MatMulIntegerToFloat" not in ops  # portable: standard ops only
    folded_ops = Counter(n.op_type for n in onnx.load(str(chain["onnx_int8"] / "model.onnx")).graph.node)
    assert folded_ops["Add"] == ops["Add"] - 6  # one bias Add per Linear gone
    feeds = _feeds(chain["onnx_int8"], SENTENCES)
    a, b = _ort(tmp_path / "qdq" / "model.onnx", feeds), _ort(chain["onnx_int8"] / "model.onnx", feeds)
    assert np.abs(a - b).max() < 1e-5


def test_onnxruntime_runs_int8_kernels(chain: dict[str, Path]) -> None:
    counts = optimized_op_counts(chain["onnx_int8"] / "model.onnx")
    assert sum(c for op, c in counts.items() if op in INT8_OPS) >= 6
    m = read_manifest(chain["onnx_int8"])
    assert m is not None and m["metrics"]["int8_kernels"] >= 6 and m["metrics"]["precision"] == "int8"


@pytest.mark.parametrize("texts", [SENTENCES, SENTENCES[:1], SENTENCES * 3])
def test_int8_parity_with_fake_quantized_torch(chain: dict[str, Path], texts: list[str]) -> None:
    feeds = _feeds(chain["onnx_int8"], texts)  # batch and sequence differ from the export example
    got, want = _ort(chain["onnx_int8"] / "model.onnx", feeds), _torch(chain["int8"], "quantize", feeds)
    assert got.shape == want.shape == (len(texts), 2)
    assert np.abs(got - want).max() < 0.05


def test_fp32_parity(chain: dict[str, Path]) -> None:
    feeds = _feeds(chain["onnx_fp32"], SENTENCES)
    got, want = _ort(chain["onnx_fp32"] / "model.onnx", feeds), _torch(chain["teacher"], "finetune", feeds)
    assert np.abs(got - want).max() < 1e-4
    m = read_manifest(chain["onnx_fp32"])
    assert m is not None and m["metrics"]["parity"]["max_abs_diff"] < 1e-3 and m["metrics"]["int8_kernels"] == 0
    assert m["parents"][0]["stage"] == "finetune"


def test_refuses_calibration_dir(chain: dict[str, Path], tmp_path: Path) -> None:
    result = invoke("export", chain["calib"], "-o", tmp_path / "x")
    assert result.exit_code == 3 and "is a calibrate artifact" in result.stderr
    result = invoke("export", chain["int8"], "-o", tmp_path / "x", "--opset", 11)
    assert result.exit_code == 2 and "opset" in result.stderr


def test_no_fp32_matmul_where_int8_was_asked_for(chain: dict[str, Path]) -> None:
    from llmzip.onnx.export import float_weight_matmuls, optimized_graph

    int8 = read_manifest(chain["onnx_int8"])
    quantized = read_manifest(chain["int8"])
    assert int8 is not None and quantized is not None
    kept = quantized["metrics"]["fp32_linear_layers"]  # the head: classifier (+ pooler)
    assert len(float_weight_matmuls(optimized_graph(chain["onnx_int8"] / "model.onnx"))) == kept
    assert int8["metrics"]["float_weight_matmuls"] == kept
    fp32 = float_weight_matmuls(optimized_graph(chain["onnx_fp32"] / "model.onnx"))
    assert len(fp32) > kept  # the check sees fp32 Linears when they are there


def test_task_accuracy_parity_in_the_manifest(chain: dict[str, Path], tmp_path: Path) -> None:
    from tests.conftest import DEMO_VALIDATION

    out = tmp_path / "acc"
    result = invoke("export", chain["int8"], "-o", out, "--data", DEMO_VALIDATION, "--max-eval-samples", 40)
    assert result.exit_code == 0, result.stderr
    m = read_manifest(out)
    assert m is not None
    acc = m["metrics"]["parity"]["task_accuracy"]
    assert acc["samples"] == 40 and 0.0 <= acc["onnx"] <= 1.0 and acc["prediction_agreement"] >= 0.9
    assert abs(acc["onnx"] - acc["pytorch"]) <= 1 - acc["prediction_agreement"] + 1e-9
    assert "task_accuracy" not in read_manifest(chain["onnx_int8"])["metrics"]["parity"]  # type: ignore[index]


def test_export_reports_per_cpu_class_whether_int8_saturates(chain: dict[str, Path]) -> None:
    m = read_manifest(chain["onnx_int8"])
    assert m is not None
    kernels = m["metrics"]["int8_kernels_by_cpu"]
    assert kernels["quantized_for"] == "any" and kernels["u8s8_matmuls"] == 6
    for target in ("any", "avx2", "avx512"):  # the portable default runs its probe sentences unsaturated
        entry = kernels["targets"][target]
        assert entry["saturating_matmuls"] == 0 and entry["logits"]["max_abs_diff"] == 0.0
        assert entry["worst_case_layers"] > 0  # although the worst case says every layer could
    for target in ("vnni", "amx"):
        assert kernels["targets"][target] == {"kernel": kernels["targets"][target]["kernel"], "saturating_matmuls": 0}


def _simulate_avx2_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """This CPU reports AVX2 without VNNI, and onnxruntime returns what the kernel model says such a CPU computes.

    The kernel model itself is checked bit for bit against onnxruntime's real AVX2 kernel in test_kernels.py.
    """
    from llmzip.config import CpuTarget
    from llmzip.quant.saturation import emulate
    from llmzip.runtime import hardware
    from llmzip.stages import export as export_stage

    real = export_stage.parity

    def on_avx2(
        path: Path, model: torch.nn.Module, feeds: dict[str, np.ndarray], provider: Any = None
    ) -> tuple[dict[str, float], Any]:
        result, _ = real(path, model, feeds)
        exact, saturated, _ = emulate(model, [{k: torch.from_numpy(v) for k, v in feeds.items()}])
        result["max_abs_diff"] = float((saturated - exact).abs().max())
        return result, saturated.numpy()

    monkeypatch.setattr(hardware, "this_cpu", lambda: CpuTarget.AVX2)
    monkeypatch.setattr(export_stage, "parity", on_avx2)


def test_a_mismatch_from_this_cpus_saturating_kernel_names_the_target_flag(
    chain: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    native = tmp_path / "vnni"
    assert invoke("quantize", chain["student"], chain["calib"], "-o", native, "--target-cpu", "vnni").exit_code == 0
    strict = tmp_path / "strict.yaml"  # the tiny model's logits barely move, so make any change a mismatch
    strict.write_text("export:\n  int8_tolerance: 1.0e-7\n")
    _simulate_avx2_host(monkeypatch)
    result = invoke("export", native, "-o", tmp_path / "onnx", "--recipe", strict)
    assert result.exit_code != 0 and not (tmp_path / "onnx").exists()
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0])
    assert "saturating int16 pairs" in errors[0] and "--target-cpu any" in errors[0] and "bug" not in errors[0]
    # The same chain quantized for any CPU (the default) passes on that host, to the same tolerance.
    assert invoke("export", chain["int8"], "-o", tmp_path / "portable", "--recipe", strict).exit_code == 0
    parity = read_manifest(tmp_path / "portable")["metrics"]["parity"]  # type: ignore[index]
    assert parity["max_abs_diff_vs_this_cpu_kernel"] == 0.0
