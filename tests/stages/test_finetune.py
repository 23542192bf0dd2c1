"""finetune through the CLI: a classifier directory with its manifest, and one-line failures."""

from __future__ import annotations

from pathlib import Path

from llmzip.artifact import read_manifest
from tests.conftest import invoke


def test_teacher_manifest_and_files(chain: dict[str, Path], tiny_base: Path) -> None:
    m = read_manifest(chain["teacher"])
    assert m is not None and m["stage"] == "finetune"
    assert m["parents"][0]["path"] == str(tiny_base) and m["parents"][0]["stage"] == "external"
    assert m["inputs"]["train"]["rows"] == 320 and m["inputs"]["eval"]["rows"] == 80
    assert m["inputs"]["train"]["sha256"]
    assert m["config"]["epochs"] == 2 and m["config"]["data"]["max_length"] == 128
    assert 0.0 <= m["metrics"]["eval_accuracy"] <= 1.0 and m["metrics"]["steps"] == 40
    for f in ("model.safetensors", "config.json", "tokenizer.json"):
        assert f in m["files"]
    assert not (chain["teacher"] / "_trainer").exists()
    assert not any(p.name.startswith(".") for p in chain["teacher"].parent.iterdir())  # no staging leftovers


def test_missing_data_fails_in_one_line_and_writes_nothing(tiny_base: Path, tmp_path: Path) -> None:
    out = tmp_path / "ft"
    result = invoke("finetune", tiny_base, "-o", out, "--data", tmp_path / "nope.tsv")
    assert result.exit_code == 4
    assert "no such file or folder" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_wrong_label_column(tiny_base: Path, tmp_path: Path) -> None:
    result = invoke("finetune", tiny_base, "-o", tmp_path / "ft", "--label-column", "stars")
    assert result.exit_code == 4 and "--label-column" in result.stderr


def test_refuses_to_overwrite(chain: dict[str, Path], tiny_base: Path) -> None:
    result = invoke("finetune", tiny_base, "-o", chain["teacher"], "--max-steps", 1)
    assert result.exit_code == 3 and "--overwrite" in result.stderr
