"""distill: students cut from teacher layers, initialised from them, refusing the wrong inputs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from llmzip.artifact import read_manifest
from llmzip.errors import ModelError
from llmzip.modeling import evenly_spaced, layer_stack, load_pretrained, select_layers
from tests.conftest import invoke


def test_evenly_spaced_matches_distilbert() -> None:
    assert evenly_spaced(6, 3) == [0, 2, 4]
    assert evenly_spaced(12, 6) == [0, 2, 4, 6, 8, 10]
    assert evenly_spaced(4, 4) == [0, 1, 2, 3]
    with pytest.raises(ModelError):
        evenly_spaced(6, 7)


def test_select_layers_copies_the_chosen_teacher_layers(tiny_classifier: Path) -> None:
    teacher = load_pretrained(tiny_classifier)
    student = select_layers(copy.deepcopy(teacher), [1, 3])
    _, t_stack = layer_stack(teacher)
    _, s_stack = layer_stack(student)
    assert len(s_stack) == 2 and student.config.num_hidden_layers == 2
    for s_i, t_i in ((0, 1), (1, 3)):
        for (name, a), (_, b) in zip(s_stack[s_i].state_dict().items(), t_stack[t_i].state_dict().items()):
            assert torch.equal(a, b), name
    with pytest.raises(ModelError, match="do not exist"):
        select_layers(copy.deepcopy(teacher), [0, 9])


def test_student_directory(chain: dict[str, Path]) -> None:
    m = read_manifest(chain["student"])
    assert m is not None and m["stage"] == "distill"
    assert m["parents"][0]["stage"] == "finetune"
    assert m["parents"][0]["sha256"] == read_manifest_hash(chain["teacher"])
    assert m["metrics"]["student_layers"] == [0] and m["metrics"]["teacher_layers"] == 2
    assert m["metrics"]["student_params"] < m["metrics"]["teacher_params"]
    assert m["config"]["temperature"] == 2.0 and m["config"]["alpha"] == 0.5
    student = load_pretrained(chain["student"])
    assert student.config.num_hidden_layers == 1


def read_manifest_hash(path: Path) -> str:
    from llmzip.artifact import sha256_file

    return sha256_file(path / "manifest.json")


def test_explicit_layers_and_kd_flags(chain: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "s"
    result = invoke(
        "distill",
        chain["teacher"],
        "-o",
        out,
        "--layers",
        "1",
        "--temperature",
        4,
        "--alpha",
        0.9,
        "--max-steps",
        2,
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    m = read_manifest(out)
    assert m is not None and m["metrics"]["student_layers"] == [1] and m["config"]["temperature"] == 4.0


def test_refuses_calibration_dir_and_bad_layers(chain: dict[str, Path], tmp_path: Path) -> None:
    result = invoke("distill", chain["calib"], "-o", tmp_path / "s", "--num-layers", 1)
    assert result.exit_code == 3 and "is a calibrate artifact" in result.stderr
    result = invoke("distill", chain["teacher"], "-o", tmp_path / "s", "--layers", "0,5")
    assert result.exit_code == 5 and "do not exist" in result.stderr
    result = invoke("distill", chain["teacher"], "-o", tmp_path / "s")
    assert result.exit_code == 2 and "num_layers" in result.stderr
    assert not (tmp_path / "s").exists()
