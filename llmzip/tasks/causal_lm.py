"""Causal language modelling: raw text packed into fixed windows, next-token logits out, perplexity as the metric."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import torch

from llmzip import data as data_mod
from llmzip.config import DataConfig, TrainConfig
from llmzip.errors import DataError
from llmzip.tasks.base import Batch, Row, Task, TaskKind

if TYPE_CHECKING:
    from llmzip.training import Head, TaskTraining


class CausalLM(Task):
    kind = TaskKind.CAUSAL_LM
    weight_only = True
    eval_batch_size = 1
    report_batches = 8
    generative = True
    metric = "perplexity"  # lower is better; measured by the LM bench (llmzip/bench/lm.py), not by `score`

    def auto_class(self) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def calibration_rows(
        self, cfg: DataConfig, num: int, seed: int, tokenizer: Any
    ) -> tuple[list[Row], dict[str, Any]]:
        text, source = data_mod.load_text(cfg, cfg.train_split)
        chunks = data_mod.token_windows(tokenizer, text, cfg.max_length, cfg.skip_tokens)
        if not chunks:
            raise DataError(
                f"{data_mod.dataset_location(cfg)} ({cfg.train_split}): fewer than {cfg.max_length} tokens of text; "
                "give more text or a smaller --max-length"
            )
        picked = sorted(random.Random(seed).sample(range(len(chunks)), min(num, len(chunks))))
        rows: list[Row] = [{"input_ids": chunks[i]} for i in picked]
        return rows, {
            **source,
            "split": cfg.train_split,
            "windows": len(rows),
            "window_tokens": cfg.max_length,
            "skip_tokens": cfg.skip_tokens,
        }

    def batches(self, tokenizer: Any, rows: list[Row], *, max_length: int, batch_size: int) -> list[Batch]:
        out = []
        for i in range(0, len(rows), batch_size):
            ids = torch.tensor([r["input_ids"][:max_length] for r in rows[i : i + batch_size]], dtype=torch.long)
            out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
        return out

    # Training (finetune, distill) lives in llmzip/tasks/lm_training.py.
    def finetune_head(self, cfg: TrainConfig) -> Head:
        from llmzip.training import Head

        return Head()  # the LM head is the model's own: nothing to size from the data

    def training(
        self, cfg: TrainConfig, tokenizer: Any, *, label2id: dict[str, int], train_loaded: Any = None
    ) -> TaskTraining:
        from llmzip.tasks.lm_training import lm_training

        return lm_training(cfg, tokenizer)
