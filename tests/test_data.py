"""The dataset loader: local folders/files in every format, column checks, label mapping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmzip.config import DataConfig
from llmzip.data import DEMO_DATASET, label_ids, label_names, load_split
from llmzip.errors import DataError


def test_demo_sample_is_the_default() -> None:
    loaded = load_split(DataConfig(), "train")
    assert loaded is not None
    ds, source = loaded
    assert len(ds) == 320 and source.files == [DEMO_DATASET / "train.tsv"]
    assert label_names(ds, DataConfig()) == ["0", "1"]


def test_tsv_with_quotes_is_read_verbatim(tmp_path: Path) -> None:
    (tmp_path / "train.tsv").write_text('sentence\tlabel\na "quoted" film\t1\nit \'s bad\t0\n')
    ds, _ = load_split(DataConfig(dataset=str(tmp_path)), "train")  # type: ignore[misc]
    assert ds["sentence"] == ['a "quoted" film', "it 's bad"]


def test_jsonl_csv_and_string_labels(tmp_path: Path) -> None:
    rows = [{"text": "good", "y": "pos"}, {"text": "bad", "y": "neg"}]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "validation.csv").write_text("text,y\nfine,pos\n")
    cfg = DataConfig(dataset=str(tmp_path), text_column="text", label_column="y")
    train, _ = load_split(cfg, "train")  # type: ignore[misc]
    names = label_names(train, cfg)
    assert names == ["neg", "pos"]
    assert label_ids(train, cfg, {n: i for i, n in enumerate(names)}) == [1, 0]
    val, _ = load_split(cfg, "validation")  # type: ignore[misc]
    assert len(val) == 1
    with pytest.raises(DataError, match="not one the model knows"):
        label_ids(val, cfg, {"a": 0, "b": 1})


def test_missing_split_column_and_path_messages(tmp_path: Path) -> None:
    (tmp_path / "train.tsv").write_text("sentence\tlabel\nx\t1\n")
    with pytest.raises(DataError, match="no file for split 'test'.*found: train.tsv"):
        load_split(DataConfig(dataset=str(tmp_path)), "test")
    assert load_split(DataConfig(dataset=str(tmp_path)), "test", optional=True) is None
    with pytest.raises(DataError, match="no column 'review'.*--text-column"):
        load_split(DataConfig(dataset=str(tmp_path), text_column="review"), "train")
    with pytest.raises(DataError, match="no such file or folder"):
        load_split(DataConfig(dataset=str(tmp_path / "nope.tsv")), "train")


def test_subset_is_seeded(tmp_path: Path) -> None:
    a, _ = load_split(DataConfig(), "train", limit=10, seed=1, shuffle=True)  # type: ignore[misc]
    b, _ = load_split(DataConfig(), "train", limit=10, seed=1, shuffle=True)  # type: ignore[misc]
    c, _ = load_split(DataConfig(), "train", limit=10, seed=2, shuffle=True)  # type: ignore[misc]
    assert a["sentence"] == b["sentence"] != c["sentence"]
