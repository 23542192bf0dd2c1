"""The interface every task implements (see llmzip/tasks/__init__.py)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from llmzip import data as data_mod
from llmzip.config import DataConfig, TaskKind, TrainConfig

if TYPE_CHECKING:
    from llmzip.training import Head, TaskTraining

Batch = dict[str, torch.Tensor]
Row = dict[str, Any]
Described = dict[str, Any]  # what was read, for the manifest


__all__ = ["Batch", "Described", "Row", "Task", "TaskKind", "labelled_head", "sampled_train_split"]


def sampled_train_split(cfg: DataConfig, num: int, seed: int) -> tuple[Any, Described]:
    """`num` seeded training examples (calibration rows) and what was read."""
    loaded = data_mod.load_split(cfg, cfg.train_split, limit=num, seed=seed, shuffle=True)
    assert loaded is not None  # a required split: load_split raised otherwise
    ds, source = loaded
    return ds, {**source.describe(), "split": cfg.train_split, "rows": len(ds)}


def labelled_head(cfg: TrainConfig, names_of: Any) -> Head:
    """A classifier head sized from the label set `names_of(train split, data config)` reads; a head of another
    shape (a sequence classifier's, for a token classifier) is replaced."""
    from llmzip.training import Head

    d = cfg.data
    loaded = data_mod.load_split(d, d.train_split, limit=d.max_train_samples, seed=cfg.seed, shuffle=True)
    assert loaded is not None
    names = names_of(loaded[0], d)
    label2id = {name: i for i, name in enumerate(names)}
    kwargs = {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": label2id,
        "ignore_mismatched_sizes": True,
    }
    return Head(model_kwargs=kwargs, label2id=label2id, train_loaded=loaded)


class Task(ABC):
    kind: TaskKind
    # Linear layers quantize keeps fp32 unless --exclude says otherwise (regexes on module names).
    default_exclude: list[str] = []
    # Weights-only quantization (float activations) whatever --weight-bits says.
    weight_only: bool = False
    # Sequences per forward when a stage re-runs calibration samples (a causal LM's logits are [T × vocabulary]).
    eval_batch_size: int = 32
    # Batches of the calibration samples quantize's error report re-runs (None: all); a causal LM's report runs
    # fp32 and quantized side by side over [tokens × vocabulary] logits, so a few windows say enough.
    report_batches: int | None = None
    # The name of the score `score` returns (0–1, higher is better): bench's and export's accuracy column.
    metric: str = "accuracy"
    # A decoder that generates: exported as one graph with a KV cache, benched by perplexity and tokens/s.
    generative: bool = False
    # The dynamic axes of the exported graph's `logits` (one vector per sequence: batch only).
    logits_axes: dict[int, str] = {0: "batch"}

    def onnx_outputs(self) -> list[tuple[str, str, dict[int, str]]]:
        """The exported graph's outputs: (ONNX name, attribute of the model's output, dynamic axes); the first is
        what parity, accuracy and bench read."""
        return [("logits", "logits", self.logits_axes)]

    def output_head(self, model: Any) -> str | None:
        """The module name of the output projection (whose --head-bits may differ), if the model has one."""
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        return next((n for n, m in model.named_modules() if m is head), None) if head is not None else None

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

    @abstractmethod
    def finetune_head(self, cfg: TrainConfig) -> Head:
        """What finetune must read before loading the model (a classifier's labels) and pass to from_pretrained."""

    @abstractmethod
    def training(
        self, cfg: TrainConfig, tokenizer: Any, *, label2id: dict[str, int], train_loaded: Any = None
    ) -> TaskTraining:
        """Tokenized train/eval data, collator, metric and prediction losses for finetune and distill."""

    # Scoring a model on labelled data: one implementation per task, used by export's ONNX-vs-PyTorch check, bench
    # and quantize's fallback (finetune and distill get the same function through `training(...).metric`).
    def encode(
        self,
        tokenizer: Any,
        ds: Any,
        cfg: DataConfig,
        label2id: dict[str, int] | None,
        *,
        max_length: int,
        padding: Any,
    ) -> Any:
        """The split as a datasets.Dataset of model inputs and (with `label2id`) `labels`."""
        raise NotImplementedError(f"{self.kind.value} models are scored by their own bench (llmzip/bench/lm.py)")

    def score(self, logits: list[np.ndarray], labels: list[np.ndarray], id2label: dict[int, str]) -> float:
        """The task metric (0–1) of batches of logits against their labels."""
        raise NotImplementedError(f"{self.kind.value} models are scored by their own bench (llmzip/bench/lm.py)")

    def predictions(self, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """The predictions the metric reads, flattened (how often two runtimes agree is measured on these)."""
        return np.asarray(logits.argmax(-1)).reshape(-1)

    def probe_rows(self, texts: list[str]) -> list[Row]:
        """Calibration-style rows (for `batches`) made from plain sentences: export's parity probe."""
        return [{"text": t, "text_pair": None, "label": None} for t in texts]
