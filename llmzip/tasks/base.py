"""The interface every task implements (see llmzip/tasks/__init__.py)."""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from typing import Any

import torch

from llmzip.config import DataConfig

Batch = dict[str, torch.Tensor]
Row = dict[str, Any]
Described = dict[str, Any]  # what was read, for the manifest


class TaskKind(str, enum.Enum):
    SEQUENCE_CLASSIFICATION = "sequence-classification"
    CAUSAL_LM = "causal-lm"


class Task(ABC):
    kind: TaskKind

    @abstractmethod
    def auto_class(self) -> Any:
        """The transformers Auto class that loads this task's models."""

    @abstractmethod
    def calibration_rows(
        self, cfg: DataConfig, num: int, seed: int, tokenizer: Any
    ) -> tuple[list[Row], dict[str, Any]]:
        """`num` calibration examples (kept in the calibration directory as JSON lines) and what was read."""

    @abstractmethod
    def batches(self, tokenizer: Any, rows: list[Row], *, max_length: int, batch_size: int) -> list[Batch]:
        """Model inputs (with an attention_mask: padding is never calibrated) for the rows."""
