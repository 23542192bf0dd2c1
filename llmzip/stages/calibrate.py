"""calibrate: model + sampled training data → streaming histograms of every Linear input (+ the samples, kept)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from llmzip.artifact import EXTERNAL, Artifact, carry_forward, open_artifact, strict_json, write_manifest
from llmzip.config import CalibrateConfig, to_dict
from llmzip.data import data_paths
from llmzip.modeling import load_model, load_tokenizer, source_config
from llmzip.outputs import staging
from llmzip.positions import check_length
from llmzip.progress import step
from llmzip.quant.attention import observing
from llmzip.quant.calibration import (
    HISTOGRAMS_FILE,
    SAMPLES_FILE,
    STATS_FILE,
    linear_names,
    record,
)
from llmzip.tasks import checked_task

ACCEPTS = ("finetune", "distill", EXTERNAL)


def calibrate(model_dir: Path, out_dir: Path, *, config: CalibrateConfig, overwrite: bool = False) -> Path:
    """Record activation histograms (and exact min/max) of `model_dir` on config.num_samples training examples."""
    from safetensors.torch import save_file

    started = time.time()
    source: Artifact = open_artifact(Path(model_dir), verb="calibrate", accepts=ACCEPTS, role="model directory")
    task = checked_task(config, source_config(source.path), model_dir)
    check_length(source_config(source.path), config.data.max_length, "--max-length", model_dir)
    tokenizer = load_tokenizer(source.path)
    rows, described = task.calibration_rows(config.data, config.num_samples, config.seed, tokenizer)
    with staging(out_dir, overwrite=overwrite, inputs=[source.path, *data_paths(config.data)]) as tmp:
        step(f"loading {model_dir}")
        model = load_model(source)
        names = linear_names(model)
        batches = task.batches(tokenizer, rows, max_length=config.data.max_length, batch_size=config.batch_size)
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
            metrics={"num_samples": len(rows), "tokens": tokens, "tensors": len(observers), "task": task.kind.value},
            seed=config.seed,
            started=started,
        )
    return out_dir
