"""Training-data augmentation for distillation: synthetic rows the teacher labels (TinyBERT's idea, cheaply).

KD needs no gold label, so any text the teacher can score is training signal. Joining two random training texts
makes longer, mixed inputs: on SST-2, whose training rows are phrases (mean 13 tokens) while its dev set is full
sentences (mean 25), they put the student where it will be evaluated. TinyBERT replaces words with BERT/GloVe
neighbours instead; joining needs no extra model and runs in seconds.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from llmzip.config import DistillConfig
from llmzip.errors import ConfigError


def joined_texts(texts: list[str], count: int, *, seed: int) -> list[str]:
    """`count` texts, each two distinct random texts of `texts` joined by a space (seeded)."""
    if len(texts) < 2:
        raise ConfigError("augment_pairs: needs at least two training texts to join")
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        a, b = rng.sample(range(len(texts)), 2)
        out.append(f"{texts[a].strip()} {texts[b].strip()}")
    return out


def teacher_labels(teacher: Any, tokenizer: Any, texts: list[str], *, max_length: int, batch_size: int) -> list[int]:
    """The teacher's argmax class per text (what the CE term of the distillation loss trains on)."""
    labels: list[int] = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(
                texts[i : i + batch_size], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
            )
            labels += teacher(**enc).logits.argmax(-1).tolist()
    return labels


def with_joined_pairs(loaded: tuple[Any, Any], config: DistillConfig, teacher: Any, tokenizer: Any) -> tuple[Any, Any]:
    """The training split (dataset, source) plus `config.augment_pairs` teacher-labelled joined rows."""
    from datasets import Dataset, concatenate_datasets

    ds, source = loaded
    d = config.data
    if d.text_pair_column:
        raise ConfigError("augment_pairs: joining texts is for single-text tasks; drop it for sentence pairs")
    texts = [str(t) for t in ds[d.text_column]]
    extra = joined_texts(texts, config.augment_pairs, seed=config.seed)
    ids = teacher_labels(teacher, tokenizer, extra, max_length=d.max_length, batch_size=config.eval_batch_size)
    sample = ds[0][d.label_column]
    id2label = {int(k): str(v) for k, v in (teacher.config.id2label or {}).items()}
    # Same type as the file's labels, so data.encode maps both alike (ints are ids; strings go through label2id).
    values = ids if isinstance(sample, int) and not isinstance(sample, bool) else [id2label[i] for i in ids]
    added = Dataset.from_dict({d.text_column: extra, d.label_column: values}).cast(
        ds.select_columns([d.text_column, d.label_column]).features
    )
    joined = concatenate_datasets([ds.select_columns([d.text_column, d.label_column]), added])
    return joined.shuffle(seed=config.seed), source
