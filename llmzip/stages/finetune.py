"""finetune: a pretrained encoder (folder or hub id) + labelled data → a fine-tuned sequence classifier."""

from __future__ import annotations

import time
from pathlib import Path

from llmzip import data as data_mod
from llmzip import training
from llmzip.artifact import EXTERNAL, open_model_source
from llmzip.config import FinetuneConfig
from llmzip.data import data_paths
from llmzip.modeling import check_length, count_parameters, load_pretrained, load_tokenizer
from llmzip.progress import quiet_libraries, step, trainer_callback

ACCEPTS = ("finetune", "distill", EXTERNAL)


def finetune(
    model: str, out_dir: Path, *, config: FinetuneConfig, overwrite: bool = False, resume: bool = False
) -> Path:
    """Train `model` with cross-entropy on config.data; returns the stage directory."""
    from transformers import DataCollatorWithPadding, Trainer, set_seed

    started = time.time()
    base = open_model_source(model, verb="finetune", accepts=ACCEPTS)
    quiet_libraries()
    set_seed(config.seed)
    d = config.data
    loaded = data_mod.load_split(d, d.train_split, limit=d.max_train_samples, seed=config.seed, shuffle=True)
    assert loaded is not None
    names = data_mod.label_names(loaded[0], d)
    label2id = {name: i for i, name in enumerate(names)}
    with training.stage_output(out_dir, overwrite=overwrite, inputs=[base.path, *data_paths(config.data)]) as tmp:
        step(f"loading {model}")
        tokenizer = load_tokenizer(str(base.path))
        net = load_pretrained(
            str(base.path),
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id=label2id,
            ignore_mismatched_sizes=True,
            seed=config.seed,
        )
        check_length(net.config, config.data.max_length, "--max-length", model)
        base.revision = getattr(net.config, "_commit_hash", None)  # a hub id is pinned to what was downloaded
        prepared = training.prepare(config, tokenizer, label2id, train_loaded=loaded)
        has_eval = prepared.eval is not None
        work = training.work_dir(out_dir)
        callback = trainer_callback("finetune")
        trainer = training.make_trainer(
            Trainer,
            callback=callback,
            model=net,
            args=training.arguments(config, work, num_train=len(prepared.train), has_eval=has_eval),
            train_dataset=prepared.train,
            eval_dataset=prepared.eval,
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=training.accuracy,
        )
        trainer.train(resume_from_checkpoint=training.checkpoint_to_resume(work, resume))
        metrics = training.summarise(trainer, callback, has_eval)
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
        )
    return out_dir
