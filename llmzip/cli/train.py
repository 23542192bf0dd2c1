"""`llmzip finetune` and `llmzip distill`: the training verbs (their options come from FinetuneConfig and
DistillConfig: llmzip/cli/options.py)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from llmzip.cli.common import Json, Out, Overwrite, Recipe, Resume, _build, _execute, _render_stage, _stage_result
from llmzip.cli.options import stage_options


@stage_options("finetune")
def finetune(
    model: Annotated[str, typer.Argument(help="Pretrained model folder or hub id.")],
    out: Out,
    resume: Resume = False,
    recipe: Recipe = None,
    overwrite: Overwrite = False,
    json_out: Json = False,
    flags: dict[tuple[str, ...], Any] | None = None,
) -> None:
    """Fine-tune a pretrained model for its task (transformers Trainer): an encoder into a sequence classifier
    (cross-entropy on labels, accuracy), or a causal LM on raw text cut into --max-length token windows
    (next-token cross-entropy, perplexity; --max-train-samples counts windows).

    Examples:

        llmzip finetune ./bert-base --data ../shared/data/sst2 -o runs/teacher

        llmzip finetune ./minilm --task token-classification --data ../shared/data/conll2003 --text-column tokens
        --label-column ner_tags --eval-split validation -o runs/ner-teacher

        llmzip finetune ./smollm2 --data ./wikitext-2-raw --eval-split valid --max-length 512 -o runs/lm

        llmzip finetune nyu-mll/glue --subset sst2 --epochs 1 -o runs/teacher --json
    """

    def work() -> dict[str, Any]:
        from llmzip.stages.finetune import finetune as stage

        config = _build("finetune", recipe, flags or {})
        return _stage_result(stage(model, out, config=config, overwrite=overwrite, resume=resume))

    _execute(work, _render_stage, json_out)


@stage_options("distill")
def distill(
    teacher: Annotated[
        str, typer.Argument(help="Teacher: a finetune/distill/import directory, or a classifier or causal-LM folder.")
    ],
    out: Out,
    resume: Resume = False,
    recipe: Recipe = None,
    overwrite: Overwrite = False,
    json_out: Json = False,
    flags: dict[tuple[str, ...], Any] | None = None,
) -> None:
    """Distill a teacher into a smaller student (DistilBERT / TinyBERT recipes).

    Prediction loss: alpha·T²·KL(softmax(z_T/T) ‖ softmax(z_S/T)) + (1−alpha)·CE(z_S, y); optional hidden-state
    MSE/cosine, attention-map and embedding losses, learned projections for a narrower student, and TinyBERT's
    two stages with --intermediate-epochs. Works under `torchrun --nproc_per_node=N -m llmzip distill …`.
    A causal-LM teacher is distilled per token on raw-text windows (the teacher runs online, no logit cache);
    --alpha 0 trains the same student on next-token CE alone, for a KD-vs-CE comparison at the same budget.

    Examples:

        llmzip distill runs/teacher --num-layers 3 --data ../shared/data/sst2 -o runs/student

        llmzip distill runs/teacher --layers 0,2,4 --temperature 4 --alpha 0.7 --hidden-cos 1 -o runs/student

        llmzip distill runs/teacher --num-layers 4 --hidden-size 312 --intermediate-size 1200 \
            --hidden-mse 1 --attention 1 --embedding 1 --intermediate-epochs 1 -o runs/tinybert

        llmzip distill runs/teacher --num-layers 3 --keep-heads 8 --keep-ffn 768 --vocabulary task \
            --embedding-rank 64 --max-positions 128 -o runs/pruned

        llmzip distill runs/smollm2 --layers 0,2,4,6,8,10,12,14,16,18,20,22,24,26,28 --temperature 1 \
            --data ./wikitext-2-raw --eval-split valid --max-length 128 -o runs/lm-student
    """

    def work() -> dict[str, Any]:
        from llmzip.stages.distill import distill as stage

        config = _build("distill", recipe, flags or {})
        return _stage_result(stage(teacher, out, config=config, overwrite=overwrite, resume=resume))

    _execute(work, _render_stage, json_out)
