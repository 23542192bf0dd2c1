"""`llmzip finetune` and `llmzip distill`: the training verbs."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from llmzip.cli.common import (
    DATA_FLAGS,
    TRAIN_FLAGS,
    BatchSize,
    Bf16,
    Data,
    Delimiter,
    Epochs,
    EvalSplit,
    Fp16,
    GradAccum,
    Json,
    LabelColumn,
    LearningRate,
    MaxEval,
    MaxLength,
    MaxSteps,
    MaxTrain,
    Out,
    Overwrite,
    Recipe,
    Resume,
    SaveSteps,
    Seed,
    SkipTokens,
    Subset,
    TextColumn,
    TextPairColumn,
    TrainSplit,
    _build,
    _execute,
    _render_stage,
    _stage_result,
)
from llmzip.config.choices import LayerSelection, TaskKind, Vocabulary

FINETUNE_FLAGS = {**TRAIN_FLAGS, "task": "task"}


def finetune(
    model: Annotated[str, typer.Argument(help="Pretrained model folder or hub id.")],
    out: Out,
    task: Annotated[
        Optional[TaskKind],
        typer.Option(
            help="The task head to train (default: the model's own architecture; a bare encoder becomes a "
            "sequence classifier). token-classification reads word lists and one tag per word (--text-column "
            "tokens --label-column ner_tags for conll2003).",
        ),
    ] = None,
    data: Data = None,
    subset: Subset = None,
    text_column: TextColumn = None,
    delimiter: Delimiter = None,
    text_pair_column: TextPairColumn = None,
    label_column: LabelColumn = None,
    train_split: TrainSplit = None,
    eval_split: EvalSplit = None,
    max_length: MaxLength = None,
    max_train_samples: MaxTrain = None,
    max_eval_samples: MaxEval = None,
    skip_tokens: SkipTokens = None,
    epochs: Epochs = None,
    max_steps: MaxSteps = None,
    batch_size: BatchSize = None,
    lr: LearningRate = None,
    bf16: Bf16 = None,
    fp16: Fp16 = None,
    grad_accum: GradAccum = None,
    save_steps: SaveSteps = None,
    seed: Seed = None,
    resume: Resume = False,
    recipe: Recipe = None,
    overwrite: Overwrite = False,
    json_out: Json = False,
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
    flags = {k: v for k, v in locals().items() if k in DATA_FLAGS or k in FINETUNE_FLAGS}

    def work() -> dict[str, Any]:
        from llmzip.stages.finetune import finetune as stage

        config = _build("finetune", recipe, flags, FINETUNE_FLAGS)
        return _stage_result(stage(model, out, config=config, overwrite=overwrite, resume=resume))

    _execute(work, _render_stage, json_out)


def distill(
    teacher: Annotated[
        str, typer.Argument(help="Teacher: a finetune/distill/import directory, or a classifier or causal-LM folder.")
    ],
    out: Out,
    num_layers: Annotated[
        Optional[int],
        typer.Option(help="Student depth: teacher layers kept (see --layer-selection).", rich_help_panel="Student"),
    ] = None,
    layer_selection: Annotated[
        Optional[LayerSelection],
        typer.Option(
            help="Which --num-layers teacher layers: evenly spaced, or the most influential (1 − cos of each "
            "layer's input and output on training data).",
            rich_help_panel="Student",
        ),
    ] = None,
    layers: Annotated[
        Optional[str],
        typer.Option(help="Explicit teacher layers, e.g. 0,2,4 (wins over --num-layers).", rich_help_panel="Student"),
    ] = None,
    temperature: Annotated[
        Optional[float], typer.Option(help="Softmax temperature T of the soft targets.", rich_help_panel="Student")
    ] = None,
    alpha: Annotated[
        Optional[float],
        typer.Option(help="Weight of the soft-target KL term (1-alpha on hard-label CE).", rich_help_panel="Student"),
    ] = None,
    hidden_size: Annotated[
        Optional[int], typer.Option(help="Narrower student width.", rich_help_panel="Student")
    ] = None,
    intermediate_size: Annotated[
        Optional[int], typer.Option(help="Student FFN size.", rich_help_panel="Student")
    ] = None,
    num_attention_heads: Annotated[
        Optional[int], typer.Option(help="Student heads.", rich_help_panel="Student")
    ] = None,
    keep_heads: Annotated[
        Optional[int],
        typer.Option(
            help="Prune to this many attention heads per layer (Taylor importance).", rich_help_panel="Shrink"
        ),
    ] = None,
    keep_ffn: Annotated[
        Optional[int], typer.Option(help="Prune to this many FFN neurons per layer.", rich_help_panel="Shrink")
    ] = None,
    vocabulary: Annotated[
        Optional[Vocabulary],
        typer.Option(help="task: keep only the token ids the training data uses.", rich_help_panel="Shrink"),
    ] = None,
    embedding_rank: Annotated[
        Optional[int],
        typer.Option(help="Factorize the word embeddings at this rank (ALBERT).", rich_help_panel="Shrink"),
    ] = None,
    max_positions: Annotated[
        Optional[int], typer.Option(help="Keep this many position embeddings.", rich_help_panel="Shrink")
    ] = None,
    augment_pairs: Annotated[
        Optional[int],
        typer.Option(help="Add N teacher-labelled rows, each two training texts joined.", rich_help_panel="Losses"),
    ] = None,
    linear_rank: Annotated[
        Optional[int],
        typer.Option(
            help="Factorize the FFN Linear layers at this rank (SVD init, LadaBERT).", rich_help_panel="Shrink"
        ),
    ] = None,
    hidden_mse: Annotated[
        Optional[float], typer.Option(help="Weight of hidden-state MSE.", rich_help_panel="Losses")
    ] = None,
    hidden_cos: Annotated[
        Optional[float], typer.Option(help="Weight of hidden-state cosine loss.", rich_help_panel="Losses")
    ] = None,
    attention: Annotated[
        Optional[float], typer.Option(help="Weight of attention-map MSE.", rich_help_panel="Losses")
    ] = None,
    embedding: Annotated[
        Optional[float], typer.Option(help="Weight of embedding MSE.", rich_help_panel="Losses")
    ] = None,
    layer_map: Annotated[
        Optional[str],
        typer.Option(help="Teacher layer (1-based) per student layer, e.g. 2,4,6.", rich_help_panel="Losses"),
    ] = None,
    intermediate_epochs: Annotated[
        Optional[float],
        typer.Option(
            help="TinyBERT stage 1 (intermediate losses only) before the prediction stage.", rich_help_panel="Losses"
        ),
    ] = None,
    teacher_cache: Annotated[
        Optional[bool],
        typer.Option(
            "--teacher-cache/--no-teacher-cache", help="Cache teacher logits on disk.", rich_help_panel="Losses"
        ),
    ] = None,
    cache_dir: Annotated[
        Optional[str],
        typer.Option(help="Teacher cache folder (default $LLMZIP_CACHE or ~/.cache/llmzip).", rich_help_panel="Losses"),
    ] = None,
    teacher_top_k: Annotated[
        Optional[int],
        typer.Option(
            help="Causal LMs: cache the teacher's k largest logits per token once and distill on them (0: online).",
            rich_help_panel="Losses",
        ),
    ] = None,
    data: Data = None,
    subset: Subset = None,
    text_column: TextColumn = None,
    delimiter: Delimiter = None,
    text_pair_column: TextPairColumn = None,
    label_column: LabelColumn = None,
    train_split: TrainSplit = None,
    eval_split: EvalSplit = None,
    max_length: MaxLength = None,
    max_train_samples: MaxTrain = None,
    max_eval_samples: MaxEval = None,
    skip_tokens: SkipTokens = None,
    epochs: Epochs = None,
    max_steps: MaxSteps = None,
    batch_size: BatchSize = None,
    lr: LearningRate = None,
    bf16: Bf16 = None,
    fp16: Fp16 = None,
    grad_accum: GradAccum = None,
    save_steps: SaveSteps = None,
    seed: Seed = None,
    resume: Resume = False,
    recipe: Recipe = None,
    overwrite: Overwrite = False,
    json_out: Json = False,
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
    student_flags = (
        "num_layers",
        "layer_selection",
        "layers",
        "temperature",
        "alpha",
        "hidden_size",
        "intermediate_size",
        "num_attention_heads",
        "hidden_mse",
        "hidden_cos",
        "attention",
        "embedding",
        "layer_map",
        "intermediate_epochs",
        "teacher_cache",
        "cache_dir",
        "teacher_top_k",
        "keep_heads",
        "keep_ffn",
        "vocabulary",
        "embedding_rank",
        "max_positions",
        "linear_rank",
        "augment_pairs",
    )
    flags = {k: v for k, v in locals().items() if k in DATA_FLAGS or k in TRAIN_FLAGS or k in student_flags}

    def work() -> dict[str, Any]:
        from llmzip.stages.distill import distill as stage

        return _stage_result(
            stage(
                teacher, out, config=_build("distill", recipe, flags, TRAIN_FLAGS), overwrite=overwrite, resume=resume
            )
        )

    _execute(work, _render_stage, json_out)
