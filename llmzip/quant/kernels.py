"""A bit-exact numpy model of onnxruntime's x86 u8×s8 integer GEMM where it saturates (AVX2, AVX-512 without VNNI).

Why a model of a kernel: without VNNI, MLAS multiplies uint8 activations by int8 weights with `vpmaddubsw`,
which adds the two products of each adjacent pair along K into a *saturating int16* before `vpmaddwd` widens
the pair sums to int32 (MLAS qgemm_kernel_avx2: A and B are packed in groups of 4 along K, pairs (2j, 2j+1)).
255·127 + 255·127 = 64,770 > 32,767, so an AVX2 machine can compute a different int8 result than the VNNI/AMX
machine the model was exported on (onnxruntime #5849, #6004). This module computes, with plain integer numpy,
what that kernel returns, so a VNNI machine can test and measure what an AVX2 machine will compute.

What the model encodes (each checked against onnxruntime 1.32's real AVX2 kernel run under `qemu-x86_64 -cpu
Haswell`, see tests/quant/test_kernels.py):
- pairs are K indices (2j, 2j+1) counted from 0 for every output; an odd K is padded with a zero column;
- the saturation applies to the *raw* uint8 codes (zero point included): the activation zero point is
  subtracted afterwards through the column sums of B, so a zero point of 128 makes saturation more likely;
- each pair sum is clamped to [-32768, 32767]; the pair sums then accumulate exactly in int32;
- u8×u8 (vpmaddwd on zero-extended values) and everything on VNNI/AMX are exact.

The implementation never materialises all pair sums: a pair (j, n) can only saturate if the largest product
sum its inputs allow exceeds int16 (a bound from the observed per-channel code range), and only those candidate
pairs are evaluated. The result is `exact - excess`, where `excess` is what the clamps removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INT16_MIN, INT16_MAX = -32768, 32767
U8_MAX = 255
# Elements of one [rows, candidate pairs] block; bounds the memory of `saturation_excess` (int64: 128 MB).
_BLOCK = 1 << 24


@dataclass(frozen=True)
class Saturation:
    """What the saturating kernel did to one GEMM: `excess` [M, N] is exact - computed (0 where nothing clamped)."""

    excess: np.ndarray
    pairs: int  # pair sums that were clamped
    candidates: int  # pair (j, n) positions whose input ranges allow clamping at all

    @property
    def outputs(self) -> int:
        """Output elements that differ from the exact product."""
        return int(np.count_nonzero(self.excess))


def _paired(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer copies with K padded to even (a zero column/row pairs with the last element, as MLAS pads)."""
    a64, b64 = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    if a64.ndim != 2 or b64.ndim != 2 or a64.shape[1] != b64.shape[0]:
        raise ValueError(f"expected A [M, K] and B [K, N], got {a64.shape} and {b64.shape}")
    if a64.shape[1] % 2:
        a64 = np.pad(a64, ((0, 0), (0, 1)))
        b64 = np.pad(b64, ((0, 1), (0, 0)))
    return a64, b64


def pair_bounds(b: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Smallest and largest possible pair sum at every (j, n) for activation codes within [lo_k, hi_k] per channel.

    `b` is [K, N] int8 codes (K even), `lo`/`hi` are [K] uint8 code bounds. Returns two [K/2, N] arrays.
    """
    b64 = b.astype(np.int64)
    top = np.where(b64 > 0, hi[:, None] * b64, lo[:, None] * b64)
    bottom = np.where(b64 > 0, lo[:, None] * b64, hi[:, None] * b64)
    return bottom[0::2] + bottom[1::2], top[0::2] + top[1::2]


def saturation_excess(a: np.ndarray, b: np.ndarray) -> Saturation:
    """`a` [M, K] uint8 codes times `b` [K, N] int8 codes through the saturating-pair kernel.

    Returns the excess over int16 that the pair clamps removed; the kernel's int32 result is `a @ b - excess`.
    """
    a64, b64 = _paired(a, b)
    m, n = a64.shape[0], b64.shape[1]
    excess = np.zeros((m, n), dtype=np.int64)
    if m == 0:
        return Saturation(excess, 0, 0)
    lowest, highest = pair_bounds(b64, a64.min(0), a64.max(0))
    pj, pn = np.nonzero((highest > INT16_MAX) | (lowest < INT16_MIN))
    if pj.size == 0:
        return Saturation(excess, 0, 0)
    order = np.argsort(pn, kind="stable")  # grouped by output column so each block reduces with reduceat
    pj, pn = pj[order], pn[order]
    clamped = 0
    step = max(1, _BLOCK // m)
    for start in range(0, pj.size, step):
        j, col = pj[start : start + step], pn[start : start + step]
        sums = a64[:, 2 * j] * b64[2 * j, col] + a64[:, 2 * j + 1] * b64[2 * j + 1, col]
        over = sums - np.clip(sums, INT16_MIN, INT16_MAX)
        clamped += int(np.count_nonzero(over))
        cols, first = np.unique(col, return_index=True)
        excess[:, cols] += np.add.reduceat(over, first, axis=1)
    return Saturation(excess, clamped, int(pj.size))


def batched_saturation_excess(a: np.ndarray, b: np.ndarray) -> Saturation:
    """`saturation_excess` over leading batch dims: a [..., M, K] uint8 codes, b [..., K, N] int8 codes.

    For activation × activation products (attention's Q·Kᵀ), where B changes with every call: all pair sums are
    formed (int32: |a·b + a·b| ≤ 65,280), a slice of the batch at a time.
    """
    a32, b32 = np.asarray(a, dtype=np.int32), np.asarray(b, dtype=np.int32)
    if a32.shape[-1] % 2:
        a32 = np.pad(a32, [(0, 0)] * (a32.ndim - 1) + [(0, 1)])
        b32 = np.pad(b32, [(0, 0)] * (b32.ndim - 2) + [(0, 1), (0, 0)])
    lead = np.broadcast_shapes(a32.shape[:-2], b32.shape[:-2])
    a32 = np.broadcast_to(a32, lead + a32.shape[-2:]).reshape(-1, *a32.shape[-2:])
    b32 = np.broadcast_to(b32, lead + b32.shape[-2:]).reshape(-1, *b32.shape[-2:])
    m, k2, n = a32.shape[1], a32.shape[2] // 2, b32.shape[2]
    excess = np.zeros((a32.shape[0], m, n), dtype=np.int64)
    clamped = 0
    step = max(1, _BLOCK // max(1, m * k2 * n))
    for s in range(0, a32.shape[0], step):
        x, w = a32[s : s + step], b32[s : s + step]
        sums = x[:, :, 0::2, None] * w[:, None, 0::2, :] + x[:, :, 1::2, None] * w[:, None, 1::2, :]
        over = sums - np.clip(sums, INT16_MIN, INT16_MAX)
        clamped += int(np.count_nonzero(over))
        excess[s : s + step] = over.sum(2)
    return Saturation(excess.reshape(*lead, m, n), clamped, a32.shape[0] * m * k2 * n)


def exact_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The int32 product every non-saturating kernel returns (float64 BLAS is exact below 2^53)."""
    return np.rint(np.asarray(a, dtype=np.float64) @ np.asarray(b, dtype=np.float64)).astype(np.int64)


def avx2_u8s8_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """What MLAS's AVX2 (or AVX-512BW without VNNI) u8×s8 GEMM returns before zero-point correction: int64 [M, N]."""
    return exact_matmul(a, b) - saturation_excess(a, b).excess


def worst_case_pairs(b: np.ndarray) -> int:
    """Pairs (j, n) that saturate for *some* uint8 input (the bound every per-channel layer tends to fail)."""
    b64 = _paired(np.zeros((1, b.shape[0]), dtype=np.int64), b)[1]
    lowest, highest = pair_bounds(b64, np.zeros(b64.shape[0], np.int64), np.full(b64.shape[0], U8_MAX, np.int64))
    return int(np.count_nonzero((highest > INT16_MAX) | (lowest < INT16_MIN)))
