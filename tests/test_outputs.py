"""How outputs are written: refusals before any work, one writer per path, atomic swap, leftovers, disk errors."""

from __future__ import annotations

import errno
import multiprocessing
from pathlib import Path

import pytest

from llmzip.errors import ArtifactError
from llmzip.outputs import check_output, clean_leftovers, locked, staging, swap


def _dir(path: Path, marker: str) -> Path:
    path.mkdir(parents=True)
    (path / marker).write_text(marker)
    return path


@pytest.mark.parametrize(
    ("out", "relation"),
    [("model", "is the input"), ("model/calib", "is inside the input"), (".", "contains the input")],
)
def test_an_output_that_is_inside_or_contains_an_input_is_refused(tmp_path: Path, out: str, relation: str) -> None:
    model = _dir(tmp_path / "model", "weights")
    with pytest.raises(ArtifactError, match=relation):
        check_output(tmp_path / out, overwrite=True, inputs=[model])
    assert (model / "weights").read_text() == "weights"


def test_a_file_in_the_way_and_a_missing_overwrite_are_refused(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ArtifactError, match="not a directory"):
        check_output(tmp_path / "afile", overwrite=True)
    with pytest.raises(ArtifactError, match="is a file, not a folder"):
        with staging(tmp_path / "afile" / "sub", overwrite=False):
            pass
    _dir(tmp_path / "out", "old")
    with pytest.raises(ArtifactError, match="--overwrite"):
        check_output(tmp_path / "out", overwrite=False)


def test_replacing_swaps_in_one_step_and_a_failure_keeps_the_old_output(tmp_path: Path) -> None:
    out = _dir(tmp_path / "out", "old")
    with pytest.raises(RuntimeError):
        with staging(out, overwrite=True) as tmp:
            (tmp / "new").write_text("new")
            raise RuntimeError("failed half way")
    assert sorted(p.name for p in out.iterdir()) == ["old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or lock file left
    with staging(out, overwrite=True) as tmp:
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_swap_exchanges_two_directories(tmp_path: Path) -> None:
    old, new = _dir(tmp_path / "out", "old"), _dir(tmp_path / ".out.tmp-1", "new")
    replaced = swap(new, old)
    assert (old / "new").exists() and replaced is not None and (replaced / "old").exists()


def test_disk_errors_become_one_line_and_leave_nothing(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "er" / "out"
    for code, words in ((errno.ENOSPC, "no space left"), (errno.EROFS, "read-only file system")):
        with pytest.raises(ArtifactError, match=words) as caught:
            with staging(out, overwrite=False) as tmp:
                (tmp / "part").write_text("x")
                raise OSError(code, "simulated")
        assert "\n" not in str(caught.value)
        assert list(tmp_path.iterdir()) == []  # the parents created for the failed output are gone too


def _try_lock(out: str, result: list[str]) -> None:
    try:
        with locked(Path(out)):
            result.append("locked")
    except ArtifactError as err:
        result.append(str(err))


def test_a_second_writer_of_the_same_output_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with locked(out):
        with multiprocessing.Manager() as manager:
            result = manager.list()
            child = multiprocessing.get_context("fork").Process(target=_try_lock, args=(str(out), result))
            child.start()
            child.join(30)
            assert "being written by another llmzip process" in result[0]
    with locked(out):  # released: the next writer gets it
        pass


def test_leftovers_of_a_killed_writer_are_removed_or_put_back(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _dir(tmp_path / ".out.tmp-dead", "half")
    _dir(tmp_path / ".out.old-dead", "previous")  # killed between the two renames of a replacement
    done = clean_leftovers(out, complete=lambda p: (p / "previous").exists())
    assert (out / "previous").exists() and len(done) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    _dir(tmp_path / ".out.old-stale", "older")  # the output is complete: the stale copy just goes
    clean_leftovers(out, complete=lambda p: (p / "previous").exists())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (out / "previous").exists()


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 64 KiB tmpfs: a real 'no space left on device' (skipped where mounting is not allowed)."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root in a mount namespace)")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


@pytest.mark.parametrize("verb", ["calibrate", "import", "quantize"])
def test_a_full_disk_is_one_line_and_leaves_nothing(verb: str, small_disk: Path, tiny_lm: dict[str, Path]) -> None:
    from tests.conftest import invoke

    out = small_disk / "out"
    args = {
        "calibrate": ["calibrate", tiny_lm["imported"], "--data", tiny_lm["text"], "--max-length", 32],
        "import": ["import", tiny_lm["base"]],
        "quantize": ["quantize", tiny_lm["imported"], tiny_lm["calib"], "--weight-bits", 4, "--weight-block-size", 16],
    }[verb]
    result = invoke(*args, "-o", out)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 3, result.stderr[-1500:]
    assert lines[-1].startswith("error: cannot write") and "no space left on the device" in lines[-1]
    assert "Traceback" not in result.stderr and list(small_disk.iterdir()) == []
