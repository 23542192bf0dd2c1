"""distill: teacher + labelled data → a smaller student trained on the teacher's outputs (DistilBERT / TinyBERT).

The loop, DDP, mixed precision and checkpoints are transformers' Trainer; llmzip adds the losses, the student
construction, the learned width projections and the on-disk teacher-logit cache.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llmzip import students, teacher_cache, training
from llmzip.artifact import EXTERNAL, open_model_source
from llmzip.config import DistillConfig
from llmzip.losses import attention_mse, hidden_cosine, hidden_mse, soft_target_kl
from llmzip.modeling import count_parameters, load_pretrained, load_tokenizer
from llmzip.progress import quiet_libraries, step, trainer_callback

ACCEPTS = ("finetune", "distill", EXTERNAL)
FEATURES = ("input_ids", "attention_mask", "token_type_ids")
STUDENT_STATE = "student.safetensors"  # a finished intermediate stage, for --resume


class StudentWithProjections(nn.Module):
    """What Trainer optimises: the student plus (when narrower) the projections its intermediate losses need."""

    def __init__(
        self, student: nn.Module, projections: students.Projections | None, *, hidden: bool, attentions: bool
    ) -> None:
        super().__init__()
        self.student, self.projections = student, projections
        self.hidden, self.attentions = hidden, attentions

    def forward(self, **features: torch.Tensor) -> dict[str, Any]:
        out = self.student(**features, output_hidden_states=self.hidden, output_attentions=self.attentions)
        result: dict[str, Any] = {"logits": out.logits}
        if self.hidden:
            states = out.hidden_states
            if self.projections is not None:
                states = tuple(self.projections(i, h) for i, h in enumerate(states))
            result["hidden"] = states
        if self.attentions:
            result["attentions"] = out.attentions
        return result


def intermediate_losses(
    weights: dict[str, float], student: dict[str, Any], teacher: Any, layer_map: list[int], mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Hidden-state, embedding and attention losses over the student↔teacher layer map, averaged over layers."""
    pairs = list(enumerate(layer_map, start=1))  # (student output index, teacher output index), 1-based
    t_states, s_states = teacher.hidden_states, student.get("hidden")
    parts: dict[str, torch.Tensor] = {}
    if s_states is not None and "hidden_mse" in weights:
        parts["hidden_mse"] = torch.stack([hidden_mse(s_states[s], t_states[t], mask) for s, t in pairs]).mean()
    if s_states is not None and "hidden_cos" in weights:
        parts["hidden_cos"] = torch.stack([hidden_cosine(s_states[s], t_states[t], mask) for s, t in pairs]).mean()
    if s_states is not None and "embedding" in weights:
        parts["embedding"] = hidden_mse(s_states[0], t_states[0], mask)
    if "attention" in weights:
        t_att, s_att = teacher.attentions, student["attentions"]
        parts["attention"] = torch.stack([attention_mse(s_att[s - 1], t_att[t - 1], mask) for s, t in pairs]).mean()
    return parts


def _trainer_class() -> type:
    from transformers import Trainer

    class DistillTrainer(Trainer):
        """Trainer whose loss is the weighted sum of the configured distillation losses."""

        def __init__(
            self,
            *args: Any,
            teacher: nn.Module,
            weights: dict[str, float],
            temperature: float,
            layer_map: list[int],
            cached_logits: torch.Tensor | None,
            **kwargs: Any,
        ) -> None:
            super().__init__(*args, **kwargs)
            self.teacher = teacher.to(self.args.device).eval()
            self.weights, self.temperature, self.layer_map = weights, temperature, layer_map
            self.cached_logits = cached_logits

        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, torch.Tensor],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            features = {k: v for k, v in inputs.items() if k in FEATURES}
            labels = inputs["labels"]
            out = model(**features)
            if not model.training:  # evaluation scores the student alone: hard-label CE, no teacher needed
                loss = F.cross_entropy(out["logits"], labels)
                return (loss, {"logits": out["logits"]}) if return_outputs else loss
            loss = self._loss(out, features, labels, inputs.get("example_id"))
            return (loss, {"logits": out["logits"]}) if return_outputs else loss

        def _loss(
            self,
            out: dict[str, Any],
            features: dict[str, torch.Tensor],
            labels: torch.Tensor,
            example_id: torch.Tensor | None,
        ) -> torch.Tensor:
            w, mask = self.weights, features["attention_mask"]
            needs_states = any(k in w for k in ("hidden_mse", "hidden_cos", "embedding", "attention"))
            teacher_out = None
            teacher_logits = None
            if self.cached_logits is not None and example_id is not None and not needs_states:
                teacher_logits = self.cached_logits[example_id.cpu()].to(out["logits"].device).float()
            elif "kd" in w or needs_states:  # labels-only training never pays for a teacher forward
                with torch.no_grad():
                    teacher_out = self.teacher(
                        **features, output_hidden_states=needs_states, output_attentions="attention" in w
                    )
                teacher_logits = teacher_out.logits
            parts: dict[str, torch.Tensor] = {}
            if "kd" in w and teacher_logits is not None:
                parts["kd"] = soft_target_kl(out["logits"], teacher_logits, self.temperature)
            if "ce" in w:
                parts["ce"] = F.cross_entropy(out["logits"], labels)
            if teacher_out is not None and needs_states:
                parts.update(intermediate_losses(w, out, teacher_out, self.layer_map, mask))
            total = torch.zeros((), device=out["logits"].device)
            for key, value in parts.items():
                total = total + w[key] * value
            return total

    return DistillTrainer


def distill(
    teacher: str, out_dir: Path, *, config: DistillConfig, overwrite: bool = False, resume: bool = False
) -> Path:
    """Train a student cut from `teacher`; returns the stage directory."""
    from accelerate import PartialState
    from safetensors.torch import load_file, save_file
    from transformers import DataCollatorWithPadding, Trainer, set_seed

    started = time.time()
    source = open_model_source(teacher, verb="distill", accepts=ACCEPTS)
    quiet_libraries()
    set_seed(config.seed)
    needs_attention = config.attention > 0
    with training.stage_output(out_dir, overwrite=overwrite) as tmp:
        step(f"loading teacher {teacher}")
        tokenizer = load_tokenizer(str(source.path))
        # Attention maps are only returned by the eager implementation (SDPA fuses them away).
        kwargs = {"attn_implementation": "eager"} if needs_attention else {}
        teacher_model = load_pretrained(str(source.path), **kwargs)
        plan = students.plan(config, teacher_model)
        student, init = students.build(config, teacher_model, plan)
        if needs_attention:
            student.set_attn_implementation("eager")
        student.config.llmzip_teacher_layers = plan.layers
        for p in teacher_model.parameters():
            p.requires_grad_(False)
        label2id = {str(k): int(v) for k, v in (teacher_model.config.label2id or {}).items()}
        prepared = training.prepare(config, tokenizer, label2id)
        train_ds = prepared.train.add_column("example_id", list(range(len(prepared.train))))
        has_eval = prepared.eval is not None
        collator = DataCollatorWithPadding(tokenizer)
        work = training.work_dir(out_dir)
        needs_projection = plan.narrower and any(
            config.losses(stage=s).keys() & {"hidden_mse", "hidden_cos", "embedding"}
            for s in ("intermediate", "prediction")
        )
        projections = (
            students.Projections(plan.hidden_size, teacher_model.config.hidden_size, len(plan.layers) + 1, plan.basis)
            if needs_projection
            else None
        )
        metrics: dict[str, Any] = {"stages": {}}
        schedule = [("intermediate", config.intermediate_epochs, False)] if config.intermediate_epochs > 0 else []
        schedule.append(("prediction", config.epochs, has_eval))
        trainer: Any = None
        for name, epochs, with_eval in schedule:
            weights = config.losses(stage=name)
            stage_work = work / name
            if name == "intermediate" and resume and (stage_work / STUDENT_STATE).is_file():
                student.load_state_dict(load_file(str(stage_work / STUDENT_STATE)))
                step("intermediate stage already finished: resuming at the prediction stage")
                continue
            cached, cache_info = None, None
            if config.teacher_cache and weights.keys() <= {"kd", "ce"} and "kd" in weights:
                with PartialState().main_process_first():
                    cached, cache_info = teacher_cache.teacher_logits(
                        teacher_model,
                        source.hash,
                        prepared.train,
                        collator,
                        root=teacher_cache.cache_root(config.cache_dir),
                        batch_size=config.eval_batch_size,
                    )
            uses_states = bool(weights.keys() & {"hidden_mse", "hidden_cos", "embedding"})
            model = StudentWithProjections(
                student, projections if uses_states else None, hidden=uses_states, attentions="attention" in weights
            )
            callback = trainer_callback(f"distill {name} ({', '.join(weights)})")
            trainer = training.make_trainer(
                _trainer_class(),
                callback=callback,
                model=model,
                args=training.arguments(config, stage_work, num_train=len(train_ds), has_eval=with_eval, epochs=epochs),
                train_dataset=train_ds,
                eval_dataset=prepared.eval if with_eval else None,
                data_collator=collator,
                compute_metrics=training.accuracy,
                teacher=teacher_model,
                weights=weights,
                temperature=config.temperature,
                layer_map=plan.layer_map,
                cached_logits=cached,
            )
            stage_started = time.time()
            trainer.train(resume_from_checkpoint=training.checkpoint_to_resume(stage_work, resume))
            metrics["stages"][name] = {
                "losses": weights,
                "wall_s": round(time.time() - stage_started, 1),
                "teacher_cache": cache_info,
                **training.summarise(trainer, callback, with_eval),
            }
            if name == "intermediate" and training.is_main_process():
                state = {k: v.contiguous() for k, v in student.state_dict().items()}
                save_file(state, str(stage_work / STUDENT_STATE))
        final = metrics["stages"]["prediction"]
        metrics.update(
            eval_accuracy=final.get("eval_accuracy"),
            steps=final["steps"],
            losses=sorted({k for s in metrics["stages"].values() for k in s["losses"]}),
            teacher_params=count_parameters(teacher_model),
            student_params=count_parameters(student),
            teacher_layers=teacher_model.config.num_hidden_layers,
            student_layers=plan.layers,
            layer_map=plan.layer_map,
            student_hidden_size=plan.hidden_size,
            init=init,
        )
        if has_eval:
            judge = training.make_trainer(
                Trainer,
                model=teacher_model,
                args=trainer.args,
                eval_dataset=prepared.eval,
                data_collator=collator,
                compute_metrics=training.accuracy,
            )
            metrics["teacher_eval_accuracy"] = float(judge.evaluate()["eval_accuracy"])
        if needs_attention:
            student.set_attn_implementation("sdpa")  # the saved student should run with the fast default
        training.save_trained(
            student,
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
