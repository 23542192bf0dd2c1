"""Embedding compression: vocabulary pruning, low-rank factorization, position trimming, and their persistence."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from llmzip.errors import ArtifactError, ConfigError
from llmzip.shrink.embeddings import (
    STRUCTURE_ATTR,
    FactorizedEmbedding,
    RemappedEmbedding,
    factorize_embedding,
    inner_table,
    prune_vocabulary,
    restore_embeddings,
    task_vocabulary,
    trim_positions,
    unknown_rate,
)
from llmzip.testing import build_tiny_bert

TRAIN: list[str | tuple[str, str]] = [
    "an utterly charming film",
    "dull , slow and far too long",
    ("charming", "the best meal"),
]
KEPT_TEXT = "charming and slow film"
# "truck" is in the tiny tokenizer's vocabulary but not in TRAIN
UNKEPT_TEXT, UNK_TEXT = "charming truck film", "charming [UNK] film"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """A tiny BERT classifier (hidden 32, 2 layers, 1,221-token WordLevel vocabulary) and its tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = build_tiny_bert(tmp_path_factory.mktemp("emb") / "clf", classifier=True)
    return AutoModelForSequenceClassification.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _logits(model: Any, tokenizer: Any, texts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(texts, padding=True, return_tensors="pt")).logits


def _hidden(model: Any, tokenizer: Any, texts: list[str]) -> torch.Tensor:
    """The encoder's last hidden states: what the logits are made of (a random tiny head's 2 logits are too few
    numbers to show a trend)."""
    with torch.no_grad():
        enc = tokenizer(texts, padding=True, return_tensors="pt")
        return model(**enc, output_hidden_states=True).hidden_states[-1]


def _pruned(tiny: tuple[Any, Any]) -> tuple[Any, list[int]]:
    model, tokenizer = copy.deepcopy(tiny[0]), tiny[1]
    # the first 600 ids too, so that the table stays taller than it is wide ("truck" is id 1104)
    kept = sorted({*task_vocabulary(tokenizer, TRAIN), *range(600)})
    prune_vocabulary(model, kept, unk_id=tokenizer.unk_token_id)
    return model, kept


def test_task_vocabulary_and_unknown_rate(tiny: tuple[Any, Any]) -> None:
    tokenizer = tiny[1]
    kept = task_vocabulary(tokenizer, TRAIN)
    words = {w for t in TRAIN for part in ([t] if isinstance(t, str) else t) for w in part.split()}
    assert kept == sorted({tokenizer.convert_tokens_to_ids(w) for w in words} | set(tokenizer.all_special_ids))
    twice = task_vocabulary(tokenizer, TRAIN, min_count=2)  # only "charming" occurs twice
    assert twice == sorted({tokenizer.convert_tokens_to_ids("charming"), *tokenizer.all_special_ids})
    assert unknown_rate(tokenizer, [UNKEPT_TEXT, KEPT_TEXT], kept) == pytest.approx(1 / 7)
    with pytest.raises(ConfigError, match="min_count"):
        task_vocabulary(tokenizer, TRAIN, min_count=0)


def test_pruning_keeps_logits_and_maps_the_rest_to_unk(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    pruned, kept = _pruned(tiny)
    table = pruned.get_input_embeddings()
    assert isinstance(table, RemappedEmbedding) and inner_table(table).weight.shape == (len(kept), 32)
    assert pruned.config.vocab_size == model.config.vocab_size  # the tokenizer's ids are unchanged
    assert torch.equal(_logits(pruned, tokenizer, [KEPT_TEXT]), _logits(model, tokenizer, [KEPT_TEXT]))
    assert tokenizer.convert_tokens_to_ids("truck") not in kept
    assert torch.equal(_logits(pruned, tokenizer, [UNKEPT_TEXT]), _logits(model, tokenizer, [UNK_TEXT]))
    assert not torch.equal(_logits(model, tokenizer, [UNKEPT_TEXT]), _logits(model, tokenizer, [UNK_TEXT]))
    spec = getattr(pruned.config, STRUCTURE_ATTR)["embeddings"]
    assert spec["vocab"] == model.config.vocab_size and spec["rows"] == len(kept) and spec["rank"] is None


def test_nearest_maps_a_dropped_word_to_its_most_similar_kept_word(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = copy.deepcopy(tiny[0]), tiny[1]
    truck, film = tokenizer.convert_tokens_to_ids("truck"), tokenizer.convert_tokens_to_ids("film")
    with torch.no_grad():  # "truck" points the same way as "film" (a longer vector): film is its nearest row
        model.get_input_embeddings().weight[truck] = 2.0 * model.get_input_embeddings().weight[film]
    reference = copy.deepcopy(model)
    kept = sorted({*task_vocabulary(tokenizer, TRAIN), *range(600)})
    assert truck not in kept and film in kept
    info = prune_vocabulary(model, kept, unk_id=tokenizer.unk_token_id, nearest=True)
    assert info["unkept_read_as"] == "nearest kept row"
    assert torch.equal(_logits(model, tokenizer, [UNKEPT_TEXT]), _logits(reference, tokenizer, ["charming film film"]))
    assert torch.equal(_logits(model, tokenizer, [UNK_TEXT]), _logits(reference, tokenizer, [UNK_TEXT]))


def test_pruning_refuses_what_it_cannot_do(tiny: tuple[Any, Any]) -> None:
    from transformers import BertConfig, BertForMaskedLM

    tokenizer = tiny[1]
    lm = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(ConfigError, match="output head shares the embedding table") as err:
        prune_vocabulary(lm, list(range(10)), unk_id=1)
    assert "\n" not in str(err.value)
    model = copy.deepcopy(tiny[0])
    with pytest.raises(ConfigError, match="unknown token id 1 is not among the kept ids"):
        prune_vocabulary(model, [0, 2, 3], unk_id=1)
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        prune_vocabulary(model, [1, 10**6], unk_id=1)
    pruned, kept = _pruned(tiny)
    with pytest.raises(ConfigError, match="prune first, then factorize"):
        prune_vocabulary(pruned, kept, unk_id=tokenizer.unk_token_id)


def test_factorization_error_and_logits_follow_the_rank(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    pruned, _ = _pruned(tiny)
    texts = [KEPT_TEXT, UNKEPT_TEXT]
    reference, logits = _hidden(pruned, tokenizer, texts), _logits(pruned, tokenizer, texts)
    source: Any = inner_table(pruned.get_input_embeddings())
    weight = source.weight.detach().clone()
    errors, changes = [], []
    for rank in (4, 16, 31):
        factored = copy.deepcopy(pruned)
        info = factorize_embedding(factored, rank)
        emb = factored.get_input_embeddings()
        assert isinstance(emb, FactorizedEmbedding) and emb.lookup is not None
        table: Any = inner_table(emb)
        rebuilt = table.weight.detach() @ emb.project.weight.detach().t()
        assert info["relative_error"] == pytest.approx(float((weight - rebuilt).norm() / weight.norm()), rel=1e-4)
        assert info["params_after"] == weight.shape[0] * rank + rank * 32
        errors.append(info["relative_error"])
        changes.append(float((_hidden(factored, tokenizer, texts) - reference).norm() / reference.norm()))
        assert float((_logits(factored, tokenizer, texts) - logits).abs().max()) < 0.1
    singular = torch.linalg.svdvals(weight.double())
    assert errors[2] == pytest.approx(float(singular[-1] / singular.norm()), rel=1e-4)  # Eckart–Young at H − 1
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.2
    assert changes[0] > changes[1] > changes[2]
    with pytest.raises(ConfigError, match=r"rank must be in \[1, 31\] for a 6\d\d×32 word table"):
        factorize_embedding(copy.deepcopy(pruned), 32)
    full = copy.deepcopy(model)
    factorize_embedding(full, 16)  # without pruning: every row, no lookup
    assert full.get_input_embeddings().lookup is None
    with pytest.raises(ConfigError, match="already factorized"):
        factorize_embedding(full, 8)


def _compressed(tiny: tuple[Any, Any]) -> Any:
    pruned, _ = _pruned(tiny)
    factorize_embedding(pruned, 8)
    trim_positions(pruned, 64)
    return pruned


def test_saved_model_rebuilds_from_its_config(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from llmzip.modeling import load_pretrained

    tokenizer = tiny[1]
    compressed = _compressed(tiny)
    compressed.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.max_position_embeddings == 64
    rebuilt = AutoModelForSequenceClassification.from_config(config)
    restore_embeddings(rebuilt, getattr(config, STRUCTURE_ATTR)["embeddings"])
    rebuilt.load_state_dict(load_file(str(tmp_path / "model.safetensors")), strict=True)
    texts = [KEPT_TEXT, UNKEPT_TEXT]
    want = _logits(compressed, tokenizer, texts)
    assert torch.equal(_logits(rebuilt.eval(), tokenizer, texts), want)
    assert torch.equal(_logits(load_pretrained(tmp_path), tokenizer, texts), want)
    fresh = AutoModelForSequenceClassification.from_config(config)
    with pytest.raises(ArtifactError, match="llmzip_structure.embeddings is malformed .*; re-run the stage"):
        restore_embeddings(fresh, {"vocab": 3})


def test_onnx_graph_reads_the_original_ids(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    from llmzip.onnx.export import input_names, write_onnx

    tokenizer = tiny[1]
    compressed = _compressed(tiny)
    names = input_names(tokenizer)
    enc = tokenizer([KEPT_TEXT, UNKEPT_TEXT], padding=True, return_tensors="np")
    feeds = {n: enc[n].astype(np.int64) for n in names}
    assert tokenizer.convert_tokens_to_ids("truck") in feeds["input_ids"]  # an id outside the kept rows
    path = tmp_path / "model.onnx"
    write_onnx(compressed, names, feeds, path, opset=17, source=tmp_path)
    graph = onnx.load(str(path)).graph
    ids = next(i for i in graph.input if i.name == "input_ids")
    assert ids.type.tensor_type.elem_type == onnx.TensorProto.INT64
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]
    with torch.no_grad():
        want = compressed(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
    assert np.abs(got - want).max() < 1e-5


def test_trim_positions(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    trimmed = copy.deepcopy(model)
    info = trim_positions(trimmed, 16)
    assert trimmed.config.max_position_embeddings == 16 and info["max_tokens"] == 16
    embeddings = trimmed.bert.embeddings
    assert embeddings.position_embeddings.weight.shape == (16, 32) and embeddings.position_ids.shape == (1, 16)
    assert torch.equal(_logits(trimmed, tokenizer, [KEPT_TEXT]), _logits(model, tokenizer, [KEPT_TEXT]))
    for bad in (0, 17):
        with pytest.raises(ConfigError, match=r"position length must be in \[1, 16\]"):
            trim_positions(trimmed, bad)


def test_int8_rows_of_the_inner_table(tiny: tuple[Any, Any]) -> None:
    from llmzip.quant.modules import QuantEmbedding, replace_linears

    tokenizer = tiny[1]
    for compress in (lambda m: m, lambda m: factorize_embedding(m, 8)):
        model, _ = _pruned(tiny)
        compress(model)
        wrapper = model.get_input_embeddings()
        table: Any = inner_table(wrapper)
        names = [n for n, m in model.named_modules() if m is table]
        assert names == ["bert.embeddings.word_embeddings.table"]
        before = sum(t.numel() * t.element_size() for t in table.state_dict().values())
        quantized = copy.deepcopy(model)
        replace_linears(quantized, names, lambda n, e: QuantEmbedding.from_float(e))
        assert quantized.get_input_embeddings().__class__ is wrapper.__class__  # the wrapper stays
        q = quantized.get_submodule(names[0])
        assert isinstance(q, QuantEmbedding) and q.weight_q.dtype == torch.int8
        assert q.row_scale.shape == (table.weight.shape[0],)  # one scale per row
        after = sum(t.numel() * t.element_size() for t in q.state_dict().values())
        width = table.weight.shape[1]
        assert after / before == pytest.approx((width + 4) / (4 * width))  # ~4× smaller: int8 + one fp32 per row
        diff = (_logits(quantized, tokenizer, [KEPT_TEXT]) - _logits(model, tokenizer, [KEPT_TEXT])).abs().max()
        assert float(diff) < 0.05


def test_chain_calibrate_quantize_export(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    """A pruned + factorized model goes through calibrate → quantize → export: the table is int8 rows under its
    own name, `project` is an ordinary int8 Linear, and the graph still reads the tokenizer's ids."""
    import json

    from llmzip.artifact import read_manifest
    from llmzip.shrink.embeddings import EMBEDDINGS_KEY
    from tests.conftest import int8_chain

    tokenizer = tiny[1]
    model, _ = _pruned(tiny)
    factorize_embedding(model, 8)
    d = int8_chain(model, tokenizer, tmp_path)
    spec = json.loads((d["int8"] / "quantization.json").read_text())
    assert spec["embeddings"] == ["bert.embeddings.word_embeddings.table"]
    assert "bert.embeddings.word_embeddings.project" in spec["layers"]
    config = json.loads((d["int8"] / "config.json").read_text())
    assert config[STRUCTURE_ATTR][EMBEDDINGS_KEY]["rank"] == 8
    manifest = read_manifest(d["onnx"])
    assert manifest is not None and manifest["metrics"]["int8_kernels"] >= manifest["metrics"]["quantized_layers"]
    assert isinstance(inner_table(model.get_input_embeddings()), nn.Embedding)
