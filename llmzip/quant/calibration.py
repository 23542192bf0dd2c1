"""The calibration directory's contents and how they are recorded: shared by calibrate, quantize and export.

calibrate writes them, quantize reads the histograms and re-runs the kept samples, export probes with them; all
three import this module instead of each other (stages never import stages).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmzip.errors import ArtifactError, ModelError
from llmzip.progress import progress
from llmzip.quant.observers import DEFAULT_BINS, HistogramObserver

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
