"""The AVX2 u8×s8 kernel model: hand-computed cases, onnxruntime's real AVX2 output, and a live check under QEMU."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llmzip.quant.kernels import (
    avx2_u8s8_matmul,
    batched_saturation_excess,
    exact_matmul,
    saturation_excess,
    worst_case_pairs,
)

RECORDED = Path(__file__).resolve().parents[1] / "data" / "avx2_matmul_integer.npz"


def _col(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int8).reshape(-1, 1)


def test_a_pair_of_full_products_saturates_at_int16_max() -> None:
    a = np.full((1, 2), 255, dtype=np.uint8)
    assert exact_matmul(a, _col(127, 127))[0, 0] == 64770
    assert avx2_u8s8_matmul(a, _col(127, 127))[0, 0] == 32767
    assert avx2_u8s8_matmul(a, _col(-128, -128))[0, 0] == -32768


def test_pairs_are_adjacent_even_odd_indices_only() -> None:
    a = np.full((1, 4), 255, dtype=np.uint8)
    # (0, 1) share a pair: clamped. (1, 2) sit in different pairs: exact.
    assert avx2_u8s8_matmul(a, _col(127, 127, 0, 0))[0, 0] == 32767
    assert avx2_u8s8_matmul(a, _col(0, 127, 127, 0))[0, 0] == 64770
    # Opposite signs within a pair never saturate; a saturated pair plus an exact one add in int32.
    assert avx2_u8s8_matmul(a, _col(127, -127, 127, 127))[0, 0] == 0 + 32767


def test_odd_k_pads_the_last_element_alone() -> None:
    a = np.full((1, 3), 255, dtype=np.uint8)
    assert avx2_u8s8_matmul(a, _col(127, 127, 127))[0, 0] == 32767 + 255 * 127


def test_saturation_reports_the_excess_and_counts() -> None:
    a = np.array([[255, 255, 1, 1], [0, 0, 0, 0]], dtype=np.uint8)
    b = np.array([[127, 1], [127, 1], [5, 1], [5, 1]], dtype=np.int8)
    sat = saturation_excess(a, b)
    assert sat.excess.tolist() == [[64770 - 32767, 0], [0, 0]]
    assert sat.pairs == 1 and sat.outputs == 1


def test_matches_onnxruntime_avx2_output_recorded_under_qemu_haswell() -> None:
    """Recorded once with `qemu-x86_64 -cpu Haswell-v4` (onnxruntime 1.32 MatMulInteger on its AVX2 kernel)."""
    data = np.load(RECORDED)
    a1, b1, y1 = data["a1"], data["b1"], data["y1"]
    assert np.array_equal(avx2_u8s8_matmul(a1, b1), y1)
    assert np.count_nonzero(exact_matmul(a1, b1) != y1) > 100  # the case does exercise saturation
    a2, b2, y2 = data["a2"], data["b2"], data["y2"]
    shift = 128 * b2.astype(np.int64).sum(0)  # the zero point is removed after the saturating raw-code products
    assert np.array_equal(avx2_u8s8_matmul(a2, b2) - shift, y2)
    assert np.count_nonzero(exact_matmul(a2, b2) - shift != y2) > 0


def test_batched_equals_one_gemm_at_a_time() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 3, 9, 33))
    b = rng.integers(-127, 128, (2, 3, 33, 7))
    want = np.stack([np.stack([saturation_excess(a[i, j], b[i, j]).excess for j in range(3)]) for i in range(2)])
    got = batched_saturation_excess(a, b).excess
    assert np.array_equal(got, want) and np.abs(got).sum() > 0


def test_worst_case_counts_same_sign_pairs_over_the_int16_bound() -> None:
    # 255·(64 + 64) = 32,640 fits; 255·(65 + 64) = 32,895 does not; opposite signs never do.
    b = np.array([[64, 65, 127, 127], [64, 64, -127, 0]], dtype=np.int8)
    assert worst_case_pairs(b) == 1
    assert worst_case_pairs(np.full((8, 4), 63, dtype=np.int8)) == 0


@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="qemu-x86_64 not installed (Debian: qemu-user)")
def test_model_equals_the_real_avx2_kernel_under_qemu() -> None:
    """onnxruntime's own AVX2 kernels, run by QEMU on whatever x86 CPU runs the suite, agree with the model."""
    result = subprocess.run(
        ["qemu-x86_64", "-cpu", "Haswell-v4", sys.executable, "-m", "llmzip.quant.kernel_check"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["cpu_class"] == "avx2"
    for name, case in report["cases"].items():
        assert case["model_mismatches"] == 0, name
        assert case["saturated_outputs"] > 0, name  # every case is built to saturate on AVX2
