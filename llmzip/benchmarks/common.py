"""Shared by the benchmark commands: paths to the shared data/models, test-set accuracy, plots."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmzip.config import DataConfig
from llmzip.data import encode, load_split
from llmzip.errors import DataError
from llmzip.modeling import count_parameters, load_pretrained, load_tokenizer

SHARED = Path(os.environ.get("LLMZIP_SHARED", "../shared"))
TEACHER = SHARED / "models" / "minilm-l6-sst2"
SST2 = SHARED / "data" / "sst2"


def require_shared() -> None:
    for path in (TEACHER / "config.json", SST2 / "test.tsv"):
        if not path.exists():
            raise DataError(f"{path}: missing; benchmarks read ../shared (set LLMZIP_SHARED to its location)")


def test_accuracy(model_dir: Path, *, max_length: int = 64, batch_size: int = 64) -> tuple[float, int]:
    """Accuracy on SST-2 test.tsv (GLUE dev) and the parameter count of a PyTorch model directory."""
    model = load_pretrained(model_dir)
    return model_accuracy(model, load_tokenizer(model_dir), max_length=max_length, batch_size=batch_size), (
        count_parameters(model)
    )


def model_accuracy(model: Any, tokenizer: Any, *, max_length: int = 64, batch_size: int = 64) -> float:
    """Accuracy of an in-memory PyTorch classifier on SST-2 test.tsv (GLUE dev)."""
    cfg = DataConfig(dataset=str(SST2 / "test.tsv"))
    loaded = load_split(cfg, "test")
    assert loaded is not None
    label2id = {str(k): int(v) for k, v in (model.config.label2id or {}).items()}
    enc = encode(tokenizer, loaded[0], cfg, label2id, max_length=max_length)
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(enc), batch_size):
            rows = enc[i : i + batch_size]
            feats = tokenizer.pad({k: v for k, v in rows.items() if k != "labels"}, return_tensors="pt")
            logits = model(**feats).logits.numpy()
            correct += int((np.argmax(logits, -1) == np.asarray(rows["labels"])).sum())
    return correct / len(enc)


def write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")
