"""run: the whole chain from configs/tiny.yaml, manifests chained parent to child."""

from __future__ import annotations

import json
from pathlib import Path

from llmzip.artifact import read_manifest, sha256_file
from tests.conftest import REPO, invoke, invoke_json


def test_tiny_recipe_end_to_end(tiny_base: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke_json(
        "run", REPO / "configs" / "tiny.yaml", "--out", out, "--model", tiny_base, "--set", "bench.iterations=3"
    )
    assert (out / "run.json").exists()
    assert set(result["stages"]) >= {"teacher", "student", "calibration", "quantized", "onnx_int8", "bench"}
    chain = ["teacher", "student", "student-int8"]
    for parent, child in zip(chain, chain[1:]):
        m = read_manifest(out / child)
        assert m is not None and m["parents"][0]["sha256"] == sha256_file(out / parent / "manifest.json")
    names = {v["name"] for v in result["bench"]["variants"]}
    assert names == {"teacher-torch-fp32", "teacher-ort-fp32", "student-ort-fp32", "student-llmzip-int8"}
    assert json.loads((out / "bench" / "results.json").read_text())["config"]["iterations"] == 3

    again = invoke("run", REPO / "configs" / "tiny.yaml", "--out", out, "--model", tiny_base)
    assert again.exit_code == 3 and "--overwrite" in again.stderr


def test_bad_override_names_the_key(tiny_base: Path, tmp_path: Path) -> None:
    result = invoke("run", REPO / "configs" / "tiny.yaml", "--out", tmp_path / "r", "--set", "distill.layerz=[0]")
    assert result.exit_code == 2 and "distill.layerz: unknown key" in result.stderr
    result = invoke("run", tmp_path / "missing.yaml", "--out", tmp_path / "r")
    assert result.exit_code == 2 and "no such recipe file" in result.stderr
    assert not (tmp_path / "r").exists()


def test_shipped_recipes_validate() -> None:
    from llmzip.recipe import load_recipe, read_yaml

    for name in ("tiny.yaml", "demo.yaml", "sst2-minilm.yaml"):
        recipe = load_recipe(read_yaml(REPO / "configs" / name))
        assert {"calibrate", "quantize", "export", "bench"} <= set(recipe.stages)
