"""Teacher-output cache: the teacher runs once per example; its logits live on disk for every later epoch and run.

Keyed by the teacher's identity (manifest or file hash) and by a hash of the exact token ids it sees, so any
change to the data, subset, tokenizer or max length is a different key and never a stale hit.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmzip.progress import progress, step

LOGITS_FILE = "logits.npy"


def cache_root(configured: str | None) -> Path:
    return Path(configured or os.environ.get("LLMZIP_CACHE") or Path.home() / ".cache" / "llmzip").expanduser()


def inputs_hash(encoded: Any) -> str:
    h = hashlib.sha256()
    for column in ("input_ids", "token_type_ids"):
        if column in encoded.column_names:
            for row in encoded[column]:
                h.update(np.asarray(row, dtype=np.int32).tobytes())
                h.update(b"|")
    return h.hexdigest()


def _compute(teacher: torch.nn.Module, encoded: Any, collator: Any, batch_size: int, device: Any) -> np.ndarray:
    """Teacher logits for every row, batched by similar length so padding costs little."""
    lengths = np.asarray([len(ids) for ids in encoded["input_ids"]])
    order = np.argsort(lengths, kind="stable")
    columns = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in encoded.column_names]
    out: np.ndarray | None = None
    teacher.eval()
    with progress() as bar, torch.inference_mode():
        task = bar.add_task("teacher logits (cached)", total=len(order), info="")
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            rows = [{c: encoded[int(i)][c] for c in columns} for i in idx]
            batch = {k: v.to(device) for k, v in collator(rows).items()}
            logits = teacher(**batch).logits.float().cpu().numpy()
            if out is None:
                out = np.zeros((len(order), logits.shape[-1]), dtype=np.float16)
            out[idx] = logits.astype(np.float16)
            bar.advance(task, len(idx))
    assert out is not None
    return out


def teacher_logits(
    teacher: torch.nn.Module,
    teacher_hash: str,
    encoded: Any,
    collator: Any,
    *,
    root: Path,
    batch_size: int = 64,
    device: Any = "cpu",
) -> tuple[torch.Tensor, dict[str, Any]]:
    """fp16 logits [rows, classes] from the cache, computing and storing them on a miss."""
    data_hash = inputs_hash(encoded)
    key = hashlib.sha256(f"{teacher_hash}:{data_hash}".encode()).hexdigest()[:32]
    folder = root / "teacher-logits" / key
    info = {"key": key, "path": str(folder), "rows": len(encoded)}
    if (folder / LOGITS_FILE).is_file():
        logits = np.load(folder / LOGITS_FILE)
        if logits.shape[0] == len(encoded):
            step(f"teacher logits: cache hit {folder}")
            return torch.from_numpy(logits), {**info, "hit": True}
    logits = _compute(teacher, encoded, collator, batch_size, device)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{key}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    np.save(tmp / LOGITS_FILE, logits)
    (tmp / "meta.json").write_text(json.dumps({"teacher": teacher_hash, "inputs": data_hash, **info}) + "\n")
    if folder.exists():  # another process finished first: theirs is identical
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(folder)
    return torch.from_numpy(logits), {**info, "hit": False}
