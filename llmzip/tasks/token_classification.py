"""Token classification (NER, POS): words in, one label per word out, entity-level micro F1 as the metric.

Data: a split whose text column holds each sentence's words and whose label column holds one tag per word (the
hub's `conll2003` layout: `tokens` / `ner_tags`, tags as strings or class ids). Words are tokenized with
`is_split_into_words`; each word's label sits on its first sub-token and every other position (later sub-tokens,
special tokens, padding) is labelled -100, so the loss, KD's CE term and the metric read one prediction per word
— the first-sub-token scheme of BERT's NER recipe. KD's soft targets cover every real token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from llmzip import metrics
from llmzip.config import DEFAULT_EXCLUDE, DataConfig, TrainConfig
from llmzip.errors import DataError
from llmzip.tasks.base import Batch, Row, Task, TaskKind, labelled_head, sampled_train_split

if TYPE_CHECKING:
    from llmzip.training import Head, Metric, TaskTraining


def _words(ds: Any, cfg: DataConfig) -> list[list[str]]:
    column = ds[cfg.text_column]
    if column and not isinstance(column[0], list):
        raise DataError(
            f"{cfg.text_column}: a token classifier reads each sentence as a list of words (e.g. conll2003's "
            "`tokens`); this column holds plain text: set --text-column to the word-list column"
        )
    return [[str(w) for w in words] for words in column]


def tag_names(ds: Any, cfg: DataConfig) -> list[str]:
    """Tag names in id order: the Sequence(ClassLabel) names, else the sorted set of tags ("O" first)."""
    feature = getattr(ds.features[cfg.label_column], "feature", None)
    names = getattr(feature, "names", None)
    if names:
        return list(names)
    column = ds[cfg.label_column]
    if column and not isinstance(column[0], list):
        raise DataError(
            f"{cfg.label_column}: a token classifier needs one tag per word (a list per row); this column holds one "
            "label per row: drop --task token-classification, or set --label-column to the tag-list column"
        )
    values = {str(t) for tags in column for t in tags}
    return sorted(values, key=lambda t: (t != "O", t))


def encode_words(
    tokenizer: Any,
    ds: Any,
    cfg: DataConfig,
    label2id: dict[str, int] | None,
    *,
    max_length: int,
    padding: bool | str = False,
) -> Any:
    """Tokenize word lists; labels on each word's first sub-token, -100 elsewhere (padded alike)."""
    from datasets import Dataset

    if not getattr(tokenizer, "is_fast", False):
        raise DataError("token classification needs a fast tokenizer (word_ids); save the model with one")
    words = _words(ds, cfg)
    enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length, padding=padding)
    columns: dict[str, Any] = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    if label2id is not None:
        tags = ds[cfg.label_column]
        labels = []
        for i, row_tags in enumerate(tags):
            if len(row_tags) != len(words[i]):
                raise DataError(
                    f"{cfg.label_column}: row {i} has {len(row_tags)} tags for {len(words[i])} words; "
                    "every word needs one tag"
                )
            ids = [_tag_id(t, label2id) for t in row_tags]
            previous, row = None, []
            for word in enc.word_ids(i):
                row.append(ids[word] if word is not None and word != previous else metrics.IGNORED)
                previous = word
            labels.append(row)
        columns["labels"] = labels
    return Dataset.from_dict(columns)


def _tag_id(tag: Any, label2id: dict[str, int]) -> int:
    key = str(tag)
    if key in label2id:
        return label2id[key]
    if isinstance(tag, int) and 0 <= tag < len(label2id):
        return tag  # class ids of a ClassLabel sequence
    raise DataError(f"tag {tag!r} is not one the model knows ({', '.join(label2id)})")


def entity_f1_metric(label2id: dict[str, int]) -> Metric:
    """Trainer's view of the metric: entity micro F1 at the labelled positions."""
    from llmzip.training import Metric

    id2label = {v: k for k, v in label2id.items()}

    def compute(eval_pred: Any) -> dict[str, float]:
        logits, labels = eval_pred
        logits = logits[0] if isinstance(logits, tuple) else logits
        return metrics.entity_f1(*metrics.scored_tags(np.asarray(logits), np.asarray(labels), id2label))

    return Metric("f1", "f1", True, value=lambda r: float(r["eval_f1"]), compute=compute)


class TokenClassification(Task):
    kind = TaskKind.TOKEN_CLASSIFICATION
    default_exclude = list(DEFAULT_EXCLUDE)  # the task head stays fp32, as a sequence classifier's
    metric = "f1"
    logits_axes = {0: "batch", 1: "sequence"}  # one tag distribution per token

    def auto_class(self) -> Any:
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification

    def calibration_rows(
        self, cfg: DataConfig, num: int, seed: int, tokenizer: Any
    ) -> tuple[list[Row], dict[str, Any]]:
        ds, described = sampled_train_split(cfg, num, seed)
        return [{"words": w} for w in _words(ds, cfg)], described

    def batches(self, tokenizer: Any, rows: list[Row], *, max_length: int, batch_size: int) -> list[Batch]:
        out = []
        for i in range(0, len(rows), batch_size):
            words = [r["words"] for r in rows[i : i + batch_size]]
            enc = tokenizer(
                words,
                is_split_into_words=True,
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            out.append(dict(enc))
        return out

    def probe_rows(self, texts: list[str]) -> list[Row]:
        return [{"words": t.split()} for t in texts]

    def finetune_head(self, cfg: TrainConfig) -> Head:
        return labelled_head(cfg, tag_names)

    def training(
        self, cfg: TrainConfig, tokenizer: Any, *, label2id: dict[str, int], train_loaded: Any = None
    ) -> TaskTraining:
        from transformers import DataCollatorForTokenClassification

        from llmzip.shrink.losses import TOKEN_LOSSES
        from llmzip.training import TaskTraining, prepare

        return TaskTraining(
            prepared=prepare(cfg, tokenizer, label2id, train_loaded=train_loaded, encode=encode_words),
            collator=DataCollatorForTokenClassification(tokenizer),
            metric=entity_f1_metric(label2id),
            losses=TOKEN_LOSSES,
            # A [tokens × tags] logit matrix per sentence, and the teacher is as cheap as a student step: online.
            cache_teacher=False,
        )

    encode = staticmethod(encode_words)  # the same signature as Task.encode

    def score(self, logits: list[np.ndarray], labels: list[np.ndarray], id2label: dict[int, str]) -> float:
        predicted: list[list[str]] = []
        gold: list[list[str]] = []
        for x, y in zip(logits, labels):
            p, g = metrics.scored_tags(x, y, id2label)
            predicted += p
            gold += g
        return metrics.entity_f1(predicted, gold)["f1"]

    def predictions(self, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return np.asarray(logits.argmax(-1))[np.asarray(labels) != metrics.IGNORED]
