"""The onnxruntime-genai peer baseline for `make bench-llm`, driven from the main venv.

A user who wants a small causal LM compressed for CPU would reach for onnxruntime-genai's model builder
(`python -m onnxruntime_genai.models.builder -i HF_FOLDER -o OUT -p int4 -e cpu`) and its og.Generator runtime.
That is the baseline llmzip's LLM path is compared against. It lives in its own venv (.venv-genai, built from
benchmarks/genai/requirements.txt by benchmarks/make_venv.sh) so the main venv never gets onnxruntime-genai;
this module only runs benchmarks/genai/genai_run.py there through subprocess and imports nothing from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
GENAI_VENV = REPO / ".venv-genai"
GENAI_DIR = REPO / "benchmarks/genai"
RUNNER = GENAI_DIR / "genai_run.py"
PRECISIONS = ("int4", "fp32")


def _last_line(text: str | None) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def _python() -> Path:
    return GENAI_VENV / "bin/python"


def ensure_venv() -> tuple[Path | None, str]:
    """Build or reuse .venv-genai; (its python, note) or (None, one-line reason). Never raises."""
    try:
        subprocess.run(
            ["bash", str(REPO / "benchmarks/make_venv.sh"), str(GENAI_VENV), str(GENAI_DIR / "requirements.txt")],
            check=True,
            capture_output=True,
            text=True,
        )
    except subprocess.CalledProcessError as err:
        return None, f"genai venv not built: make_venv.sh failed: {_last_line(err.stderr or err.stdout)}"
    except OSError as err:
        return None, f"genai venv not built: {err}"
    return _python(), "onnxruntime-genai in .venv-genai (benchmarks/genai/requirements.txt)"


def _source_signature(model_dir: Path) -> dict[str, Any]:
    """The same signature genai_run.py writes into build.json (config hash, weight sizes)."""
    return {
        "path": str(model_dir.resolve()),
        "config_sha256": hashlib.sha256((model_dir / "config.json").read_bytes()).hexdigest(),
        "weights": {p.name: p.stat().st_size for p in sorted(model_dir.glob("*.safetensors"))},
    }


def _reusable(model_dir: Path, out_dir: Path, precision: str) -> bool:
    record_path = out_dir / "build.json"
    if not record_path.is_file() or not (out_dir / "genai_config.json").is_file():
        return False
    try:
        record = json.loads(record_path.read_text())
    except ValueError:
        return False
    if record.get("precision") != precision or record.get("source") != _source_signature(model_dir):
        return False
    return any(out_dir.glob("*.onnx"))


def build(model_dir: Path, out_dir: Path, precision: str) -> tuple[Path | None, str]:
    """Run the model builder (CPU EP, its defaults) into out_dir; reuses a complete build of the same source and
    precision. (out_dir, note) or (None, one-line reason); never raises."""
    if precision not in PRECISIONS:
        return None, f"unsupported precision {precision!r} (one of {', '.join(PRECISIONS)})"
    if _reusable(model_dir, out_dir, precision):
        record = json.loads((out_dir / "build.json").read_text())
        return out_dir, f"reused: {' '.join(record['command'])}"
    python, note = ensure_venv()
    if python is None:
        return None, note
    cmd = [str(python), str(RUNNER), "build", "--model", str(model_dir), "--out", str(out_dir)]
    try:
        subprocess.run([*cmd, "--precision", precision], check=True, capture_output=True, text=True)
        record = json.loads((out_dir / "build.json").read_text())
    except subprocess.CalledProcessError as err:
        return None, f"genai {precision} build failed: {_last_line(err.stderr or err.stdout)}"
    except (OSError, ValueError) as err:
        return None, f"genai {precision} build failed: {err}"
    return out_dir, " ".join(record["command"])


def measure(
    genai_dir: Path,
    windows: np.ndarray,
    prompt: np.ndarray,
    *,
    new_tokens: int = 64,
    prefill_lengths: tuple[int, ...] = (128, 512),
    threads: int = 1,
    repeats: int = 5,
    work: Path,
) -> dict[str, Any]:
    """Decode tokens/s, prefill ms, peak RSS and perplexity of a genai build, measured in .venv-genai.
    windows: int64 [n, length] token ids; prompt: int64 [prompt_len]. Raises RuntimeError on failure."""
    python, note = ensure_venv()
    if python is None:
        raise RuntimeError(note)
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / "windows.npy", np.asarray(windows, dtype=np.int64))
    np.save(work / "prompt.npy", np.asarray(prompt, dtype=np.int64).reshape(-1))
    out = work / f"genai-{genai_dir.name}.json"
    out.unlink(missing_ok=True)
    cmd = [
        str(python),
        str(RUNNER),
        "measure",
        "--model",
        str(genai_dir),
        "--windows",
        str(work / "windows.npy"),
        "--prompt",
        str(work / "prompt.npy"),
        "--new-tokens",
        str(new_tokens),
        "--prefill-lengths",
        ",".join(str(n) for n in prefill_lengths),
        "--threads",
        str(threads),
        "--repeats",
        str(repeats),
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0 or not out.is_file():
        raise RuntimeError(f"genai measure failed ({done.returncode}): {_last_line(done.stderr or done.stdout)}")
    return dict(json.loads(out.read_text()))
