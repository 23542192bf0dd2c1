"""Graph rewrites export applies to the QDQ model for onnxruntime's CPU kernels (pure onnx protobuf edits).

Why by hand: onnxruntime fuses QuantizeLinear → DequantizeLinear → MatMul ← DequantizeLinear(int8 weight) into
MatMulIntegerToFloat but leaves the Linear's bias as a separate Add over the whole output, one more pass over
memory per layer. MatMulIntegerToFloat takes the bias as its 7th input, so writing that node ourselves folds
the Add into the GEMM's epilogue. The arithmetic is identical (x̂ @ Ŵ + b), so parity is unchanged.
"""

from __future__ import annotations

from typing import Any

MS_DOMAIN = "com.microsoft"


def fold_int8_matmul_bias(model: Any) -> int:
    """DQ(x_q) → MatMul ← DQ(W_q const), then Add(const bias)  ⇒  MatMulIntegerToFloat(x_q, W_q, …, bias).

    Returns the number of MatMuls rewritten. Dequantize nodes that feed nothing else are removed.
    """
    from onnx import helper

    graph = model.graph
    constants = {i.name for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    replace: dict[int, Any] = {}
    drop: set[int] = set()
    for node in graph.node:
        if node.op_type != "MatMul" or node.domain:
            continue
        left, right = (producer.get(name) for name in node.input)
        if left is None or right is None or not (_is_dq(left) and _is_dq(right)):
            continue
        if right.input[0] not in constants or len(right.input) != 3 or len(left.input) != 3:
            continue
        users = consumers.get(node.output[0], [])
        if len(users) != 1 or users[0].op_type != "Add":
            continue
        add = users[0]
        bias = add.input[1] if add.input[0] == node.output[0] else add.input[0]
        if bias not in constants:
            continue
        fused = helper.make_node(
            "MatMulIntegerToFloat",
            [left.input[0], right.input[0], left.input[1], right.input[1], left.input[2], right.input[2], bias],
            [add.output[0]],
            name=f"{node.name}/int8_bias",
            domain=MS_DOMAIN,
        )
        replace[id(node)] = fused
        drop.add(id(add))
        for dq in (left, right):
            if len(consumers[dq.output[0]]) == 1:
                drop.add(id(dq))
    if not replace:
        return 0
    kept = [replace.get(id(n), n) for n in graph.node if id(n) not in drop]
    del graph.node[:]
    graph.node.extend(kept)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return len(replace)


def _is_dq(node: Any) -> bool:
    return node is not None and node.op_type == "DequantizeLinear"


def fp16_initializers(model: Any, *, min_elements: int = 4096) -> int:
    """Store every large float32 initializer whose values are all exactly fp16 as fp16 behind a Cast (which
    onnxruntime folds back into a float32 constant when the session starts, so kernels see the same numbers and
    still prepack). A GGUF's scales and minimums are fp16 in the file: this keeps an exact export as small as the
    source. Returns how many initializers were converted."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    converted = 0
    casts = []
    for init in list(graph.initializer):
        if init.data_type != 1 or int(np.prod(init.dims)) < min_elements:
            continue
        value = numpy_helper.to_array(init)
        half = value.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), value):
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(half, f"{name}.fp16"))
        casts.append(helper.make_node("Cast", [f"{name}.fp16"], [name], name=f"{name}.cast", to=1))
        converted += 1
    for i, node in enumerate(casts):
        graph.node.insert(i, node)
    return converted


def inline_constant_identities(graph: Any) -> int:
    """Identity(initializer) → the initializer itself, at every reader. The legacy exporter writes an Identity for a
    buffer that several modules share (one zero-point constant read by many QuantizeLinear nodes); a runtime that
    wants Q/DQ scales and zero points as constants (TensorRT) sees a computed tensor instead. Returns the number
    of Identity nodes removed."""
    constants = {i.name for i in graph.initializer}
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.input[0] in constants}
    outputs = {o.name for o in graph.output}
    alias = {k: v for k, v in alias.items() if k not in outputs}
    if not alias:
        return 0
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    kept = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    del graph.node[:]
    graph.node.extend(kept)
    return len(alias)
