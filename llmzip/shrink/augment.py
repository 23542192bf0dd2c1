"""Training-data augmentation for distillation: synthetic rows the teacher labels (TinyBERT's idea, cheaply).

KD needs no gold label, so any text the teacher can score is training signal. Two ways to make it:
- joined pairs: two random training texts joined: longer, mixed inputs (on SST-2, whose training rows are
  phrases, mean 13 tokens, while its dev set is full sentences, mean 25);
- word swaps (TinyBERT's augmentation without its GloVe/BERT-MLM models): the long training texts again, with
  a share of their words replaced by a near neighbour in the teacher's own input-embedding space, so the new rows
  are sentence-length and near the data, and the teacher's soft labels say how each swap moved the meaning.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from llmzip.config import DistillConfig
from llmzip.errors import ConfigError

# Word swaps: TinyBERT's settings (a word is replaced with probability 0.4 by one of its K nearest neighbours),
# from texts as long as SST-2's full sentences are (its phrases are what the data has plenty of already).
SWAP_SHARE, SWAP_NEIGHBOURS, SWAP_MIN_WORDS = 0.4, 8, 12


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


def embedding_neighbours(teacher: Any, tokenizer: Any, words: set[str], *, k: int) -> dict[str, list[str]]:
    """For each word that is one vocabulary token, its k nearest whole-word tokens by cosine of the teacher's input
    embeddings (not itself, no sub-word pieces, no special tokens): the swap candidates."""
    vocab: dict[str, int] = tokenizer.get_vocab()
    table = teacher.get_input_embeddings().weight.detach().float()
    table = table / table.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    specials = set(tokenizer.all_special_tokens)
    whole = sorted(i for t, i in vocab.items() if t.isalpha() and t not in specials and i < len(table))
    names = {i: t for t, i in vocab.items()}
    targets = torch.tensor(whole)
    queries = sorted({vocab[w] for w in words if w in vocab and vocab[w] < len(table)})
    out: dict[str, list[str]] = {}
    for start in range(0, len(queries), 1024):
        chunk = torch.tensor(queries[start : start + 1024])
        scores = table[chunk] @ table[targets].T
        scores[chunk[:, None] == targets[None, :]] = -2.0  # never the word itself
        best = scores.topk(k, dim=-1).indices
        for q, row in zip(chunk.tolist(), best.tolist()):
            out[names[q]] = [names[whole[j]] for j in row]
    return out


def swapped_texts(
    texts: list[str], neighbours: dict[str, list[str]], count: int, *, share: float, min_words: int, seed: int
) -> list[str]:
    """`count` texts, each a random training text of ≥ `min_words` words with each word swapped for one of its
    neighbours with probability `share` (seeded); the words without neighbours stay."""
    sources = [t.split() for t in texts if len(t.split()) >= min_words]
    if not sources:
        raise ConfigError(f"augment_swaps: no training text has {min_words} words or more to vary")
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        words = rng.choice(sources)
        swapped = [rng.choice(neighbours[w]) if w in neighbours and rng.random() < share else w for w in words]
        out.append(" ".join(swapped))
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


def with_teacher_rows(loaded: tuple[Any, Any], config: DistillConfig, teacher: Any, tokenizer: Any) -> tuple[Any, Any]:
    """The training split (dataset, source) plus `config.augment_pairs` joined rows and `config.augment_swaps`
    word-swapped rows, every added row labelled by the teacher."""
    from datasets import Dataset, concatenate_datasets

    ds, source = loaded
    d = config.data
    if d.text_pair_column:
        raise ConfigError("augment_pairs/augment_swaps: made for single-text tasks; drop them for sentence pairs")
    texts = [str(t) for t in ds[d.text_column]]
    extra = joined_texts(texts, config.augment_pairs, seed=config.seed) if config.augment_pairs else []
    if config.augment_swaps:
        words = {w for t in texts if len(t.split()) >= SWAP_MIN_WORDS for w in t.split()}
        neighbours = embedding_neighbours(teacher, tokenizer, words, k=SWAP_NEIGHBOURS)
        extra += swapped_texts(
            texts, neighbours, config.augment_swaps, share=SWAP_SHARE, min_words=SWAP_MIN_WORDS, seed=config.seed
        )
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
