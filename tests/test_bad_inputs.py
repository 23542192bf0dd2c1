"""Bad input through the real CLI: one `error:` line that names the fix, a non-zero exit, no traceback, no output
left behind and nothing the user had changed. Each case builds its own broken input in a temporary folder."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.bad_inputs_verbs import CASES as VERB_CASES
from tests.badinput import Case, Env
from tests.conftest import DEMO_VALIDATION, invoke


def _nan_model(env: Env) -> Path:
    model = env.model_copy()
    state = load_file(str(model / "model.safetensors"))
    key = next(k for k, v in state.items() if v.is_floating_point() and "classifier" in k)
    state[key][0] = float("nan")
    save_file(state, str(model / "model.safetensors"), metadata={"format": "pt"})
    return model


def _auto_map_model(env: Env) -> Path:
    model = env.model_copy()
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_evil.EvilModel"}
    (model / "config.json").write_text(json.dumps(config))
    (model / "modeling_evil.py").write_text("raise SystemExit('custom code ran')\n")
    return model


def _pickle_model(env: Env) -> Path:
    model = env.model_copy()
    torch.save(load_file(str(model / "model.safetensors")), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    return model


def _edit(directory: Path, name: str, change: Callable[[bytes], bytes]) -> Path:
    file = directory / name
    file.write_bytes(change(file.read_bytes()))
    return directory


def _without(directory: Path, name: str) -> Path:
    (directory / name).unlink()
    return directory


def _manifest(directory: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    manifest = json.loads((directory / "manifest.json").read_text())
    change(manifest)
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


TSV = "sentence\tlabel\n"
CASES: dict[str, Callable[[Env], Case]] = {
    # Output paths that would destroy an input or an earlier result
    "calibrate-out-is-its-input": lambda e: Case(
        ["calibrate", e.copy("student"), "-o", e.tmp / "copy-student", "--overwrite"],
        "is the input",
        keep=[e.tmp / "copy-student"],
    ),
    "export-out-is-its-input": lambda e: Case(
        ["export", e.copy("int8"), "-o", e.tmp / "copy-int8", "--overwrite"], "is the input", keep=[e.tmp / "copy-int8"]
    ),
    "quantize-out-is-the-calibration": lambda e: Case(
        ["quantize", e.chain["student"], e.copy("calib"), "-o", e.tmp / "copy-calib", "--overwrite"],
        "is the input",
        keep=[e.tmp / "copy-calib"],
    ),
    "calibrate-out-inside-its-input": lambda e: Case(
        ["calibrate", e.copy("student"), "-o", e.tmp / "copy-student" / "calib"],
        "is inside the input",
        keep=[e.tmp / "copy-student"],
    ),
    "calibrate-out-contains-its-input": lambda e: Case(
        ["calibrate", e.copy("student"), "-o", e.tmp, "--overwrite"],
        "contains the input",
        keep=[e.tmp / "copy-student"],
    ),
    "finetune-out-is-the-base-model": lambda e: Case(
        ["finetune", e.model_copy(), "-o", e.tmp / "model", "--overwrite"], "is the input", keep=[e.tmp / "model"]
    ),
    "distill-out-is-the-teacher": lambda e: Case(
        ["distill", e.copy("teacher"), "-o", e.tmp / "copy-teacher", "--overwrite"],
        "is the input",
        keep=[e.tmp / "copy-teacher"],
    ),
    "bench-out-is-a-model": lambda e: Case(
        ["bench", e.copy("onnx_int8"), "--data", DEMO_VALIDATION, "-o", e.tmp / "copy-onnx_int8", "--overwrite"],
        "is the input",
        keep=[e.tmp / "copy-onnx_int8"],
    ),
    "run-out-is-the-recipes-model": lambda e: Case(
        [
            "run",
            e.recipe(f"model: {e.model_copy()}\ncalibrate: {{}}\nquantize: {{}}\nexport: {{}}\n"),
            "--out",
            e.tmp / "model",
            "--overwrite",
        ],
        "is the input",
        keep=[e.tmp / "model"],
    ),
    "calibrate-out-is-the-data-folder": lambda e: Case(
        [
            "calibrate",
            e.chain["student"],
            "--data",
            e.write("d.tsv", TSV + "good\t1\n"),
            "-o",
            e.tmp / "d.tsv",
            "--overwrite",
        ],
        "is the input",
        keep=[e.tmp / "d.tsv"],
    ),
    "calibrate-existing-out": lambda e: Case(
        ["calibrate", e.chain["student"], "-o", e.copy("calib")],
        "already exists; pass --overwrite",
        keep=[e.tmp / "copy-calib"],
    ),
    "bench-existing-out-refused-up-front": lambda e: Case(
        ["bench", e.chain["onnx_int8"], "--data", DEMO_VALIDATION, "-o", e.copy("calib")],
        "already exists",
        keep=[e.tmp / "copy-calib"],
    ),
    "run-existing-out": lambda e: Case(
        [
            "run",
            e.recipe(f"model: {e.base}\ncalibrate: {{}}\nquantize: {{}}\nexport: {{}}\n"),
            "--out",
            e.copy("calib"),
        ],
        "already exists",
        keep=[e.tmp / "copy-calib"],
    ),
    "out-under-a-file": lambda e: Case(
        ["calibrate", e.chain["student"], "-o", e.write("afile", "x") / "sub"], "is a file, not a folder"
    ),
    "out-is-a-file": lambda e: Case(
        ["calibrate", e.chain["student"], "-o", e.write("afile", "x"), "--overwrite"],
        "not a directory",
        keep=[e.tmp / "afile"],
    ),
    # Wrong or missing inputs
    "calibrate-missing-dir": lambda e: Case(
        ["calibrate", e.tmp / "nope", "-o", e.tmp / "o"], "no such directory", out=e.tmp / "o"
    ),
    "calibrate-a-file": lambda e: Case(
        ["calibrate", e.write("f.txt", "x"), "-o", e.tmp / "o"], "not a directory", out=e.tmp / "o"
    ),
    "quantize-a-teacher-as-calibration": lambda e: Case(
        ["quantize", e.chain["student"], e.chain["teacher"], "-o", e.tmp / "o"],
        "is a finetune artifact",
        out=e.tmp / "o",
    ),
    "export-a-calibration": lambda e: Case(
        ["export", e.chain["calib"], "-o", e.tmp / "o"], "is a calibrate artifact", out=e.tmp / "o"
    ),
    "bench-a-calibration": lambda e: Case(
        ["bench", e.chain["calib"], "--data", DEMO_VALIDATION], "is a calibrate artifact"
    ),
    "finetune-typo-local-path": lambda e: Case(
        ["finetune", "tests/teachr", "-o", e.tmp / "o"], "no such directory", out=e.tmp / "o"
    ),  # tests/ exists
    "calibrate-calibration-of-another-model": lambda e: Case(
        ["quantize", e.chain["teacher"], e.chain["calib"], "-o", e.tmp / "o"], "was recorded on", out=e.tmp / "o"
    ),
    # Corrupt artifacts: integrity beyond the manifest
    "manifest-truncated": lambda e: Case(
        ["export", _edit(e.copy("int8"), "manifest.json", lambda b: b[: len(b) // 2]), "-o", e.tmp / "o"],
        "not valid JSON",
        out=e.tmp / "o",
    ),
    "manifest-not-a-dict": lambda e: Case(
        ["export", _edit(e.copy("int8"), "manifest.json", lambda b: b"[1, 2]"), "-o", e.tmp / "o"],
        "not an llmzip manifest",
        out=e.tmp / "o",
    ),
    "manifest-newer-schema": lambda e: Case(
        ["export", _manifest(e.copy("int8"), lambda m: m.update(schema_version=99)), "-o", e.tmp / "o"],
        "newer llmzip",
        out=e.tmp / "o",
    ),
    "weights-replaced-same-size": lambda e: Case(
        ["export", _edit(e.copy("int8"), "model.safetensors", lambda b: b[:-8] + b"\x00" * 8), "-o", e.tmp / "o"],
        "changed since",
        out=e.tmp / "o",
    ),
    "weights-truncated": lambda e: Case(
        ["calibrate", _edit(e.copy("student"), "model.safetensors", lambda b: b[:100]), "-o", e.tmp / "o"],
        "changed since",
        out=e.tmp / "o",
    ),
    "listed-file-deleted": lambda e: Case(
        ["export", _without(e.copy("int8"), "quantization.json"), "-o", e.tmp / "o"], "missing", out=e.tmp / "o"
    ),
    "quantization-json-garbage": lambda e: Case(
        ["export", _edit(e.copy("int8"), "quantization.json", lambda b: b"{garbage"), "-o", e.tmp / "o"],
        "changed since",
        out=e.tmp / "o",
    ),
    "histograms-garbage": lambda e: Case(
        [
            "quantize",
            e.chain["student"],
            _edit(e.copy("calib"), "activation_histograms.safetensors", lambda b: b"\x00" * len(b)),
            "-o",
            e.tmp / "o",
        ],
        "changed since",
        out=e.tmp / "o",
    ),
    "calibration-parents-empty": lambda e: Case(
        ["quantize", e.chain["student"], _manifest(e.copy("calib"), lambda m: m.update(parents=[])), "-o", e.tmp / "o"],
        "names no model",
        out=e.tmp / "o",
    ),
    "calibration-parent-hash-zeroed": lambda e: Case(
        [
            "quantize",
            e.chain["student"],
            _manifest(e.copy("calib"), lambda m: m["parents"][0].update(sha256="0" * 64)),
            "-o",
            e.tmp / "o",
        ],
        "was recorded on",
        out=e.tmp / "o",
    ),
    "bench-onnx-truncated": lambda e: Case(
        ["bench", _edit(e.copy("onnx_int8"), "model.onnx", lambda b: b[: len(b) // 3]), "--data", DEMO_VALIDATION],
        "changed since",
    ),
    "bench-onnx-missing": lambda e: Case(
        ["bench", _without(e.copy("onnx_int8"), "model.onnx"), "--data", DEMO_VALIDATION], "missing"
    ),
    # Non-finite values
    "calibrate-nan-weights": lambda e: Case(
        ["calibrate", _nan_model(e), "-o", e.tmp / "o"], "NaN/Inf", out=e.tmp / "o"
    ),
    "export-nan-weights": lambda e: Case(["export", _nan_model(e), "-o", e.tmp / "o"], "NaN/Inf", out=e.tmp / "o"),
    "bench-nan-weights": lambda e: Case(["bench", _nan_model(e), "--data", DEMO_VALIDATION], "NaN/Inf"),
    "finetune-nan-weights": lambda e: Case(["finetune", _nan_model(e), "-o", e.tmp / "o"], "NaN/Inf", out=e.tmp / "o"),
    "distill-nan-teacher": lambda e: Case(
        ["distill", _nan_model(e), "-o", e.tmp / "o", "--num-layers", 1], "NaN/Inf", out=e.tmp / "o"
    ),
    # Code and pickle from model folders
    "calibrate-remote-code": lambda e: Case(
        ["calibrate", _auto_map_model(e), "-o", e.tmp / "o"], "auto_map", out=e.tmp / "o"
    ),
    "finetune-remote-code": lambda e: Case(
        ["finetune", _auto_map_model(e), "-o", e.tmp / "o"], "auto_map", out=e.tmp / "o"
    ),
    "export-pickle-weights": lambda e: Case(
        ["export", _pickle_model(e), "-o", e.tmp / "o"], "--allow-pickle", out=e.tmp / "o"
    ),
    "calibrate-pickle-weights": lambda e: Case(
        ["calibrate", _pickle_model(e), "-o", e.tmp / "o"], "pickle", out=e.tmp / "o"
    ),
    # Lengths beyond the model's 256 positions
    "calibrate-max-length-512": lambda e: Case(
        ["calibrate", e.chain["student"], "-o", e.tmp / "o", "--max-length", 512],
        "256 token positions",
        out=e.tmp / "o",
    ),
    "finetune-max-length-512": lambda e: Case(
        ["finetune", e.base, "-o", e.tmp / "o", "--max-length", 512], "256 token positions", out=e.tmp / "o"
    ),
    "distill-max-length-512": lambda e: Case(
        ["distill", e.chain["teacher"], "-o", e.tmp / "o", "--max-length", 512, "--num-layers", 1],
        "256 token positions",
        out=e.tmp / "o",
    ),
    "bench-seq-len-512": lambda e: Case(
        ["bench", e.chain["onnx_int8"], "--data", DEMO_VALIDATION, "--seq-len", 512], "256 token positions"
    ),
    # Data
    "data-missing-local-path": lambda e: Case(
        ["calibrate", e.chain["student"], "--data", "./nope.tsv", "-o", e.tmp / "o"], "no such file", out=e.tmp / "o"
    ),
    "data-empty-file": lambda e: Case(
        ["calibrate", e.chain["student"], "--data", e.write("e.tsv", ""), "-o", e.tmp / "o"],
        "the file is empty",
        out=e.tmp / "o",
    ),
    "data-header-only": lambda e: Case(
        ["calibrate", e.chain["student"], "--data", e.write("h.tsv", TSV), "-o", e.tmp / "o"],
        "no examples",
        out=e.tmp / "o",
    ),
    "data-ragged-row": lambda e: Case(
        ["calibrate", e.chain["student"], "--data", e.write("r.tsv", TSV + "a\t1\nb\t0\textra\n"), "-o", e.tmp / "o"],
        "Expected 2 fields",
        out=e.tmp / "o",
    ),
    "data-not-utf8": lambda e: Case(
        [
            "calibrate",
            e.chain["student"],
            "--data",
            e.write("l.tsv", b"sentence\tlabel\nna\xefve\xff\t1\n"),
            "-o",
            e.tmp / "o",
        ],
        "UTF-8",
        out=e.tmp / "o",
    ),
    "data-semicolon-txt": lambda e: Case(
        [
            "calibrate",
            e.chain["student"],
            "--data",
            e.write("s.txt", "sentence;label\ngood;1\nbad;0\n"),
            "-o",
            e.tmp / "o",
        ],
        "--delimiter ';'",
        out=e.tmp / "o",
    ),
    "data-missing-text-column": lambda e: Case(
        ["calibrate", e.chain["student"], "--data", DEMO_VALIDATION, "--text-column", "review", "-o", e.tmp / "o"],
        "no column 'review'",
        out=e.tmp / "o",
    ),
    "data-missing-label-column": lambda e: Case(
        ["finetune", e.base, "--data", DEMO_VALIDATION, "--label-column", "stars", "-o", e.tmp / "o"],
        "no column 'stars'",
        out=e.tmp / "o",
    ),
    "data-float-labels": lambda e: Case(
        ["finetune", e.base, "--data", e.write("f.tsv", TSV + "good\t0.5\nbad\t1.5\n"), "-o", e.tmp / "o"],
        "integers or strings",
        out=e.tmp / "o",
    ),
    "data-negative-labels": lambda e: Case(
        ["finetune", e.base, "--data", e.write("n.tsv", TSV + "good\t-1\nbad\t1\n"), "-o", e.tmp / "o"],
        ">= 0",
        out=e.tmp / "o",
    ),
    "data-unsupported-format": lambda e: Case(
        ["calibrate", e.chain["student"], "--data", e.write("d.xlsx", "x"), "-o", e.tmp / "o"],
        "unsupported format",
        out=e.tmp / "o",
    ),
    "data-missing-split": lambda e: Case(
        ["finetune", e.base, "--data", DEMO_VALIDATION.parent, "--train-split", "dev", "-o", e.tmp / "o"],
        "no file for split 'dev'",
        out=e.tmp / "o",
    ),
    "data-bad-delimiter": lambda e: Case(
        ["calibrate", e.chain["student"], "--data", DEMO_VALIDATION, "--delimiter", "::", "-o", e.tmp / "o"],
        "delimiter",
        out=e.tmp / "o",
    ),
    "data-unseen-label-in-eval": lambda e: Case(
        ["bench", e.chain["onnx_int8"], "--data", e.write("u.tsv", TSV + "good\tneutral\n")], "not one the model knows"
    ),
    # Values and recipes
    "smoothquant-above-1": lambda e: Case(
        ["quantize", e.chain["student"], e.chain["calib"], "-o", e.tmp / "o", "--smoothquant", 1.5],
        "[0, 1]",
        out=e.tmp / "o",
    ),
    "smoothquant-negative": lambda e: Case(
        ["quantize", e.chain["student"], e.chain["calib"], "-o", e.tmp / "o", "--smoothquant", -1],
        "[0, 1]",
        out=e.tmp / "o",
    ),
    "percentile-100": lambda e: Case(
        [
            "quantize",
            e.chain["student"],
            e.chain["calib"],
            "-o",
            e.tmp / "o",
            "--method",
            "percentile",
            "--percentile",
            100,
        ],
        "percentile",
        out=e.tmp / "o",
    ),
    "saturation-margin-below-1": lambda e: Case(
        ["quantize", e.chain["student"], e.chain["calib"], "-o", e.tmp / "o", "--saturation-margin", 0.5],
        "saturation_margin",
        out=e.tmp / "o",
    ),
    "attention-with-everything-excluded": lambda e: Case(
        ["quantize", e.chain["student"], e.chain["calib"], "-o", e.tmp / "o", "--attention", "--exclude", "attention"],
        "drop --attention",
        out=e.tmp / "o",
    ),
    "num-samples-zero": lambda e: Case(
        ["calibrate", e.chain["student"], "-o", e.tmp / "o", "--num-samples", 0], "num_samples", out=e.tmp / "o"
    ),
    "recipe-unknown-key": lambda e: Case(
        ["calibrate", e.chain["student"], "-o", e.tmp / "o", "--recipe", e.recipe("calibrate: {num_sample: 3}\n")],
        "num_sample",
        out=e.tmp / "o",
    ),
    "recipe-missing-file": lambda e: Case(
        ["calibrate", e.chain["student"], "-o", e.tmp / "o", "--recipe", e.tmp / "none.yaml"],
        "none.yaml",
        out=e.tmp / "o",
    ),
    "recipe-not-yaml": lambda e: Case(
        ["calibrate", e.chain["student"], "-o", e.tmp / "o", "--recipe", e.recipe("calibrate: [unclosed\n")],
        "recipe.yaml",
        out=e.tmp / "o",
    ),
    "recipe-python-object-tag": lambda e: Case(
        ["run", e.recipe("model: !!python/object/apply:os.system ['echo pwned']\n"), "--out", e.tmp / "o"],
        "recipe.yaml",
        out=e.tmp / "o",
    ),
    "bench-gate-without-two-models": lambda e: Case(
        ["bench", e.chain["onnx_int8"], "--data", DEMO_VALIDATION, "--min-speedup", 2], "at least two models"
    ),
}


def _snapshot(paths: list[Path]) -> dict[str, str]:
    out = {}
    for root in paths:
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


ALL_CASES = {**CASES, **VERB_CASES}


def test_there_are_at_least_sixty_distinct_stage_cases_and_forty_for_the_new_verbs() -> None:
    assert len(CASES) >= 60 and len(VERB_CASES) >= 40 and not CASES.keys() & VERB_CASES.keys()


@pytest.mark.parametrize("name", sorted(ALL_CASES))
def test_bad_input_gets_one_line_and_loses_nothing(
    name: str,
    chain: dict[str, Path],
    tiny_base: Path,
    tiny_classifier: Path,
    tiny_lm: dict[str, Path],
    finished_search: dict[str, Path],
    tmp_path: Path,
) -> None:
    env = Env(tmp_path / "work", chain, tiny_base, tiny_classifier, tiny_lm, finished_search)
    env.tmp.mkdir()
    case = ALL_CASES[name](env)
    # Every file the user has: the case's own work folder and the shared inputs it reads.
    watched = [env.tmp, *case.keep, *chain.values(), *tiny_lm.values(), finished_search["out"]]
    before = _snapshot(watched)
    existed = case.out is not None and case.out.exists()
    result = invoke(*case.args)  # catch_exceptions=False: a traceback fails the test by itself
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert result.exit_code not in (0, None), result.stderr[-1500:]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr[-1500:]
    assert case.words in errors[0], errors[0]
    assert "Traceback" not in result.stderr
    assert _snapshot(watched) == before  # nothing the user had was changed, added or removed
    if case.out is not None and not existed:
        assert not case.out.exists()
    leftovers = [p.name for p in env.tmp.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name or p.suffix == ".lock"]
    assert leftovers == []
