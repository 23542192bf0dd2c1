"""Session fixtures: a tiny BERT (2 layers, hidden 32) with a WordLevel tokenizer, built from configs offline."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llmzip.data import DEMO_DATASET

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def demo_words() -> list[str]:
    words: set[str] = set()
    for split in ("train", "validation"):
        for line in (DEMO_DATASET / f"{split}.tsv").read_text().splitlines()[1:]:
            words.update(re.findall(r"\w+|[^\w\s]", line.split("\t")[0].lower()))
    return sorted(words)


def build_tiny_bert(directory: Path, *, num_layers: int = 2, classifier: bool = False) -> Path:
    """A 2-layer, hidden-32 BERT and its WordLevel tokenizer, saved with save_pretrained."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, BertModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {tok: i for i, tok in enumerate(specials + demo_words())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=256, num_labels=2)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config) if classifier else BertModel(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 'pretrained' tiny encoder without a task head (what finetune starts from)."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 4-layer classifier folder (no manifest): an external model, as users bring from the hub."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny") / "classifier", num_layers=4, classifier=True)
