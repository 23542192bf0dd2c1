"""How every stage writes its directory without ever losing what was there: lock, temporary sibling, fsync, swap.

- The output path is checked before any work: it may not be, contain, or sit inside an input, and an existing
  one is only replaced with `--overwrite`.
- One writer per output path: an `flock` on a hidden `.NAME.lock` beside it. The kernel drops the lock when its
  process dies (SIGKILL included), so a second writer is refused while the first lives and never after.
- The new directory is built in a hidden `.NAME.tmp-*` sibling, fsynced, and swapped into place in one step
  (Linux `renameat2(RENAME_EXCHANGE)`; two renames where the file system lacks it), so OUT is at every moment
  either the complete old directory or the complete new one. Only then is the old one removed.
- Leftovers of a killed writer (`.NAME.tmp-*`, `.NAME.old-*`) are cleaned up by the next writer of that path,
  which holds the lock and so knows nobody is using them; an old directory stranded between two renames is
  put back.
- File-system failures (read-only, no space, not a directory, permission) become one-line errors, and parent
  folders created for a failed output are removed again.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from llmzip.errors import ArtifactError

MANIFEST = "manifest.json"
# OSError numbers that are the user's machine, not a bug: each becomes one line naming the path.
_FS_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a parent is a file, not a directory",
    errno.EEXIST: "a file is in the way",
}
_RENAME_EXCHANGE = 2


def error_number(err: BaseException) -> int | None:
    """The OS error number behind a failure: an OSError's, or the "(os error N)" that Rust writers (safetensors,
    tokenizers) put into their own exception types."""
    if isinstance(err, OSError):
        return err.errno
    found = re.search(r"\(os error (\d+)\)", str(err))
    return int(found.group(1)) if found else None


def fs_error(err: BaseException, path: Path, doing: str) -> ArtifactError | None:
    """The one-line error for a file-system failure the user can fix, or None for anything else."""
    number = error_number(err)
    reason = _FS_ERRORS.get(number or 0)
    if reason is None:
        return None
    return ArtifactError(
        f"cannot {doing} {path}: {reason} ({os.strerror(number or 0)}); free space, fix permissions or choose "
        "another path"
    )


def _resolved(path: Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser()))


def check_output(out_dir: Path, *, overwrite: bool, inputs: Sequence[Path | str] = ()) -> None:
    """Refuse an output that would destroy an input or an existing directory, before any work is done."""
    out = _resolved(out_dir)
    for given in inputs:
        source = Path(given)
        if not source.exists():
            continue  # a hub id or pip: name, not a local path
        src = _resolved(source)
        if out == src:
            relation = "is"
        elif src in out.parents:
            relation = "is inside"
        elif out in src.parents:
            relation = "contains"
        else:
            continue
        raise ArtifactError(f"{out_dir} {relation} the input {given}; choose an --out outside every input")
    if out_dir.exists() and not out_dir.is_dir():
        raise ArtifactError(f"{out_dir} exists and is not a directory; remove it or choose another --out")
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ArtifactError(f"cannot create {out_dir}: {blocking} is a file, not a folder; choose another --out")
    if out_dir.exists() and not overwrite:
        raise ArtifactError(f"{out_dir} already exists; pass --overwrite to replace it, or choose another --out")


def make_parents(directory: Path) -> list[Path]:
    """mkdir -p that returns the folders it created (to remove again if the output fails)."""
    missing = []
    for parent in [directory, *directory.parents]:
        if parent.exists():
            break
        missing.append(parent)
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            if not folder.is_dir():
                raise ArtifactError(f"cannot create {folder}: a file is in the way; choose another --out") from None
        except OSError as err:
            raise (fs_error(err, folder, "create") or err) from None
    return missing


def remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # innermost first
        try:
            folder.rmdir()
        except OSError:
            return


@contextmanager
def locked(out_dir: Path) -> Iterator[None]:
    """Hold the writer's lock on `out_dir` (its parent must exist); refuse at once if another process holds it."""
    import fcntl

    lock = out_dir.parent / f".{out_dir.name}.lock"
    for _ in range(5):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise (fs_error(err, lock, "create the lock file") or err) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ArtifactError(
                f"{out_dir} is being written by another llmzip process (pid {holder}); wait for it or choose "
                "another --out"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino  # not a lock file its previous owner just removed
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    else:
        raise ArtifactError(f"{lock}: could not take the output lock; try again")
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        try:
            lock.unlink()
        except FileNotFoundError:
            pass
        os.close(fd)


def clean_leftovers(out_dir: Path, complete: Callable[[Path], bool]) -> list[str]:
    """Remove what killed writers of `out_dir` left (call with the lock held); returns what was done.

    A `.old-*` directory is the previous output moved aside: it goes back into place when `out_dir` is missing or
    not `complete` (the writer died before finishing), else it is deleted.
    """
    done = []
    parent = out_dir.parent
    for tmp in sorted(parent.glob(f".{out_dir.name}.tmp-*")):
        shutil.rmtree(tmp, ignore_errors=True)
        done.append(f"removed {tmp.name}, left by a killed run")
    for old in sorted(parent.glob(f".{out_dir.name}.old-*"), key=lambda p: p.stat().st_mtime, reverse=True):
        if not out_dir.exists() or not complete(out_dir):
            if out_dir.exists():
                shutil.rmtree(out_dir)
            old.rename(out_dir)
            done.append(f"restored the previous {out_dir.name} from {old.name}, left by a killed run")
        else:
            shutil.rmtree(old, ignore_errors=True)
            done.append(f"removed {old.name}, left by a killed run")
    return done


def fsync_tree(directory: Path) -> None:
    """Flush every file, then every folder entry, to disk before the directory is renamed into place."""
    folders = [directory]
    for path in directory.rglob("*"):
        if path.is_dir():
            folders.append(path)
        elif path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for folder in reversed(folders):
        fsync_dir(folder)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def swap(new: Path, target: Path) -> Path | None:
    """Put `new` at `target` atomically; returns where the replaced directory now is (to delete), or None."""
    if not target.exists():
        new.rename(target)
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    exchange = getattr(libc, "renameat2", None)
    if exchange is not None:
        at_fdcwd = -100
        if exchange(at_fdcwd, bytes(new), at_fdcwd, bytes(target), _RENAME_EXCHANGE) == 0:
            return new  # `new` now holds the old directory
        if ctypes.get_errno() not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(target))
    # No atomic exchange here: move the old one aside first; clean_leftovers puts it back if we die in between.
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    target.rename(old)
    new.rename(target)
    return old


@contextmanager
def staging(out_dir: Path, *, overwrite: bool, inputs: Sequence[Path | str] = ()) -> Iterator[Path]:
    """Yield a temporary sibling of `out_dir`; swap it into place only if the block succeeds (see the module)."""
    out_dir = Path(out_dir)
    check_output(out_dir, overwrite=True, inputs=inputs)
    created = make_parents(out_dir.parent)
    try:
        with locked(out_dir):
            # Repair what a killed writer left before deciding: it may have moved the previous output aside.
            for line in clean_leftovers(out_dir, complete=lambda p: (p / MANIFEST).is_file()):
                _note(line)
            check_output(out_dir, overwrite=overwrite)
            tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
            try:
                tmp.mkdir()
            except OSError as err:
                raise (fs_error(err, out_dir, "write") or err) from None
            try:
                hold("writing")
                yield tmp
                fsync_tree(tmp)
                hold("staged")
                check_output(out_dir, overwrite=overwrite)  # something else may have put a directory there
                replaced = swap(tmp, out_dir)
                fsync_dir(out_dir.parent)
                if replaced is not None:
                    shutil.rmtree(replaced, ignore_errors=True)
            except BaseException as err:
                shutil.rmtree(tmp, ignore_errors=True)
                if isinstance(err, Exception) and not isinstance(err, ArtifactError):
                    mapped = fs_error(err, out_dir, "write")
                    if mapped is not None:
                        raise mapped from None
                raise
    except BaseException:
        remove_empty(created)
        raise


@contextmanager
def rebuilt(
    out_dir: Path,
    *,
    inputs: Sequence[Path | str],
    complete: Callable[[Path], bool],
    decide: Callable[[], bool],
    keep_partial: bool,
    start: Callable[[bool], None] | None = None,
) -> Iterator[bool]:
    """OUT written in place, for outputs that are directories of stage directories (`run`, `compress`).

    Under the writer's lock, after repairing what a killed writer left (`complete` tells a finished OUT), `decide()`
    checks OUT and returns True to continue it in place (a resumed search) or False to build a new one. An existing
    OUT that is replaced is moved aside, not deleted, until the new one is finished: on any failure or interrupt it
    is put back exactly as it was (after a SIGKILL, by the next writer). A new OUT that fails is removed, unless
    `keep_partial` (a search keeps what it measured, for `--resume`); `start(continued)` runs first in OUT, so
    that even a partial OUT says what it is. Yields whether OUT was continued.
    """
    out_dir = Path(out_dir)
    check_output(out_dir, overwrite=True, inputs=inputs)  # existence is decided below, after any repair
    created = make_parents(out_dir.parent)
    try:
        with locked(out_dir):
            for line in clean_leftovers(out_dir, complete=complete):
                _note(line)
            continued = decide()
            previous = None
            if out_dir.exists() and not continued:
                previous = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
                out_dir.rename(previous)
            try:
                out_dir.mkdir(exist_ok=continued)
                if start is not None:
                    start(continued)
                hold("writing")
                yield continued
            except BaseException:
                if previous is not None:
                    shutil.rmtree(out_dir, ignore_errors=True)
                    previous.rename(out_dir)  # the previous complete output, exactly as it was
                elif not continued and not keep_partial:
                    shutil.rmtree(out_dir, ignore_errors=True)
                raise
            if previous is not None:
                shutil.rmtree(previous, ignore_errors=True)
    except BaseException:
        remove_empty(created)
        raise


HOLD_ENV = "LLMZIP_TEST_HOLD"


def hold(point: str) -> None:
    """Test hook for kill and race tests: with LLMZIP_TEST_HOLD="POINT:MARKER", touch MARKER at POINT ("writing":
    the temporary output exists; "staged": it is complete, not yet swapped in) and wait there to be killed."""
    wanted, _, marker = os.environ.get(HOLD_ENV, "").partition(":")
    if wanted != point or not marker:
        return
    import time

    Path(marker).write_text(str(os.getpid()))
    while True:
        time.sleep(0.1)


def _note(line: str) -> None:
    from llmzip.progress import step

    step(line)
