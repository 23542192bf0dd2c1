"""Causal-LM training for finetune and distill: raw text packed into token windows, next-token losses, perplexity.

Everything here is what the stages ask `CausalLM` for (see llmzip/tasks/causal_lm.py); the stages stay task-agnostic.

The teacher runs online by default, every distillation step: full-vocabulary logits do not fit on disk (49,152
fp16 logits × 128 tokens is 12.6 MB per window, 27 GB for WikiText-2's ~2,100 training windows), and an LM
distillation run that sees each window about once would pay the same teacher forwards to fill a cache.
`distill --teacher-top-k K` caches each token's K largest teacher logits instead (≈33 KB per window at K = 64,
keyed like the classifier logit cache): once filled, every step of every epoch and every later run on the same
windows is a student step only — what healing a pruned student over several epochs needs. Its KL is over the
teacher's renormalised top K (the dropped tail holds little mass at T ≈ 1).
"""

from __future__ import annotations

import math
import random
from typing import Any

import torch
import torch.nn.functional as F

from llmzip import data as data_mod
from llmzip.config import DataConfig, TrainConfig
from llmzip.errors import DataError
from llmzip.shrink.losses import PredictionLosses, token_kl
from llmzip.training import Metric, Prepared, TaskTraining

IGNORE = -100  # label of a position that is not scored (padding), as transformers' LM losses expect


def next_token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of position i predicting token i+1, over labels that are not IGNORE (i.e. padding)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE)


LM_LOSSES = PredictionLosses(kd=token_kl, ce=next_token_ce)


def perplexity_of(result: dict[str, float]) -> float:
    """exp(mean next-token loss). Exact perplexity over scored tokens: every window has the same length, so the
    mean of per-window means that Trainer reports is the mean over tokens."""
    return math.exp(min(float(result["eval_loss"]), 700.0))  # past e^700 a float overflows; it is "inf" anyway


PERPLEXITY = Metric("perplexity", "loss", greater_is_better=False, value=perplexity_of)


def split_windows(tokenizer: Any, cfg: DataConfig, split: str, skip: int = 0) -> tuple[list[list[int]], dict[str, Any]]:
    text, source = data_mod.load_text(cfg, split)
    chunks = data_mod.token_windows(tokenizer, text, cfg.max_length, skip)
    if not chunks:
        skipped = f" after skipping {skip}" if skip else ""
        raise DataError(
            f"{data_mod.dataset_location(cfg)} ({split}): fewer than {cfg.max_length} tokens of text{skipped}, not "
            "one window; give more text or a smaller --max-length"
        )
    return chunks, {**source, "split": split, "window_tokens": cfg.max_length, "skipped_tokens": skip}


def _has_eval(cfg: DataConfig) -> bool:
    """Like a classifier's: a folder's eval split if it has one; a single file is training data only."""
    location = data_mod.dataset_location(cfg)
    if data_mod.resolve(cfg, cfg.eval_split) is None:
        return False
    from pathlib import Path

    return not Path(location).expanduser().is_file()


def as_dataset(rows: list[list[int]]) -> Any:
    """input_ids, an all-ones attention mask (windows are never padded) and labels = input_ids (the loss shifts)."""
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows], "labels": rows})


def prepare(cfg: TrainConfig, tokenizer: Any) -> Prepared:
    """Train windows (a seeded random subset of --max-train-samples) and the first --max-eval-samples eval windows.

    --skip-tokens applies to the training text only: it keeps training off text that a benchmark scores.
    """
    d = cfg.data
    train, train_src = split_windows(tokenizer, d, d.train_split, d.skip_tokens)
    total = len(train)
    if d.max_train_samples is not None and d.max_train_samples < total:
        picked = sorted(random.Random(cfg.seed).sample(range(total), d.max_train_samples))
        train = [train[i] for i in picked]
    inputs: dict[str, Any] = {"train": {**train_src, "windows": len(train), "windows_available": total}}
    evaluated = None
    if _has_eval(d):
        rows, eval_src = split_windows(tokenizer, d, d.eval_split)
        rows = rows[: d.max_eval_samples] if d.max_eval_samples is not None else rows
        inputs["eval"] = {**eval_src, "windows": len(rows)}
        evaluated = as_dataset(rows)
    return Prepared(train=as_dataset(train), eval=evaluated, inputs=inputs)


def lm_training(cfg: TrainConfig, tokenizer: Any) -> TaskTraining:
    from transformers import default_data_collator

    return TaskTraining(
        prepared=prepare(cfg, tokenizer),
        collator=default_data_collator,  # equal-length windows: stacking is all there is to do
        metric=PERPLEXITY,
        losses=LM_LOSSES,
        cache_teacher=False,  # the module docstring says why
    )
