"""GGUF blocks kept exactly: llmzip/sources/gguf_blocks.py against the gguf package's own dequantization, and the chain
import → quantize (source) → export (fused, traced, float zero points) on tiny GGUF files of every kept type."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmzip.sources import gguf_blocks
from llmzip.testing import build_tiny_gguf, demo_text
from tests.conftest import invoke_json

gguf = pytest.importorskip("gguf")


class _Tensor:
    """What gguf_blocks.read needs of a gguf.ReaderTensor."""

    def __init__(self, kind: str, data: np.ndarray, rows: int, cols: int) -> None:
        self.tensor_type = gguf.GGMLQuantizationType[kind]
        self.data = data
        self.shape = np.array([cols, rows])


def _blocks_of(kind: str, rows: int = 6, cols: int = 512) -> tuple[_Tensor, np.ndarray]:
    rng = np.random.default_rng(1)
    qtype = gguf.GGMLQuantizationType[kind]
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    if kind.endswith("_K"):
        data = rng.integers(0, 256, (rows * cols // block, size), dtype=np.uint8)
        for at in (208,) if kind == "Q6_K" else (0, 2):
            data[:, at : at + 2] = np.frombuffer(np.float16(0.01).tobytes(), dtype=np.uint8)
        data = data.reshape(rows, -1)
    else:
        data = gguf.quants.quantize(rng.standard_normal((rows, cols)).astype(np.float32), qtype)
    return _Tensor(kind, data, rows, cols), gguf.quants.dequantize(data, qtype).reshape(rows, cols)


@pytest.mark.parametrize("kind", sorted(gguf_blocks.TYPES))
def test_every_kept_type_reproduces_the_packages_dequantization(kind: str) -> None:
    tensor, reference = _blocks_of(kind)
    blocks = gguf_blocks.read(tensor)
    assert blocks is not None and np.array_equal(blocks.dequantized(), reference)
    bits, codes, scale, explicit_zero, offset = blocks.nbits()
    zero_point = 0 if explicit_zero else 2 ** (bits - 1)
    assert codes.max() < 2**bits and bits == (4 if blocks.high - blocks.low <= 15 else 8)
    weight = (codes.astype(np.float32) - zero_point) * scale[..., None]
    if offset is not None:
        weight = weight + offset[..., None]
    np.testing.assert_allclose(weight.reshape(reference.shape), reference, rtol=0, atol=1e-6 * np.abs(reference).max())
    # the types with a minimum carry it as an offset, the symmetric ones need none
    assert (offset is not None) == (kind in ("Q4_1", "Q5_1", "Q4_K", "Q5_K"))


def test_a_type_without_an_exact_form_is_not_read() -> None:
    tensor, _ = _blocks_of("Q8_0")
    tensor.tensor_type = gguf.GGMLQuantizationType.Q3_K
    assert gguf_blocks.read(tensor) is None


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf-text") / "corpus.raw"
    path.write_text(demo_text())
    return path


@pytest.mark.parametrize(
    ("layers", "head"),
    [("Q4_1", None), ("Q4_K", "Q6_K"), ("Q5_0", None)],
    ids=["q4_1-tied", "q4_k-untied-q6_k-head", "q5_0"],
)
def test_gguf_blocks_go_through_the_chain_exactly(layers: str, head: str | None, corpus: Path, tmp_path: Path) -> None:
    source = build_tiny_gguf(tmp_path / "model.gguf", layer_type=layers, head_type=head)
    imported, calib = tmp_path / "imported", tmp_path / "calib"
    invoke_json("import", source, "-o", imported)
    kept = json.loads((imported / "manifest.json").read_text())["source_blocks"]
    assert kept["kept"] and kept["not_exact"] == [] and kept["exact_blocks"] >= 15
    q_proj = kept["tensors"]["model.layers.0.self_attn.q_proj.weight"]
    assert q_proj["type"] == layers and q_proj["exact"] and q_proj["rows_reordered"]  # llama.cpp's rotary row order
    invoke_json("calibrate", imported, "--data", corpus, "--max-length", 32, "--num-samples", 4, "-o", calib)
    quantized = tmp_path / "exact"
    metrics = invoke_json("quantize", imported, calib, "-o", quantized)["metrics"]  # no flags: the source's blocks
    assert metrics["algorithm"] == "source" and metrics["logits_sqnr_db"] == "inf"
    assert metrics["source_types"] == {layers: 14, **({head: 1} if head else {"Q8_0": 1})}
    assert metrics["embedding"]["source"]["type"] == "Q8_0" and metrics["embedding"]["shares"] == (
        None if head else "lm_head"
    )
    forms = [("fused",), ("traced",)] + ([("fused", "--float-zero-points")] if layers == "Q4_1" else [])
    for graph, *flags in forms:
        out = tmp_path / f"onnx-{graph}{'-fzp' if flags else ''}"
        exported = invoke_json("export", quantized, "-o", out, "--lm-graph", graph, *flags)["metrics"]
        assert exported["graph"] == graph and exported["parity"]["next_token_agreement"] == 1.0
        assert exported["precision"].startswith("gguf-exact")
        onnx_ids = invoke_json("generate", out, "good movie", "--max-new-tokens", 4)["token_ids"]
        assert onnx_ids == invoke_json("generate", imported, "good movie", "--max-new-tokens", 4)["token_ids"]


def test_an_exact_export_stores_fp16_scales_as_the_file_does(corpus: Path, tmp_path: Path) -> None:
    import onnx

    imported = tmp_path / "imported"
    invoke_json("import", build_tiny_gguf(tmp_path / "m.gguf", layer_type="Q4_1"), "-o", imported)
    invoke_json("calibrate", imported, "--data", corpus, "--max-length", 32, "--num-samples", 4, "-o", tmp_path / "c")
    invoke_json("quantize", imported, tmp_path / "c", "-o", tmp_path / "q")
    invoke_json("export", tmp_path / "q", "-o", tmp_path / "o")
    inits = {i.name: i.data_type for i in onnx.load(str(tmp_path / "o" / "model.onnx")).graph.initializer}
    assert inits["layers.0.qkv.scales.fp16"] == onnx.TensorProto.FLOAT16
    assert inits["layers.0.qkv.offsets.fp16"] == onnx.TensorProto.FLOAT16
