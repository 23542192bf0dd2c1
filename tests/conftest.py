"""Session fixtures: tiny BERTs built offline from configs, and a full tiny chain reused by many tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llmzip.cli import app
from llmzip.data import DEMO_DATASET
from llmzip.testing import build_tiny_bert, build_tiny_llama, demo_text

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEMO_VALIDATION = DEMO_DATASET / "validation.tsv"


def invoke(*args: Any) -> Any:
    """Run the CLI in-process; stdout and stderr kept apart so --json output can be parsed."""
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def invoke_json(*args: Any) -> dict[str, Any]:
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def int8_chain(model: Any, tokenizer: Any, root: Path) -> dict[str, Path]:
    """Save an in-memory model, then calibrate → quantize → export it through the CLI; the stage directories."""
    d = {k: root / k for k in ("model", "calib", "int8", "onnx")}
    model.save_pretrained(d["model"])
    tokenizer.save_pretrained(d["model"])
    for args in (
        ("calibrate", d["model"], "-o", d["calib"], "--num-samples", 16, "--batch-size", 16),
        ("quantize", d["model"], d["calib"], "-o", d["int8"]),
        ("export", d["int8"], "-o", d["onnx"]),
    ):
        result = invoke(*args)
        assert result.exit_code == 0, f"{args[0]}: {result.stderr}"
    return d


def refresh_manifest(directory: Path) -> None:
    """After a test edits an artifact's files on purpose, record them again so the integrity check accepts them
    (what an artifact written by an older llmzip, or differently, would look like)."""
    from llmzip.artifact import MANIFEST, file_table

    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["files"] = file_table(directory)
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2))


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 'pretrained' tiny encoder without a task head (what finetune starts from)."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 4-layer classifier folder with no manifest: an external model, as users bring from the hub."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny") / "classifier", num_layers=4, classifier=True)


@pytest.fixture(scope="session")
def chain(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path) -> dict[str, Path]:
    """finetune → distill → calibrate → quantize → export, once per session, through the CLI."""
    root = tmp_path_factory.mktemp("chain")
    d = {k: root / k for k in ("teacher", "student", "calib", "int8", "onnx_int8", "onnx_fp32")}
    steps = [
        ("finetune", tiny_base, "-o", d["teacher"], "--epochs", 2, "--batch-size", 16, "--lr", 1e-3),
        ("distill", d["teacher"], "-o", d["student"], "--num-layers", 1, "--epochs", 1, "--batch-size", 16),
        ("calibrate", d["student"], "-o", d["calib"], "--num-samples", 48, "--batch-size", 16),
        ("quantize", d["student"], d["calib"], "-o", d["int8"]),
        ("export", d["int8"], "-o", d["onnx_int8"]),
        ("export", d["teacher"], "-o", d["onnx_fp32"]),
    ]
    for args in steps:
        result = invoke(*args)
        assert result.exit_code == 0, f"{args[0]} failed: {result.stderr}"
    return d


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Llama (hidden 64, 256 positions) imported, calibrated on the demo text, int4 and exported (fused)."""
    root = tmp_path_factory.mktemp("tiny-lm")
    base = build_tiny_llama(root / "base", hidden=64)
    text = root / "corpus.raw"
    text.write_text(demo_text())
    d = {"base": base, "text": text, **{k: root / k for k in ("imported", "calib", "int4", "onnx")}}
    steps = [
        ("import", base, "-o", d["imported"]),
        ("calibrate", d["imported"], "--data", text, "--max-length", 32, "--num-samples", 8, "-o", d["calib"]),
        ("quantize", d["imported"], d["calib"], "-o", d["int4"], "--weight-bits", 4, "--weight-block-size", 16),
        ("export", d["int4"], "-o", d["onnx"]),
    ]
    for args in steps:
        result = invoke(*args)
        assert result.exit_code == 0, f"{args[0]} failed: {result.stderr}"
    return d


def compress_recipe(path: Path, teacher: Path, candidates: list[dict[str, Any]], drop: float = 100.0) -> Path:
    """A compress recipe for the tiny teacher: short sequences, small bench shapes."""
    import yaml

    values = {
        "model": str(teacher),
        "data": {"max_length": 32},
        "distill": {"batch_size": 16, "learning_rate": 1.0e-3},
        "export": {"parity_samples": 8},
        # The demo sample has no test split: the report reads train (the search selects on validation), which the
        # tiny search only needs to be a different split (llmzip/search/splits.py).
        "bench": {"batch_sizes": [1, 4], "seq_len": 32, "data": {"eval_split": "train"}},
        "compress": {"max_accuracy_drop": drop, "candidates": candidates},
    }
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="session")
def finished_search(tmp_path_factory: pytest.TempPathFactory, chain: dict[str, Path]) -> dict[str, Path]:
    """A finished one-candidate compress search (the teacher in int8) of the tiny chain's teacher."""
    root = tmp_path_factory.mktemp("search")
    recipe = compress_recipe(root / "compress.yaml", chain["teacher"], [{"name": "teacher-int8", "distill": None}])
    result = invoke("compress", "--recipe", recipe, "-o", root / "search", "--quick")
    assert result.exit_code == 0, result.stderr
    return {"recipe": recipe, "out": root / "search"}


@pytest.fixture(scope="session", autouse=True)
def _private_teacher_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never write the teacher-logit cache into the user's ~/.cache."""
    import os

    os.environ["LLMZIP_CACHE"] = str(tmp_path_factory.mktemp("llmzip-cache"))
