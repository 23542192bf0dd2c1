"""Identical inputs and config give identical files: every stage run twice writes the same bytes (the manifest's
file table compares every file but the manifest, whose creation time and duration differ by nature)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import invoke


def _files(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "manifest.json").read_text())["files"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("stage", ["finetune", "distill", "calibrate", "quantize", "export"])
def test_a_stage_run_twice_writes_the_same_bytes(
    stage: str, chain: dict[str, Path], tiny_classifier: Path, tmp_path: Path
) -> None:
    args = {
        "finetune": ["finetune", tiny_classifier, "--max-steps", 3, "--batch-size", 8],
        "distill": ["distill", chain["teacher"], "--num-layers", 1, "--max-steps", 3, "--batch-size", 8],
        "calibrate": ["calibrate", tiny_classifier, "--num-samples", 16],  # a plain folder: its head is kept
        "quantize": ["quantize", chain["student"], chain["calib"], "--attention"],
        "export": ["export", chain["int8"]],
    }[stage]
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        result = invoke(*args, "-o", out)
        assert result.exit_code == 0, result.stderr[-1500:]
    first, second = (_files(o) for o in outs)
    assert first == second
    assert first  # the table is not empty: there was something to compare


def test_a_folder_without_a_task_head_gets_the_same_head_in_every_stage(tiny_base: Path, tmp_path: Path) -> None:
    """A plain encoder folder: the head transformers adds is initialised from a fixed seed, not at random."""
    assert invoke("calibrate", tiny_base, "-o", tmp_path / "calib", "--num-samples", 16).exit_code == 0
    for out in ("a", "b"):
        result = invoke("quantize", tiny_base, tmp_path / "calib", "-o", tmp_path / out, "--target-cpu", "vnni")
        assert result.exit_code == 0, result.stderr[-1500:]
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
