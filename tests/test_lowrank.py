"""Low-rank factorization of Linear layers (llmzip/shrink/lowrank.py) and its persistence through the structure spec."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from llmzip.errors import ConfigError, ModelError
from llmzip.modeling import load_pretrained
from llmzip.shrink import pruning, restore, structure
from llmzip.shrink.lowrank import FFN_PATTERN, LOWRANK_KEY, LowRankLinear, factorize_linears, restore_lowrank
from llmzip.testing import build_tiny_bert

# The tiny BERT: hidden 32, FFN 64, 2 layers. A 32↔64 layer saves weights below rank 21.33, a 32×32 one below 16.
FFN_NAMES = [f"bert.encoder.layer.{i}.{n}.dense" for i in range(2) for n in ("intermediate", "output")]
TEXTS = ["an utterly charming film", "dull , slow and far too long"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """A tiny random BERT classifier and its tokenizer (loaded once; tests factorize deep copies)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = build_tiny_bert(tmp_path_factory.mktemp("lowrank") / "clf", classifier=True)
    return AutoModelForSequenceClassification.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _outputs(model: Any, tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(last hidden states, logits): a random head's 2 logits are too few numbers to compare on their own."""
    with torch.no_grad():
        out = model(**tokenizer(TEXTS, padding=True, return_tensors="pt"), output_hidden_states=True)
    return out.hidden_states[-1], out.logits


def _with_rank(model: Any, names: list[str], rank: int) -> None:
    """Make the named layers' weights exactly rank `rank` (keeping their scale), so a rank-`rank` SVD is exact."""
    generator = torch.Generator().manual_seed(3)
    for name in names:
        linear = model.get_submodule(name)
        out_features, in_features = linear.weight.shape
        a = torch.randn(out_features, rank, generator=generator)
        b = torch.randn(rank, in_features, generator=generator)
        with torch.no_grad():
            linear.weight.copy_(a @ b * (linear.weight.norm() / (a @ b).norm()))


def test_an_exactly_low_rank_layer_factorizes_without_changing_the_outputs(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    exact = copy.deepcopy(model)
    _with_rank(exact, FFN_NAMES, 8)
    want_hidden, want_logits = _outputs(exact, tokenizer)
    info = factorize_linears(exact, 8, pattern=FFN_PATTERN)
    assert sorted(info["layers"]) == sorted(FFN_NAMES) and info["skipped"] == {}
    assert all(isinstance(exact.get_submodule(n), LowRankLinear) for n in FFN_NAMES)
    assert max(layer["relative_error"] for layer in info["layers"].values()) < 1e-5
    hidden, logits = _outputs(exact, tokenizer)
    assert (hidden - want_hidden).abs().max() < 1e-4 and (logits - want_logits).abs().max() < 1e-5
    # Each 32↔64 layer: 2048 weights + bias become 8·(32 + 64) weights + the same bias.
    layer = info["layers"]["bert.encoder.layer.0.intermediate.dense"]
    assert (layer["params_before"], layer["params_after"]) == (32 * 64 + 64, 8 * 96 + 64)
    assert info["params_before"] - info["params_after"] == 4 * (2048 - 8 * 96)
    assert info["model_params_before"] - info["model_params_after"] == info["params_before"] - info["params_after"]


def test_reported_error_is_the_svd_tail_and_falls_with_the_rank(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    want_hidden, _ = _outputs(model, tokenizer)
    name = "bert.encoder.layer.1.output.dense"
    weight = model.get_submodule(name).weight.detach().double()
    singular = torch.linalg.svdvals(weight)
    errors, drifts = [], []
    for rank in (4, 12, 20):
        factorized = copy.deepcopy(model)
        info = factorize_linears(factorized, rank, pattern=FFN_PATTERN)
        low: Any = factorized.get_submodule(name)
        assert low.down.weight.shape == (rank, 64) and low.up.weight.shape == (32, rank)
        assert torch.equal(low.up.bias, model.get_submodule(name).bias)
        recomputed = torch.linalg.norm(weight - low.weight_product().detach().double()) / torch.linalg.norm(weight)
        reported = info["layers"][name]["relative_error"]
        assert reported == pytest.approx(float(recomputed), rel=1e-4)
        # Eckart–Young: the best rank-r error is the norm of the dropped singular values.
        assert reported == pytest.approx(float(singular[rank:].norm() / singular.norm()), rel=1e-4)
        errors.append(reported)
        drifts.append(float((_outputs(factorized, tokenizer)[0] - want_hidden).abs().max()))
    assert errors == sorted(errors, reverse=True) and drifts == sorted(drifts, reverse=True)


def test_layers_without_a_saving_are_skipped(tiny: tuple[Any, Any]) -> None:
    model = copy.deepcopy(tiny[0])
    query = "bert.encoder.layer.0.attention.self.query"
    info = factorize_linears(model, 18, pattern=r"layer\.0\.(attention\.self\.query|intermediate\.dense)$")
    assert info["skipped"] == {query: [32, 32]}  # 18·64 ≥ 32·32: the factors would be larger
    assert list(info["layers"]) == ["bert.encoder.layer.0.intermediate.dense"]
    assert type(model.get_submodule(query)) is nn.Linear
    assert structure.spec_of(model.config) == {LOWRANK_KEY: {"bert.encoder.layer.0.intermediate.dense": 18}}
    # A second call factorizes other layers and keeps the first ones in the spec.
    factorize_linears(model, 4, pattern=r"layer\.1\.intermediate\.dense$")
    assert structure.spec_of(model.config) == {
        LOWRANK_KEY: {"bert.encoder.layer.0.intermediate.dense": 18, "bert.encoder.layer.1.intermediate.dense": 4}
    }


@pytest.mark.parametrize(
    ("rank", "pattern", "message"),
    [
        (0, FFN_PATTERN, r"rank must be at least 1, got 0"),
        (8, r"no_such_layer", r"matches no Linear layer of BertForSequenceClassification; check the module names"),
        (8, r"(", r"is not a valid regular expression"),
        (22, FFN_PATTERN, r"rank 22 saves no parameters on any of the 3 layers .*; use a rank of at most 21"),
        (4, r"layer\.0\.intermediate", r"a factor of an already factorized layer; factorize once"),
    ],
)
def test_bad_requests_are_refused(tiny: tuple[Any, Any], rank: int, pattern: str, message: str) -> None:
    model = copy.deepcopy(tiny[0])
    factorize_linears(model, 8, pattern=r"layer\.0\.intermediate\.dense$")
    before = structure.spec_of(model.config)
    with pytest.raises(ConfigError, match=message):
        factorize_linears(model, rank, pattern=pattern)
    assert structure.spec_of(model.config) == before


def test_saved_model_loads_back_exactly(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    model, tokenizer = tiny
    factorized = copy.deepcopy(model)
    factorize_linears(factorized, 8, pattern=FFN_PATTERN)
    factorized.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config[structure.SPEC_ATTR] == {LOWRANK_KEY: dict.fromkeys(FFN_NAMES, 8)}
    loaded = load_pretrained(tmp_path)
    assert all(isinstance(loaded.get_submodule(n), LowRankLinear) for n in FFN_NAMES)
    factors = [loaded.get_submodule(n) for n in FFN_NAMES]
    restore.restore(loaded)  # a second restore finds the layers rebuilt and keeps them (and their weights)
    assert [loaded.get_submodule(n) for n in FFN_NAMES] == factors
    for got, want in zip(_outputs(loaded, tokenizer), _outputs(factorized, tokenizer), strict=True):
        assert torch.equal(got, want)


def test_pruned_then_factorized_model_loads_back_exactly(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    """Pruning records the FFN's new width ("linears"); the factors' shapes then come from that entry."""
    model, tokenizer = tiny
    compressed = copy.deepcopy(model)
    keep = pruning.Importance(heads=torch.ones(2, 2), neurons=torch.arange(64.0).repeat(2, 1), examples=1)
    pruning.prune(compressed, keep, heads=None, neurons=32)
    info = factorize_linears(compressed, 8, pattern=FFN_PATTERN)
    assert info["layers"]["bert.encoder.layer.0.intermediate.dense"]["shape"] == [32, 32]
    compressed.save_pretrained(tmp_path)
    loaded = load_pretrained(tmp_path)
    low: Any = loaded.get_submodule("bert.encoder.layer.0.intermediate.dense")
    assert low.down.weight.shape == (8, 32) and low.up.weight.shape == (32, 8)
    assert torch.equal(_outputs(loaded, tokenizer)[0], _outputs(compressed, tokenizer)[0])


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ([8], r"is not a \{module name: rank\} mapping"),
        ({FFN_NAMES[0]: 0}, r"has rank 0, not a positive integer"),
        ({"bert.nowhere": 8}, r"names bert.nowhere, which BertForSequenceClassification does not have"),
        ({"bert.encoder.layer.0": 8}, r"a BertLayer, not a Linear layer; re-save the model"),
    ],
)
def test_a_malformed_spec_is_refused(tiny: tuple[Any, Any], entry: Any, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        restore_lowrank(copy.deepcopy(tiny[0]), entry)


def test_onnx_export_matches_pytorch(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    import onnxruntime as ort

    from llmzip.onnx.export import input_names, write_onnx

    model, tokenizer = tiny
    factorized = copy.deepcopy(model)
    factorize_linears(factorized, 8, pattern=FFN_PATTERN)
    names = input_names(tokenizer)
    enc = tokenizer(TEXTS, padding=True, return_tensors="np")
    feeds = {n: enc[n].astype(np.int64) for n in names}
    path = tmp_path / "model.onnx"
    write_onnx(factorized, names, feeds, path, opset=17, source=tmp_path)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]
    assert np.abs(got - _outputs(factorized, tokenizer)[1].numpy()).max() < 1e-5


def test_calibrate_quantize_export_runs_the_factors_as_int8(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    """Each factor is an ordinary Linear to quantize; export's own checks refuse a factor left in fp32."""
    from llmzip.artifact import read_manifest
    from tests.conftest import int8_chain

    model, tokenizer = tiny
    factorized = copy.deepcopy(model)
    factorize_linears(factorized, 8, pattern=FFN_PATTERN)
    d = int8_chain(factorized, tokenizer, tmp_path)
    layers = json.loads((d["int8"] / "quantization.json").read_text())["layers"]
    factors = [f"{n}.{f}" for n in FFN_NAMES for f in ("down", "up")]
    assert set(factors) <= set(layers) and not set(FFN_NAMES) & set(layers)
    quantized = read_manifest(d["int8"])
    exported = read_manifest(d["onnx"])
    assert quantized is not None and exported is not None
    # 2 layers × (q, k, v, attention out) + 8 factors; the pooler and classifier stay fp32 (the default exclude).
    assert quantized["metrics"]["quantized_layers"] == 16 and quantized["metrics"]["fp32_linear_layers"] == 2
    metrics = exported["metrics"]
    assert metrics["precision"] == "int8" and metrics["int8_kernels"] >= 16
    assert metrics["float_weight_matmuls"] <= 2
    assert metrics["parity"]["max_abs_diff"] <= metrics["parity"]["tolerance"]
