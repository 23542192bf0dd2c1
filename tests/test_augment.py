"""Joined-text augmentation for distillation: deterministic synthetic rows, labelled by the teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmzip.errors import ConfigError
from llmzip.shrink.augment import joined_texts
from tests.conftest import invoke


def test_joined_texts_are_seeded_pairs_of_distinct_rows() -> None:
    texts = ["good", "bad", "fine", "awful"]
    first = joined_texts(texts, 20, seed=0)
    assert first == joined_texts(texts, 20, seed=0) and first != joined_texts(texts, 20, seed=1)
    for t in first:
        a, b = t.split(" ")
        assert a in texts and b in texts and a != b
    with pytest.raises(ConfigError, match="at least two"):
        joined_texts(["only"], 3, seed=0)


def test_distill_trains_on_the_augmented_rows(tmp_path: Path, chain: dict[str, Path]) -> None:
    out = tmp_path / "student"
    args = ("distill", chain["teacher"], "-o", out, "--num-layers", 1, "--max-steps", 4, "--batch-size", 16)
    result = invoke(*args, "--augment-pairs", 50, "--max-train-samples", 100, "--json")
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"]["train"]["rows"] == 150
    assert manifest["config"]["augment_pairs"] == 50


def test_word_swaps_take_the_nearest_whole_words_of_the_teacher_embeddings(tiny_classifier: Path) -> None:
    import torch

    from llmzip.modeling import load_pretrained, load_tokenizer
    from llmzip.shrink.augment import embedding_neighbours, swapped_texts

    teacher, tokenizer = load_pretrained(tiny_classifier), load_tokenizer(tiny_classifier)
    vocab = tokenizer.get_vocab()
    words = [w for w in vocab if w.isalpha() and w not in tokenizer.all_special_tokens][:3]
    table = teacher.get_input_embeddings().weight
    with torch.no_grad():  # make words[1] the exact direction of words[0]: its nearest neighbour
        table[vocab[words[1]]] = 3.0 * table[vocab[words[0]]]
    near = embedding_neighbours(teacher, tokenizer, {words[0], "notaword"}, k=4)
    assert set(near) == {words[0]} and near[words[0]][0] == words[1] and words[0] not in near[words[0]]
    assert all(n.isalpha() and not n.startswith("##") for n in near[words[0]])
    texts = [" ".join([words[0]] * 12), "too short"]
    out = swapped_texts(texts, near, 50, share=0.5, min_words=12, seed=0)
    assert out == swapped_texts(texts, near, 50, share=0.5, min_words=12, seed=0)  # seeded
    swapped = [w for t in out for w in t.split() if w != words[0]]
    assert all(len(t.split()) == 12 for t in out) and set(swapped) <= set(near[words[0]])
    assert 0.4 < len(swapped) / (50 * 12) < 0.6  # about the share asked for
    with pytest.raises(ConfigError, match="12 words"):
        swapped_texts(["too short"], near, 5, share=0.5, min_words=12, seed=0)


def test_distill_trains_on_swapped_rows(tmp_path: Path, chain: dict[str, Path]) -> None:
    import csv

    from llmzip.shrink.augment import SWAP_MIN_WORDS

    data = tmp_path / "data"
    data.mkdir()
    rows = [("the movie was good and the actors were fine and the plot was clever too", 1)] * 20
    rows += [("bad", 0)] * 20
    for split in ("train", "validation"):
        with (data / f"{split}.tsv").open("w", newline="") as f:
            w = csv.writer(f, delimiter="\t")
            w.writerow(["sentence", "label"])
            w.writerows(rows)
    assert len(rows[0][0].split()) >= SWAP_MIN_WORDS
    out = tmp_path / "student"
    args = ("distill", chain["teacher"], "-o", out, "--num-layers", 1, "--max-steps", 2, "--data", data)
    result = invoke(*args, "--augment-swaps", 30, "--json")
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"]["train"]["rows"] == 70 and manifest["config"]["augment_swaps"] == 30
