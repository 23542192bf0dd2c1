"""The bad-input harness shared by tests/test_bad_inputs.py and its case modules: a case is a CLI call, the words
its one error line must hold, what must not exist afterwards and what must not change."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Case:
    args: list[Any]
    words: str  # must appear in the error line
    out: Path | None = None  # must not exist afterwards (unless it existed before: then unchanged)
    keep: list[Path] = field(default_factory=list)  # inputs whose bytes must not change


@dataclass
class Env:
    tmp: Path
    chain: dict[str, Path]
    base: Path
    classifier: Path
    lm: dict[str, Path] = field(default_factory=dict)  # the tiny causal LM: imported, calib, int4, onnx, text
    search: dict[str, Path] = field(default_factory=dict)  # a finished compress search: recipe, out

    def copy(self, name: str) -> Path:
        return Path(shutil.copytree(self.chain[name], self.tmp / f"copy-{name}"))

    def model_copy(self) -> Path:
        return Path(shutil.copytree(self.classifier, self.tmp / "model"))

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def recipe(self, text: str) -> Path:
        return self.write("recipe.yaml", text)
