"""Kill and race tests: every stage through the real CLI in a subprocess, stopped at a point the test controls.

LLMZIP_TEST_HOLD="POINT:MARKER" makes the stage wait at POINT ("writing": its temporary output exists; "staged":
complete, not yet swapped in) after touching MARKER, so the signal always lands at the same place.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DEMO_VALIDATION


def _spawn(args: list[Any], hold: str | None = None) -> tuple[subprocess.Popen[str], Path | None]:
    env = dict(os.environ)
    marker = None
    if hold is not None:
        marker = Path(str(args[args.index("-o") + 1]) + f".{hold}.marker")
        env["LLMZIP_TEST_HOLD"] = f"{hold}:{marker}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmzip", *[str(a) for a in args]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    return proc, marker


def _wait_for(marker: Path, proc: subprocess.Popen[str], timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before the hold point: {proc.stderr.read()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("never reached the hold point")
        time.sleep(0.05)


def _stage_args(chain: dict[str, Path], tiny_base: Path, stage: str, out: Path) -> list[Any]:
    return {
        "import": ["import", tiny_base],
        "finetune": ["finetune", tiny_base, "--max-steps", 2, "--batch-size", 8],
        "distill": ["distill", chain["teacher"], "--num-layers", 1, "--max-steps", 2, "--batch-size", 8],
        "calibrate": ["calibrate", chain["student"], "--num-samples", 16],
        "quantize": ["quantize", chain["student"], chain["calib"], "--target-cpu", "vnni"],
        "export": ["export", chain["int8"]],
        "bench": ["bench", chain["onnx_int8"], "--data", DEMO_VALIDATION, "--batch-sizes", 1, "--seq-len", 16]
        + ["--iterations", 3, "--warmup", 0, "--max-eval-samples", 8],
    }[stage] + ["-o", out]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


STAGES = ["import", "finetune", "distill", "calibrate", "quantize", "export", "bench"]


@pytest.mark.parametrize("stage", STAGES)
def test_sigterm_leaves_nothing_and_says_so(
    stage: str, chain: dict[str, Path], tiny_base: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    proc, marker = _spawn(_stage_args(chain, tiny_base, stage, out), hold="writing")
    assert marker is not None
    _wait_for(marker, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("error: terminated (SIGTERM)")
    assert "Traceback" not in stderr
    marker.unlink()
    assert not out.exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("stage", STAGES)
def test_sigkill_keeps_the_previous_output_and_the_next_run_cleans_up(
    stage: str, chain: dict[str, Path], tiny_base: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous").write_text("the user's previous output")
    args = [*_stage_args(chain, tiny_base, stage, out), "--overwrite"]
    proc, marker = _spawn(args, hold="staged")
    assert marker is not None
    _wait_for(marker, proc)
    proc.kill()  # SIGKILL: no handler runs, the temporary output stays behind
    proc.communicate(timeout=60)
    marker.unlink()
    assert sorted(p.name for p in out.iterdir()) == ["previous"]  # untouched
    assert any(name.startswith(".out.tmp-") for name in _leftovers(tmp_path))
    if stage not in ("calibrate", "export"):  # the cleanup is the same code for every stage: run it twice
        return
    rerun, _ = _spawn(args)
    _, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr[-2000:]
    assert "left by a killed run" in stderr
    assert (out / "manifest.json").exists() and not (out / "previous").exists()
    assert _leftovers(tmp_path) == []


def test_a_second_writer_is_refused_while_the_first_runs(chain: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "calib"
    first, marker = _spawn(["calibrate", chain["student"], "--num-samples", 16, "-o", out], hold="writing")
    assert marker is not None
    try:
        _wait_for(marker, first)
        second, _ = _spawn(["calibrate", chain["student"], "--num-samples", 16, "-o", out, "--overwrite"])
        _, stderr = second.communicate(timeout=120)
        assert second.returncode == 3
        assert stderr.strip().splitlines()[-1] == (
            f"error: {out} is being written by another llmzip process (pid {first.pid}); wait for it or choose "
            "another --out"
        )
    finally:
        first.kill()
        first.communicate(timeout=60)
    assert not out.exists()


def test_run_puts_the_previous_run_back_when_killed(tiny_base: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("{}")  # a finished previous run
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {tiny_base}\ncalibrate: {{num_samples: 8}}\nquantize: {{}}\nexport: {{}}\n")
    args: list[Any] = ["run", recipe, "--out", out, "--overwrite"]
    env = {**os.environ, "LLMZIP_TEST_HOLD": f"writing:{tmp_path / 'held'}"}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmzip", *map(str, args)], stderr=subprocess.PIPE, text=True, env=env
        )
        _wait_for(tmp_path / "held", proc)
        proc.send_signal(sig)
        proc.communicate(timeout=120)
        (tmp_path / "held").unlink()
        if sig == signal.SIGTERM:  # handled: the previous run is back at once
            assert proc.returncode == 143 and sorted(p.name for p in out.iterdir()) == ["run.json"]
    # SIGKILL: the previous run waits aside; the next run on OUT puts it back before anything else
    assert any(name.startswith(".run.old-") for name in _leftovers(tmp_path))
    check = subprocess.run(
        [sys.executable, "-m", "llmzip", "run", str(recipe), "--out", str(out)], capture_output=True, text=True
    )
    assert check.returncode == 3 and "already exists" in check.stderr  # without --overwrite: refused, not lost
    assert "restored the previous run" in check.stderr
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_compress_sigterm_keeps_a_resumable_search(finished_search: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "search"
    args: list[Any] = ["compress", "--recipe", finished_search["recipe"], "--quick", "-o", out]
    proc, marker = _spawn(args, hold="writing")
    assert marker is not None
    _wait_for(marker, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    marker.unlink()
    assert proc.returncode == 143, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("error: terminated (SIGTERM)") and "--resume" in stderr
    assert out.is_dir() and _leftovers(tmp_path) == []
    resumed = subprocess.run(
        [sys.executable, "-m", "llmzip", *map(str, args), "--resume"], capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (out / "results.json").is_file() and (out / "model" / "model.onnx").is_file()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_compress_overwrite_interrupted_keeps_the_previous_search(
    sig: signal.Signals, finished_search: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "search"
    shutil.copytree(finished_search["out"], out)
    before = _tree(out)
    args: list[Any] = ["compress", "--recipe", finished_search["recipe"], "--quick", "-o", out, "--overwrite"]
    proc, marker = _spawn(args, hold="writing")
    assert marker is not None
    _wait_for(marker, proc)
    proc.send_signal(sig)
    proc.communicate(timeout=120)
    marker.unlink()
    if sig == signal.SIGTERM:  # handled: the previous search is back at once
        assert proc.returncode == 143 and _tree(out) == before and _leftovers(tmp_path) == []
        return
    # SIGKILL: the previous search waits aside; the next writer of OUT puts it back before anything else
    assert any(name.startswith(".search.old-") for name in _leftovers(tmp_path))
    again = subprocess.run(
        [sys.executable, "-m", "llmzip", "compress", "--recipe", str(finished_search["recipe"]), "-o", str(out)],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 3 and "pass --resume" in again.stderr  # refused, after the repair
    assert "restored the previous search" in again.stderr
    assert _tree(out) == before and _leftovers(tmp_path) == []


def test_a_second_compress_on_the_same_out_is_refused(finished_search: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "search"
    args: list[Any] = ["compress", "--recipe", finished_search["recipe"], "--quick", "-o", out]
    first, marker = _spawn(args, hold="writing")
    assert marker is not None
    try:
        _wait_for(marker, first)
        second = subprocess.run(
            [sys.executable, "-m", "llmzip", *map(str, args), "--resume"], capture_output=True, text=True, timeout=300
        )
        assert second.returncode == 3
        assert "is being written by another llmzip process" in second.stderr.strip().splitlines()[-1]
    finally:
        first.kill()
        first.communicate(timeout=60)
