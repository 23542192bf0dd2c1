"""Sentence embeddings: a sentence-transformers model (encoder → pooling → optional normalisation), one vector per
text, scored by STS-B Spearman (the cosine of each pair's two embeddings against the gold similarity).

The folder's own sentence-transformers files say how it pools (`1_Pooling/config.json`), whether it normalises
(`modules.json` lists a Normalize module) and its max length (`sentence_bert_config.json`). llmzip reads them once
into the model config (`llmzip_sentence_embedding`), so every later stage directory (quantize, export) carries the
same pooling, and writes them back beside saved weights so a `SentenceTransformer` loads any trained student.

Inside llmzip the embedder's output is named `logits` like every task's (calibration, the quantization report and
export's parity compare it unchanged); the ONNX graph names it `sentence_embedding`, beside `token_embeddings`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from llmzip import data as data_mod
from llmzip import metrics
from llmzip.config import DataConfig, TrainConfig
from llmzip.errors import ConfigError, ModelError
from llmzip.shrink.losses import PredictionLosses
from llmzip.tasks.base import Batch, Row, Task, TaskKind, sampled_train_split

if TYPE_CHECKING:
    from llmzip.training import Head, TaskTraining

SPEC_KEY = "llmzip_sentence_embedding"
POOLING_MODES = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_lasttoken": "lasttoken",
}


def read_spec(folder: Path) -> dict[str, Any] | None:
    """Pooling, normalisation and max length of a sentence-transformers folder (None: not one)."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return None
    try:
        modules = json.loads(modules_file.read_text())
        pooling_dir = next(m["path"] for m in modules if str(m.get("type", "")).endswith(".Pooling"))
        pooling = json.loads((folder / pooling_dir / "config.json").read_text())
    except (OSError, StopIteration, KeyError, TypeError, json.JSONDecodeError) as err:
        raise ModelError(
            f"{folder}: a sentence-transformers folder without a readable Pooling module ({err})"
        ) from None
    modes = [mode for key, mode in POOLING_MODES.items() if pooling.get(key)]
    if len(modes) != 1:
        raise ModelError(
            f"{folder}: pooling {pooling} is not one of {sorted(POOLING_MODES.values())}; llmzip pools one way"
        )
    st_config = folder / "sentence_bert_config.json"
    max_length = json.loads(st_config.read_text()).get("max_seq_length") if st_config.is_file() else None
    return {
        "pooling": modes[0],
        "normalize": any(str(m.get("type", "")).endswith(".Normalize") for m in modules),
        "max_seq_length": max_length,
    }


def write_st_files(folder: Path, spec: dict[str, Any], dimension: int) -> None:
    """modules.json, the pooling config and sentence_bert_config.json: what `SentenceTransformer(folder)` reads."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if spec["normalize"]:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    (folder / "1_Pooling").mkdir(exist_ok=True)
    pooling = {"word_embedding_dimension": dimension, **{k: spec["pooling"] == v for k, v in POOLING_MODES.items()}}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2) + "\n")
    st = {"max_seq_length": spec.get("max_seq_length") or 512, "do_lower_case": False}
    (folder / "sentence_bert_config.json").write_text(json.dumps(st, indent=2) + "\n")


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """sentence-transformers' pooling of token states [B, S, H] over the real tokens (mask [B, S])."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    if mode == "mean":
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).max(1).values
    last = mask.sum(1).long() - 1  # lasttoken: the last real token of each row (right padding)
    return hidden[torch.arange(hidden.shape[0]), last.clamp(min=0)]


def embedding_distance(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    """‖e_S − e_T‖² per text, averaged (sentence-transformers' MSE distillation, summed over the dimensions so
    its scale does not shrink with the width; for unit vectors it is 2 − 2·cos). The temperature has no role."""
    return ((student.float() - teacher.detach().float()) ** 2).sum(-1).mean()


def no_label_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """An embedder has no labels to fit (the (1 − alpha) term): zero, still attached to the graph."""
    return logits.sum() * 0.0


EMBEDDING_LOSSES = PredictionLosses(kd=embedding_distance, ce=no_label_loss)


class EmbeddingOutput(dict):  # type: ignore[type-arg]
    """`logits` (the sentence embedding) and `token_embeddings`, as attributes and keys, like transformers'
    ModelOutput."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class SentenceEmbedder(nn.Module):
    """An encoder (transformers' AutoModel, no pooler) with sentence-transformers' pooling and normalisation."""

    def __init__(self, encoder: Any) -> None:
        super().__init__()
        self.model = encoder
        self.config = encoder.config
        spec = getattr(self.config, SPEC_KEY, None)
        if not isinstance(spec, dict):
            raise ModelError("not a sentence-embedding model: its config has no pooling spec")
        self.pooling, self.normalize = str(spec["pooling"]), bool(spec["normalize"])

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        labels: torch.Tensor | None = None,
    ) -> EmbeddingOutput:
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            **extra,
        )
        tokens = out.last_hidden_state
        sentence = pool(tokens, attention_mask, self.pooling)
        if self.normalize:
            sentence = torch.nn.functional.normalize(sentence, p=2, dim=-1)
        if labels is not None:  # evaluated by transformers' Trainer: no loss to fit, the metric scores the vectors
            return EmbeddingOutput(loss=sentence.sum() * 0.0, logits=sentence)
        result = EmbeddingOutput(logits=sentence, token_embeddings=tokens)
        if output_hidden_states:
            result["hidden_states"] = out.hidden_states
        if output_attentions:
            result["attentions"] = out.attentions
        return result

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()  # type: ignore[no-any-return]

    def set_attn_implementation(self, implementation: str) -> None:
        self.model.set_attn_implementation(implementation)

    def save_pretrained(self, folder: str | Path, **kwargs: Any) -> None:
        """The encoder's weights and config plus the sentence-transformers files (loads in SentenceTransformer)."""
        self.model.save_pretrained(folder, **kwargs)
        write_st_files(Path(folder), getattr(self.config, SPEC_KEY), int(self.config.hidden_size))


def _encoder(config: Any) -> Any:
    from transformers import AutoModel

    try:  # BERT-likes build a pooler by default: sentence-transformers never runs it
        return AutoModel.from_config(config, add_pooling_layer=False)
    except TypeError:
        return AutoModel.from_config(config)


class EmbedderAuto:
    """The transformers-Auto-like loader the task hands to the stages (`from_pretrained`, `from_config`)."""

    __name__ = "SentenceEmbedder"

    @staticmethod
    def from_pretrained(source: str, **kwargs: Any) -> SentenceEmbedder:
        from transformers import AutoModel

        try:
            encoder = AutoModel.from_pretrained(source, add_pooling_layer=False, **kwargs)
        except TypeError:
            encoder = AutoModel.from_pretrained(source, **kwargs)
        if not isinstance(getattr(encoder.config, SPEC_KEY, None), dict):
            setattr(encoder.config, SPEC_KEY, read_spec(Path(source)))
        return SentenceEmbedder(encoder)

    @staticmethod
    def from_config(config: Any) -> SentenceEmbedder:
        return SentenceEmbedder(_encoder(config))


class SentenceEmbedding(Task):
    kind = TaskKind.SENTENCE_EMBEDDING
    default_exclude: list[str] = []  # no task head: every Linear is the encoder's
    metric = "spearman"

    def onnx_outputs(self) -> list[tuple[str, str, dict[int, str]]]:
        return [
            ("sentence_embedding", "logits", {0: "batch"}),
            ("token_embeddings", "token_embeddings", {0: "batch", 1: "sequence"}),
        ]

    def auto_class(self) -> Any:
        return EmbedderAuto

    def calibration_rows(
        self, cfg: DataConfig, num: int, seed: int, tokenizer: Any
    ) -> tuple[list[Row], dict[str, Any]]:
        """Texts of the text column (and of the pair column, each its own row: an embedder sees one text at a
        time); plain text files (one text per line) are valid."""
        ds, described = sampled_train_split(cfg, num, seed)
        first, second = data_mod.texts(ds, cfg)
        texts = [t for pair in zip(first, second) for t in pair] if second else list(first)
        return [{"text": t, "text_pair": None, "label": None} for t in texts[:num]], described

    def batches(self, tokenizer: Any, rows: list[Row], *, max_length: int, batch_size: int) -> list[Batch]:
        out = []
        for i in range(0, len(rows), batch_size):
            texts = [r["text"] for r in rows[i : i + batch_size]]
            out.append(
                dict(tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt"))
            )
        return out

    def finetune_head(self, cfg: TrainConfig) -> Head:
        raise ConfigError("finetune trains task heads; a sentence-embedding model has none (distill it instead)")

    def training(
        self, cfg: TrainConfig, tokenizer: Any, *, label2id: dict[str, int], train_loaded: Any = None
    ) -> TaskTraining:
        """Distillation without labels: the student learns the teacher's embedding of every training text (plain
        text is enough; a pair column's texts are more rows); scored on the eval split's pairs by Spearman."""
        from datasets import Dataset
        from transformers import DataCollatorWithPadding

        from llmzip.training import Metric, Prepared, TaskTraining

        d = cfg.data
        # Training texts need no pair and no score: plain texts are enough (a pair column, when there, adds rows).
        plain = dataclasses.replace(d, text_pair_column=None, label_column="")
        loaded = train_loaded or data_mod.load_split(
            plain, d.train_split, limit=d.max_train_samples, seed=cfg.seed, shuffle=True
        )
        assert loaded is not None
        train_ds, source = loaded
        texts = [str(t) for t in train_ds[d.text_column]]
        if d.text_pair_column and d.text_pair_column in train_ds.column_names:
            texts += [str(t) for t in train_ds[d.text_pair_column]]
        enc = tokenizer(texts, truncation=True, max_length=d.max_length)
        columns = {k: list(v) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        train = Dataset.from_dict({**columns, "labels": [0.0] * len(texts)})  # no labels: the teacher is the target
        inputs: dict[str, Any] = {"train": {**source.describe(), "split": d.train_split, "rows": len(texts)}}
        evaluated = data_mod.load_split(d, d.eval_split, limit=d.max_eval_samples, optional=True)
        eval_enc = None
        if evaluated is not None:
            eval_ds, eval_src = evaluated
            inputs["eval"] = {**eval_src.describe(), "split": d.eval_split, "rows": len(eval_ds)}
            eval_enc = self.encode(tokenizer, eval_ds, d, None, max_length=d.max_length, padding=False)

        def compute(eval_pred: Any) -> dict[str, float]:
            vectors, scores = eval_pred
            vectors = vectors[0] if isinstance(vectors, tuple) else vectors
            return {"spearman": self.score([np.asarray(vectors)], [np.asarray(scores)], {})}

        return TaskTraining(
            prepared=Prepared(train=train, eval=eval_enc, inputs=inputs),
            collator=DataCollatorWithPadding(tokenizer),
            metric=Metric("spearman", "spearman", True, value=lambda r: float(r["eval_spearman"]), compute=compute),
            losses=EMBEDDING_LOSSES,
            cache_teacher=True,  # one vector per text: the teacher's embeddings fit on disk like logits
        )

    def encode(
        self,
        tokenizer: Any,
        ds: Any,
        cfg: DataConfig,
        label2id: dict[str, int] | None,
        *,
        max_length: int,
        padding: Any,
    ) -> Any:
        """Scored pairs (STS-B: text and pair columns, a float similarity label) as two consecutive rows each, the
        pair's score on both: `score` embeds the rows in order and compares each pair's two vectors."""
        from datasets import Dataset

        first, second = data_mod.texts(ds, cfg)
        if second is None:
            raise ConfigError(
                "a sentence-embedding model is scored on text pairs with a similarity score (STS-B): name the second "
                "text with --text-pair-column (e.g. --text-column sentence1 --text-pair-column sentence2 "
                "--label-column score)"
            )
        if cfg.label_column not in ds.column_names:
            raise ConfigError(f"data.label_column={cfg.label_column}: no such column; name the similarity score column")
        scores = [float(s) for s in ds[cfg.label_column]]
        texts = [t for pair in zip(first, second) for t in pair]
        enc = tokenizer(texts, truncation=True, max_length=max_length, padding=padding)
        columns = {k: list(v) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        return Dataset.from_dict({**columns, "labels": [s for s in scores for _ in (0, 1)]})

    def score(self, logits: list[np.ndarray], labels: list[np.ndarray], id2label: dict[int, str]) -> float:
        if not logits:
            return 0.0
        vectors = np.concatenate(logits).astype(np.float64)
        gold = np.concatenate(labels)[::2]
        a, b = vectors[0::2], vectors[1::2]
        cosine = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
        return metrics.spearman(cosine, gold)

    def predictions(self, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Each pair's cosine to 2 decimals: how often two runtimes agree on it."""
        v = logits.astype(np.float64)
        a, b = v[0::2], v[1::2]
        return np.round((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12), 2)


__all__ = ["EmbedderAuto", "SentenceEmbedder", "SentenceEmbedding", "read_spec", "write_st_files"]
