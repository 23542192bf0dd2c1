"""Tiny offline models for tests and `make tiny`: a 2-layer, hidden-32 BERT with a WordLevel tokenizer.

`python -m llmzip.testing DIR` writes one (no hub download: the vocabulary comes from the demo sample).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from llmzip.data import DEMO_DATASET

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def demo_vocabulary() -> list[str]:
    words: set[str] = set()
    for split in ("train", "validation"):
        for line in (DEMO_DATASET / f"{split}.tsv").read_text().splitlines()[1:]:
            words.update(re.findall(r"\w+|[^\w\s]", line.split("\t")[0].lower()))
    return SPECIALS + sorted(words)


def build_tiny_bert(
    directory: Path, *, num_layers: int = 2, hidden: int = 32, classifier: bool = False, seed: int = 0
) -> Path:
    """Save a tiny BertModel (or BertForSequenceClassification) and its tokenizer with save_pretrained."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, BertModel, PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(demo_vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=256,
    )
    config.num_labels = 2
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config) if classifier else BertModel(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m llmzip.testing OUT_DIR")
    print(build_tiny_bert(Path(sys.argv[1])))
