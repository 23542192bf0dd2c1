"""bench: which integer matmuls of any int8 ONNX model saturate on an AVX2-class CPU, from the model's own codes.

Works on graphs llmzip did not write (onnxruntime's quantize_dynamic, optimum): every u8×s8 product is found in
the graph (MatMulInteger, MatMulIntegerToFloat, QLinearMatMul, or a MatMul between two DequantizeLinear), its
operands are read back from onnxruntime as extra graph outputs on real inputs, and the kernel model
(llmzip/quant/kernels.py) says whether the saturating kernel would change the product.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmzip.quant.kernels import batched_saturation_excess, saturation_excess, worst_case_pairs


@dataclass(frozen=True)
class IntegerMatMul:
    node: str
    a: str  # uint8 (or int8) left operand
    b: str  # int8 (or uint8) right operand


def integer_matmuls(graph: Any) -> list[IntegerMatMul]:
    producer = {out: node for node in graph.node for out in node.output}
    found = []
    for i, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{i}"
        if node.op_type in ("MatMulInteger", "MatMulIntegerToFloat"):
            found.append(IntegerMatMul(name, node.input[0], node.input[1]))
        elif node.op_type == "QLinearMatMul":
            found.append(IntegerMatMul(name, node.input[0], node.input[3]))
        elif node.op_type == "MatMul" and not node.domain:
            left, right = (producer.get(x) for x in node.input)
            if left is not None and right is not None and left.op_type == right.op_type == "DequantizeLinear":
                found.append(IntegerMatMul(name, left.input[0], right.input[0]))
    return found


def saturation_check(path: Path, feeds: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Per integer matmul: outputs the AVX2 kernel changes on `feeds` (real tokens only, where an attention_mask
    says which), the pair sums it clamps, and for constant weights whether some input could saturate at all.

    Runs the graph unoptimized (fusions would hide the operands); the codes are the same ones the optimized
    graph computes, since quantization is elementwise arithmetic that onnxruntime does not reorder.
    """
    import onnx
    from onnx import numpy_helper

    from llmzip.runtime.sessions import session as ort_session

    model = onnx.load(str(path))
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    matmuls = integer_matmuls(model.graph)
    wanted = sorted({x for m in matmuls for x in (m.a, m.b) if x not in constants})
    existing = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=x) for x in wanted if x not in existing)
    session = ort_session(model.SerializeToString(), optimize=False)
    nodes: dict[str, dict[str, Any]] = {}
    for m in matmuls:
        b = constants.get(m.b)
        nodes[m.node] = {
            "pairs": 0,
            "outputs": 0,
            "u8s8": True,
            "worst_case_pairs": worst_case_pairs(b) if b is not None and b.ndim == 2 and b.dtype == np.int8 else None,
        }
    for batch in feeds:
        values = dict(zip(wanted, session.run(wanted, batch))) if wanted else {}
        for m in matmuls:
            a, b = values.get(m.a, constants.get(m.a)), values.get(m.b, constants.get(m.b))
            entry = nodes[m.node]
            if a is None or b is None or a.dtype != np.uint8 or b.dtype != np.int8:
                entry["u8s8"] = False  # u8×u8, s8×s8 (exact on every x86 kernel) or an unexpected form
                continue
            mask = batch.get("attention_mask")
            if b.ndim == 2:
                rows = a.reshape(-1, a.shape[-1])
                if mask is not None and a.ndim == 3 and a.shape[:2] == mask.shape:
                    rows = rows[mask.reshape(-1) > 0]  # padding positions never reach an output
                sat = saturation_excess(rows, b)
                entry["pairs"] += sat.pairs
                entry["outputs"] += sat.outputs
                continue
            sat = batched_saturation_excess(a, b)
            changed = sat.excess != 0
            if mask is not None and changed.ndim == 4 and changed.shape[0] == mask.shape[0]:
                # attention scores [batch, heads, query, key]: a padded query row is never read and a padded
                # key column is masked out before the softmax, so only real × real positions count
                real = mask > 0
                if changed.shape[2] == real.shape[1]:
                    changed = changed & real[:, None, :, None]
                if changed.shape[3] == real.shape[1]:
                    changed = changed & real[:, None, None, :]
            entry["outputs"] += int(np.count_nonzero(changed))
            entry["pairs"] += sat.pairs  # over all positions (pair sums are not split by position)
    u8s8 = {k: v for k, v in nodes.items() if v["u8s8"]}
    return {
        "integer_matmuls": len(nodes),
        "u8s8_matmuls": len(u8s8),
        "saturating_matmuls": sum(1 for v in u8s8.values() if v["outputs"]),
        "saturated_outputs": sum(v["outputs"] for v in u8s8.values()),
        "worst_case_matmuls": sum(1 for v in u8s8.values() if v["worst_case_pairs"]),
        "examples": sum(next(iter(f.values())).shape[0] for f in feeds) if feeds else 0,
        "nodes": {k: {"pairs": v["pairs"], "outputs": v["outputs"]} for k, v in u8s8.items() if v["outputs"]},
    }
