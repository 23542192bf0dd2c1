"""Writing and inspecting ONNX graphs: what export does, and what quantize's fallback reuses to time candidates.

Kept below the stages so that both can use it (stages never import stages).
"""

from __future__ import annotations

import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from llmzip.errors import ExportError

# Ops that mean onnxruntime runs integer arithmetic (after its QDQ fusions), not float emulation of it.
INT8_OPS = {
    "MatMulIntegerToFloat",
    "QLinearMatMul",
    "MatMulInteger",
    "QGemm",
    "QAttention",
    "DynamicQuantizeMatMul",
    "QLinearAdd",
    "QLinearConv",
    "MatMulNBits",  # 4-bit weight-only: block-dequantizing GEMM (int8 compute where accuracy_level asks for it)
}


class _Logits(nn.Module):
    """Positional-input wrapper: the exporter sees exactly the tokenizer's inputs and the task's outputs (a
    `logits` output for most; each named output reads one attribute of the model's output).

    Always `.eval()` it: the exporter restores the wrapper's own mode afterwards, and a fresh module is in
    training mode, which would switch dropout on in the wrapped model for the parity check.
    """

    def __init__(self, model: nn.Module, names: list[str], attributes: list[str]) -> None:
        super().__init__()
        self.model, self.names, self.attributes = model, names, attributes

    def forward(self, *tensors: torch.Tensor) -> Any:
        out = self.model(**dict(zip(self.names, tensors)))
        values = tuple(getattr(out, a) for a in self.attributes)
        return values[0] if len(values) == 1 else values


def for_export(model: Any) -> str:
    """Switch SDPA attention to transformers' eager attention; returns the implementation exported.

    Why: the legacy exporter writes SDPA's masking as Where/IsNaN/Where around every softmax, which onnxruntime
    runs as separate kernels (about 2 ms of a 13 ms int8 MiniLM call at 1×128 on a 2-core EPYC); eager attention
    exports as MatMul → Add(mask) → Softmax → MatMul. The arithmetic is the same up to float rounding, and the
    parity check compares against the model in the mode that was exported. llmzip's int8 attention is eager-style
    already and is kept.
    """
    current = str(getattr(model.config, "_attn_implementation", "eager"))
    if current == "sdpa":
        model.set_attn_implementation("eager")
        return "eager"
    return current


def input_names(tokenizer: Any) -> list[str]:
    return [n for n in tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")]


def write_onnx(
    model: nn.Module,
    names: list[str],
    feeds: dict[str, np.ndarray],
    path: Path,
    *,
    opset: int,
    source: Path,
    outputs: list[tuple[str, str, dict[int, str]]] | None = None,
) -> None:
    """torch.onnx.export with dynamic batch and sequence axes and the task's outputs: (ONNX name, attribute of the
    model's output, dynamic axes: batch only for one vector per sequence, batch and sequence for one per token);
    default one `logits` per sequence."""
    from llmzip.quant.weight_only import WeightOnlyLinear

    example = tuple(torch.from_numpy(feeds[n][:2]) for n in names)
    # MatMulNBits (4-bit weights) lives in onnxruntime's domain; declaring it unused makes torch warn.
    custom = {"com.microsoft": 1} if any(isinstance(m, WeightOnlyLinear) for m in model.modules()) else None
    outputs = outputs or [("logits", "logits", {0: "batch"})]
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes.update({name: dict(dims) for name, _, dims in outputs})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                _Logits(model, names, [attribute for _, attribute, _ in outputs]).eval(),
                example,
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=names,
                output_names=[name for name, _, _ in outputs],
                dynamic_axes=axes,
                do_constant_folding=True,
                custom_opsets=custom,
            )
        except Exception as err:  # the exporter raises many types; the user's fix is the same
            raise ExportError(f"torch.onnx.export failed for {source}: {str(err).splitlines()[0][:300]}") from None


FLOAT_GEMMS = {"MatMul", "FusedMatMul", "Gemm", "FusedGemm"}


def optimized_graph(onnx_path: Path) -> Any:
    """The graph onnxruntime actually executes on CPU after all its fusions (via optimized_model_filepath)."""
    import onnx

    from llmzip.runtime.sessions import session

    with tempfile.TemporaryDirectory() as scratch:
        optimized = Path(scratch) / "optimized.onnx"
        session(onnx_path, optimized_path=optimized)
        return onnx.load(str(optimized), load_external_data=False).graph


def optimized_op_counts(onnx_path: Path) -> Counter[str]:
    return Counter(n.op_type for n in optimized_graph(onnx_path).node)


def float_weight_matmuls(graph: Any) -> list[str]:
    """Float GEMMs whose right operand is a constant weight: Linear layers onnxruntime runs in fp32 — not the small
    block-offset corrections (a product of block sums, a ReduceSum's output) that keep a GGUF source's blocks exact
    beside their integer kernel (llmzip/quant/weight_only.py)."""
    constants = {i.name for i in graph.initializer}
    block_sums = {o for n in graph.node if n.op_type == "ReduceSum" for o in n.output}
    return [
        n.name
        for n in graph.node
        if n.op_type in FLOAT_GEMMS and len(n.input) > 1 and n.input[1] in constants and n.input[0] not in block_sums
    ]


def ort_latency_ms(path: Path, feeds: dict[str, np.ndarray], *, iterations: int = 30, threads: int = 1) -> float:
    """Median onnxruntime CPU latency of one input (a quick probe; `llmzip bench` is the real measurement)."""
    import time

    from llmzip.bench.variants import ort_runner
    from llmzip.config import Provider

    run, _ = ort_runner(path, Provider.CPU, threads)
    times = []
    for i in range(iterations + 3):
        t0 = time.perf_counter()
        run(feeds)
        if i >= 3:  # warm-up runs are not counted
            times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))
