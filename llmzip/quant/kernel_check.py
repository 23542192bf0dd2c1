"""Check the kernel model (llmzip/quant/kernels.py) against the onnxruntime kernels of the CPU this runs on.

    python -m llmzip.quant.kernel_check                                   # this CPU's kernels
    qemu-x86_64 -cpu Haswell-v4 .venv/bin/python -m llmzip.quant.kernel_check   # AVX2 without VNNI, on any x86

QEMU's user-mode emulator executes onnxruntime's real AVX2 code (TCG has AVX2 but no AVX-512/VNNI, so MLAS
dispatches to its AVX2 kernels), which lets a VNNI or AMX machine run what an AVX2 machine runs. Prints one JSON
object: per case, how many outputs onnxruntime computed differently from the model ("model_mismatches", must be
0 everywhere) and from the exact product ("saturated_outputs": > 0 only on a saturating CPU).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np

from llmzip.quant.kernels import avx2_u8s8_matmul, batched_saturation_excess, exact_matmul


def _session(nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any]) -> Any:
    from onnx import helper

    from llmzip.runtime.sessions import session as ort_session

    graph = helper.make_graph(nodes, "kernel_check", inputs, outputs, inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 8
    return ort_session(model.SerializeToString(), threads=1)


def _matmul_integer(a: np.ndarray, b: np.ndarray, a_zero: int | None, *, constant_b: bool = True) -> np.ndarray:
    from onnx import TensorProto, helper, numpy_helper

    def info(name: str, x: np.ndarray) -> Any:
        kind = TensorProto.UINT8 if x.dtype == np.uint8 else TensorProto.INT8
        return helper.make_tensor_value_info(name, kind, list(x.shape))

    inits = [numpy_helper.from_array(b, "B")] if constant_b else []
    names = ["A", "B"]
    if a_zero is not None:
        inits.append(numpy_helper.from_array(np.array(a_zero, dtype=np.uint8), "a_zero"))
        names.append("a_zero")
    inputs = [info("A", a)] + ([] if constant_b else [info("B", b)])
    out = helper.make_tensor_value_info("Y", TensorProto.INT32, None)
    session = _session([helper.make_node("MatMulInteger", names, ["Y"])], inputs, [out], inits)
    return np.asarray(session.run(None, {"A": a} if constant_b else {"A": a, "B": b})[0], dtype=np.int64)


def _matmul_integer_to_float(a: np.ndarray, b: np.ndarray, a_zero: int) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime's fused kernel (what llmzip exports) and the model's prediction of it, both float32."""
    from onnx import TensorProto, helper, numpy_helper

    n = b.shape[1]
    a_scale, b_scale = np.float32(0.013), np.linspace(0.001, 0.01, n, dtype=np.float32)
    bias = np.linspace(-1, 1, n, dtype=np.float32)
    inits = [
        numpy_helper.from_array(b, "B"),
        numpy_helper.from_array(np.array(a_scale), "a_scale"),
        numpy_helper.from_array(b_scale, "b_scale"),
        numpy_helper.from_array(np.array(a_zero, dtype=np.uint8), "a_zero"),
        numpy_helper.from_array(np.zeros(n, dtype=np.int8), "b_zero"),
        numpy_helper.from_array(bias, "bias"),
    ]
    node = helper.make_node(
        "MatMulIntegerToFloat",
        ["A", "B", "a_scale", "b_scale", "a_zero", "b_zero", "bias"],
        ["Y"],
        domain="com.microsoft",
    )
    inputs = [helper.make_tensor_value_info("A", TensorProto.UINT8, list(a.shape))]
    out = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    got = _session([node], inputs, [out], inits).run(None, {"A": a})[0]
    centered = avx2_u8s8_matmul(a, b) - a_zero * b.astype(np.int64).sum(0)
    want = (centered.astype(np.float32) * (a_scale * b_scale) + bias).astype(np.float32)
    return np.asarray(got), want


def cases() -> dict[str, dict[str, Any]]:
    """Deterministic GEMMs that saturate on AVX2: full-range codes, a zero point of 128, GEMV, BERT's FFN K."""
    rng = np.random.default_rng(20261201)
    results: dict[str, dict[str, Any]] = {}

    def record(name: str, got: np.ndarray, model: np.ndarray, exact: np.ndarray) -> None:
        results[name] = {
            "shape": list(got.shape),
            "model_mismatches": int(np.count_nonzero(got != model)),
            "saturated_outputs": int(np.count_nonzero(got != exact)),
        }

    for name, (m, k, n, zero) in {
        "full-range-odd-k": (37, 67, 29, None),
        "zero-point-128": (16, 384, 48, 128),
        "gemv-m1": (1, 384, 64, None),
        "ffn2-k1536": (8, 1536, 24, 7),
    }.items():
        a = rng.integers(0, 256, (m, k), dtype=np.uint8)
        b = rng.integers(-127, 128, (k, n)).astype(np.int8)
        shift = 0 if zero is None else zero * b.astype(np.int64).sum(0)
        got = _matmul_integer(a, b, zero)
        record(name, got, avx2_u8s8_matmul(a, b) - shift, exact_matmul(a, b) - shift)

    a = rng.integers(0, 256, (2, 3, 8, 32), dtype=np.uint8)  # activation × activation, like attention's Q·Kᵀ
    b = rng.integers(-127, 128, (2, 3, 32, 8)).astype(np.int8)
    got = _matmul_integer(a, b, None, constant_b=False)
    exact = np.einsum("...mk,...kn->...mn", a.astype(np.int64), b.astype(np.int64))
    record("batched-activations", got, exact - batched_saturation_excess(a, b).excess, exact)

    a = rng.integers(0, 256, (24, 96), dtype=np.uint8)
    b = rng.integers(-127, 128, (96, 40)).astype(np.int8)
    got_f, want_f = _matmul_integer_to_float(a, b, a_zero=140)
    exact_f = (exact_matmul(a, b) - 140 * b.astype(np.int64).sum(0)).astype(np.float32)
    exact_f = exact_f * (np.float32(0.013) * np.linspace(0.001, 0.01, 40, dtype=np.float32)) + np.linspace(
        -1, 1, 40, dtype=np.float32
    )
    results["matmul-integer-to-float"] = {
        "shape": list(got_f.shape),
        "model_mismatches": int(np.count_nonzero(~np.isclose(got_f, want_f, rtol=1e-5, atol=1e-4))),
        "saturated_outputs": int(np.count_nonzero(~np.isclose(got_f, exact_f, rtol=1e-5, atol=1e-4))),
    }
    return results


def main() -> None:
    from llmzip.runtime.hardware import this_cpu

    here = this_cpu()
    print(json.dumps({"cpu_class": here.value if here else None, "cases": cases()}, indent=1))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
