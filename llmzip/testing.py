"""Tiny offline models for tests and `make tiny`: a 2-layer, hidden-32 BERT and a hidden-32 Llama, each with a
WordLevel tokenizer.

`python -m llmzip.testing DIR` writes one (no hub download: the vocabulary comes from the demo sample).
"""

from __future__ import annotations

import json
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


def write_tiny_ner(directory: Path) -> Path:
    """The demo sentences as a CoNLL-style token-classification set (train/validation.jsonl with `tokens` and
    `ner_tags`): each word's entity type is a fixed function of the word, so a tiny model can learn it."""
    import zlib

    directory.mkdir(parents=True, exist_ok=True)
    kinds = ["PER", "LOC", None, None, None]
    for split in ("train", "validation"):
        rows = []
        for line in (DEMO_DATASET / f"{split}.tsv").read_text().splitlines()[1:]:
            words = re.findall(r"\w+|[^\w\s]", line.split("\t")[0])
            tags, previous = [], None
            for w in words:
                kind = kinds[zlib.crc32(w.lower().encode()) % len(kinds)] if w.isalpha() else None
                tags.append("O" if kind is None else ("I-" if kind == previous else "B-") + kind)
                previous = kind
            rows.append(json.dumps({"tokens": words, "ner_tags": tags}))
        (directory / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
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


def _byte_tokens() -> list[str]:
    """GPT-2's byte-level alphabet: every text tokenizes, one token per byte, with no merges."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    extra, chars = 0, []
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def build_tiny_gguf(path: Path, *, layer_type: str = "Q4_1", head_type: str | None = None, seed: int = 0) -> Path:
    """A tiny Llama as a GGUF file (hidden 256, 2 layers, a byte-level tokenizer) whose linear layers are stored as
    `layer_type` blocks and whose embedding is Q8_0 (tied: no output tensor) or, with `head_type`, untied with an
    output tensor of that type. Float types come from the gguf package's own quantizer; the K-quants, which it
    cannot write, are random valid blocks (any bit pattern is a valid code or 6-bit scale; d and dmin are set)."""
    import gguf
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

    rng = np.random.default_rng(seed)
    hidden, ffn, layers, heads, kv_heads = 256, 512, 2, 4, 2
    tokens = ["<s>", "</s>", *_byte_tokens()]
    vocab = len(tokens)
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3] + [1] * (vocab - 2))
    writer.add_token_scores([0.0] * vocab)
    writer.add_token_merges([])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)

    def tensor(name: str, rows: int, cols: int, kind: str, scale: float = 0.05) -> None:
        qtype = GGMLQuantizationType[kind]
        if kind in ("F32", "F16"):
            value = (rng.standard_normal((rows, cols)) * scale).astype(np.float32 if kind == "F32" else np.float16)
            writer.add_tensor(name, value)
            return
        block, size = GGML_QUANT_SIZES[qtype]
        if kind.endswith("_K"):
            data = rng.integers(0, 256, (rows * cols // block, size), dtype=np.uint8)
            for at, value in ((208, scale / 64),) if kind == "Q6_K" else ((0, scale / 16), (2, scale / 32)):
                data[:, at : at + 2] = np.frombuffer(np.float16(value).tobytes(), dtype=np.uint8)
            data = data.reshape(rows, -1)
        else:
            data = quants.quantize((rng.standard_normal((rows, cols)) * scale).astype(np.float32), qtype)
        writer.add_tensor(name, data, raw_dtype=qtype)

    tensor("token_embd.weight", vocab, hidden, "Q8_0", 0.5)
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, dtype=np.float32))
        for name, rows, cols in (
            ("attn_q", hidden, hidden),
            ("attn_k", hidden // heads * kv_heads, hidden),
            ("attn_v", hidden // heads * kv_heads, hidden),
            ("attn_output", hidden, hidden),
            ("ffn_gate", ffn, hidden),
            ("ffn_up", ffn, hidden),
            ("ffn_down", hidden, ffn),
        ):
            tensor(f"blk.{i}.{name}.weight", rows, cols, layer_type)
    writer.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    if head_type is not None:
        tensor("output.weight", vocab, hidden, head_type, 0.5)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# Tiny random decoders of the families transformers ships (hidden 64, 2 layers, 4 heads / 2 KV heads, 256
# positions, tied embeddings, the WordLevel tokenizer of build_tiny_llama): what `make test` runs every family
# through (tests/test_families.py). Gemma 2/3 and Mistral get a sliding window shorter than the test prompts.
DECODER_FAMILIES = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3",
    "phi3",
    "gpt2",
    "gptneox",
    "granite",
    "opt",
)


def build_tiny_decoder(directory: Path, family: str, *, seed: int = 0) -> Path:
    import torch
    import transformers as tf
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(LM_SPECIALS + demo_vocabulary()[len(SPECIALS) :])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = tf.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    ids = {"bos_token_id": vocab["<s>"], "eos_token_id": vocab["</s>"], "pad_token_id": vocab["</s>"]}
    common = {"vocab_size": len(vocab), "tie_word_embeddings": True, **ids}
    llama_like = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        **common,
    }
    configs = {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, llama_like),
        "mistral": (tf.MistralConfig, tf.MistralForCausalLM, {**llama_like, "sliding_window": 16}),
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, llama_like),
        "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM, {**llama_like, "head_dim": 16}),
        "gemma": (tf.GemmaConfig, tf.GemmaForCausalLM, {**llama_like, "head_dim": 16}),
        "gemma2": (tf.Gemma2Config, tf.Gemma2ForCausalLM, {**llama_like, "head_dim": 16, "sliding_window": 16}),
        "gemma3": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM, {**llama_like, "head_dim": 16, "sliding_window": 16}),
        "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM, llama_like),
        "gpt2": (
            tf.GPT2Config,
            tf.GPT2LMHeadModel,
            {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_inner": 128, "n_positions": 256, **common},
        ),
        "gptneox": (
            tf.GPTNeoXConfig,
            tf.GPTNeoXForCausalLM,
            {
                "hidden_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "intermediate_size": 128,
                "max_position_embeddings": 256,
                **common,
            },
        ),
        "granite": (tf.GraniteConfig, tf.GraniteForCausalLM, llama_like),
        "opt": (
            tf.OPTConfig,
            tf.OPTForCausalLM,
            {
                "hidden_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "ffn_dim": 128,
                "word_embed_proj_dim": 64,
                "max_position_embeddings": 256,
                **common,
            },
        ),
    }
    config_class, model_class, values = configs[family]
    torch.manual_seed(seed)
    model_class(config_class(**values)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
