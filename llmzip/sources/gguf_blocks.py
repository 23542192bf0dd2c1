"""A GGUF file's quantized blocks, kept exactly: each tensor as `w = scale·v + offset` per block of a row, and the
same numbers in MatMulNBits' layout (integer codes, one scale per block, the default zero point, and a per-block
offset where the type has a minimum).

Why by hand: transformers and the gguf package dequantize GGUF tensors to floats, and every int4 tool then
re-rounds those floats onto a second grid that does not line up with the first — a Q4_1 model re-quantized to
int4 loses ~40% perplexity it never had to lose. The bit layouts stay the gguf package's: its own
`dequantize_blocks` is run on blocks whose scale fields are set to 1 and whose minimum fields are set to 0, which
yields the integer values; the scales and minimums are read from their fields. Every tensor is checked against
the package's own dequantization before it is trusted.

Types with an exact form: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (blocks of 32) and the K-quants Q4_K, Q5_K (super-blocks
of 256 with eight 32-element sub-blocks, each with a 6-bit scale and minimum: they flatten to one scale and one
offset per 32 inputs) and Q6_K (sixteen 16-element sub-blocks with int8 scales). 4-level-range types are stored
as 4-bit codes, wider ones (5, 6, 8 bits) as 8-bit codes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Split = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray | None]]


def _half(blocks: np.ndarray, at: int) -> np.ndarray:
    """The fp16 field at byte `at` of every block, as float32 [blocks, 1]."""
    return blocks[:, at : at + 2].copy().view(np.float16).astype(np.float32)


def _set_half(blocks: np.ndarray, at: int, value: float) -> None:
    blocks[:, at : at + 2] = np.frombuffer(np.float16(value).tobytes(), dtype=np.uint8)


def _values(kind: str, blocks: np.ndarray, ones: tuple[int, ...], zeros: tuple[int, ...] = ()) -> np.ndarray:
    """The gguf package's own unpacking of `blocks` with the scale fields at `ones` set to 1 and the minimum
    fields at `zeros` set to 0: the integer values (times any sub-block scale the type keeps elsewhere)."""
    from gguf import quants

    edited = blocks.copy()
    for at in ones:
        _set_half(edited, at, 1.0)
    for at in zeros:
        _set_half(edited, at, 0.0)
    out: np.ndarray = getattr(quants, kind).dequantize_blocks(edited)
    return out


def _divide(scaled: np.ndarray, sub_scales: np.ndarray, sub: int) -> np.ndarray:
    """Integer values from sub-scale × value products (a zero sub-scale: the value does not matter, 0)."""
    shaped = scaled.reshape(scaled.shape[0], -1, sub)
    safe = np.where(sub_scales == 0, 1, sub_scales)[..., None]
    return np.where(sub_scales[..., None] == 0, 0, np.rint(shaped / safe)).reshape(scaled.shape)


def _plain(kind: str, with_min: bool) -> Split:
    """Q4_0/Q5_0/Q8_0 (d, then the values) and Q4_1/Q5_1 (d, m, then the values): one block of 32."""

    def split(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        d = _half(blocks, 0)
        if with_min:
            return _values(kind, blocks, (0,), (2,)), d, _half(blocks, 2)
        return _values(kind, blocks, (0,)), d, None

    return split


def _k_quant(kind: str) -> Split:
    """Q4_K/Q5_K: d, dmin, 12 bytes of packed 6-bit sub-scales and sub-minimums, then the values (256 = 8 × 32)."""

    def split(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        from gguf import quants

        d, dmin = _half(blocks, 0), _half(blocks, 2)
        sc, m = quants.Q4_K.get_scale_min(blocks[:, 4:16].copy())
        sc, m = sc.reshape(len(blocks), -1).astype(np.float32), m.reshape(len(blocks), -1).astype(np.float32)
        values = _divide(_values(kind, blocks, (0,), (2,)), sc, 32)
        return values, d * sc, -(dmin * m)

    return split


def _q6_k(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Q6_K: 128 + 64 bytes of 6-bit values, 16 int8 sub-scales, then d (256 = 16 × 16)."""
    d = _half(blocks, 208)
    sc = blocks[:, 192:208].copy().view(np.int8).astype(np.float32)
    return _divide(_values("Q6_K", blocks, (208,)), sc, 16), d * sc, None


@dataclass(frozen=True)
class GgmlType:
    split: Split
    sub_block: int  # inputs per scale
    low: int  # the type's integer value range
    high: int


TYPES: dict[str, GgmlType] = {
    "Q4_0": GgmlType(_plain("Q4_0", False), 32, -8, 7),
    "Q4_1": GgmlType(_plain("Q4_1", True), 32, 0, 15),
    "Q5_0": GgmlType(_plain("Q5_0", False), 32, -16, 15),
    "Q5_1": GgmlType(_plain("Q5_1", True), 32, 0, 31),
    "Q8_0": GgmlType(_plain("Q8_0", False), 32, -128, 127),
    "Q4_K": GgmlType(_k_quant("Q4_K"), 32, 0, 15),
    "Q5_K": GgmlType(_k_quant("Q5_K"), 32, 0, 31),
    "Q6_K": GgmlType(_q6_k, 16, -32, 31),
}
FLOAT_TYPES = ("F32", "F16", "BF16")


@dataclass
class Blocks:
    """One tensor [N, K] as w[n, k] = scale[n, b]·values[n, k] + offset[n, b], b = k // block_size."""

    ggml_type: str
    block_size: int
    values: np.ndarray  # int16 [N, K]
    scale: np.ndarray  # float32 [N, K // block_size]
    offset: np.ndarray | None  # float32 [N, K // block_size]; None: the type has no minimum
    low: int
    high: int

    def dequantized(self) -> np.ndarray:
        n, k = self.values.shape
        w = self.values.reshape(n, -1, self.block_size).astype(np.float32) * self.scale[..., None]
        if self.offset is not None:
            w = w + self.offset[..., None]
        return w.reshape(n, k)

    def rows(self, order: np.ndarray) -> Blocks:
        """The same blocks with the rows reordered (a loader that permutes output features, e.g. llama's q/k)."""
        offset = None if self.offset is None else self.offset[order]
        return Blocks(
            self.ggml_type, self.block_size, self.values[order], self.scale[order], offset, self.low, self.high
        )

    def nbits(self) -> tuple[int, np.ndarray, np.ndarray, bool, np.ndarray | None]:
        """(bits, codes uint8 [N, K/block, block], scale, explicit zero point, offset or None) such that
        w = (code − zero point)·scale + offset, exactly: 4-bit codes when the type has 16 levels, else 8-bit. A
        signed type (Q4_0, Q5_0, Q8_0, Q6_K) is centred on MatMulNBits' default zero point and has no offset; an
        unsigned one (Q4_1, Q5_1, Q4_K, Q5_K) keeps its codes with an explicit zero point of 0 and its minimum as
        the offset, so both stay the file's own numbers (fp16 where the file has fp16)."""
        bits = 4 if self.high - self.low <= 15 else 8
        signed = self.low < 0
        shift = 2 ** (bits - 1) if signed else 0
        n, k = self.values.shape
        codes = (self.values.astype(np.int32) + shift).astype(np.uint8).reshape(n, -1, self.block_size)
        return bits, codes, self.scale, not signed, self.offset


def read(tensor: object) -> Blocks | None:
    """A gguf.ReaderTensor's blocks, or None when its type has no exact form here (floats, IQ*, Q2_K, Q3_K ...).

    Raises ValueError when the split does not reproduce the gguf package's own dequantization."""
    from gguf import quants

    kind = tensor.tensor_type.name  # type: ignore[attr-defined]
    spec = TYPES.get(kind)
    if spec is None:
        return None
    raw = np.asarray(tensor.data)  # type: ignore[attr-defined]  # [N, bytes per row] (or more dims)
    k = int(tensor.shape[0])  # type: ignore[attr-defined]  # GGUF lists dims innermost first
    n = raw.size // raw.shape[-1] if raw.ndim > 1 else 1
    rows = raw.reshape(n, -1)
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    per_block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType[kind]]
    blocks = rows.reshape(-1, type_size)
    values, scale, offset = spec.split(blocks)
    subs = per_block // spec.sub_block
    blocks_out = Blocks(
        kind,
        spec.sub_block,
        values.reshape(n, k).astype(np.int16),
        scale.reshape(n, (k // per_block) * subs).astype(np.float32),
        None if offset is None else offset.reshape(n, (k // per_block) * subs).astype(np.float32),
        spec.low,
        spec.high,
    )
    reference = quants.dequantize(rows, GGMLQuantizationType[kind]).reshape(n, k)
    if not np.array_equal(blocks_out.dequantized(), reference.astype(np.float32)):
        worst = float(np.abs(blocks_out.dequantized() - reference).max())
        raise ValueError(f"{kind} split does not reproduce the gguf package's dequantization (off by {worst:.3g})")
    return blocks_out


BLOCKS_FILE = "source_blocks.safetensors"  # beside an imported model: what `quantize --algorithm source` keeps


def _row_order(loaded: np.ndarray, source: np.ndarray) -> np.ndarray | None:
    """The permutation p with loaded == source[p] (a loader that reorders output features), or None."""
    if np.array_equal(loaded, source):
        return np.arange(len(loaded))
    where = {row.tobytes(): i for i, row in enumerate(source)}
    order = [where.get(row.tobytes()) for row in loaded]
    if any(i is None for i in order) or len(set(order)) != len(order):
        return None
    return np.array(order)


def source_blocks(
    path: str, state: dict[str, object], *, tied: bool
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, object]]]:
    """For every 2-D weight of a model loaded from the GGUF at `path` (`state`: name → float tensor): the GGUF
    tensor's blocks in MatMulNBits layout, when they reproduce the loaded weight exactly (directly or with rows
    permuted), as `{name}:qweight`, `{name}:scale`, `{name}:offset` arrays; and per weight, what was found."""
    import gguf

    reader = gguf.GGUFReader(path)
    arch_name = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    arch = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}.get(arch_name)
    layers = (
        int(reader.fields[f"{arch_name}.block_count"].parts[-1][0])
        if f"{arch_name}.block_count" in reader.fields
        else 0
    )
    names = gguf.get_tensor_name_map(arch, layers) if arch is not None else None
    by_name = {t.name: t for t in reader.tensors}
    arrays: dict[str, np.ndarray] = {}
    report: dict[str, dict[str, object]] = {}
    seen: dict[int, str] = {}
    for name, tensor in state.items():
        ptr = tensor.data_ptr() if hasattr(tensor, "data_ptr") else id(tensor)  # type: ignore[attr-defined]
        if ptr in seen:  # a tied weight (the lm_head reading the embedding table): stored once
            report[name] = {**report.get(seen[ptr], {}), "same_as": seen[ptr]}
            continue
        seen[ptr] = name
        weight = tensor.detach().float().numpy() if hasattr(tensor, "detach") else np.asarray(tensor)  # type: ignore[attr-defined]
        if weight.ndim != 2:
            continue
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias")) if names is not None else None
        if gguf_name not in by_name and tied and name.endswith("lm_head.weight"):
            gguf_name = "token_embd.weight"  # a tied head reads the embedding table
        source = by_name.get(gguf_name or "")
        if source is None:
            report[name] = {"source": gguf_name, "exact": False, "kept": "float (no GGUF tensor of that name)"}
            continue
        kind = source.tensor_type.name
        if kind in FLOAT_TYPES:
            report[name] = {"source": gguf_name, "type": kind, "exact": True, "kept": "float"}
            continue
        blocks = read(source)
        if blocks is None:
            report[name] = {
                "source": gguf_name,
                "type": kind,
                "exact": False,
                "kept": f"float (dequantized); no exact MatMulNBits form for {kind}: quantize re-rounds it",
            }
            continue
        order = _row_order(weight, blocks.dequantized()) if blocks.values.shape == weight.shape else None
        if order is None:
            report[name] = {
                "source": gguf_name,
                "type": kind,
                "exact": False,
                "kept": "float (dequantized); the loader transformed this tensor beyond a row order",
            }
            continue
        bits, codes, scale, zero_point, offset = blocks.rows(order).nbits()
        packed = codes if bits == 8 else (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
        arrays[f"{name}:qweight"] = np.ascontiguousarray(packed)
        arrays[f"{name}:scale"] = np.ascontiguousarray(scale)
        if offset is not None:
            arrays[f"{name}:offset"] = np.ascontiguousarray(offset)
        report[name] = {
            "source": gguf_name,
            "type": kind,
            "exact": True,
            "bits": bits,
            "block_size": blocks.block_size,
            "zero_point": 0 if zero_point else None,
            "offset": offset is not None,
            **({"rows_reordered": True} if not np.array_equal(order, np.arange(len(order))) else {}),
        }
    return arrays, report
