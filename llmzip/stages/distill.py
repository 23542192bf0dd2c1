"""distill: teacher + labelled data → a student built from a subset of the teacher's layers, trained on soft targets."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch

from llmzip import training
from llmzip.artifact import EXTERNAL, open_model_source, staging
from llmzip.config import DistillConfig
from llmzip.errors import ConfigError
from llmzip.losses import distillation_loss
from llmzip.modeling import count_parameters, evenly_spaced, layer_stack, load_pretrained, load_tokenizer, select_layers
from llmzip.progress import quiet_libraries, step, trainer_callback

ACCEPTS = ("finetune", "distill", EXTERNAL)


def student_layers(config: DistillConfig, num_teacher_layers: int) -> list[int]:
    if config.layers is not None:
        return list(config.layers)
    if config.num_layers is None:
        raise ConfigError("distill needs the student's layers: set num_layers (e.g. 3) or layers (e.g. 0,2,4)")
    return evenly_spaced(num_teacher_layers, config.num_layers)


def _distill_trainer_class() -> type:
    from transformers import Trainer

    class DistillTrainer(Trainer):
        """Trainer whose loss is the soft-target KD loss against a frozen teacher."""

        def __init__(
            self, *args: Any, teacher: torch.nn.Module, temperature: float, alpha: float, **kwargs: Any
        ) -> None:
            super().__init__(*args, **kwargs)
            self.teacher = teacher.to(self.args.device).eval()
            self.temperature, self.alpha = temperature, alpha

        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, torch.Tensor],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            features = {k: v for k, v in inputs.items() if k != "labels"}
            with torch.no_grad():
                teacher_logits = self.teacher(**features).logits
            outputs = model(**features)
            loss = distillation_loss(
                outputs.logits, teacher_logits, inputs["labels"], temperature=self.temperature, alpha=self.alpha
            )
            return (loss, outputs) if return_outputs else loss

    return DistillTrainer


def distill(teacher: str, out_dir: Path, *, config: DistillConfig, overwrite: bool = False) -> Path:
    """Train a student cut from `teacher`; returns the stage directory."""
    from transformers import DataCollatorWithPadding, set_seed

    started = time.time()
    source = open_model_source(teacher, verb="distill", accepts=ACCEPTS)
    quiet_libraries()
    set_seed(config.seed)
    with staging(out_dir, overwrite=overwrite) as tmp:
        step(f"loading teacher {teacher}")
        tokenizer = load_tokenizer(str(source.path))
        teacher_model = load_pretrained(str(source.path))
        label2id = {str(k): int(v) for k, v in (teacher_model.config.label2id or {}).items()}
        num_teacher_layers = len(layer_stack(teacher_model)[1])
        layers = student_layers(config, num_teacher_layers)
        # The student starts as an exact copy of the chosen teacher layers, embeddings and head (DistilBERT init).
        student = select_layers(copy.deepcopy(teacher_model), layers)
        student.config.llmzip_teacher_layers = layers
        for p in teacher_model.parameters():
            p.requires_grad_(False)
        prepared = training.prepare(config, tokenizer, label2id)
        has_eval = prepared.eval is not None
        work = tmp / "_trainer"
        callback = trainer_callback(f"distill {num_teacher_layers}→{len(layers)} layers")
        trainer = training.make_trainer(
            _distill_trainer_class(),
            callback=callback,
            model=student,
            args=training.arguments(config, work, num_train=len(prepared.train), has_eval=has_eval),
            train_dataset=prepared.train,
            eval_dataset=prepared.eval,
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=training.accuracy,
            teacher=teacher_model,
            temperature=config.temperature,
            alpha=config.alpha,
        )
        trainer.train()
        metrics = training.summarise(trainer, callback, has_eval)
        metrics.update(
            teacher_params=count_parameters(teacher_model),
            student_params=count_parameters(student),
            teacher_layers=num_teacher_layers,
            student_layers=layers,
        )
        if has_eval:
            from transformers import Trainer

            judge = training.make_trainer(
                Trainer,
                model=teacher_model,
                args=trainer.args,
                eval_dataset=prepared.eval,
                data_collator=trainer.data_collator,
                compute_metrics=training.accuracy,
            )
            metrics["teacher_eval_accuracy"] = float(judge.evaluate()["eval_accuracy"])
        training.save_trained(
            trainer,
            tokenizer,
            tmp,
            stage="distill",
            source=source,
            inputs=prepared.inputs,
            config=config,
            metrics=metrics,
            started=started,
        )
    return out_dir
