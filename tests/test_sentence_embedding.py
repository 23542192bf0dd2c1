"""Sentence embeddings through the task seam: a sentence-transformers folder's pooling is read and kept, the ONNX
graph outputs the pooled vector, and STS-B's metric (Spearman of pair cosines) scores it in every runtime."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from llmzip import metrics
from llmzip.tasks.sentence_embedding import read_spec, write_st_files
from llmzip.testing import build_tiny_bert, demo_vocabulary
from tests.conftest import invoke


def test_spearman_matches_the_textbook_definition_with_ties() -> None:
    x = np.array([1.0, 2.0, 2.0, 3.0, 5.0, 4.0])
    y = np.array([2.0, 1.0, 4.0, 3.0, 6.0, 5.0])
    # average ranks of x: 1, 2.5, 2.5, 4, 6, 5; Pearson of the ranks by hand
    rx, ry = np.array([1, 2.5, 2.5, 4, 6, 5]), np.array([2, 1, 4, 3, 6, 5], dtype=float)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    assert metrics.spearman(x, y) == pytest.approx((rx * ry).sum() / np.sqrt((rx**2).sum() * (ry**2).sum()))
    assert metrics.spearman(x, x) == pytest.approx(1.0) and metrics.spearman(x, -x) == pytest.approx(-1.0)


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("emb")
    folder = build_tiny_bert(root / "st")
    write_st_files(folder, {"pooling": "mean", "normalize": True, "max_seq_length": 64}, 32)
    words = [w for w in demo_vocabulary() if w.isalpha() and not w.startswith("[")]
    rng = random.Random(0)
    (root / "sts").mkdir()
    for split in ("train", "test"):
        with (root / "sts" / f"{split}.tsv").open("w", newline="") as f:
            out = csv.writer(f, delimiter="\t")
            out.writerow(["sentence1", "sentence2", "score"])
            for _ in range(40):
                a = rng.sample(words, 5)
                b = a[: rng.randint(0, 5)] + rng.sample(words, 5)
                out.writerow([" ".join(a), " ".join(b[:5]), f"{5 * len(set(a) & set(b[:5])) / 5:.3f}"])
    return {"model": folder, "data": root / "sts", "root": root}


STS = ("--text-column", "sentence1", "--text-pair-column", "sentence2", "--label-column", "score")


def test_the_folder_pooling_is_read_and_the_onnx_graph_embeds_like_pytorch(embedder: dict[str, Path]) -> None:
    import onnxruntime as ort
    from transformers import AutoModel, AutoTokenizer

    assert read_spec(embedder["model"]) == {"pooling": "mean", "normalize": True, "max_seq_length": 64}
    assert read_spec(embedder["root"]) is None  # not a sentence-transformers folder
    out = embedder["root"] / "onnx"
    result = invoke("export", embedder["model"], "-o", out, "--data", embedder["data"], "--eval-split", "test", *STS)
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"] == "sentence-embedding"
    accuracy = manifest["metrics"]["parity"]["task_accuracy"]
    assert accuracy["metric"] == "spearman" and accuracy["onnx"] == pytest.approx(accuracy["pytorch"], abs=1e-3)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["sentence_embedding", "token_embeddings"]
    tokenizer = AutoTokenizer.from_pretrained(embedder["model"])
    enc = tokenizer(["good movie", "a bad and boring film"], padding=True, return_tensors="np")
    got, tokens = session.run(None, {k: v.astype(np.int64) for k, v in enc.items()})
    encoder = AutoModel.from_pretrained(embedder["model"]).eval()  # the reference: mean over real tokens, L2-normed
    with torch.no_grad():
        states = encoder(**{k: torch.from_numpy(v) for k, v in enc.items()}).last_hidden_state
    mask = torch.from_numpy(enc["attention_mask"]).unsqueeze(-1).float()
    want = torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    assert np.abs(got - want).max() < 1e-5 and tokens.shape[:2] == enc["input_ids"].shape
    assert np.allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5)


def test_int8_embedder_keeps_its_pooling_and_is_benched_by_spearman(embedder: dict[str, Path]) -> None:
    root, data = embedder["root"], ("--data", embedder["data"], *STS)
    for args in (
        ("calibrate", embedder["model"], "-o", root / "cal", "--num-samples", 32, *data),
        ("quantize", embedder["model"], root / "cal", "-o", root / "q"),
        ("export", root / "q", "-o", root / "q-onnx"),
    ):
        result = invoke(*args)
        assert result.exit_code == 0, result.stderr
    assert json.loads((root / "q" / "config.json").read_text())["llmzip_sentence_embedding"]["pooling"] == "mean"
    bench = invoke(
        "bench", embedder["model"], root / "q-onnx", *data, "--eval-split", "test", "--seq-len", 32,
        "--batch-sizes", "1", "--iterations", 3, "--json",
    )  # fmt: skip
    assert bench.exit_code == 0, bench.stderr
    rows = json.loads(bench.stdout)["variants"]
    assert all(-1 <= r["accuracy"] <= 1 for r in rows) and rows[0]["accuracy"] != 0
    unpaired = invoke(
        "bench", root / "q-onnx", "--data", embedder["data"], "--text-column", "sentence1", "--label-column", "score",
        "--eval-split", "test", "--seq-len", 32,
    )  # fmt: skip
    assert unpaired.exit_code != 0 and "--text-pair-column" in unpaired.stderr


def test_a_student_learns_the_teacher_embeddings_without_labels(embedder: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "student"
    data = ("--data", embedder["data"], *STS, "--eval-split", "test")
    result = invoke("distill", embedder["model"], "-o", out, "--num-layers", 1, "--max-steps", 6, "--alpha", 1, *data)
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"] == "sentence-embedding" and manifest["inputs"]["train"]["rows"] == 80  # both columns
    assert -1 <= manifest["metrics"]["eval_spearman"] <= 1
    assert manifest["metrics"]["stages"]["prediction"]["teacher_logits"] == "cached"  # the teacher's vectors
    # a sentence-transformers folder again: pooling files beside the encoder's own weights and config
    assert read_spec(out) == {"pooling": "mean", "normalize": True, "max_seq_length": 64}
    assert not any(k.startswith("model.") for k in load_file(str(out / "model.safetensors")))
    again = invoke("export", out, "-o", tmp_path / "onnx", "--data", embedder["data"], *STS, "--eval-split", "test")
    assert again.exit_code == 0, again.stderr


def test_students_an_embedder_cannot_have_yet_are_refused_in_one_line(
    embedder: dict[str, Path], tmp_path: Path
) -> None:
    result = invoke("distill", embedder["model"], "-o", tmp_path / "s", "--num-layers", 1, "--keep-heads", 1)
    assert result.exit_code != 0 and "keep_heads=1" in result.stderr and "sentence-embedding" in result.stderr
    assert not (tmp_path / "s").exists()


def test_compress_plans_layer_subset_students_for_an_embedder_and_budgets_in_spearman(
    embedder: dict[str, Path], tmp_path: Path
) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: {embedder['model']}\n"
        f"data: {{dataset: {embedder['data']}, text_column: sentence1, text_pair_column: sentence2, "
        "label_column: score, eval_split: train}\n"
        "bench: {data: {eval_split: test}}\n"
        "compress: {max_accuracy_drop: 100}\n"
    )
    result = invoke("compress", "--recipe", recipe, "--quick", "-o", tmp_path / "c")
    assert result.exit_code == 0, result.stderr
    out = json.loads((tmp_path / "c" / "results.json").read_text())
    assert out["teacher"]["metric"] == "spearman"
    assert [c["name"] for c in out["candidates"]] == ["teacher-int8", "1L-int8"]
    assert all("error" not in c and -1 <= c["accuracy"] <= 1 for c in out["candidates"])
    assert out["best"] in {"teacher-int8", "1L-int8"}
    assert "| candidate | spearman |" in result.stdout  # the table names the metric the budget is in
