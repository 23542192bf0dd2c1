"""TensorRT as a target: which ONNX graphs its explicit quantization accepts, and how onnxruntime's TensorRT
provider is configured to build (and cache) an int8 engine from one.

Why a checker of our own: TensorRT reports a graph it cannot take at engine-build time, on a GPU, minutes in, often
by silently running a layer in float instead. The rules below are the ones its documentation and the ONNX parser
state for explicit (Q/DQ) quantization, checked statically on the CPU machine that exports the graph:

- a QuantizeLinear/DequantizeLinear zero point is signed int8 and 0 ("Non-zero zero point is not supported");
  uint8 is not a quantized type there (only a network input/output type);
- scales are constant, positive, finite floats; an activation (non-constant) tensor has one scale (per-tensor);
  a per-channel scale belongs to a constant weight, along the GEMM's output channels;
- int8 tensors exist only between a QuantizeLinear and its DequantizeLinear, or as a constant weight read by a
  DequantizeLinear: any other reader of an int8 tensor (a Gather of an int8 table, a Cast) is rejected;
- no onnxruntime contrib ops (com.microsoft) and none of ONNX's integer-arithmetic ops (DynamicQuantizeLinear,
  MatMulInteger, QLinearMatMul, ...): TensorRT runs Q/DQ graphs only;
- llmzip's target rule on top: Softmax and LayerNormalization compute in float (no DequantizeLinear feeding them,
  no Softmax output quantized for P·V): TensorRT accepts a quantized Softmax but it costs accuracy.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# ONNX's integer-arithmetic and dynamic-quantization ops: onnxruntime CPU forms, not TensorRT's Q/DQ.
INTEGER_OPS = {
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "ConvInteger",
    "QLinearMatMul",
    "QLinearConv",
}
QDQ = {"QuantizeLinear", "DequantizeLinear"}
FLOAT_ONLY = {"Softmax", "LayerNormalization"}
GEMMS = {"MatMul", "Gemm"}  # their weight is input 1
INT8, UINT8 = 3, 2  # onnx.TensorProto data types
ENGINE_CACHE = Path.home() / ".cache" / "llmzip" / "tensorrt"


@dataclass(frozen=True)
class Finding:
    node: str
    op: str
    rule: str

    def __str__(self) -> str:
        return f"{self.op} {self.node}: {self.rule}"


class _Graph:
    """Name lookups the rules need: constants (initializers and Constant nodes), producers, consumers."""

    def __init__(self, graph: Any) -> None:
        from onnx import numpy_helper

        self.graph = graph
        self.constants: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        for n in graph.node:
            if n.op_type == "Constant":
                value = next((a.t for a in n.attribute if a.name == "value"), None)
                if value is not None:
                    self.constants[n.output[0]] = numpy_helper.to_array(value)
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list[Any]] = defaultdict(list)
        for n in graph.node:
            for i in n.input:
                self.consumers[i].append(n)
        self.types = {i.name: i.data_type for i in graph.initializer}
        for v in [*graph.value_info, *graph.input, *graph.output]:
            self.types[v.name] = v.type.tensor_type.elem_type
        for n in graph.node:
            if n.op_type == "QuantizeLinear":
                zp = self.constants.get(n.input[2]) if len(n.input) > 2 else None
                self.types[n.output[0]] = INT8 if zp is not None and zp.dtype == np.int8 else UINT8


def _axis(node: Any) -> int:
    return next((int(a.i) for a in node.attribute if a.name == "axis"), 1)


def _qdq_rules(g: _Graph, node: Any) -> list[str]:
    """Zero point, scale and pairing rules of one QuantizeLinear/DequantizeLinear."""
    broken = []
    zp = g.constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if zp is None:
        if len(node.input) < 3 or not node.input[2]:
            broken.append("no zero point: ONNX then means uint8, which TensorRT does not take; give an int8 zero 0")
        else:
            broken.append("zero point is not a constant")
    elif zp.dtype != np.int8:
        broken.append(f"{zp.dtype} zero point: TensorRT takes signed int8 only (quantize with --target tensorrt)")
    elif np.any(zp != 0):
        broken.append("non-zero zero point: TensorRT supports zero point 0 only (symmetric quantization)")
    scale = g.constants.get(node.input[1])
    if scale is None:
        broken.append("scale is not a constant")
    elif not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
        broken.append("scale is not a positive finite number")
    elif scale.size > 1 and not (node.op_type == "DequantizeLinear" and node.input[0] in g.constants):
        broken.append("per-channel scale on an activation: TensorRT takes one scale per activation tensor")
    elif scale.size > 1:
        broken += _weight_axis_rule(g, node)
    if node.op_type == "QuantizeLinear":
        readers = {c.op_type for c in g.consumers[node.output[0]]}
        if readers - {"DequantizeLinear"} or node.output[0] in {o.name for o in g.graph.output}:
            broken.append(f"quantized tensor read by {sorted(readers - {'DequantizeLinear'}) or 'the graph output'}")
    return broken


def _weight_axis_rule(g: _Graph, node: Any) -> list[str]:
    """A per-channel weight scale must run along the output channels of the GEMM that reads the weight."""
    weight = g.constants[node.input[0]]
    axis = _axis(node) % weight.ndim
    for reader in g.consumers[node.output[0]]:
        if reader.op_type not in GEMMS or list(reader.input).index(node.output[0]) != 1:
            continue
        transposed = reader.op_type == "Gemm" and any(a.name == "transB" and a.i for a in reader.attribute)
        want = (0 if transposed else 1) if reader.op_type == "Gemm" else weight.ndim - 1
        if axis != want:
            return [f"per-channel weight scale on axis {axis}: TensorRT wants the output channels (axis {want})"]
    return []


def _float_only_rule(g: _Graph, node: Any) -> list[str]:
    quantized_in = any((p := g.producer.get(i)) is not None and p.op_type == "DequantizeLinear" for i in node.input)
    # A Softmax output quantized for the P·V product is the harmful case; a LayerNorm output quantized for the next
    # GEMM's input is the ordinary Q/DQ placement.
    quantized_out = node.op_type == "Softmax" and any(
        c.op_type == "QuantizeLinear" for c in g.consumers[node.output[0]]
    )
    if quantized_in or quantized_out:
        return [f"quantized {node.op_type}: the tensorrt target keeps it float (a quantized one costs accuracy)"]
    return []


def check_graph(graph: Any) -> list[Finding]:
    """Every node of an ONNX graph that TensorRT's explicit quantization (or the tensorrt target's float rule)
    rejects, with the rule it breaks; [] for a graph it takes."""
    g = _Graph(graph)
    findings: list[Finding] = []
    for node in graph.node:
        broken: list[str] = []
        if node.domain not in ("", "ai.onnx"):
            broken.append(f"operator of domain {node.domain}: TensorRT runs standard ONNX ops only")
        elif node.op_type in INTEGER_OPS:
            broken.append("integer-arithmetic op: TensorRT's int8 is Q/DQ pairs around float ops")
        elif node.op_type in QDQ:
            broken += _qdq_rules(g, node)
        elif node.op_type in FLOAT_ONLY:
            broken += _float_only_rule(g, node)
        else:
            int8_inputs = [i for i in node.input if g.types.get(i) in (INT8, UINT8)]
            if int8_inputs:
                broken.append(f"reads int8 tensor {int8_inputs[0]}: TensorRT reads int8 only through DequantizeLinear")
        findings += [Finding(node.name or node.output[0], node.op_type, rule) for rule in broken]
    return findings


def check_file(path: Path) -> dict[str, Any]:
    """The checker's verdict on one ONNX file: what the manifest records."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    findings = check_graph(graph)
    ops = [n.op_type for n in graph.node]
    return {
        "rules": "TensorRT explicit quantization (llmzip/runtime/tensorrt.py)",
        "nodes": len(ops),
        "quantize_linear": ops.count("QuantizeLinear"),
        "dequantize_linear": ops.count("DequantizeLinear"),
        "rejected": [str(f) for f in findings],
        "passed": not findings,
    }


def provider_options(
    path: Path, *, cache_dir: Path | str | None, batch_sizes: list[int], seq_len: int
) -> dict[str, str]:
    """onnxruntime TensorRT-provider options for one ONNX file: fp16 for the float layers always, int8 when the graph
    carries Q/DQ nodes (the scales are in the graph: no calibration table), engines cached on disk, and one
    optimization profile covering every shape the caller will run (without it TensorRT rebuilds the engine for
    each new shape)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {i.name for i in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in constants]
    int8 = any(n.op_type == "QuantizeLinear" for n in graph.node)
    cache = Path(cache_dir) if cache_dir is not None else ENGINE_CACHE
    cache.mkdir(parents=True, exist_ok=True)

    def shapes(batch: int, tokens: int) -> str:
        return ",".join(f"{name}:{batch}x{tokens}" for name in inputs)

    return {
        "trt_fp16_enable": "True",
        "trt_int8_enable": str(int8),
        "trt_int8_use_native_calibration_table": "False",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache),
        "trt_profile_min_shapes": shapes(1, 1),
        "trt_profile_opt_shapes": shapes(min(batch_sizes), seq_len),
        "trt_profile_max_shapes": shapes(max(batch_sizes), seq_len),
    }
