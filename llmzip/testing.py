"""Tiny offline models for tests and `make tiny`: a 2-layer, hidden-32 BERT and a hidden-32 Llama, each with a
WordLevel tokenizer.

`python -m llmzip.testing DIR` writes one (no hub download: the vocabulary comes from the demo sample).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from llmzip.data import DEMO_DATASET

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LM_SPECIALS = ["<unk>", "<s>", "</s>"]


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


def demo_text() -> str:
    """The demo sample's sentences as running text: raw text a tiny causal LM can be trained on."""
    lines = []
    for split in ("train", "validation"):
        lines += [line.split("\t")[0] for line in (DEMO_DATASET / f"{split}.tsv").read_text().splitlines()[1:]]
    return "\n".join(lines) + "\n"


def build_tiny_llama(directory: Path, *, num_layers: int = 4, hidden: int = 32, seed: int = 0) -> Path:
    """Save a tiny LlamaForCausalLM (4 heads, 2 KV heads, tied embeddings, as SmolLM2) and its tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(LM_SPECIALS + demo_vocabulary()[len(SPECIALS) :])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
        pad_token_id=vocab["</s>"],
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def main(argv: list[str]) -> int:
    usage = "usage: python -m llmzip.testing OUT_DIR   (writes a tiny 2-layer BERT and its tokenizer into OUT_DIR)"
    if len(argv) != 1 or argv[0].startswith("-"):
        print(usage, file=sys.stdout if argv in (["--help"], ["-h"]) else sys.stderr)
        return 0 if argv in (["--help"], ["-h"]) else 2
    out = Path(argv[0])
    if out.exists() and any(out.iterdir()):
        print(f"error: {out} exists and is not empty; choose another folder", file=sys.stderr)
        return 3
    print(build_tiny_bert(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
