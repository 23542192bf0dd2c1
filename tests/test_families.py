"""Every decoder family transformers ships that people use, through the whole chain on a tiny random model:
import → calibrate → quantize int8 / int4 → export int4 → generate, each checked against its own fp32 model (logit
SQNR and next-token agreement, in PyTorch and in onnxruntime). A family whose quantized model loses what the fp32
model computes (Gemma's scaled embedding, GPT-2's Conv1D layers, a sliding-window cache) fails here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmzip.testing import DECODER_FAMILIES, build_tiny_decoder, demo_text
from tests.conftest import invoke, invoke_json

# Fused onnxruntime decoder graph: Llama-family layouts GroupQueryAttention expresses (rotary on every head,
# SiLU MLP, RMSNorm, unscaled embedding); Mistral's sliding window is passed to it. Every other family is traced.
FUSED = {"llama", "mistral", "qwen2"}


def _sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    noise = float(((ref - got) ** 2).sum())
    return float("inf") if noise == 0 else 10 * np.log10(float((ref**2).sum()) / noise)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("families") / "corpus.raw"
    path.write_text(demo_text())
    return path


@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_family_through_the_chain(family: str, corpus: Path, tmp_path: Path) -> None:
    from llmzip.modeling import load_pretrained
    from llmzip.runtime.lm import OrtRunner, TorchRunner, read_config

    base = build_tiny_decoder(tmp_path / "base", family)
    d = {k: tmp_path / k for k in ("imported", "calib", "int8", "int4")}
    assert invoke_json("import", base, "-o", d["imported"])["metrics"]["task"] == "causal-lm"
    invoke_json("calibrate", d["imported"], "--data", corpus, "--max-length", 48, "--num-samples", 8, "-o", d["calib"])
    int8 = invoke_json("quantize", d["imported"], d["calib"], "-o", d["int8"])["metrics"]
    int4 = invoke_json(
        "quantize", d["imported"], d["calib"], "-o", d["int4"], "--weight-bits", 4, "--weight-block-size", 16
    )["metrics"]
    # every Linear (GPT-2's Conv1D included) is quantized, and the quantized model is close to its fp32 self
    assert int8["fp32_linear_layers"] == 0 and int8["quantized_layers"] >= 9
    assert int8["logits_sqnr_db"] > 25 and int4["logits_sqnr_db"] > 8, (int8["logits_sqnr_db"], int4["logits_sqnr_db"])
    assert int4["perplexity"]["quantized"] < 1.5 * int4["perplexity"]["fp32"]
    rows = [json.loads(line)["input_ids"] for line in (d["calib"] / "calibration_samples.jsonl").open()]
    prompt = np.array(rows[0][:40], dtype=np.int64)[None, :]  # longer than Mistral's and Gemma's windows (16)
    want, _ = TorchRunner(load_pretrained(d["imported"])).prefill(prompt)
    for precision, sqnr, agreement in (("int8", 25, 0.9), ("int4", 8, 0.5)):
        out = tmp_path / f"onnx-{precision}"
        exported = invoke_json("export", d[precision], "-o", out)["metrics"]
        assert exported["graph"] == ("fused" if family in FUSED else "traced")
        assert exported["parity"]["next_token_agreement"] == 1.0  # the graph computes what PyTorch computes
        # onnxruntime against the fp32 model itself
        onnx = OrtRunner(out / "model.onnx", read_config(out))
        got, state = onnx.prefill(prompt)
        assert _sqnr_db(want, got) > sqnr and (want.argmax(-1) == got.argmax(-1)).mean() >= agreement, precision
        step, _ = onnx.step(np.array([[int(got[0, -1].argmax())]]), state)  # the cache goes on past the window
        assert np.isfinite(step).all()
    tokens = invoke_json("generate", tmp_path / "onnx-int4", "good movie", "--max-new-tokens", 24)["token_ids"]
    assert len(tokens) >= 1


def test_a_family_broken_by_quantization_fails_quantize_with_one_line(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever breaks a quantized model (here: every int4 layer's scales inflated 30×, standing in for a
    family-specific computation that the swap loses), quantize must not exit 0: the perplexity gate names the
    first layer where output SQNR collapses."""
    from llmzip.quant import weight_only

    base = build_tiny_decoder(tmp_path / "base", "llama")
    # trained a little, so that its fp32 perplexity is far below a broken model's (a random one is ~uniform)
    train = ("--max-length", 48, "--max-steps", 60, "--lr", 1e-2, "--batch-size", 16)
    invoke_json("finetune", base, "--data", corpus, *train, "-o", tmp_path / "imported")
    invoke_json(
        "calibrate",
        tmp_path / "imported",
        "--data",
        corpus,
        "--max-length",
        48,
        "--num-samples",
        8,
        "-o",
        tmp_path / "c",
    )
    real = weight_only.block_qparams

    def broken(w, *, bits, symmetric):  # type: ignore[no-untyped-def]
        scale, zero_point, grid = real(w, bits=bits, symmetric=symmetric)
        return scale * 30, zero_point, grid

    monkeypatch.setattr(weight_only, "block_qparams", broken)
    result = invoke("quantize", tmp_path / "imported", tmp_path / "c", "-o", tmp_path / "q", "--weight-bits", 4)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 5 and lines[-1].startswith("error: the quantized model's perplexity")
    assert "output SQNR collapses first at model.layers.0." in lines[-1]
    assert not (tmp_path / "q").exists()
