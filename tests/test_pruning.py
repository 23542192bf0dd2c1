"""Structured pruning (llmzip/shrink/pruning.py) and the structure spec that lets a pruned model load
(llmzip/shrink/structure.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from llmzip.errors import ConfigError, ModelError
from llmzip.modeling import load_pretrained
from llmzip.shrink import pruning, structure
from llmzip.testing import build_tiny_bert, demo_vocabulary

HEADS, HEAD_SIZE, FFN, LAYERS = 4, 8, 64, 2
ATT_OUT = "bert.encoder.layer.{}.attention.output.dense"
FFN_OUT = "bert.encoder.layer.{}.output.dense"


def tiny_model(seed: int = 0) -> Any:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=len(demo_vocabulary()),
        hidden_size=HEADS * HEAD_SIZE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        max_position_embeddings=64,
        # Larger than BERT's 0.02 so that removing a unit visibly moves the logits (the negative controls).
        initializer_range=0.3,
    )
    config.num_labels = 2
    torch.manual_seed(seed)
    return BertForSequenceClassification(config).eval()


def make_batches(count: int = 3, size: int = 4, length: int = 10) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(count):
        ids = torch.randint(5, 90, (size, length), generator=generator)
        mask = torch.ones(size, length, dtype=torch.long)
        mask[0, length // 2 :] = 0  # one padded row: scores must ignore its padding
        batches.append(
            {
                "input_ids": ids,
                "attention_mask": mask,
                "token_type_ids": torch.zeros_like(ids),
                "labels": torch.randint(0, 2, (size,), generator=generator),
            }
        )
    return batches


def ce_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).loss


def logits(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def zero_inputs(model: Any, names_units: dict[str, list[int]]) -> list[Any]:
    """Zero the given input columns of Linear layers (a head's context dims, a neuron's activation)."""

    def hook(units: list[int]) -> Any:
        def pre(_m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor]:
            x = inputs[0].clone()
            x[..., units] = 0
            return (x,)

        return pre

    return [model.get_submodule(n).register_forward_pre_hook(hook(u)) for n, u in names_units.items()]


def fake_scores(keep_heads: list[list[int]], keep_neurons: list[list[int]]) -> pruning.Importance:
    heads, neurons = torch.zeros(LAYERS, HEADS), torch.zeros(LAYERS, FFN)
    for i in range(LAYERS):
        heads[i, keep_heads[i]] = 1.0
        neurons[i, keep_neurons[i]] = 1.0
    return pruning.Importance(heads=heads, neurons=neurons, examples=1)


KEEP_HEADS = [[0, 2, 3], [0, 1, 3]]
KEEP_NEURONS = [list(range(0, FFN, 2)), list(range(1, FFN, 2))]


def test_pruning_equals_zeroing_the_removed_units() -> None:
    model, batch = tiny_model(), make_batches(1)[0]
    original = logits(model, batch)
    reference = copy.deepcopy(model)
    drop_heads = {
        ATT_OUT.format(i): [h * HEAD_SIZE + d for h in range(HEADS) if h not in KEEP_HEADS[i] for d in range(HEAD_SIZE)]
        for i in range(LAYERS)
    }
    drop_neurons = {FFN_OUT.format(i): sorted(set(range(FFN)) - set(KEEP_NEURONS[i])) for i in range(LAYERS)}

    head_only = copy.deepcopy(model)
    info = pruning.prune(head_only, fake_scores(KEEP_HEADS, KEEP_NEURONS), heads=3, neurons=None)
    handles = zero_inputs(reference, drop_heads)
    want = logits(reference, batch)
    assert (logits(head_only, batch) - want).abs().max() < 1e-5
    assert (want - original).abs().max() > 1e-3  # the removed heads mattered: the check above has teeth
    assert info["kept_heads"] == KEEP_HEADS and info["neurons_per_layer"] == [FFN, FFN]
    assert head_only.get_submodule("bert.encoder.layer.0.attention.self.query").out_features == 3 * HEAD_SIZE

    pruning.prune(model, fake_scores(KEEP_HEADS, KEEP_NEURONS), heads=3, neurons=FFN // 2)
    handles += zero_inputs(reference, drop_neurons)
    want = logits(reference, batch)
    assert (logits(model, batch) - want).abs().max() < 1e-5
    assert model.config.num_attention_heads == HEADS  # the head size still comes from it
    assert pruning.kept_heads(model) == KEEP_HEADS
    spec = structure.spec_of(model.config)
    assert spec is not None and spec["linears"][FFN_OUT.format(1)] == [HEADS * HEAD_SIZE, FFN // 2]
    for handle in handles:
        handle.remove()


def test_importance_scores_a_dead_head_and_neuron_zero_and_leaves_the_model_as_it_was() -> None:
    model = tiny_model()
    with torch.no_grad():
        model.get_submodule(ATT_OUT.format(1)).weight[:, 2 * HEAD_SIZE : 3 * HEAD_SIZE] = 0  # head 2 of layer 1
        model.get_submodule(FFN_OUT.format(0)).weight[:, 5] = 0  # neuron 5 of layer 0
    model.train()
    scores = pruning.importance(model, make_batches(), ce_loss)
    assert scores.heads.shape == (LAYERS, HEADS) and scores.neurons.shape == (LAYERS, FFN)
    assert scores.heads[1, 2] == 0 and int(scores.heads[1].argmin()) == 2
    assert scores.neurons[0, 5] == 0 and bool((scores.neurons[0, :5] > 0).all())
    assert torch.allclose(scores.heads.norm(dim=1), torch.ones(LAYERS))  # normalised per layer
    assert scores.examples == 12
    assert model.training and all(p.grad is None for p in model.parameters())

    info = pruning.prune(model, scores, heads=3, neurons=FFN - 1)
    assert 2 not in info["kept_heads"][1]
    assert model.get_submodule(FFN_OUT.format(0)).in_features == FFN - 1
    assert info["parameters"]["after"] < info["parameters"]["before"]


def test_importance_with_a_kd_loss_under_no_grad_and_a_frozen_model() -> None:
    student, teacher = tiny_model(), tiny_model(seed=1)

    def kd_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        features = {k: v for k, v in batch.items() if k != "labels"}
        with torch.no_grad():
            target = teacher(**features).logits.softmax(-1)
        return torch.nn.functional.cross_entropy(model(**features).logits, target)

    for p in student.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        scores = pruning.importance(student, make_batches(1), kd_loss)
    assert bool((scores.heads > 0).all()) and bool((scores.neurons.sum(1) > 0).all())
    assert not any(p.requires_grad for p in student.parameters())
    assert not student.training


def test_a_pruned_model_round_trips_through_save_and_load_pretrained(tmp_path: Path) -> None:
    model, batch = tiny_model(), make_batches(1)[0]
    pruning.prune(model, pruning.importance(model, make_batches(1), ce_loss), heads=2, neurons=16)
    model.save_pretrained(tmp_path / "pruned")
    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert config["llmzip_structure"]["linears"][FFN_OUT.format(0)] == [HEADS * HEAD_SIZE, 16]
    assert len(config["llmzip_structure"]["heads"][0]) == 2

    loaded = load_pretrained(tmp_path / "pruned")
    assert torch.equal(logits(loaded, batch), logits(model, batch))
    assert pruning.kept_heads(loaded) == pruning.kept_heads(model)
    # What distill (eager attention maps) and finetune (a new head for other labels) pass to load_pretrained.
    features = {k: v for k, v in batch.items() if k != "labels"}
    maps = load_pretrained(tmp_path / "pruned", attn_implementation="eager")(**features, output_attentions=True)
    assert [tuple(a.shape[:2]) for a in maps.attentions] == [(4, 2)] * LAYERS
    relabelled: Any = load_pretrained(tmp_path / "pruned", num_labels=3, ignore_mismatched_sizes=True)
    assert relabelled.classifier.out_features == 3
    assert torch.equal(
        relabelled.get_submodule(FFN_OUT.format(1)).weight, model.get_submodule(FFN_OUT.format(1)).weight
    )

    weights = tmp_path / "pruned" / "model.safetensors"
    state = load_file(str(weights))
    del state[FFN_OUT.format(1) + ".weight"]
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(ModelError, match=r"missing \['bert.encoder.layer.1.output.dense.weight'\]"):
        load_pretrained(tmp_path / "pruned")


def test_a_checkpoint_of_other_shapes_is_refused(tmp_path: Path) -> None:
    model = tiny_model()
    pruning.prune(model, fake_scores(KEEP_HEADS, KEEP_NEURONS), heads=3, neurons=None)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["llmzip_structure"]["linears"][ATT_OUT.format(0)] = [HEADS * HEAD_SIZE, 2 * HEAD_SIZE]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="does not belong to these weights"):
        load_pretrained(tmp_path)


def test_a_pruned_model_exports_to_onnx_with_the_same_logits(tmp_path: Path) -> None:
    from llmzip.config import ExportConfig
    from llmzip.modeling import load_tokenizer
    from llmzip.stages.export import export

    model = tiny_model()
    pruning.prune(model, fake_scores(KEEP_HEADS, KEEP_NEURONS), heads=3, neurons=FFN // 2)
    model.save_pretrained(tmp_path / "pruned")
    load_tokenizer(build_tiny_bert(tmp_path / "tokenizer")).save_pretrained(tmp_path / "pruned")
    out = export(tmp_path / "pruned", tmp_path / "onnx", config=ExportConfig(parity_samples=8))
    parity = json.loads((out / "manifest.json").read_text())["metrics"]["parity"]
    assert parity["max_abs_diff"] < 1e-4 and parity["max_abs_logit"] > 1e-2


def test_bad_counts_and_other_layouts_are_refused() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    model = tiny_model()
    scores = fake_scores(KEEP_HEADS, KEEP_NEURONS)
    for kwargs, option in (({"heads": 0, "neurons": None}, "heads"), ({"heads": None, "neurons": FFN + 1}, "neurons")):
        with pytest.raises(ConfigError, match=f"{option} must be between 1 and"):
            pruning.prune(model, scores, **kwargs)
    assert pruning.kept_heads(model) is None and not structure.has_structure(model.config)

    llama = LlamaForCausalLM(
        LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    )
    with pytest.raises(ModelError, match="supports BERT-style encoders .*; llama is not one"):
        pruning.prune(llama, scores, heads=2, neurons=None)
    with pytest.raises(ModelError, match="llama is not one"):
        pruning.importance(llama, make_batches(1), ce_loss)
