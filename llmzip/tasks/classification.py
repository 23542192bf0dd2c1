"""Sequence classification: labelled text in, one logit vector per sequence out, accuracy as the metric."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from llmzip import data as data_mod
from llmzip import metrics
from llmzip.config import DEFAULT_EXCLUDE, DataConfig, TrainConfig
from llmzip.tasks.base import Batch, Row, Task, TaskKind, labelled_head, sampled_train_split

if TYPE_CHECKING:
    from llmzip.training import Head, TaskTraining


class SequenceClassification(Task):
    kind = TaskKind.SEQUENCE_CLASSIFICATION
    default_exclude = list(DEFAULT_EXCLUDE)  # the task head (classifier, pooler) stays fp32

    def auto_class(self) -> Any:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def calibration_rows(
        self, cfg: DataConfig, num: int, seed: int, tokenizer: Any
    ) -> tuple[list[Row], dict[str, Any]]:
        ds, described = sampled_train_split(cfg, num, seed)
        first, second = data_mod.texts(ds, cfg)
        labels = ds[cfg.label_column] if cfg.label_column in ds.column_names else [None] * len(first)
        rows = [
            {"text": t, "text_pair": second[i] if second else None, "label": labels[i]} for i, t in enumerate(first)
        ]
        return rows, described

    def batches(self, tokenizer: Any, rows: list[Row], *, max_length: int, batch_size: int) -> list[Batch]:
        out = []
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            first = [r["text"] for r in chunk]
            second = [r["text_pair"] for r in chunk] if chunk[0].get("text_pair") is not None else None
            enc = tokenizer(first, second, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            out.append(dict(enc))
        return out

    def finetune_head(self, cfg: TrainConfig) -> Head:
        return labelled_head(cfg, data_mod.label_names)

    def training(
        self, cfg: TrainConfig, tokenizer: Any, *, label2id: dict[str, int], train_loaded: Any = None
    ) -> TaskTraining:
        from llmzip.training import classification_training

        return classification_training(cfg, tokenizer, label2id, train_loaded=train_loaded)

    encode = staticmethod(data_mod.encode)  # the same signature as Task.encode

    def score(self, logits: list[np.ndarray], labels: list[np.ndarray], id2label: dict[int, str]) -> float:
        if not labels:
            return 0.0
        return metrics.accuracy(np.concatenate([x.argmax(-1) for x in logits]), np.concatenate(labels))
