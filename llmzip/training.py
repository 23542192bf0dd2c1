"""What finetune and distill share: data preparation and a transformers Trainer set up from a TrainConfig.

The loop, mixed precision, DDP (torchrun / accelerate launch) and checkpointing are Trainer's; llmzip only
chooses the schedule (evaluate and keep the best checkpoint once per epoch) and reports through rich.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmzip import data as data_mod
from llmzip.artifact import Artifact, carry_forward, write_manifest
from llmzip.config import TrainConfig, to_dict


@dataclass
class Prepared:
    train: Any
    eval: Any | None
    inputs: dict[str, Any]  # what was read, for the manifest


def prepare(cfg: TrainConfig, tokenizer: Any, label2id: dict[str, int], *, train_loaded: Any = None) -> Prepared:
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
        eval_enc = data_mod.encode(tokenizer, eval_ds, d, label2id, max_length=d.max_length)
    train_enc = data_mod.encode(tokenizer, train_ds, d, label2id, max_length=d.max_length)
    return Prepared(train=train_enc, eval=eval_enc, inputs=inputs)


def accuracy(eval_pred: Any) -> dict[str, float]:
    logits, labels = eval_pred
    logits = logits[0] if isinstance(logits, tuple) else logits
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def arguments(cfg: TrainConfig, work_dir: Path, *, num_train: int, has_eval: bool) -> Any:
    """TrainingArguments for one llmzip training stage: evaluate + checkpoint once per epoch, keep the best."""
    from transformers import TrainingArguments

    steps_per_epoch = max(1, math.ceil(num_train / cfg.batch_size))
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    every = min(steps_per_epoch, total)
    return TrainingArguments(
        output_dir=str(work_dir),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_steps=int(cfg.warmup_ratio * total),
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        num_train_epochs=cfg.epochs,
        max_steps=total,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=every,
        save_strategy="steps" if has_eval else "no",
        save_steps=every,
        save_total_limit=1,
        load_best_model_at_end=has_eval,
        metric_for_best_model="accuracy" if has_eval else None,
        greater_is_better=True,
        logging_steps=max(1, total // 20),
        report_to="none",
        disable_tqdm=True,
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False,
    )


def make_trainer(cls: Any, *, callback: Any = None, **kwargs: Any) -> Any:
    """A Trainer that reports through llmzip's rich bar only: its stdout log printer would corrupt --json."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer = cls(callbacks=[callback] if callback else None, **kwargs)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def save_trained(
    trainer: Any,
    tokenizer: Any,
    tmp: Path,
    *,
    stage: str,
    source: Artifact,
    inputs: dict[str, Any],
    config: TrainConfig,
    metrics: dict[str, Any],
    started: float,
) -> None:
    """Write the trained model, tokenizer and manifest into the staging dir; Trainer's checkpoints are scratch."""
    trainer.save_model(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(Path(trainer.args.output_dir), ignore_errors=True)
    (tmp / "training_args.bin").unlink(missing_ok=True)
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
        extra={"task": "sequence-classification"},
    )


def summarise(trainer: Any, callback: Any, has_eval: bool) -> dict[str, Any]:
    metrics: dict[str, Any] = {"steps": int(trainer.state.global_step)}
    losses = [h["loss"] for h in callback.history if "loss" in h]
    if losses:
        metrics["final_train_loss"] = float(losses[-1])
    if has_eval:
        metrics["eval_history"] = [
            {"step": h["step"], "accuracy": h["eval_accuracy"]} for h in callback.history if "eval_accuracy" in h
        ]
        result = trainer.evaluate()  # the best checkpoint, reloaded by Trainer at the end of training
        metrics["eval_accuracy"] = float(result["eval_accuracy"])
        metrics["eval_loss"] = float(result["eval_loss"])
    return metrics
