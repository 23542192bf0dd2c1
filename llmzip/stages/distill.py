"""distill: teacher + data → a smaller student trained on the teacher's outputs (DistilBERT / TinyBERT).

The loop, DDP, mixed precision and checkpoints are transformers' Trainer; llmzip adds the losses, the student
construction, the learned width projections and the on-disk teacher-logit cache. What differs between a classifier
and a causal LM (data, metric, sequence- or token-level losses, whether logits are cached) is the task's answer to
`task.training(...)` (llmzip/tasks).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmzip import training
from llmzip.artifact import EXTERNAL, open_model_source
from llmzip.config import DistillConfig, LayerSelection
from llmzip.data import data_paths
from llmzip.errors import ConfigError
from llmzip.modeling import count_parameters, load_pretrained, load_tokenizer, source_config
from llmzip.positions import check_length
from llmzip.progress import quiet_libraries, step, trainer_callback
from llmzip.shrink import students, teacher_cache
from llmzip.shrink.kd import StudentWithProjections, distill_trainer_class
from llmzip.tasks import checked_task

ACCEPTS = ("finetune", "distill", "import", EXTERNAL)
STUDENT_STATE = "student.safetensors"  # a finished intermediate stage, for --resume


@dataclass
class _Student:
    """The student cut from the teacher, what it was built from, and the task's training job."""

    model: Any
    plan: Any
    init: dict[str, Any]
    job: Any
    projections: Any


def distill(
    teacher: str, out_dir: Path, *, config: DistillConfig, overwrite: bool = False, resume: bool = False
) -> Path:
    """Train a student cut from `teacher`; returns the stage directory."""
    from transformers import Trainer, set_seed

    started = time.time()
    source = open_model_source(teacher, verb="distill", accepts=ACCEPTS)
    quiet_libraries()
    set_seed(config.seed)
    task = checked_task(config, source_config(source.path), teacher)
    if resume and config.prune_rounds > 1:
        raise ConfigError("--resume does not continue a run pruned in rounds (prune_rounds > 1); run it again")
    with training.stage_output(out_dir, overwrite=overwrite, inputs=[source.path, *data_paths(config.data)]) as tmp:
        step(f"loading teacher {teacher}")
        tokenizer = load_tokenizer(str(source.path))
        # Attention maps are only returned by the eager implementation (SDPA fuses them away).
        kwargs: dict[str, Any] = {"attn_implementation": "eager"} if config.attention > 0 else {}
        teacher_model = load_pretrained(str(source.path), **kwargs)
        source.revision = getattr(teacher_model.config, "_commit_hash", None)  # a hub id: pinned to its commit
        check_length(teacher_model.config, config.data.max_length, "--max-length", teacher)
        student = _build_student(config, task, teacher_model, tokenizer)
        prepared, metric = student.job.prepared, student.job.metric
        train_ds = prepared.train.add_column("example_id", list(range(len(prepared.train))))
        has_eval = prepared.eval is not None
        metrics: dict[str, Any] = {}
        trainer, metrics["stages"] = _train(config, student, teacher_model, source, train_ds, out_dir, has_eval, resume)
        final = metrics["stages"]["prediction"]
        plan = student.plan
        metrics.update(
            **{f"eval_{metric.name}": final.get(f"eval_{metric.name}")},
            steps=final["steps"],
            losses=sorted({k for s in metrics["stages"].values() for k in s["losses"]}),
            teacher_params=count_parameters(teacher_model),
            student_params=count_parameters(student.model),
            teacher_layers=teacher_model.config.num_hidden_layers,
            student_layers=plan.layers,
            layer_map=plan.layer_map,
            student_hidden_size=plan.hidden_size,
            init=student.init,
        )
        if has_eval:
            judge = training.make_trainer(
                Trainer,
                model=teacher_model,
                args=trainer.args,
                eval_dataset=prepared.eval,
                data_collator=student.job.collator,
                compute_metrics=metric.compute,
            )
            metrics[f"teacher_eval_{metric.name}"] = metric.value(judge.evaluate())
        if config.attention > 0:
            student.model.set_attn_implementation("sdpa")  # the saved student should run with the fast default
        training.save_trained(
            student.model,
            tokenizer,
            tmp,
            stage="distill",
            source=source,
            inputs=prepared.inputs,
            config=config,
            metrics=metrics,
            started=started,
            task=task.kind.value,
        )
    return out_dir


def _build_student(config: DistillConfig, task: Any, teacher_model: Any, tokenizer: Any) -> _Student:
    """The task's training data, then the student: its layers (evenly spaced, or by block influence), width,
    structured pruning and embedding compression, and the width projections its losses need."""
    label2id = {str(k): int(v) for k, v in (teacher_model.config.label2id or {}).items()}
    augmented = config.augment_pairs or config.augment_swaps
    train_loaded = _augmented(config, task, teacher_model, tokenizer) if augmented else None
    job = task.training(config, tokenizer, label2id=label2id, train_loaded=train_loaded)
    influence = None
    if config.layer_selection is LayerSelection.INFLUENCE:
        step("measuring each teacher layer's block influence on training batches")
        influence = students.block_influence(
            teacher_model, job.prepared.train, job.collator, batches=config.prune_batches
        )
    plan = students.plan(config, teacher_model, influence=influence)
    student, init = students.build(config, teacher_model, plan)
    if influence is not None:
        init["block_influence"] = [round(v, 5) for v in influence]
    if config.attention > 0:
        student.set_attn_implementation("eager")
    student.config.llmzip_teacher_layers = plan.layers
    for p in teacher_model.parameters():  # after the student is cut from it: the copy must stay trainable
        p.requires_grad_(False)
    first = _rounds(config, teacher_model)[0]  # in rounds, the student starts at the first round's width
    cut = dataclasses.replace(config, keep_heads=first[0], keep_ffn=first[1]) if config.prune_rounds > 1 else config
    shrunk = students.shrink(cut, student, teacher_model, tokenizer, job.prepared.train, job.collator)
    if shrunk:
        init["structure"] = shrunk
    needs_projection = plan.narrower and any(
        config.losses(stage=s).keys() & {"hidden_mse", "hidden_cos", "embedding"}
        for s in ("intermediate", "prediction")
    )
    projections = (
        students.Projections(plan.hidden_size, teacher_model.config.hidden_size, len(plan.layers) + 1, plan.basis)
        if needs_projection
        else None
    )
    return _Student(model=student, plan=plan, init=init, job=job, projections=projections)


def _train(
    config: DistillConfig,
    student: _Student,
    teacher_model: Any,
    source: Any,
    train_ds: Any,
    out_dir: Path,
    has_eval: bool,
    resume: bool,
) -> tuple[Any, dict[str, Any]]:
    """The training schedule: TinyBERT's intermediate stage, pruning rounds, the prediction stage. Returns the last
    trainer and each stage's summary."""
    stages: dict[str, Any] = {}
    schedule = [("intermediate", config.intermediate_epochs, False)] if config.intermediate_epochs > 0 else []
    rounds = _rounds(config, teacher_model)
    schedule += [(f"prune-round-{r}", config.epochs, False) for r in range(1, len(rounds))]  # all but the last
    schedule.append(("prediction", config.epochs, has_eval))
    trainer: Any = None
    for i, (name, epochs, with_eval) in enumerate(schedule):
        stage_config = config
        if len(rounds) > 1:  # this round's steps; before it (not the first), prune to its width
            r = i - len(schedule) + len(rounds)
            stage_config = dataclasses.replace(config, max_steps=rounds[r][2])
            if r > 0:
                _prune_to(config, student, teacher_model, rounds[r][0], rounds[r][1])
        stage_work = training.work_dir(out_dir) / name
        done = _train_stage(
            name, epochs, with_eval, stage_config, student, teacher_model, source, train_ds, stage_work, resume
        )
        if done is not None:
            trainer, stages[name] = done
    if len(rounds) > 1:
        student.init["prune_rounds"] = [{"heads": h, "ffn": f, "steps": n} for h, f, n in rounds]
    return trainer, stages


def _rounds(config: DistillConfig, teacher: Any) -> list[tuple[int | None, int | None, int | None]]:
    """(heads, FFN neurons, steps) of each pruning round: evenly from the teacher's width to the targets, the
    steps split evenly (the last round takes the remainder). One round = the plain one-shot pruning."""
    n = config.prune_rounds
    if n == 1:
        return [(config.keep_heads, config.keep_ffn, config.max_steps)]
    assert config.max_steps is not None  # DistillConfig refuses rounds without max_steps

    def width(full: int, target: int | None, r: int) -> int | None:
        return None if target is None else round(full + (target - full) * r / n)

    heads, ffn = int(teacher.config.num_attention_heads), int(teacher.config.intermediate_size)
    steps = [config.max_steps // n] * (n - 1) + [config.max_steps - (n - 1) * (config.max_steps // n)]
    return [(width(heads, config.keep_heads, r), width(ffn, config.keep_ffn, r), steps[r - 1]) for r in range(1, n + 1)]


def _prune_to(config: DistillConfig, student: _Student, teacher: Any, heads: int | None, ffn: int | None) -> None:
    """One more pruning round on the trained student (Taylor importance measured on it as it is now)."""
    step(f"pruning round: {heads} heads, {ffn} FFN neurons per layer")
    target = dataclasses.replace(config, keep_heads=heads, keep_ffn=ffn)
    info = students.prune_student(target, student.model, teacher, student.job.prepared.train, student.job.collator)
    student.init.setdefault("structure", {})["pruning"] = info


def _train_stage(
    name: str,
    epochs: float,
    with_eval: bool,
    config: DistillConfig,
    student: _Student,
    teacher_model: Any,
    source: Any,
    train_ds: Any,
    stage_work: Path,
    resume: bool,
) -> tuple[Any, dict[str, Any]] | None:
    """One training stage (TinyBERT's intermediate, or the prediction layer) under Trainer; returns the trainer and
    the stage's summary, or None when --resume finds the intermediate stage already done."""
    from safetensors.torch import load_file, save_file

    weights = config.losses(stage=name)
    job = student.job
    if name == "intermediate" and resume and (stage_work / STUDENT_STATE).is_file():
        student.model.load_state_dict(load_file(str(stage_work / STUDENT_STATE)))
        step("intermediate stage already finished: resuming at the prediction stage")
        return None
    cached, cache_info, states, states_info = _teacher_caches(config, weights, student, teacher_model, source)
    state_losses = weights.keys() & {"hidden_mse", "hidden_cos", "embedding"}
    uses_states = bool(weights.keys() & {"hidden_mse", "hidden_cos", "embedding"})
    model = StudentWithProjections(
        student.model,
        student.projections if uses_states else None,
        hidden=uses_states,
        attentions="attention" in weights,
    )
    callback = trainer_callback(f"distill {name} ({', '.join(weights)})")
    trainer = training.make_trainer(
        distill_trainer_class(),
        callback=callback,
        model=model,
        args=training.arguments(
            config, stage_work, num_train=len(train_ds), has_eval=with_eval, epochs=epochs, metric=job.metric
        ),
        train_dataset=train_ds,
        eval_dataset=job.prepared.eval if with_eval else None,
        data_collator=job.collator,
        compute_metrics=job.metric.compute,
        teacher=teacher_model,
        weights=weights,
        temperature=config.temperature,
        layer_map=student.plan.layer_map,
        cached_logits=cached,
        cached_states=states,
        losses=job.losses,
    )
    stage_started = time.time()
    trainer.train(resume_from_checkpoint=training.checkpoint_to_resume(stage_work, resume))
    summary = {
        "losses": weights,
        "wall_s": round(time.time() - stage_started, 1),
        "teacher_cache": cache_info,
        "teacher_logits": "cached" if cached is not None else "online" if "kd" in weights else "unused",
        **({"teacher_states": states_info or {"cached": False, "why": "not cacheable here"}} if state_losses else {}),
        **training.summarise(trainer, callback, with_eval, job.metric),
    }
    if name == "intermediate" and training.is_main_process():
        state = {k: v.contiguous() for k, v in student.model.state_dict().items()}
        save_file(state, str(stage_work / STUDENT_STATE))
    return trainer, summary


def _teacher_caches(
    config: DistillConfig, weights: dict[str, float], student: Any, teacher_model: Any, source: Any
) -> tuple[Any, dict[str, Any] | None, Any, dict[str, Any] | None]:
    """What the teacher would compute every step, computed once on disk where the task allows: its logits (a causal
    LM's top-k) and, for layer distillation, the matched layers' hidden states. (logits, info, states, info)."""
    from accelerate import PartialState

    job = student.job
    cached, cache_info, states, states_info = None, None, None, None
    top_k = config.teacher_top_k or None  # a causal LM's cache keeps each token's k largest logits
    caches = config.teacher_cache and (job.cache_teacher or top_k is not None) and "attention" not in weights
    state_losses = weights.keys() & {"hidden_mse", "hidden_cos", "embedding"}
    root = teacher_cache.cache_root(config.cache_dir)
    with PartialState().main_process_first():
        if caches and state_losses and job.cache_teacher:  # layer distillation: the matched layers' states too
            layers = sorted({*student.plan.layer_map, *([0] if "embedding" in weights else [])})
            states, states_info = teacher_cache.teacher_states(
                teacher_model,
                source.hash,
                job.prepared.train,
                job.collator,
                layers,
                root=root,
                max_bytes=int(config.teacher_cache_max_gb * 2**30),
                batch_size=config.eval_batch_size,
            )
        if caches and "kd" in weights and (not state_losses or states is not None):
            cached, cache_info = teacher_cache.teacher_logits(
                teacher_model,
                source.hash,
                job.prepared.train,
                job.collator,
                root=root,
                batch_size=4 if top_k else config.eval_batch_size,
                top_k=top_k,
            )
    return cached, cache_info, states, states_info


def _augmented(config: DistillConfig, task: Any, teacher: Any, tokenizer: Any) -> tuple[Any, Any]:
    from llmzip.data import load_split
    from llmzip.shrink import augment

    # Only a sequence classifier gets here: llmzip/scope.py refuses augmentation for the other tasks up front.
    d = config.data
    loaded = load_split(d, d.train_split, limit=d.max_train_samples, seed=config.seed, shuffle=True)
    assert loaded is not None
    step(f"labelling {config.augment_pairs + config.augment_swaps} made-up training texts with the teacher")
    return augment.with_teacher_rows(loaded, config, teacher, tokenizer)
