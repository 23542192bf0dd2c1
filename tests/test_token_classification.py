"""Token classification end to end (the task seam's proof): the metric's chunking rules, first-sub-token labels, and
a tiny BERT through finetune → distill → calibrate → quantize → export → bench on CoNLL-style word/tag data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmzip import metrics
from llmzip.config import DataConfig
from llmzip.testing import build_tiny_bert, write_tiny_ner
from tests.conftest import invoke, invoke_json


def test_entities_follow_conlleval_chunking() -> None:
    assert metrics.entities(["B-PER", "I-PER", "O", "B-LOC"]) == {("PER", 0, 2), ("LOC", 3, 4)}
    assert metrics.entities(["O", "I-PER", "I-PER"]) == {("PER", 1, 3)}  # I- after O opens an entity
    assert metrics.entities(["B-PER", "I-LOC"]) == {("PER", 0, 1), ("LOC", 1, 2)}  # a type change closes one
    assert metrics.entities(["B-PER", "B-PER"]) == {("PER", 0, 1), ("PER", 1, 2)}  # B- always opens a new one
    assert metrics.entities(["S-ORG", "B-MISC", "E-MISC"]) == {("ORG", 0, 1), ("MISC", 1, 3)}  # IOBES


def test_entity_f1_is_micro_averaged_over_exact_spans() -> None:
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    predicted = [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "O"]]  # PER span cut short: wrong; LOC, ORG right
    scores = metrics.entity_f1(predicted, gold)
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == pytest.approx(2 / 3)
    assert metrics.entity_f1(gold, gold)["f1"] == 1.0
    assert metrics.entity_f1([["O"] * 4, ["O", "O"]], gold)["f1"] == 0.0


def test_labels_sit_on_each_words_first_sub_token(tmp_path: Path) -> None:
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from llmzip.tasks.token_classification import encode_words

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "paris", "un", "##believ", "##able"])}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
    ds = Dataset.from_dict({"tokens": [["unbelievable", "paris"]], "ner_tags": [["O", "B-LOC"]]})
    cfg = DataConfig(text_column="tokens", label_column="ner_tags")
    enc = encode_words(tokenizer, ds, cfg, {"O": 0, "B-LOC": 1}, max_length=16, padding="max_length")
    ids = enc["input_ids"][0]
    assert ids[:6] == [2, 5, 6, 7, 4, 3]  # [CLS] un ##believ ##able paris [SEP]
    assert enc["labels"][0][:6] == [-100, 0, -100, -100, 1, -100]
    assert set(enc["labels"][0][6:]) == {-100}  # padding is never scored


@pytest.fixture(scope="module")
def ner_chain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("ner")
    data = write_tiny_ner(root / "data")
    base = build_tiny_bert(root / "base")
    d = {k: root / k for k in ("teacher", "student", "calib", "int8", "onnx", "bench")}
    columns = ["--data", data, "--text-column", "tokens", "--label-column", "ner_tags"]
    out: dict[str, Any] = {"data": data, "dirs": d, "columns": columns}
    out["teacher"] = invoke_json(
        "finetune", base, "--task", "token-classification", *columns, "--eval-split", "validation",
        "--epochs", 8, "--lr", 3e-3, "-o", d["teacher"],
    )  # fmt: skip
    out["student"] = invoke_json(
        "distill", d["teacher"], *columns, "--eval-split", "validation", "--num-layers", 1,
        "--epochs", 4, "--lr", 3e-3, "-o", d["student"],
    )  # fmt: skip
    invoke_json("calibrate", d["student"], *columns, "--num-samples", 32, "-o", d["calib"])
    invoke_json("quantize", d["student"], d["calib"], "-o", d["int8"])
    out["export"] = invoke_json("export", d["int8"], *columns, "--eval-split", "validation", "-o", d["onnx"])
    out["bench"] = invoke_json(
        "bench", d["teacher"], d["onnx"], *columns, "--eval-split", "validation", "--seq-len", 64,
        "--batch-sizes", 1, "--iterations", 5, "-o", d["bench"],
    )  # fmt: skip
    return out


def test_finetune_learns_word_tags_and_reports_entity_f1(ner_chain: dict[str, Any]) -> None:
    teacher = ner_chain["teacher"]["metrics"]
    assert teacher["eval_f1"] > 0.4  # an untrained head scores ~0 on this data: the tags were learned
    config = json.loads((ner_chain["dirs"]["teacher"] / "config.json").read_text())
    assert config["architectures"] == ["BertForTokenClassification"] and "B-PER" in config["label2id"]
    student = ner_chain["student"]["metrics"]
    assert student["student_layers"] == [1] or len(student["student_layers"]) == 1
    assert student["teacher_eval_f1"] == pytest.approx(teacher["eval_f1"], abs=1e-3)


def test_int8_export_scores_like_pytorch_and_keeps_the_sequence_axis(ner_chain: dict[str, Any]) -> None:
    import onnxruntime as ort

    parity = ner_chain["export"]["metrics"]["parity"]
    assert parity["task_accuracy"]["metric"] == "f1"
    assert abs(parity["task_accuracy"]["onnx"] - parity["task_accuracy"]["pytorch"]) <= 0.02
    assert ner_chain["export"]["metrics"]["int8_kernels"] > 0
    session = ort.InferenceSession(str(ner_chain["dirs"]["onnx"] / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {i.name: np.ones((2, 7), dtype=np.int64) for i in session.get_inputs()}
    assert session.run(["logits"], feeds)[0].shape[:2] == (2, 7)  # one tag distribution per token


def test_bench_reports_entity_f1_for_each_variant(ner_chain: dict[str, Any]) -> None:
    rows = ner_chain["bench"]["variants"]
    assert {r["metric"] for r in rows} == {"f1"}
    teacher, onnx = (next(r for r in rows if r["name"] == n) for n in ("teacher", "onnx"))
    assert teacher["accuracy"] == pytest.approx(ner_chain["teacher"]["metrics"]["eval_f1"], abs=1e-3)
    assert onnx["accuracy"] is not None and onnx["accuracy"] > 0.2
    assert "| f1 |" in (ner_chain["dirs"]["bench"] / "report.md").read_text()


def test_token_options_are_refused_where_they_do_not_apply(ner_chain: dict[str, Any], tmp_path: Path) -> None:
    columns = ner_chain["columns"]
    result = invoke("distill", ner_chain["dirs"]["teacher"], *columns, "--augment-pairs", 8, "-o", tmp_path / "s")
    assert result.exit_code != 0 and "augment_pairs" in result.stderr and "sequence classifiers" in result.stderr
    assert not (tmp_path / "s").exists()
    base = build_tiny_bert(tmp_path / "base")
    rows = tmp_path / "one-label.jsonl"
    rows.write_text(json.dumps({"tokens": ["a", "film"], "label": 1}) + "\n")
    one = invoke(
        "finetune", base, "--task", "token-classification", "--data", rows, "--text-column", "tokens",
        "--max-steps", 1, "-o", tmp_path / "t",
    )  # fmt: skip
    assert one.exit_code != 0 and "one tag per word" in one.stderr and not (tmp_path / "t").exists()
    text = invoke(
        "finetune",
        base,
        "--task",
        "token-classification",
        "--max-steps",
        1,
        "-o",
        tmp_path / "t2",
    )  # the demo sample: plain sentences with one label each
    assert text.exit_code != 0 and "one tag per word" in text.stderr
    assert len(text.stderr.strip().splitlines()) == 1


def test_parity_compares_real_tokens_only() -> None:
    from llmzip.stages.export import real_positions

    logits = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    feeds = {"attention_mask": np.array([[1, 1, 0], [1, 0, 0]])}
    assert real_positions(logits, feeds).tolist() == [[0, 1], [2, 3], [6, 7]]  # padding positions are never read
    assert real_positions(logits[:, 0], feeds).shape == (2, 2)  # one vector per sequence: as is


def test_word_list_data_without_the_task_says_which_task(ner_chain: dict[str, Any], tmp_path: Path) -> None:
    base = build_tiny_bert(tmp_path / "base")
    result = invoke("finetune", base, *ner_chain["columns"], "--max-steps", 1, "-o", tmp_path / "t")
    assert result.exit_code != 0 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip().splitlines()[-1].startswith("error: ") and "--task token-classification" in result.stderr
    )
    assert not (tmp_path / "t").exists()
