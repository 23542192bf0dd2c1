"""What finetune and distill share: data preparation and a transformers Trainer set up from a TrainConfig.

The loop, mixed precision, DDP (torchrun / accelerate launch) and checkpointing are Trainer's; llmzip only
chooses the schedule (evaluate and keep the best checkpoint once per epoch) and reports through rich.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmzip import data as data_mod
from llmzip import metrics
from llmzip.artifact import Artifact, carry_forward, write_manifest
from llmzip.config import TrainConfig, to_dict
from llmzip.outputs import check_output, staging
from llmzip.shrink.losses import SEQUENCE_LOSSES, PredictionLosses


@dataclass
class Prepared:
    train: Any
    eval: Any | None
    inputs: dict[str, Any]  # what was read, for the manifest


@dataclass(frozen=True)
class Metric:
    """The task's evaluation metric: what the manifest reports (eval_<name>) and what picks the best checkpoint."""

    name: str
    select_by: str  # Trainer's metric_for_best_model (a key of evaluate() without the "eval_" prefix)
    greater_is_better: bool
    value: Callable[[dict[str, float]], float]  # evaluate()'s result (or a logged eval entry) → the metric
    compute: Callable[[Any], dict[str, float]] | None = None  # Trainer's compute_metrics; None: the loss says it all


@dataclass
class Head:
    """What finetune must know before loading the model: for a classifier, the label set read from the data."""

    model_kwargs: dict[str, Any] = field(default_factory=dict)
    label2id: dict[str, int] = field(default_factory=dict)
    train_loaded: Any = None  # the training split, when reading the labels already loaded it


@dataclass
class TaskTraining:
    """Everything a task decides about a training stage; finetune and distill only wire it into Trainer."""

    prepared: Prepared
    collator: Any
    metric: Metric
    losses: PredictionLosses
    # Per-example teacher logits fit on disk for a classifier (one vector per example), not for a causal LM.
    cache_teacher: bool


def prepare(
    cfg: TrainConfig,
    tokenizer: Any,
    label2id: dict[str, int],
    *,
    train_loaded: Any = None,
    encode: Callable[..., Any] = data_mod.encode,
) -> Prepared:
    """The train (and, when the data has one, eval) split of labelled data, tokenized by the task's `encode`."""
    d = cfg.data
    loaded = train_loaded or data_mod.load_split(
        d, d.train_split, limit=d.max_train_samples, seed=cfg.seed, shuffle=True
    )
    assert loaded is not None  # required split: load_split raised otherwise
    train_ds, train_src = loaded
    evaluated = data_mod.load_split(d, d.eval_split, limit=d.max_eval_samples, optional=True)
    inputs: dict[str, Any] = {"train": {**train_src.describe(), "split": d.train_split, "rows": len(train_ds)}}
    eval_enc = None
    if evaluated is not None:
        eval_ds, eval_src = evaluated
        inputs["eval"] = {**eval_src.describe(), "split": d.eval_split, "rows": len(eval_ds)}
        eval_enc = encode(tokenizer, eval_ds, d, label2id, max_length=d.max_length)
    train_enc = encode(tokenizer, train_ds, d, label2id, max_length=d.max_length)
    return Prepared(train=train_enc, eval=eval_enc, inputs=inputs)


def accuracy(eval_pred: Any) -> dict[str, float]:
    logits, labels = eval_pred
    logits = logits[0] if isinstance(logits, tuple) else logits
    return {"accuracy": metrics.accuracy(np.argmax(logits, axis=-1), labels)}


ACCURACY = Metric("accuracy", "accuracy", True, value=lambda r: float(r["eval_accuracy"]), compute=accuracy)


def classification_training(
    cfg: TrainConfig, tokenizer: Any, label2id: dict[str, int], *, train_loaded: Any = None
) -> TaskTraining:
    from transformers import DataCollatorWithPadding

    return TaskTraining(
        prepared=prepare(cfg, tokenizer, label2id, train_loaded=train_loaded),
        collator=DataCollatorWithPadding(tokenizer),
        metric=ACCURACY,
        losses=SEQUENCE_LOSSES,
        cache_teacher=True,
    )


def is_main_process() -> bool:
    """Under torchrun / accelerate launch every rank runs the stage; only rank 0 writes the artifact."""
    return int(os.environ.get("RANK", "0")) == 0


@contextmanager
def stage_output(out_dir: Path, *, overwrite: bool, inputs: Sequence[Path | str] = ()) -> Iterator[Path]:
    """`staging` on the main process; a throwaway folder on the other ranks (same refusal rules for all)."""
    if is_main_process():
        with staging(out_dir, overwrite=overwrite, inputs=inputs) as tmp:
            yield tmp
        _barrier()  # every rank is done with the checkpoints before they are removed
        shutil.rmtree(work_dir(out_dir), ignore_errors=True)
        return
    check_output(Path(out_dir), overwrite=overwrite, inputs=inputs)
    with tempfile.TemporaryDirectory() as scratch:
        yield Path(scratch)
    _barrier()


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def work_dir(out_dir: Path) -> Path:
    """Trainer's checkpoints live beside the output, at a stable path, so `--resume` finds them after a kill."""
    return Path(out_dir).parent / f".{Path(out_dir).name}.work"


def checkpoint_to_resume(work: Path, resume: bool) -> str | None:
    if not resume:
        return None
    checkpoints = sorted(work.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return str(checkpoints[-1]) if checkpoints else None


def arguments(
    cfg: TrainConfig,
    work: Path,
    *,
    num_train: int,
    has_eval: bool,
    epochs: float | None = None,
    metric: Metric = ACCURACY,
) -> Any:
    """TrainingArguments for one llmzip training stage: evaluate + checkpoint once per epoch, keep the best."""
    from transformers import TrainingArguments

    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_step = cfg.batch_size * cfg.gradient_accumulation_steps * world
    steps_per_epoch = max(1, math.ceil(num_train / per_step))
    total = cfg.max_steps or max(1, math.ceil((epochs or cfg.epochs) * steps_per_epoch))
    # Evaluate and checkpoint together (Trainer keeps the best checkpoint only when they line up): once per epoch,
    # or every `save_steps` when the user wants finer-grained --resume points.
    every = min(cfg.save_steps or steps_per_epoch, total)
    return TrainingArguments(
        output_dir=str(work),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        bf16=cfg.bf16,
        fp16=cfg.fp16,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_steps=int(cfg.warmup_ratio * total),
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        max_steps=total,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=every,
        save_strategy="steps",
        save_steps=every,
        save_total_limit=2,  # the best and the latest
        load_best_model_at_end=has_eval,
        metric_for_best_model=metric.select_by if has_eval else None,
        greater_is_better=metric.greater_is_better,
        # A causal LM's eval logits are [windows, tokens, vocab]: keep only the loss when no metric reads them.
        prediction_loss_only=metric.compute is None,
        logging_steps=max(1, total // 20),
        report_to="none",
        disable_tqdm=True,
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False,
        label_names=["labels"],  # explicit: distill trains a wrapper whose forward does not name them
        # The intermediate distillation stage leaves the task head unused; DDP must not wait for its gradients.
        ddp_find_unused_parameters=True,
    )


def make_trainer(cls: Any, *, callback: Any = None, **kwargs: Any) -> Any:
    """A Trainer that reports through llmzip's rich bar only: its stdout log printer would corrupt --json."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer = cls(callbacks=[callback] if callback else None, **kwargs)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def save_trained(
    model: Any,
    tokenizer: Any,
    tmp: Path,
    *,
    stage: str,
    source: Artifact,
    inputs: dict[str, Any],
    config: TrainConfig,
    metrics: dict[str, Any],
    started: float,
    task: str = "sequence-classification",
) -> None:
    """Write the trained model, tokenizer and manifest into the staging dir (main process only)."""
    if not is_main_process():
        return
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    if source.path.is_dir():
        carry_forward(source.path, tmp)
    write_manifest(
        tmp,
        stage=stage,
        parents=[source],
        inputs=inputs,
        config=to_dict(config),
        metrics=metrics,
        seed=config.seed,
        started=started,
        extra={"task": task},
    )


def summarise(trainer: Any, callback: Any, has_eval: bool, metric: Metric = ACCURACY) -> dict[str, Any]:
    metrics: dict[str, Any] = {"steps": int(trainer.state.global_step)}
    if callback.step_times:
        # Median optimizer-step time: robust to the evaluation and checkpoint pauses inside train().
        metrics["step_time_s"] = round(float(np.median(callback.step_times)), 4)
    losses = [h["loss"] for h in callback.history if "loss" in h]
    if losses:
        metrics["final_train_loss"] = float(losses[-1])
    if has_eval:
        logged = f"eval_{metric.select_by}"
        metrics["eval_history"] = [
            {"step": h["step"], metric.name: metric.value(h)} for h in callback.history if logged in h
        ]
        result = trainer.evaluate()  # the best checkpoint, reloaded by Trainer at the end of training
        metrics[f"eval_{metric.name}"] = metric.value(result)
        metrics["eval_loss"] = float(result["eval_loss"])
    return metrics
