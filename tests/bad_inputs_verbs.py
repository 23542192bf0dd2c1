"""Bad-input cases for the verbs added after the classic stages (import, generate, compress), the causal-LM
options and mixed recipes; run by tests/test_bad_inputs.py with the same checks as the stage cases."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tests.badinput import Case, Env
from tests.conftest import DEMO_VALIDATION, compress_recipe, refresh_manifest


def tiny_gguf(path: Path) -> Path:
    """A well-formed GGUF file (llama metadata, one tensor) that is not a whole model."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _folder(env: Env, name: str, files: dict[str, bytes | Path]) -> Path:
    folder = env.tmp / name
    folder.mkdir()
    for file, content in files.items():
        target = folder / file
        if isinstance(content, Path):
            shutil.copy2(content, target)
        else:
            target.write_bytes(content)
    return folder


def _lm_copy(env: Env, name: str = "base") -> Path:
    return Path(shutil.copytree(env.lm[name], env.tmp / f"lm-{name}"))


def _auto_map(folder: Path, file: str) -> Path:
    values = json.loads((folder / file).read_text())
    values["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    (folder / file).write_text(json.dumps(values))
    (folder / "tokenization_evil.py").write_text("raise SystemExit('custom code ran')\n")
    return folder


def _search_copy(env: Env) -> Path:
    return Path(shutil.copytree(env.search["out"], env.tmp / "search"))


def _empty_samples(env: Env) -> Path:
    calib = Path(shutil.copytree(env.lm["calib"], env.tmp / "lm-calib"))
    (calib / "calibration_samples.jsonl").write_text("")
    refresh_manifest(calib)
    return calib


def _recipe(env: Env, text: str) -> Path:
    return env.write("recipe.yaml", text)


LM_BENCH = ["--max-length", 32, "--max-eval-samples", 2, "--prefill-lengths", 16, "--prompt-tokens", 8]
LM_BENCH += ["--new-tokens", 4, "--lm-repeats", 1]


def _run(env: Env, model: Path, section: str, words: str) -> Case:
    """`run` on a recipe whose extra `section` (YAML; it wins over the chain's own) does not fit the model."""
    sections = {"calibrate": "{}", "quantize": "{}", "export": "{}"}
    key, _, value = section.partition(": ")
    text = "\n".join(f"{k}: {v}" for k, v in {**sections, key: value}.items())
    recipe = _recipe(env, f"model: {model}\n{text}\n")
    return Case(["run", recipe, "--out", env.tmp / OUT], words, out=env.tmp / OUT)


def _lm_bench(env: Env, *extra: object) -> list[object]:
    return ["bench", env.lm["onnx"], "--data", env.lm["text"], *LM_BENCH, *extra]


def _quantize_lm(env: Env, *flags: object) -> list[object]:
    return ["quantize", env.lm["imported"], env.lm["calib"], "-o", env.tmp / "o", *flags]


def _quantize_bert(env: Env, *flags: object) -> list[object]:
    return ["quantize", env.chain["student"], env.chain["calib"], "-o", env.tmp / "o", *flags]


CHAIN = "calibrate: {}\nquantize: {}\nexport: {}\n"
OUT = "o"  # the output name every case that writes uses (must not exist afterwards)

CASES: dict[str, Callable[[Env], Case]] = {
    # import: the output may not be, contain or sit inside its source, whatever the source is
    "import-out-is-its-folder": lambda e: Case(
        ["import", _lm_copy(e), "-o", e.tmp / "lm-base", "--overwrite"], "is the input"
    ),
    "import-out-inside-its-folder": lambda e: Case(
        ["import", _lm_copy(e), "-o", e.tmp / "lm-base" / "sub"], "is inside the input"
    ),
    "import-out-contains-its-folder": lambda e: Case(["import", _lm_copy(e), "-o", e.tmp, "--overwrite"], "contains"),
    "import-out-is-its-gguf": lambda e: Case(
        ["import", tiny_gguf(e.tmp / "m.gguf"), "-o", e.tmp / "m.gguf", "--overwrite"], "is the input"
    ),
    "import-out-contains-its-gguf": lambda e: Case(
        ["import", tiny_gguf(e.tmp / "m.gguf"), "-o", e.tmp, "--overwrite"], "contains the input"
    ),
    "import-existing-out": lambda e: Case(
        ["import", e.lm["base"], "-o", _lm_copy(e, "imported")], "already exists; pass --overwrite"
    ),
    "import-bad-dtype": lambda e: Case(
        ["import", e.lm["base"], "-o", e.tmp / OUT, "--dtype", "float8"], "--dtype float8", out=e.tmp / OUT
    ),
    "import-a-calibration": lambda e: Case(
        ["import", e.lm["calib"], "-o", e.tmp / OUT], "is a calibrate artifact", out=e.tmp / OUT
    ),
    "import-missing-gguf": lambda e: Case(
        ["import", e.tmp / "nope.gguf", "-o", e.tmp / OUT], "no such GGUF file", out=e.tmp / OUT
    ),
    "import-auto-map-in-config": lambda e: Case(
        ["import", _auto_map(_lm_copy(e), "config.json"), "-o", e.tmp / OUT], "auto_map", out=e.tmp / OUT
    ),
    "import-auto-map-in-tokenizer-config": lambda e: Case(
        ["import", _auto_map(_lm_copy(e), "tokenizer_config.json"), "-o", e.tmp / OUT],
        "tokenizer_config.json asks to run Python code",
        out=e.tmp / OUT,
    ),
    "import-pip-package-missing": lambda e: Case(
        ["import", "pip:surely_not_installed_llm/model.gguf", "-o", e.tmp / OUT], "is not installed", out=e.tmp / OUT
    ),
    # import: GGUF files that are not what they claim, and folders that hold several
    "import-gguf-truncated": lambda e: Case(
        ["import", e.write("cut.gguf", tiny_gguf(e.tmp / "whole.gguf").read_bytes()[:200]), "-o", e.tmp / OUT],
        "truncated",
        out=e.tmp / OUT,
    ),
    "import-gguf-header-only": lambda e: Case(
        ["import", e.write("head.gguf", b"GGUF\x03\x00\x00\x00"), "-o", e.tmp / OUT], "truncated", out=e.tmp / OUT
    ),
    "import-gguf-unknown-version": lambda e: Case(
        ["import", e.write("v99.gguf", b"GGUF\x63\x00\x00\x00" + b"\x00" * 64), "-o", e.tmp / OUT],
        "not a valid GGUF file",
        out=e.tmp / OUT,
    ),
    "import-not-a-gguf-named-gguf": lambda e: Case(
        ["import", e.write("fake.gguf", "just some text\n"), "-o", e.tmp / OUT],
        "not a valid GGUF file",
        out=e.tmp / OUT,
    ),
    "import-a-text-file": lambda e: Case(
        ["import", e.write("notes.txt", "hello\n"), "-o", e.tmp / OUT], "not a valid GGUF file", out=e.tmp / OUT
    ),
    "import-real-gguf-other-extension": lambda e: Case(
        ["import", tiny_gguf(e.tmp / "weights.bin"), "-o", e.tmp / OUT],
        "cannot read it as a causal LM",
        out=e.tmp / OUT,
    ),
    "import-folder-with-two-ggufs": lambda e: Case(
        ["import", _folder(e, "ggufs", {"a.gguf": tiny_gguf(e.tmp / "a"), "b.q4": e.tmp / "a"}), "-o", e.tmp / OUT],
        "which of these files? name one",
        out=e.tmp / OUT,
    ),
    "import-folder-with-one-bad-gguf": lambda e: Case(
        ["import", _folder(e, "one", {"m.gguf": tiny_gguf(e.tmp / "m")}), "-o", e.tmp / OUT],
        "cannot read it as a causal LM",
        out=e.tmp / OUT,
    ),
    # generate: lengths, threads, wrong inputs
    "generate-prompt-beyond-positions": lambda e: Case(
        ["generate", e.lm["imported"], "good " * 300], "beyond the 256 token positions"
    ),
    "generate-new-tokens-beyond-positions-onnx": lambda e: Case(
        ["generate", e.lm["onnx"], "good movie", "--max-new-tokens", 300], "--max-new-tokens 255 or less"
    ),
    "generate-new-tokens-beyond-positions-torch": lambda e: Case(
        ["generate", e.lm["int4"], "good movie", "--max-new-tokens", 300], "token positions"
    ),
    "generate-threads-zero": lambda e: Case(["generate", e.lm["onnx"], "good", "--threads", 0], "--threads must be"),
    "generate-no-new-tokens": lambda e: Case(["generate", e.lm["onnx"], "good", "--max-new-tokens", 0], ">= 1"),
    "generate-empty-prompt": lambda e: Case(["generate", e.lm["onnx"], ""], "empty"),
    "generate-a-calibration": lambda e: Case(["generate", e.lm["calib"], "good"], "of `llmzip generate`"),
    "generate-a-classifier": lambda e: Case(["generate", e.chain["teacher"], "good"], "not a causal LM"),
    "generate-missing-dir": lambda e: Case(["generate", e.tmp / "nope", "good"], "nope"),
    "generate-onnx-deleted": lambda e: Case(
        ["generate", _without_onnx(Path(shutil.copytree(e.lm["onnx"], e.tmp / "onnx"))), "good"], "missing"
    ),
    # compress: --resume continues only the same search; the search's own options
    "compress-resume-other-teacher": lambda e: Case(
        ["compress", e.chain["student"], "--recipe", e.search["recipe"], "-o", _search_copy(e), "--resume"],
        "is a search of another teacher",
        keep=[e.tmp / "search"],
    ),
    "compress-resume-other-data": lambda e: Case(
        [
            "compress",
            "--recipe",
            e.search["recipe"],
            "--data",
            DEMO_VALIDATION,
            "-o",
            _search_copy(e),
            "--resume",
            "--quick",
        ],
        "other data files",
        keep=[e.tmp / "search"],
    ),
    "compress-resume-redefined-candidate": lambda e: Case(
        [
            "compress",
            "--recipe",
            compress_recipe(
                e.tmp / "c.yaml",
                e.chain["teacher"],
                [{"name": "teacher-int8", "distill": None, "quantize": {"method": "mse"}}],
            ),
            "-o",
            _search_copy(e),
            "--resume",
            "--quick",
        ],
        "'teacher-int8' was planned with other settings",
        keep=[e.tmp / "search"],
    ),
    "compress-search-without-resume": lambda e: Case(
        ["compress", "--recipe", e.search["recipe"], "-o", _search_copy(e), "--quick"],
        "pass --resume",
        keep=[e.tmp / "search"],
    ),
    "compress-out-not-a-search": lambda e: Case(
        ["compress", "--recipe", e.search["recipe"], "-o", Path(shutil.copytree(e.chain["calib"], e.tmp / "c"))],
        "is not a compress search",
        keep=[e.tmp / "c"],
    ),
    "compress-out-is-the-teacher": lambda e: Case(
        [
            "compress",
            e.copy("teacher"),
            "--data",
            DEMO_VALIDATION,
            "--set",
            "bench.data.eval_split=train",  # a split apart from the selection one: only the output is wrong
            "-o",
            e.tmp / "copy-teacher",
            "--overwrite",
        ],
        "is the input",
    ),
    "compress-report-is-the-selection-split": lambda e: Case(
        ["compress", e.chain["teacher"], "--data", DEMO_VALIDATION, "-o", e.tmp / OUT],
        "the reported split is the selection split",
    ),
    "compress-objective-typo": lambda e: Case(
        ["compress", e.chain["teacher"], "-o", e.tmp / OUT, "--objective", "siz"],
        "'siz' is not one of",
        out=e.tmp / OUT,
    ),
    "compress-unknown-candidate-key": lambda e: Case(
        [
            "compress",
            "--recipe",
            compress_recipe(e.tmp / "c.yaml", e.chain["teacher"], [{"name": "x", "distil": {"num_layers": 1}}]),
            "-o",
            e.tmp / OUT,
        ],
        "unknown key 'distil'",
        out=e.tmp / OUT,
    ),
    "compress-lm-option-in-a-candidate": lambda e: Case(
        [
            "compress",
            "--recipe",
            compress_recipe(
                e.tmp / "c.yaml",
                e.chain["teacher"],
                [{"name": "x", "distill": None, "quantize": {"max_perplexity_increase": 5}}],
            ),
            "-o",
            e.tmp / OUT,
        ],
        "max_perplexity_increase=5.0: applies only to causal LMs",
        out=e.tmp / OUT,
    ),
    "compress-budget-out-of-range": lambda e: Case(
        ["compress", e.chain["teacher"], "-o", e.tmp / OUT, "--max-accuracy-drop", -1],
        "max_accuracy_drop",
        out=e.tmp / OUT,
    ),
    # Options that would be recorded but not applied: refused against the model's task and method
    "quantize-gptq-on-static-int8": lambda e: Case(
        _quantize_bert(e, "--algorithm", "gptq"), "algorithm=gptq: applies only to weight-only", out=e.tmp / OUT
    ),
    "quantize-block-size-on-static-int8": lambda e: Case(
        _quantize_bert(e, "--weight-block-size", 64), "weight_block_size=64", out=e.tmp / OUT
    ),
    "quantize-head-bits-on-static-int8": lambda e: Case(
        _quantize_bert(e, "--head-bits", 4), "head_bits", out=e.tmp / OUT
    ),
    "quantize-percentile-on-int4": lambda e: Case(
        _quantize_bert(e, "--weight-bits", 4, "--method", "percentile"), "method=percentile", out=e.tmp / OUT
    ),
    "quantize-percentile-without-its-method": lambda e: Case(
        _quantize_bert(e, "--percentile", 99.9), "applies only to --method percentile", out=e.tmp / OUT
    ),
    "quantize-smoothquant-on-a-causal-lm": lambda e: Case(
        _quantize_lm(e, "--smoothquant", 0.5), "smoothquant=0.5", out=e.tmp / OUT
    ),
    "quantize-target-cpu-on-a-causal-lm": lambda e: Case(
        _quantize_lm(e, "--target-cpu", "vnni"), "target_cpu=vnni", out=e.tmp / OUT
    ),
    "quantize-accuracy-drop-on-a-causal-lm": lambda e: Case(
        _quantize_lm(e, "--max-accuracy-drop", 1), "takes --max-perplexity-increase", out=e.tmp / OUT
    ),
    "quantize-perplexity-on-a-classifier": lambda e: Case(
        _quantize_bert(e, "--max-perplexity-increase", 5), "takes --max-accuracy-drop", out=e.tmp / OUT
    ),
    "quantize-gptq-with-no-calibration-windows": lambda e: Case(
        ["quantize", e.lm["imported"], _empty_samples(e), "-o", e.tmp / OUT, "--weight-bits", 4, "--algorithm", "gptq"],
        "keeps no calibration samples",
        out=e.tmp / OUT,
    ),
    "calibrate-skip-tokens-on-a-classifier": lambda e: Case(
        ["calibrate", e.chain["student"], "-o", e.tmp / OUT, "--skip-tokens", 10], "skip_tokens=10", out=e.tmp / OUT
    ),
    "calibrate-label-column-on-a-causal-lm": lambda e: Case(
        ["calibrate", e.lm["imported"], "--data", e.lm["text"], "--label-column", "y", "-o", e.tmp / OUT],
        "data.label_column=y",
        out=e.tmp / OUT,
    ),
    "distill-pruning-on-a-causal-lm": lambda e: Case(
        ["distill", e.lm["imported"], "--data", e.lm["text"], "--num-layers", 2, "--keep-heads", 2, "-o", e.tmp / OUT],
        "keep_heads=2",
        out=e.tmp / OUT,
    ),
    "export-lm-graph-on-a-classifier": lambda e: Case(
        ["export", e.chain["int8"], "-o", e.tmp / OUT, "--lm-graph", "fused"], "lm_graph=fused", out=e.tmp / OUT
    ),
    "bench-classifier-shapes-on-a-causal-lm": lambda e: Case(_lm_bench(e, "--seq-len", 64), "seq_len=64"),
    "bench-lm-workload-on-a-classifier": lambda e: Case(
        ["bench", e.chain["onnx_int8"], "--data", DEMO_VALIDATION, "--new-tokens", 8], "new_tokens=8"
    ),
    "bench-lm-gpu-provider-missing": lambda e: Case(
        _lm_bench(e, "--provider", "cuda"), "onnxruntime here has no CUDAExecutionProvider"
    ),
    "export-gpu-provider-missing": lambda e: Case(
        ["export", e.chain["int8"], "-o", e.tmp / OUT, "--provider", "cuda"],
        "onnxruntime here has no CUDAExecutionProvider",
        out=e.tmp / OUT,
    ),
    "generate-gpu-provider-missing": lambda e: Case(
        ["generate", e.lm["onnx"], "good", "--provider", "cuda"], "onnxruntime here has no CUDAExecutionProvider"
    ),
    "bench-lm-decode-beyond-positions": lambda e: Case(
        _lm_bench(e, "--max-eval-samples", 10, "--prompt-tokens", 250, "--new-tokens", 10), "token positions"
    ),
    "bench-lm-genai-baseline-on-a-classifier": lambda e: Case(
        ["bench", e.chain["onnx_fp32"], "--data", DEMO_VALIDATION, "--baseline", "genai-int4"], "baselines"
    ),
    # Mixed recipes: every section checked against the model's task before anything runs
    "run-lm-keys-on-a-classifier": lambda e: _run(
        e, e.chain["teacher"], "bench: {new_tokens: 8}", "bench.new_tokens=8"
    ),
    "run-raw-text-option-on-a-classifier": lambda e: _run(
        e, e.chain["teacher"], "data: {skip_tokens: 100}", "calibrate.data.skip_tokens=100"
    ),
    "run-int8-keys-on-a-causal-lm": lambda e: _run(
        e, e.lm["imported"], "quantize: {smoothquant: 0.5}", "quantize.smoothquant=0.5"
    ),
    "run-gptq-on-a-classifier": lambda e: _run(e, e.chain["teacher"], "quantize: {algorithm: gptq}", "algorithm=gptq"),
    "run-out-is-the-recipes-gguf": lambda e: Case(
        [
            "run",
            _recipe(e, f"model: {tiny_gguf(e.tmp / 'm.gguf')}\ncalibrate: {{}}\nquantize: {{}}\nexport: {{}}\n"),
            "--out",
            e.tmp / "m.gguf",
            "--overwrite",
        ],
        "is the input",
    ),
    # Usage errors end in one line too, not a boxed panel
    "usage-choice-typo": lambda e: Case(_quantize_bert(e, "--method", "percentil"), "'percentil' is not one of"),
    "usage-unknown-flag": lambda e: Case(["calibrate", e.chain["student"], "--bogus"], "No such option: --bogus"),
    "usage-missing-argument": lambda e: Case(["quantize", e.chain["student"]], "Missing argument"),
    "usage-not-a-number": lambda e: Case(
        ["generate", e.lm["onnx"], "good", "--threads", "two"], "Invalid value for '--threads'"
    ),
}


def _without_onnx(directory: Path) -> Path:
    (directory / "model.onnx").unlink()
    return directory
