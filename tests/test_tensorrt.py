"""The TensorRT target: the explicit-quantization checker on hand-made graphs (each rule can fail), a tiny model
quantized and exported for it (checker, zero points, CPU parity, saturation rule), its one-line refusals, fp16
exports, and make bench-gpu's GPU path with the providers' presence faked up to session creation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from llmzip.runtime.tensorrt import check_graph
from tests.conftest import invoke

N, K = 4, 8


def _graph(
    *,
    zp: np.ndarray | None = None,
    act_scale: np.ndarray | None = None,
    weight_axis: int = 1,
    extra: list[Any] | None = None,
    before_q: str = "x",
) -> Any:
    """x → QuantizeLinear → DequantizeLinear → MatMul ← DequantizeLinear(int8 weight, per-channel) → y."""
    zp = np.zeros((), np.int8) if zp is None else zp
    act_scale = np.array(0.1, np.float32) if act_scale is None else act_scale
    w_scale = np.full(N if weight_axis == 1 else K, 0.01, np.float32)
    inits = [
        numpy_helper.from_array(act_scale, "s"),
        numpy_helper.from_array(zp, "zp"),
        numpy_helper.from_array(np.ones((K, N), np.int8), "w"),
        numpy_helper.from_array(w_scale, "ws"),
        numpy_helper.from_array(np.zeros(w_scale.shape, np.int8), "wzp"),
    ]
    nodes = [
        *(extra or []),
        helper.make_node("QuantizeLinear", [before_q, "s", "zp"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="dq"),
        helper.make_node("DequantizeLinear", ["w", "ws", "wzp"], ["wd"], name="dqw", axis=weight_axis),
        helper.make_node("MatMul", ["xd", "wd"], ["y"], name="mm"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, K])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, N])
    return helper.make_graph(nodes, "g", [x], [y], inits)


def _rules(graph: Any) -> list[str]:
    return [str(f) for f in check_graph(graph)]


def test_checker_accepts_symmetric_int8_qdq() -> None:
    assert _rules(_graph()) == []


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        (_graph(zp=np.zeros((), np.uint8)), "signed int8 only"),
        (_graph(zp=np.array(3, np.int8)), "non-zero zero point"),
        (_graph(act_scale=np.full(K, 0.1, np.float32)), "per-channel scale on an activation"),
        (_graph(act_scale=np.array(-0.1, np.float32)), "positive finite"),
        (_graph(weight_axis=0), "output channels (axis 1)"),
    ],
    ids=["uint8", "nonzero-zp", "per-channel-activation", "negative-scale", "weight-axis"],
)
def test_checker_names_each_broken_qdq_rule(graph: Any, expected: str) -> None:
    rules = _rules(graph)
    assert rules and any(expected in r for r in rules), rules


def test_checker_rejects_contrib_integer_and_int8_reads() -> None:
    contrib = _graph()
    contrib.node.append(helper.make_node("MatMulIntegerToFloat", ["xq", "w", "s", "ws"], ["z"], domain="com.microsoft"))
    assert any("domain com.microsoft" in r for r in _rules(contrib))
    dynamic = _graph()
    dynamic.node.append(helper.make_node("DynamicQuantizeLinear", ["x"], ["a", "b", "c"], name="dyn"))
    assert any("integer-arithmetic" in r and "dyn" in r for r in _rules(dynamic))
    gather = _graph()  # an int8 embedding table read by Gather: int8 outside Q/DQ
    gather.input.append(helper.make_tensor_value_info("ids", TensorProto.INT64, [1]))
    gather.node.append(helper.make_node("Gather", ["w", "ids"], ["rows"], name="emb"))
    assert any(r.startswith("Gather emb: reads int8 tensor w") for r in _rules(gather))


def test_checker_keeps_softmax_float_but_lets_layernorm_output_be_quantized() -> None:
    softmax = _graph(extra=[helper.make_node("Softmax", ["x"], ["p"], name="sm")], before_q="p")
    assert any("quantized Softmax" in r for r in _rules(softmax))
    norm = _graph(
        extra=[
            helper.make_node("Constant", [], ["g"], value=numpy_helper.from_array(np.ones(K, np.float32))),
            helper.make_node("LayerNormalization", ["x", "g"], ["n"], name="ln"),
        ],
        before_q="n",
    )
    assert _rules(norm) == []


@pytest.fixture(scope="module")
def trt(tmp_path_factory: pytest.TempPathFactory, chain: dict[str, Path]) -> dict[str, Path]:
    """The tiny teacher calibrated, quantized with --target tensorrt and exported (the checker runs in export)."""
    root = tmp_path_factory.mktemp("trt")
    d = {k: root / k for k in ("calib", "int8", "onnx")}
    for args in (
        ("calibrate", chain["teacher"], "-o", d["calib"], "--num-samples", 32, "--batch-size", 16),
        ("quantize", chain["teacher"], d["calib"], "-o", d["int8"], "--target", "tensorrt"),
        ("export", d["int8"], "-o", d["onnx"]),
    ):
        result = invoke(*args)
        assert result.exit_code == 0, f"{args[0]}: {result.stderr}"
    return d


def test_tensorrt_export_passes_its_checker_with_int8_zero_points(trt: dict[str, Path]) -> None:
    metrics = json.loads((trt["onnx"] / "manifest.json").read_text())["metrics"]
    assert metrics["target"] == "tensorrt" and metrics["tensorrt_check"]["passed"], metrics["tensorrt_check"]
    model = onnx.load(str(trt["onnx"] / "model.onnx"))
    assert not [n.op_type for n in model.graph.node if n.domain not in ("", "ai.onnx")]  # no contrib ops
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq and all(inits[n.input[2]].dtype == np.int8 and not inits[n.input[2]].any() for n in qdq)
    # float embeddings (TensorRT reads int8 only through DequantizeLinear) and float attention
    assert not [
        n
        for n in model.graph.node
        if n.op_type == "Gather" and n.input[0] in inits and inits[n.input[0]].dtype == np.int8
    ]
    # onnxruntime's CPU provider runs the same file within the int8 tolerance, and the AVX2 saturation rule holds
    assert metrics["parity"]["max_abs_diff"] <= metrics["parity"]["tolerance"]
    for cpu, verdict in metrics["int8_kernels_by_cpu"]["targets"].items():
        assert verdict["saturating_matmuls"] == 0, cpu


def test_tensorrt_target_refusals(trt: dict[str, Path], chain: dict[str, Path], tmp_path: Path) -> None:
    asked = invoke(
        "quantize", chain["teacher"], trt["calib"], "-o", tmp_path / "q", "--target", "tensorrt", "--attention"
    )
    assert asked.exit_code != 0 and "drop --attention" in asked.stderr and not (tmp_path / "q").exists()
    mismatched = invoke("export", chain["int8"], "-o", tmp_path / "e", "--target", "tensorrt")
    assert mismatched.exit_code != 0 and "quantize --target tensorrt" in mismatched.stderr
    assert [line for line in mismatched.stderr.splitlines() if line.strip()] == [mismatched.stderr.strip()]
    assert not (tmp_path / "e").exists()
    fp16_int8 = invoke("export", trt["int8"], "-o", tmp_path / "f", "--fp16")
    assert fp16_int8.exit_code != 0 and not (tmp_path / "f").exists()


def test_fp16_export_is_float16_and_matches_pytorch(chain: dict[str, Path], tmp_path: Path) -> None:
    result = invoke("export", chain["teacher"], "-o", tmp_path / "fp16", "--fp16")
    assert result.exit_code == 0, result.stderr
    metrics = json.loads((tmp_path / "fp16" / "manifest.json").read_text())["metrics"]
    assert metrics["precision"] == "fp16" and metrics["parity"]["max_abs_diff"] <= metrics["parity"]["tolerance"]
    model = onnx.load(str(tmp_path / "fp16" / "model.onnx"))
    big = [i for i in model.graph.initializer if np.prod(i.dims) >= 256]
    assert big and all(i.data_type == TensorProto.FLOAT16 for i in big)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.INT64  # inputs unchanged
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT


class _FakeSession:
    """An onnxruntime session as a GPU machine would create it: records its providers, answers with zeros."""

    made: list[tuple[str, list[Any]]] = []

    def __init__(self, source: str, options: Any, providers: list[Any]) -> None:
        self.made.append((source, providers))
        self.providers = [p[0] if isinstance(p, tuple) else p for p in providers]
        self.inputs = [i.name for i in onnx.load(source, load_external_data=False).graph.input]

    def get_providers(self) -> list[str]:
        return self.providers

    def get_inputs(self) -> list[Any]:
        return [type("I", (), {"name": n})() for n in self.inputs]

    def get_outputs(self) -> list[Any]:
        return [type("O", (), {"name": "logits"})()]

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [np.zeros((next(iter(feeds.values())).shape[0], 2), np.float32)]


def test_bench_gpu_path_reaches_every_session_with_its_provider_options(
    monkeypatch: pytest.MonkeyPatch, chain: dict[str, Path], trt: dict[str, Path], tmp_path: Path
) -> None:
    import onnxruntime

    from llmzip.bench import variants
    from llmzip.benchmarks import gpu
    from llmzip.data import DEMO_DATASET

    data = tmp_path / "sst2"
    data.mkdir()
    (data / "test.tsv").write_bytes((DEMO_DATASET / "validation.tsv").read_bytes())
    gpu_providers = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: gpu_providers)
    monkeypatch.setattr(onnxruntime, "InferenceSession", _FakeSession)
    monkeypatch.setattr(gpu, "SENTENCES", data)
    torch_rows: list[tuple[str, str]] = []

    def fake_torch(artifact: Any, provider: Any, threads: int, dtype: Any) -> Any:
        torch_rows.append((provider.value, dtype.value))
        return lambda feeds: np.zeros((next(iter(feeds.values())).shape[0], 2), np.float32)

    monkeypatch.setattr(variants, "torch_runner", fake_torch)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    _FakeSession.made.clear()
    paths = {
        "teacher": chain["teacher"],
        "teacher-fp32": chain["onnx_fp32"],
        "teacher-fp16": chain["onnx_fp32"],
        "teacher-trt-int8": trt["onnx"],
        "student-fp32": chain["onnx_fp32"],
        "student-trt-int8": trt["onnx"],
    }
    assert all(gpu.missing(row) is None for row in gpu.ROWS)
    result = gpu.time_rows(gpu.ROWS, paths, tmp_path / "out", quick=True)
    assert torch_rows == [("cuda", "fp16")]
    by_first = [(Path(src).parent.name, providers[0]) for src, providers in _FakeSession.made]
    assert [p if isinstance(p, str) else p[0] for _, p in by_first] == [
        "CUDAExecutionProvider",
        "CUDAExecutionProvider",
        "TensorrtExecutionProvider",
        "TensorrtExecutionProvider",
        "TensorrtExecutionProvider",
        "TensorrtExecutionProvider",
    ]
    trt_options = [p[1] for _, p in by_first if isinstance(p, tuple)]
    assert [o["trt_int8_enable"] for o in trt_options] == ["False", "True", "False", "True"]
    engines = tmp_path / "out" / "trt-engines"
    assert all(o["trt_engine_cache_path"] == str(engines) and o["trt_fp16_enable"] == "True" for o in trt_options)
    assert all(
        "x128" in o["trt_profile_max_shapes"] and o["trt_profile_max_shapes"].count("32x128") >= 2 for o in trt_options
    )
    assert {r["name"] for r in result["variants"]} == {row.name for row in gpu.ROWS}
    assert {r["batch"] for r in result["variants"]} == set(gpu.SHAPES)


def test_session_refuses_a_silent_provider_fallback(monkeypatch: pytest.MonkeyPatch, trt: dict[str, Path]) -> None:
    import onnxruntime

    from llmzip.config import Provider
    from llmzip.errors import ProviderError
    from llmzip.runtime.sessions import session

    class FellBack(_FakeSession):
        def get_providers(self) -> list[str]:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    )
    monkeypatch.setattr(onnxruntime, "InferenceSession", FellBack)
    with pytest.raises(ProviderError, match="could not start TensorrtExecutionProvider"):
        session(trt["onnx"] / "model.onnx", provider=Provider.TENSORRT)


def test_fp16_export_of_an_external_model_folder(tiny_classifier: Path, tmp_path: Path) -> None:
    """A plain Hugging Face folder (no llmzip manifest) exports as fp16 too, with the default target."""
    result = invoke("export", tiny_classifier, "-o", tmp_path / "fp16", "--fp16")
    assert result.exit_code == 0, result.stderr
    metrics = json.loads((tmp_path / "fp16" / "manifest.json").read_text())["metrics"]
    assert metrics["precision"] == "fp16" and metrics["target"] == "onnxruntime"
