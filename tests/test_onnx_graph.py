"""The bias-folding rewrite: what it folds, what it must leave alone, and that the numbers do not change."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from llmzip.onnx.graph import fold_int8_matmul_bias
from llmzip.quant.kernels import worst_case_pairs

# 7-bit weights: 255·(63 + 63) < 32,767, so the int16 pair sums of AVX2 kernels cannot saturate and the folded and
# unfolded graphs agree on every x86 CPU (with full-range weights they differ by 48% on AVX2 machines).
WEIGHT = np.random.default_rng(0).integers(-63, 64, (8, 4)).astype(np.int8)


def _graph(bias_is_constant: bool = True, extra_dq_user: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array(0.02, dtype=np.float32), "xs"),
        numpy_helper.from_array(np.array(128, dtype=np.uint8), "xz"),
        numpy_helper.from_array(WEIGHT, "w"),
        numpy_helper.from_array(np.full(4, 0.01, dtype=np.float32), "ws"),
        numpy_helper.from_array(np.zeros(4, dtype=np.int8), "wz"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])]
    if bias_is_constant:
        inits.append(numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"))
    else:
        inputs.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, [4]))
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=1),
        helper.make_node("MatMul", ["xd", "wd"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["y"]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])]
    if extra_dq_user:  # the dequantized input is also read elsewhere: that DequantizeLinear must stay
        nodes.append(helper.make_node("Relu", ["xd"], ["r"]))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [2, 8]))
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_hand_built_weight_cannot_saturate_on_any_cpu() -> None:
    assert worst_case_pairs(WEIGHT) == 0


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)  # type: ignore[no-any-return]


def test_folds_bias_into_matmulintegertofloat_with_the_same_numbers() -> None:
    x = {"x": np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)}
    plain = _graph()
    want = _run(plain, x)
    folded = _graph()
    assert fold_int8_matmul_bias(folded) == 1
    ops = Counter(n.op_type for n in folded.graph.node)
    assert ops == Counter({"QuantizeLinear": 1, "MatMulIntegerToFloat": 1})
    np.testing.assert_allclose(_run(folded, x)[0], want[0], atol=1e-5)


def test_leaves_non_constant_bias_and_keeps_shared_dequantize() -> None:
    model = _graph(bias_is_constant=False)
    assert fold_int8_matmul_bias(model) == 0
    shared = _graph(extra_dq_user=True)
    assert fold_int8_matmul_bias(shared) == 1
    ops = Counter(n.op_type for n in shared.graph.node)
    assert ops["DequantizeLinear"] == 1 and ops["Relu"] == 1  # the weight's DQ went, the shared input's stayed
    x = {"x": np.ones((2, 8), dtype=np.float32)}
    np.testing.assert_allclose(_run(shared, x)[0], _run(_graph(extra_dq_user=True), x)[0], atol=1e-5)
