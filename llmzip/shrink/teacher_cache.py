"""Teacher-output cache: the teacher runs once per example; its logits (and, for layer distillation, the hidden
states of the layers the student is matched to) live on disk for every later epoch and run, so every training
step is a student step (Liu et al., ACL 2021, measured 2.7–3.4× faster training at equal quality).

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
TOPK_FILES = ("topk_values.npy", "topk_indices.npy")
STATES_FILES = ("states.npy", "offsets.npy")


class TopK:
    """A causal-LM teacher's k largest logits at every token of some windows (values [rows, T, k], indices): what
    a top-k cache holds instead of 49k-wide distributions (12.6 MB per 128-token SmolLM2 window in fp16; k = 64
    keeps ~33 KB). Indexable by example ids like the dense cache, and movable like a tensor."""

    def __init__(self, values: torch.Tensor, indices: torch.Tensor) -> None:
        self.values, self.indices = values, indices

    def __getitem__(self, ids: Any) -> TopK:
        return TopK(self.values[ids], self.indices[ids])

    def to(self, device: Any) -> TopK:
        return TopK(self.values.to(device), self.indices.to(device))

    def float(self) -> TopK:
        return TopK(self.values.float(), self.indices.long())


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


def _compute_top_k(
    teacher: torch.nn.Module, encoded: Any, collator: Any, batch_size: int, device: Any, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The k largest teacher logits (fp16) and their token ids (int32) at every position of equal-length windows."""
    rows = len(encoded)
    values: np.ndarray | None = None
    indices: np.ndarray | None = None
    teacher.eval()
    with progress() as bar, torch.inference_mode():
        task = bar.add_task(f"teacher top-{k} logits (cached)", total=rows, info="")
        for start in range(0, rows, batch_size):
            batch_rows = [
                {c: encoded[i][c] for c in ("input_ids", "attention_mask")}
                for i in range(start, min(rows, start + batch_size))
            ]
            batch = {key: v.to(device) for key, v in collator(batch_rows).items()}
            top = teacher(**batch).logits.float().topk(k, dim=-1)
            if values is None:
                length = top.values.shape[1]
                values = np.zeros((rows, length, k), dtype=np.float16)
                indices = np.zeros((rows, length, k), dtype=np.int32)
            assert indices is not None
            values[start : start + len(batch_rows)] = top.values.cpu().numpy().astype(np.float16)
            indices[start : start + len(batch_rows)] = top.indices.cpu().numpy().astype(np.int32)
            bar.advance(task, len(batch_rows))
    assert values is not None and indices is not None
    return values, indices


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
    top_k: int | None = None,
) -> tuple[Any, dict[str, Any]]:
    """fp16 logits [rows, classes] from the cache, computing and storing them on a miss; with `top_k` (a causal
    LM), the k largest logits per token as a TopK."""
    data_hash = inputs_hash(encoded)
    key = hashlib.sha256(f"{teacher_hash}:{data_hash}{f':top{top_k}' if top_k else ''}".encode()).hexdigest()[:32]
    folder = root / "teacher-logits" / key
    info = {"key": key, "path": str(folder), "rows": len(encoded), **({"top_k": top_k} if top_k else {})}
    files = TOPK_FILES if top_k else (LOGITS_FILE,)
    if all((folder / f).is_file() for f in files):
        arrays = [np.load(folder / f) for f in files]
        if arrays[0].shape[0] == len(encoded):
            step(f"teacher logits: cache hit {folder}")
            return _wrap(arrays), {**info, "hit": True}
    if top_k:
        arrays = list(_compute_top_k(teacher, encoded, collator, batch_size, device, top_k))
    else:
        arrays = [_compute(teacher, encoded, collator, batch_size, device)]
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{key}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    for name, array in zip(files, arrays):
        np.save(tmp / name, array)
    (tmp / "meta.json").write_text(json.dumps({"teacher": teacher_hash, "inputs": data_hash, **info}) + "\n")
    if folder.exists():  # another process finished first: theirs is identical
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(folder)
    return _wrap(arrays), {**info, "hit": False}


def _wrap(arrays: list[np.ndarray]) -> Any:
    if len(arrays) == 2:
        return TopK(torch.from_numpy(arrays[0]), torch.from_numpy(arrays[1]))
    return torch.from_numpy(arrays[0])


class CachedStates:
    """A teacher's hidden states at some layers for the real tokens of every training row: ragged rows stored flat
    ([tokens, layers, hidden] fp16, memory-mapped: the cache can be larger than RAM) with each row's offset. A
    batch comes back as the student sees it: right-padded to the batch's length, like DataCollatorWithPadding."""

    def __init__(self, states: np.ndarray, offsets: np.ndarray, layers: list[int]) -> None:
        self.states, self.offsets, self.layers = states, offsets, layers

    def batch(self, example_ids: torch.Tensor, length: int) -> dict[int, torch.Tensor]:
        """Hidden-state index (0 = embeddings) → [batch, length, hidden] float32 (zeros at padding)."""
        ids = example_ids.cpu().tolist()
        out = torch.zeros(len(ids), length, len(self.layers), self.states.shape[-1])
        for row, i in enumerate(ids):
            start, end = int(self.offsets[i]), int(self.offsets[i + 1])
            out[row, : end - start] = torch.from_numpy(np.asarray(self.states[start:end], dtype=np.float32))
        return {layer: out[:, :, j] for j, layer in enumerate(self.layers)}


def _compute_states(
    teacher: torch.nn.Module,
    encoded: Any,
    collator: Any,
    batch_size: int,
    device: Any,
    layers: list[int],
    target: np.ndarray,
    offsets: np.ndarray,
) -> None:
    """Fill `target` (flat [tokens, layers, hidden]) with the teacher's states at `layers`, batched by length."""
    lengths = np.diff(offsets)
    order = np.argsort(lengths, kind="stable")
    columns = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in encoded.column_names]
    teacher.eval()
    with progress() as bar, torch.inference_mode():
        task = bar.add_task(f"teacher hidden states {layers} (cached)", total=len(order), info="")
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = collator([{c: encoded[int(i)][c] for c in columns} for i in idx])
            states = teacher(**{k: v.to(device) for k, v in batch.items()}, output_hidden_states=True).hidden_states
            picked = torch.stack([states[t] for t in layers], dim=2).float().cpu().numpy().astype(np.float16)
            for j, i in enumerate(idx):
                target[offsets[i] : offsets[i + 1]] = picked[j, : lengths[i]]
            bar.advance(task, len(idx))


def teacher_states(
    teacher: torch.nn.Module,
    teacher_hash: str,
    encoded: Any,
    collator: Any,
    layers: list[int],
    *,
    root: Path,
    max_bytes: int,
    batch_size: int = 64,
    device: Any = "cpu",
) -> tuple[CachedStates | None, dict[str, Any]]:
    """The teacher's hidden states at `layers` for every row, from the cache or computed and stored on a miss;
    None (with the reason in the info) when they would take more than `max_bytes` on disk."""
    data_hash = inputs_hash(encoded)
    key = hashlib.sha256(f"{teacher_hash}:{data_hash}:states{layers}".encode()).hexdigest()[:32]
    folder = root / "teacher-states" / key
    lengths = np.asarray([len(ids) for ids in encoded["input_ids"]], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    hidden = int(teacher.config.hidden_size)
    size = int(offsets[-1]) * len(layers) * hidden * 2
    info: dict[str, Any] = {"key": key, "path": str(folder), "layers": layers, "mb": round(size / 2**20, 1)}
    if size > max_bytes:
        return None, {**info, "cached": False, "why": f"over the {max_bytes / 2**30:.1f} GiB bound: teacher online"}
    if all((folder / f).is_file() for f in STATES_FILES):
        stored = np.load(folder / STATES_FILES[1])
        if np.array_equal(stored, offsets):
            step(f"teacher hidden states: cache hit {folder}")
            states = np.load(folder / STATES_FILES[0], mmap_mode="r")
            return CachedStates(states, offsets, layers), {**info, "cached": True, "hit": True}
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{key}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    target = np.lib.format.open_memmap(
        tmp / STATES_FILES[0], mode="w+", dtype=np.float16, shape=(int(offsets[-1]), len(layers), hidden)
    )
    _compute_states(teacher, encoded, collator, batch_size, device, layers, target, offsets)
    target.flush()
    del target
    np.save(tmp / STATES_FILES[1], offsets)
    (tmp / "meta.json").write_text(json.dumps({"teacher": teacher_hash, "inputs": data_hash, **info}) + "\n")
    if folder.exists():  # another process finished first: theirs is identical
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(folder)
    states = np.load(folder / STATES_FILES[0], mmap_mode="r")
    return CachedStates(states, offsets, layers), {**info, "cached": True, "hit": False}
