"""Benchmarks: accuracy on an AVX2 CPU without VNNI, measured on any x86 machine.

Two ways, both named in the results: the kernel model inside the PyTorch model (llmzip/quant/saturation.py,
seconds), or onnxruntime's real AVX2 kernels under `qemu-x86_64 -cpu Haswell-v4` (Debian: qemu-user): QEMU's
TCG has AVX2 but no AVX-512 or VNNI, so MLAS dispatches exactly as on a Haswell … Zen 3 machine, at a few
hundred times native time (about 20 minutes for MiniLM on SST-2 dev), so never for latency. `_run` is what QEMU
executes: numpy and onnxruntime only (importing torch under emulation costs minutes).

    python -m llmzip.benchmarks.avx2 MODEL.onnx FEEDS.npz OUT.npy
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from llmzip import metrics

CPU = "Haswell-v4"


def available() -> bool:
    return shutil.which("qemu-x86_64") is not None


def _qemu_logits(onnx_path: Path, feeds: dict[str, np.ndarray], *, timeout_s: int = 3600) -> np.ndarray:
    """The model's logits as an AVX2 machine computes them (onnxruntime under QEMU, one thread)."""
    with tempfile.TemporaryDirectory(prefix="llmzip-avx2-") as scratch:
        feeds_file, out = Path(scratch) / "feeds.npz", Path(scratch) / "logits.npy"
        np.savez(feeds_file, **feeds)  # type: ignore[arg-type]  # numpy stubs: allow_pickle shadows **kwds
        cmd = ["qemu-x86_64", "-cpu", CPU, sys.executable, "-m", "llmzip.benchmarks.avx2"]
        done = subprocess.run(
            [*cmd, str(onnx_path), str(feeds_file), str(out)], capture_output=True, text=True, timeout=timeout_s
        )
        if done.returncode != 0:
            raise RuntimeError(f"onnxruntime under qemu-x86_64 -cpu {CPU} failed: {done.stderr.strip()[-500:]}")
        return np.load(out)


def accuracy(
    quantized: Path, onnx_file: Path, feeds: dict[str, np.ndarray], labels: np.ndarray, *, qemu: bool
) -> dict[str, Any]:
    """Accuracy on an AVX2 CPU without VNNI: the kernel model inside the PyTorch model (llmzip/quant/
    saturation.py, seconds), or with `qemu` onnxruntime's real AVX2 kernels under QEMU (~20 minutes a model)."""

    def acc(logits: np.ndarray) -> float:
        return round(metrics.accuracy(logits.argmax(-1), labels), 4)

    if qemu:
        return {"avx2_accuracy": acc(_qemu_logits(onnx_file, feeds)), "avx2_source": f"onnxruntime under QEMU {CPU}"}
    import torch

    from llmzip.artifact import open_artifact
    from llmzip.modeling import load_model
    from llmzip.quant.saturation import emulate, logit_change

    model = load_model(open_artifact(quantized, verb="bench-quant", accepts=("quantize",)))
    n = len(labels)
    batches = [{k: torch.from_numpy(v[i : i + 64]) for k, v in feeds.items()} for i in range(0, n, 64)]
    exact, saturated, _ = emulate(model, batches)
    return {
        "avx2_accuracy": acc(saturated.numpy()),
        "avx2_source": "kernel model in the PyTorch model (--avx2 qemu: onnxruntime's real AVX2 kernels under QEMU)",
        "torch_accuracy": acc(exact.numpy()),  # the same PyTorch model without saturation: the like-for-like pair
        "avx2_logits_change": logit_change(exact, saturated),
    }


def _run(onnx_path: str, feeds_file: str, out: str, batch: int = 64) -> None:
    from llmzip.runtime.sessions import session as ort_session

    feeds = dict(np.load(feeds_file))
    session = ort_session(onnx_path, threads=1)
    names = {i.name for i in session.get_inputs()}
    n = len(next(iter(feeds.values())))
    parts = [
        session.run(None, {k: v[i : i + batch] for k, v in feeds.items() if k in names})[0] for i in range(0, n, batch)
    ]
    np.save(out, np.concatenate(parts))


if __name__ == "__main__":
    _run(sys.argv[1], sys.argv[2], sys.argv[3])
