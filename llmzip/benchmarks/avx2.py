"""Benchmarks: onnxruntime's logits on an AVX2 CPU without VNNI, on any x86 machine, through QEMU.

`qemu-x86_64 -cpu Haswell-v4` (Debian: qemu-user) executes onnxruntime's real AVX2 kernels: QEMU's TCG has
AVX2 but no AVX-512 or VNNI, so MLAS dispatches exactly as on a Haswell … Zen 3 machine. It is ~50× slower
than native, so benchmarks use it for accuracy only, never for latency. This module's `run` entry point is
what QEMU executes: numpy and onnxruntime only (importing torch under emulation costs minutes).

    python -m llmzip.benchmarks.avx2 MODEL.onnx FEEDS.npz OUT.npy
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CPU = "Haswell-v4"


def available() -> bool:
    return shutil.which("qemu-x86_64") is not None


def logits(onnx_path: Path, feeds: dict[str, np.ndarray], *, timeout_s: int = 3600) -> np.ndarray:
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


def _run(onnx_path: str, feeds_file: str, out: str, batch: int = 64) -> None:
    import onnxruntime as ort

    feeds = dict(np.load(feeds_file))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    n = len(next(iter(feeds.values())))
    parts = [
        session.run(None, {k: v[i : i + batch] for k, v in feeds.items() if k in names})[0] for i in range(0, n, batch)
    ]
    np.save(out, np.concatenate(parts))


if __name__ == "__main__":
    _run(sys.argv[1], sys.argv[2], sys.argv[3])
