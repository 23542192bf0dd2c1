"""calibrate: model + sampled training data → streaming histograms of every Linear input (+ the samples, kept)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmzip import data as data_mod
from llmzip.artifact import EXTERNAL, Artifact, carry_forward, open_artifact, strict_json, write_manifest
from llmzip.config import CalibrateConfig, DataConfig, to_dict
from llmzip.data import data_paths
from llmzip.errors import ArtifactError, ModelError
from llmzip.modeling import check_length, load_model, load_tokenizer
from llmzip.outputs import staging
from llmzip.progress import progress, step
from llmzip.quant.attention import observing
from llmzip.quant.observers import DEFAULT_BINS, HistogramObserver

ACCEPTS = ("finetune", "distill", EXTERNAL)
STATS_FILE = "activation_stats.json"
HISTOGRAMS_FILE = "activation_histograms.safetensors"
SAMPLES_FILE = "calibration_samples.jsonl"


def linear_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def record(
    model: nn.Module,
    batches: list[dict[str, torch.Tensor]],
    names: list[str],
    *,
    bins: int = DEFAULT_BINS,
    scale_inputs: dict[str, torch.Tensor] | None = None,
    description: str = "calibrate",
    on_batch: Callable[[torch.Tensor], None] | None = None,
) -> dict[str, HistogramObserver]:
    """Run the batches through the model with a pre-hook on each named Linear that observes its input.

    Padding positions are excluded: their activations are never read by the model's output, and a padded
    outlier would otherwise widen the range every real token has to share. `scale_inputs` multiplies a layer's
    input per channel before observing it (the SmoothQuant-scaled input the int8 layer will really see).
    `on_batch` receives each batch's padding mask (the attention observers exclude padding the same way).
    """
    observers = {name: HistogramObserver(bins) for name in names}
    mask_holder: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Any:
        def observe(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach()
            mask = mask_holder.get("mask")
            if mask is not None and x.dim() == 3 and x.shape[:2] == mask.shape:
                x = x[mask]
            if scale_inputs is not None and name in scale_inputs:
                x = x * scale_inputs[name]
            if not bool(torch.isfinite(x).all()):
                raise ModelError(
                    f"{name}: its input holds NaN/Inf on the calibration data (the model overflows or its weights "
                    "are corrupt); no range can be calibrated from it"
                )
            observers[name].update(x)

        return observe

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    try:
        with progress() as bar, torch.no_grad():
            task = bar.add_task(description, total=len(batches), info="")
            for batch in batches:
                mask_holder["mask"] = batch["attention_mask"].bool()
                if on_batch is not None:
                    on_batch(mask_holder["mask"])
                model(**batch)
                bar.advance(task)
    finally:
        for h in handles:
            h.remove()
    return observers


def batches_from_rows(
    tokenizer: Any, rows: list[dict[str, Any]], *, max_length: int, batch_size: int
) -> list[dict[str, torch.Tensor]]:
    out = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        first = [r["text"] for r in chunk]
        second = [r["text_pair"] for r in chunk] if chunk[0].get("text_pair") is not None else None
        enc = tokenizer(first, second, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        out.append(dict(enc))
    return out


def read_observers(directory: Path) -> dict[str, HistogramObserver]:
    """The per-tensor input histograms a calibration directory holds, keyed by Linear name."""
    from safetensors.torch import load_file

    try:
        stats = json.loads((directory / STATS_FILE).read_text())["tensors"]
        counts = load_file(str(directory / HISTOGRAMS_FILE))
        return {
            name: HistogramObserver.from_state(
                entry["input"], counts[f"{name}.input"], counts.get(f"{name}.input_channel_absmax")
            )
            for name, entry in stats.items()
        }
    except Exception as err:  # JSON, safetensors and key errors all mean one thing: an unusable calibration
        raise ArtifactError(
            f"{directory}: unreadable calibration statistics ({type(err).__name__}: {str(err)[:160]}); "
            "re-run `llmzip calibrate`"
        ) from None


def read_samples(directory: Path) -> list[dict[str, Any]]:
    with (directory / SAMPLES_FILE).open() as f:
        return [json.loads(line) for line in f if line.strip()]


def sample_rows(cfg: DataConfig, num: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    loaded = data_mod.load_split(cfg, cfg.train_split, limit=num, seed=seed, shuffle=True)
    assert loaded is not None
    ds, source = loaded
    first, second = data_mod.texts(ds, cfg)
    labels = ds[cfg.label_column] if cfg.label_column in ds.column_names else [None] * len(first)
    rows = [{"text": t, "text_pair": second[i] if second else None, "label": labels[i]} for i, t in enumerate(first)]
    return rows, {**source.describe(), "split": cfg.train_split, "rows": len(rows)}


def calibrate(model_dir: Path, out_dir: Path, *, config: CalibrateConfig, overwrite: bool = False) -> Path:
    """Record activation histograms (and exact min/max) of `model_dir` on config.num_samples training examples."""
    from safetensors.torch import save_file

    started = time.time()
    source: Artifact = open_artifact(Path(model_dir), verb="calibrate", accepts=ACCEPTS, role="model directory")
    rows, described = sample_rows(config.data, config.num_samples, config.seed)
    with staging(out_dir, overwrite=overwrite, inputs=[source.path, *data_paths(config.data)]) as tmp:
        step(f"loading {model_dir}")
        model = load_model(source)
        check_length(model.config, config.data.max_length, "--max-length", model_dir)
        tokenizer = load_tokenizer(source.path)
        names = linear_names(model)
        batches = batches_from_rows(tokenizer, rows, max_length=config.data.max_length, batch_size=config.batch_size)
        # Attention matmul inputs (query/key/value, keyed "<attention module>:query" …) are observed in the same
        # pass, so `quantize --attention` needs no second calibration.
        with observing(model, config.bins) as attention:
            observers = record(model, batches, names, bins=config.bins, on_batch=attention.set_mask)
        observers |= attention.observers()
        stats = {
            "num_samples": len(rows),
            "bins": config.bins,
            "tensors": {name: {"input": obs.state()} for name, obs in observers.items()},
        }
        (tmp / STATS_FILE).write_text(strict_json(stats, where=STATS_FILE, indent=1))
        # The histograms let `quantize --method` pick min/max, percentile, entropy or MSE without re-calibrating.
        tensors = {f"{name}.input": obs.counts for name, obs in observers.items()}
        tensors |= {
            f"{n}.input_channel_absmax": o.channel_absmax for n, o in observers.items() if o.channel_absmax is not None
        }
        save_file(tensors, str(tmp / HISTOGRAMS_FILE))
        with (tmp / SAMPLES_FILE).open("w") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        carry_forward(source.path, tmp)
        tokens = int(sum(int(b["attention_mask"].sum()) for b in batches))
        write_manifest(
            tmp,
            stage="calibrate",
            parents=[source],
            inputs={"samples": described},
            config=to_dict(config),
            metrics={"num_samples": len(rows), "tokens": tokens, "tensors": len(observers)},
            seed=config.seed,
            started=started,
        )
    return out_dir
