"""finetune: a pretrained model (folder or hub id) + data → a fine-tuned model of its task (llmzip/tasks).

A classifier trains with cross-entropy on labelled text and reports accuracy; a causal LM trains on raw text packed
into --max-length token windows (next-token cross-entropy) and reports perplexity.
"""

from __future__ import annotations

import time
from pathlib import Path

from llmzip import training
from llmzip.artifact import EXTERNAL, open_model_source
from llmzip.config import FinetuneConfig
from llmzip.data import data_paths
from llmzip.modeling import count_parameters, load_pretrained, load_tokenizer, source_config
from llmzip.positions import check_length
from llmzip.progress import quiet_libraries, step, trainer_callback
from llmzip.tasks import checked_task

ACCEPTS = ("finetune", "distill", "import", EXTERNAL)


def finetune(
    model: str, out_dir: Path, *, config: FinetuneConfig, overwrite: bool = False, resume: bool = False
) -> Path:
    """Train `model` on config.data with its task's loss; returns the stage directory."""
    from transformers import Trainer, set_seed

    started = time.time()
    base = open_model_source(model, verb="finetune", accepts=ACCEPTS)
    quiet_libraries()
    set_seed(config.seed)
    model_config = source_config(base.path)
    check_length(model_config, config.data.max_length, "--max-length", model)
    task = checked_task(config, model_config, model)
    head = task.finetune_head(config)
    # Data problems surface before any model is loaded or output staged (one error line, nothing written).
    tokenizer = load_tokenizer(str(base.path))
    job = task.training(config, tokenizer, label2id=head.label2id, train_loaded=head.train_loaded)
    prepared = job.prepared
    with training.stage_output(out_dir, overwrite=overwrite, inputs=[base.path, *data_paths(config.data)]) as tmp:
        step(f"loading {model}")
        net = load_pretrained(str(base.path), seed=config.seed, task=task, **head.model_kwargs)
        base.revision = getattr(net.config, "_commit_hash", None)  # a hub id is pinned to what was downloaded
        has_eval = prepared.eval is not None
        work = training.work_dir(out_dir)
        callback = trainer_callback("finetune")
        trainer = training.make_trainer(
            Trainer,
            callback=callback,
            model=net,
            args=training.arguments(config, work, num_train=len(prepared.train), has_eval=has_eval, metric=job.metric),
            train_dataset=prepared.train,
            eval_dataset=prepared.eval,
            data_collator=job.collator,
            compute_metrics=job.metric.compute,
        )
        trainer.train(resume_from_checkpoint=training.checkpoint_to_resume(work, resume))
        metrics = training.summarise(trainer, callback, has_eval, job.metric)
        metrics["params"] = count_parameters(net)
        training.save_trained(
            trainer.model,
            tokenizer,
            tmp,
            stage="finetune",
            source=base,
            inputs=prepared.inputs,
            config=config,
            metrics=metrics,
            started=started,
            task=task.kind.value,
        )
    return out_dir
