"""The CLI shell: fast --help, examples on every verb, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import invoke

VERBS = ["import", "finetune", "distill", "calibrate", "quantize", "export", "bench", "run", "compress", "generate"]


def test_help_does_not_import_heavy_libraries() -> None:
    code = (
        "import sys\n"
        "from llmzip.cli import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'onnxruntime', 'datasets', 'onnx') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY=\n" in out, out[-300:]


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help_with_examples(verb: str) -> None:
    result = invoke(verb, "--help")
    assert result.exit_code == 0
    assert "Examples" in result.stdout
    assert "--json" in result.stdout


def test_console_script_entry_point() -> None:
    out = subprocess.run([sys.executable, "-m", "llmzip", "--help"], capture_output=True, text=True, check=True)
    assert "finetune" in out.stdout and "bench" in out.stdout


def test_bad_flag_value_is_one_line_error(tmp_path) -> None:
    result = invoke("distill", tmp_path, "-o", tmp_path / "x", "--temperature", "-1")
    assert result.exit_code != 0
    assert "error:" in result.stderr and "temperature" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_tiny_model_writer_answers_help_without_writing(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "llmzip.testing", "--help"], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0 and "usage:" in done.stdout and list(tmp_path.iterdir()) == []
