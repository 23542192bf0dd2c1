"""GGUF files (llama.cpp's format) as model sources: recognised by their magic bytes, checked before reading.

A file is a GGUF by its first four bytes, not by its name, so a real one under another extension is accepted and
a file that only claims to be one is refused with one line. Reading the tensors is the gguf package's job.
"""

from __future__ import annotations

import re
from pathlib import Path

from llmzip.artifact import resolve_pip_model
from llmzip.errors import ArtifactError, ModelError

GGUF_MAGIC = b"GGUF"


def is_gguf(path: Path) -> bool:
    """A GGUF file by its first four bytes, whatever its name says."""
    try:
        with path.open("rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def gguf_source(source: str) -> Path | None:
    """The GGUF file a source names, else None (a folder or hub id): a file that is a GGUF by its magic bytes
    (any extension), `pip:PACKAGE/FILE`, or a folder without config.json that holds exactly one GGUF."""
    if source.startswith("pip:"):
        package, _, name = source[4:].partition("/")
        path = Path(resolve_pip_model(f"pip:{package}/")) / name
    else:
        path = Path(source).expanduser()
    if path.is_file():
        if is_gguf(path):
            return path
        raise ModelError(
            f"{source}: not a valid GGUF file (it does not start with the GGUF magic bytes) and not a model folder; "
            "give a .gguf file, a Hugging Face model folder or a hub id"
        )
    if not path.exists():
        if path.suffix.lower() == ".gguf" or source.startswith("pip:"):
            raise ArtifactError(f"{source}: no such GGUF file")
        return None
    if path.is_dir() and not (path / "config.json").is_file():
        found = sorted(p for p in path.iterdir() if p.is_file() and is_gguf(p))
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise ArtifactError(
                f"{source} holds {len(found)} GGUF files ({names}); which of these files? name one, e.g. "
                f"`llmzip import {path / found[0].name}`"
            )
        if found:
            return found[0]
    return None


def check_gguf(path: Path) -> None:
    """Refuse a GGUF that cannot be read before transformers turns it into a reshape or index error."""
    from gguf import GGUFReader

    try:
        GGUFReader(str(path))
    except (IndexError, ValueError) as err:
        size = path.stat().st_size
        # GGUFReader maps the header and every tensor it lists straight from the file: running out of file (an
        # index past the end, an empty or short slice that will not unpack or reshape) means it was cut short,
        # e.g. by an interrupted download.
        if isinstance(err, IndexError) or re.search(r"cannot reshape|not enough values|out of bounds", str(err)):
            raise ModelError(
                f"{path}: the GGUF file is truncated ({size} bytes; it ends inside what its header lists); "
                "download or copy it again"
            ) from None
        raise ModelError(f"{path}: not a valid GGUF file ({str(err).splitlines()[0][:160]})") from None
