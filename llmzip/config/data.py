"""Where a stage's data comes from (shared by every stage config; see llmzip/config/__init__.py)."""

from __future__ import annotations

from dataclasses import dataclass

from llmzip.config.flags import option
from llmzip.errors import ConfigError


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


@dataclass
class DataConfig:
    """Where labelled text comes from: a hub id, a local folder of split files, or one local file."""

    dataset: str | None = option(
        None,
        flag="--data",
        help="Hub dataset id, local folder of split files, or one file (default: the built-in demo sample).",
    )
    subset: str | None = option(None, help="Hub dataset configuration, e.g. sst2 for nyu-mll/glue.")
    text_column: str = option("sentence", help="Text column.")
    # local .csv/.tsv/.txt: the field separator (None: tab for .tsv, comma for .csv)
    delimiter: str | None = option(None, help="Field separator of local .csv/.tsv/.txt files (default: by extension).")
    text_pair_column: str | None = option(None, help="Second text column for sentence pairs.")
    label_column: str = option("label", help="Label column.")
    train_split: str = option("train", help="Split to train/calibrate on.")
    eval_split: str = option("validation", help="Split to evaluate on.")
    max_length: int = option(128, help="Tokens per example (truncation).")
    max_train_samples: int | None = option(None, help="Use a seeded random subset of this many training rows.")
    max_eval_samples: int | None = option(None, help="Use the first N evaluation rows.")
    # Raw text (causal LMs): drop the first N tokens before cutting windows, e.g. to keep calibration and training
    # off the windows a benchmark scores when one file is all the text there is (WikiText-2's test file here).
    skip_tokens: int = option(0, help="Raw text: drop its first N tokens (keep off a benchmark's windows).")

    def __post_init__(self) -> None:
        _check(self.skip_tokens >= 0, "skip_tokens", f"must be >= 0, got {self.skip_tokens}")
        if self.delimiter == "\\t":  # typed in a shell as \t
            self.delimiter = "\t"
        _check(8 <= self.max_length <= 8192, "max_length", f"must be in [8, 8192], got {self.max_length}")
        _check(
            self.delimiter is None or len(self.delimiter) == 1,
            "delimiter",
            f"must be one character (e.g. ';' or '\\t'), got {self.delimiter!r}",
        )
        for key in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, key)
            _check(value is None or value > 0, key, f"must be positive, got {value}")
