"""The task metrics, one implementation each: every stage that scores a model (finetune/distill's Trainer, export's
ONNX-vs-PyTorch check, bench, quantize's fallback) calls these.

Entity-level F1 is written here rather than taken from `seqeval`: seqeval's last release is from 2020 (it is not
kept), it pulls scikit-learn, and its default mode is the CoNLL-2000 `conlleval` script's chunking, which fits in
the thirty lines below. tests/test_token_classification.py checks it on the cases where the rules differ from a
naive reading (an I- tag after O opens an entity; a type change closes one).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

IGNORED = -100  # label of positions no metric or loss reads (sub-tokens after the first, special tokens, padding)


def accuracy(predicted: np.ndarray, gold: np.ndarray) -> float:
    return float((np.asarray(predicted) == np.asarray(gold)).mean()) if len(gold) else 0.0


def _split(tag: str) -> tuple[str, str]:
    """IOB2/IOBES tag → (prefix, type); "O" and anything unprefixed are outside."""
    if tag in ("O", "") or "-" not in tag:
        return "O", ""
    prefix, _, kind = tag.partition("-")
    return prefix, kind


def entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """(type, start, end) of each entity, by conlleval's rules: an entity starts at B-/S-, at I-/E- after O or after
    another type, and ends where the next tag does not continue it."""
    found: set[tuple[str, int, int]] = set()
    start, kind = -1, ""
    for i, tag in enumerate([*tags, "O"]):
        prefix, t = _split(tag)
        continues = prefix in ("I", "E") and t == kind and start >= 0
        if start >= 0 and not continues:
            found.add((kind, start, i))
            start, kind = -1, ""
        if prefix != "O" and not continues:
            start, kind = i, t
        if prefix in ("E", "S") and start >= 0:  # IOBES: the entity ends on this tag
            found.add((kind, start, i + 1))
            start, kind = -1, ""
    return found


def entity_f1(predicted: Iterable[Sequence[str]], gold: Iterable[Sequence[str]]) -> dict[str, float]:
    """Micro-averaged entity precision, recall and F1 over sentences (an entity counts only if type and span match)."""
    hit = n_pred = n_gold = 0
    for p, g in zip(predicted, gold, strict=True):
        ep, eg = entities(p), entities(g)
        hit += len(ep & eg)
        n_pred += len(ep)
        n_gold += len(eg)
    precision = hit / n_pred if n_pred else 0.0
    recall = hit / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def scored_tags(
    logits: np.ndarray, labels: np.ndarray, id2label: dict[int, str]
) -> tuple[list[list[str]], list[list[str]]]:
    """Per sentence, the predicted and gold tags at the scored positions (labels != IGNORED: each word's first
    sub-token), from [batch, tokens, classes] logits and [batch, tokens] labels."""
    predicted = logits.argmax(-1)
    pred_tags, gold_tags = [], []
    for p_row, g_row in zip(predicted, labels):
        keep = g_row != IGNORED
        pred_tags.append([id2label[int(i)] for i in p_row[keep]])
        gold_tags.append([id2label[int(i)] for i in g_row[keep]])
    return pred_tags, gold_tags


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (ties get their average rank), as scipy.stats.spearmanr computes it: STS-B's
    metric (the cosine of each pair's embeddings against the gold similarity)."""
    if len(x) < 2:
        return 0.0
    rx, ry = _ranks(np.asarray(x, dtype=np.float64)), _ranks(np.asarray(y, dtype=np.float64))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / denominator) if denominator > 0 else 0.0


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    start = 0
    for end in range(1, len(values) + 1):  # each run of ties gets the average of its ranks
        if end == len(values) or sorted_values[end] != sorted_values[start]:
            ranks[order[start:end]] = (start + 1 + end) / 2
            start = end
    return ranks
