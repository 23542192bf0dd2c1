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
