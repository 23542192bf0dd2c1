"""The `llmzip` command line: parses flags (or a YAML recipe section), calls one stage function, prints a summary.

Heavy libraries (torch, transformers, onnxruntime, datasets) are imported inside the commands, never here,
so `llmzip --help` answers instantly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from llmzip import config as cfg
from llmzip.errors import ConfigError, LlmzipError

app = typer.Typer(
    name="llmzip",
    help="Make transformer models small and fast: finetune → distill → calibrate → quantize → export → bench.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)

# Option types shared by several verbs (typer reads the Annotated metadata; defaults stay in config.py).
Out = Annotated[Path, typer.Option("--out", "-o", help="Output directory (written atomically).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.")]
Json = Annotated[bool, typer.Option("--json", help="Print the machine-readable result on stdout, nothing else.")]
Recipe = Annotated[
    Optional[Path], typer.Option("--recipe", help="Take defaults from this stage's section of a YAML recipe.")
]
Seed = Annotated[Optional[int], typer.Option(help="Random seed.")]
Data = Annotated[
    Optional[str],
    typer.Option(
        "--data",
        help="Hub dataset id, local folder of split files, or one file (default: the built-in demo sample).",
        rich_help_panel="Data",
    ),
]
Subset = Annotated[
    Optional[str], typer.Option(help="Hub dataset configuration, e.g. sst2 for nyu-mll/glue.", rich_help_panel="Data")
]
TextColumn = Annotated[Optional[str], typer.Option(help="Text column.", rich_help_panel="Data")]
TextPairColumn = Annotated[
    Optional[str], typer.Option(help="Second text column for sentence pairs.", rich_help_panel="Data")
]
LabelColumn = Annotated[Optional[str], typer.Option(help="Label column.", rich_help_panel="Data")]
TrainSplit = Annotated[Optional[str], typer.Option(help="Split to train/calibrate on.", rich_help_panel="Data")]
EvalSplit = Annotated[Optional[str], typer.Option(help="Split to evaluate on.", rich_help_panel="Data")]
MaxLength = Annotated[Optional[int], typer.Option(help="Tokens per example (truncation).", rich_help_panel="Data")]
MaxTrain = Annotated[
    Optional[int], typer.Option(help="Use a seeded random subset of this many training rows.", rich_help_panel="Data")
]
MaxEval = Annotated[Optional[int], typer.Option(help="Use the first N evaluation rows.", rich_help_panel="Data")]
Epochs = Annotated[Optional[float], typer.Option(help="Training epochs.", rich_help_panel="Training")]
MaxSteps = Annotated[
    Optional[int], typer.Option(help="Stop after N optimizer steps (overrides epochs).", rich_help_panel="Training")
]
BatchSize = Annotated[Optional[int], typer.Option(help="Batch size.", rich_help_panel="Training")]
LearningRate = Annotated[
    Optional[float],
    typer.Option("--lr", help="Peak learning rate (linear warm-up and decay).", rich_help_panel="Training"),
]

Bf16 = Annotated[Optional[bool], typer.Option("--bf16", help="bf16 mixed precision.", rich_help_panel="Training")]
Fp16 = Annotated[Optional[bool], typer.Option("--fp16", help="fp16 mixed precision (GPU).", rich_help_panel="Training")]
GradAccum = Annotated[
    Optional[int], typer.Option("--grad-accum", help="Gradient accumulation steps.", rich_help_panel="Training")
]
SaveSteps = Annotated[
    Optional[int],
    typer.Option(help="Evaluate + checkpoint every N steps (default once per epoch).", rich_help_panel="Training"),
]
Resume = Annotated[
    bool, typer.Option("--resume", help="Continue from the last checkpoint of an interrupted run with the same --out.")
]

DATA_FLAGS = {
    "data": "dataset",
    "subset": "subset",
    "text_column": "text_column",
    "text_pair_column": "text_pair_column",
    "label_column": "label_column",
    "train_split": "train_split",
    "eval_split": "eval_split",
    "max_length": "max_length",
    "max_train_samples": "max_train_samples",
    "max_eval_samples": "max_eval_samples",
}
TRAIN_FLAGS = {
    "bf16": "bf16",
    "fp16": "fp16",
    "grad_accum": "gradient_accumulation_steps",
    "save_steps": "save_steps",
    "epochs": "epochs",
    "max_steps": "max_steps",
    "batch_size": "batch_size",
    "lr": "learning_rate",
    "seed": "seed",
}


def _fail(message: str, code: int) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def _build(stage: str, recipe: Path | None, flags: dict[str, Any], mapping: dict[str, str]) -> Any:
    """Stage config = recipe section (with the recipe's shared `data`) overridden by the flags the user set."""
    section: dict[str, Any] = {}
    if recipe is not None:
        values = cfg.read_yaml(recipe)
        section = dict(values.get(stage) or {})
        if "data" in {f.name for f in dataclasses.fields(cfg.STAGE_CONFIGS[stage])}:
            section["data"] = cfg.merge(values.get("data") or {}, section.get("data") or {})
    for flag, value in flags.items():
        if value is None:
            continue
        if flag in DATA_FLAGS:
            section.setdefault("data", {})[DATA_FLAGS[flag]] = value
        else:
            section[mapping.get(flag, flag)] = value
    return cfg.from_dict(cfg.STAGE_CONFIGS[stage], section, prefix="" if recipe is None else f"{stage}.")


def _execute(work: Callable[[], Any], render: Callable[[Any], None], as_json: bool) -> None:
    """Run a stage; LlmzipError becomes one red line and its exit code. Anything else is a bug: traceback."""
    try:
        result = work()
    except LlmzipError as err:
        _fail(str(err), err.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted; no output was written", 130)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun only rank 0 writes the artifact and reports it
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
    else:
        render(result)


def _stage_result(out: Path) -> dict[str, Any]:
    from llmzip.artifact import read_manifest

    manifest = read_manifest(out) or {}
    return {
        "stage": manifest.get("stage"),
        "out": str(out),
        "duration_s": manifest.get("duration_s"),
        "metrics": manifest.get("metrics", {}),
    }


def _render_stage(result: dict[str, Any]) -> None:
    from rich.console import Console

    headline = {
        k: v for k, v in result["metrics"].items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)
    }
    shown = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(headline.items())[:8])
    Console(highlight=False, soft_wrap=True).print(
        f"[green]✓[/] {result['stage']} → [bold]{result['out']}[/] ({result['duration_s']:.1f}s)  {shown}"
    )


@app.command()
def finetune(
    model: Annotated[str, typer.Argument(help="Pretrained model folder or hub id.")],
    out: Out,
    data: Data = None,
    subset: Subset = None,
    text_column: TextColumn = None,
    text_pair_column: TextPairColumn = None,
    label_column: LabelColumn = None,
    train_split: TrainSplit = None,
    eval_split: EvalSplit = None,
    max_length: MaxLength = None,
    max_train_samples: MaxTrain = None,
    max_eval_samples: MaxEval = None,
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
    """Fine-tune a pretrained encoder into a sequence classifier (cross-entropy, transformers Trainer).

    Examples:

        llmzip finetune ./bert-base --data ../shared/data/sst2 -o runs/teacher

        llmzip finetune nyu-mll/glue --subset sst2 --epochs 1 -o runs/teacher --json
    """
    flags = {k: v for k, v in locals().items() if k in DATA_FLAGS or k in TRAIN_FLAGS}

    def work() -> dict[str, Any]:
        from llmzip.stages.finetune import finetune as stage

        return _stage_result(
            stage(model, out, config=_build("finetune", recipe, flags, TRAIN_FLAGS), overwrite=overwrite, resume=resume)
        )

    _execute(work, _render_stage, json_out)


@app.command()
def distill(
    teacher: Annotated[str, typer.Argument(help="Teacher: a finetune/distill directory or a classifier folder.")],
    out: Out,
    num_layers: Annotated[
        Optional[int], typer.Option(help="Student depth: evenly spaced teacher layers.", rich_help_panel="Student")
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
    data: Data = None,
    subset: Subset = None,
    text_column: TextColumn = None,
    text_pair_column: TextPairColumn = None,
    label_column: LabelColumn = None,
    train_split: TrainSplit = None,
    eval_split: EvalSplit = None,
    max_length: MaxLength = None,
    max_train_samples: MaxTrain = None,
    max_eval_samples: MaxEval = None,
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

    Examples:

        llmzip distill runs/teacher --num-layers 3 --data ../shared/data/sst2 -o runs/student

        llmzip distill runs/teacher --layers 0,2,4 --temperature 4 --alpha 0.7 --hidden-cos 1 -o runs/student

        llmzip distill runs/teacher --num-layers 4 --hidden-size 312 --intermediate-size 1200 \
            --hidden-mse 1 --attention 1 --embedding 1 --intermediate-epochs 1 -o runs/tinybert
    """
    student_flags = (
        "num_layers",
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


@app.command()
def calibrate(
    model_dir: Annotated[
        Path, typer.Argument(help="Model directory (finetune/distill output or a classifier folder).")
    ],
    out: Out,
    num_samples: Annotated[Optional[int], typer.Option(help="Training examples to sample.")] = None,
    batch_size: BatchSize = None,
    bins: Annotated[Optional[int], typer.Option(help="Histogram bins per tensor (memory stays O(bins)).")] = None,
    data: Data = None,
    subset: Subset = None,
    text_column: TextColumn = None,
    text_pair_column: TextPairColumn = None,
    label_column: LabelColumn = None,
    train_split: TrainSplit = None,
    max_length: MaxLength = None,
    seed: Seed = None,
    recipe: Recipe = None,
    overwrite: Overwrite = False,
    json_out: Json = False,
) -> None:
    """Record activation ranges of every Linear input on sampled training data (the samples are kept).

    Examples:

        llmzip calibrate runs/student --data ../shared/data/sst2 --num-samples 256 -o runs/calib
    """
    flags = {k: v for k, v in locals().items() if k in DATA_FLAGS or k in ("num_samples", "batch_size", "bins", "seed")}

    def work() -> dict[str, Any]:
        from llmzip.stages.calibrate import calibrate as stage

        return _stage_result(stage(model_dir, out, config=_build("calibrate", recipe, flags, {}), overwrite=overwrite))

    _execute(work, _render_stage, json_out)


@app.command()
def quantize(
    model_dir: Annotated[Path, typer.Argument(help="Model directory that was calibrated.")],
    calibration_dir: Annotated[Path, typer.Argument(help="Output of `llmzip calibrate MODEL_DIR`.")],
    out: Out,
    weight_granularity: Annotated[
        Optional[cfg.Granularity], typer.Option(help="One weight scale per output channel, or per tensor.")
    ] = None,
    weight_symmetric: Annotated[
        Optional[bool],
        typer.Option(
            "--weight-symmetric/--weight-asymmetric", help="Weight zero point fixed at 0, or fitted to [min, max]."
        ),
    ] = None,
    activation_symmetric: Annotated[
        Optional[bool],
        typer.Option(
            "--activation-symmetric/--activation-asymmetric",
            help="int8 activations around 0, or uint8 fitted to [min, max] (the fast U8S8 path).",
        ),
    ] = None,
    method: Annotated[
        Optional[cfg.CalibrationMethod],
        typer.Option(help="Activation range from the calibration histograms (no re-calibration needed)."),
    ] = None,
    percentile: Annotated[Optional[float], typer.Option(help="For --method percentile, e.g. 99.99.")] = None,
    qat_steps: Annotated[
        Optional[int], typer.Option(help="Quantization-aware training steps after calibration (0 = off); uses --data.")
    ] = None,
    qat_learning_rate: Annotated[Optional[float], typer.Option(help="QAT learning rate.")] = None,
    qat_alpha: Annotated[
        Optional[float], typer.Option(help="QAT: KD weight from the fp32 model (0 = labels only).")
    ] = None,
    smoothquant: Annotated[
        Optional[float], typer.Option(help="SmoothQuant migration strength α in [0, 1] (e.g. 0.5); off by default.")
    ] = None,
    sensitivity: Annotated[
        Optional[bool],
        typer.Option("--sensitivity", help="Report each layer quantized alone (SQNR, accuracy drop on --data)."),
    ] = None,
    max_accuracy_drop: Annotated[
        Optional[float],
        typer.Option(help="Keep the most sensitive layers fp32 until the accuracy drop (points) fits; needs --data."),
    ] = None,
    data: Data = None,
    eval_split: EvalSplit = None,
    max_eval_samples: MaxEval = None,
    max_length: MaxLength = None,
    exclude: Annotated[
        Optional[list[str]],
        typer.Option(help="Regex of Linear names to keep in fp32 (repeatable; replaces the default head exclusion)."),
    ] = None,
    recipe: Recipe = None,
    overwrite: Overwrite = False,
    json_out: Json = False,
) -> None:
    """Quantize weights to int8 and fix static activation scales from calibration.

    Writes per-layer weight/output SQNR and logit agreement into the manifest.

    Examples:

        llmzip quantize runs/student runs/calib -o runs/student-int8

        llmzip quantize runs/student runs/calib --weight-granularity per-tensor --weight-asymmetric -o runs/q

        llmzip quantize runs/student runs/calib --method percentile --percentile 99.99 -o runs/q-p9999

        llmzip quantize runs/student runs/calib --max-accuracy-drop 0.5 --data ../shared/data/sst2 -o runs/q-safe

        llmzip quantize runs/student runs/calib --qat-steps 300 --data ../shared/data/sst2 -o runs/q-qat
    """
    flags = {
        "data": data,
        "eval_split": eval_split,
        "max_eval_samples": max_eval_samples,
        "max_length": max_length,
        "sensitivity": sensitivity,
        "max_accuracy_drop": max_accuracy_drop,
        "method": method,
        "percentile": percentile,
        "smoothquant": smoothquant,
        "qat_steps": qat_steps,
        "qat_learning_rate": qat_learning_rate,
        "qat_alpha": qat_alpha,
        "weight_granularity": weight_granularity,
        "weight_symmetric": weight_symmetric,
        "activation_symmetric": activation_symmetric,
        "exclude": exclude,
    }

    def work() -> dict[str, Any]:
        from llmzip.stages.quantize import quantize as stage

        config = _build("quantize", recipe, flags, {})
        return _stage_result(stage(model_dir, calibration_dir, out, config=config, overwrite=overwrite))

    _execute(work, _render_stage, json_out)


@app.command()
def export(
    model_dir: Annotated[Path, typer.Argument(help="fp32 model directory or `llmzip quantize` output.")],
    out: Out,
    opset: Annotated[Optional[int], typer.Option(help="ONNX opset (>= 17).")] = None,
    recipe: Recipe = None,
    overwrite: Overwrite = False,
    json_out: Json = False,
) -> None:
    """Export model.onnx (dynamic batch and sequence) and check it against PyTorch.

    A quantized directory exports as QDQ int8 that onnxruntime fuses into integer kernels; the export fails if
    it does not, or if the logits drift from the PyTorch model beyond tolerance.

    Examples:

        llmzip export runs/student-int8 -o runs/onnx-int8

        llmzip export runs/teacher -o runs/onnx-teacher --json
    """
    flags = {"opset": opset}

    def work() -> dict[str, Any]:
        from llmzip.stages.export import export as stage

        return _stage_result(stage(model_dir, out, config=_build("export", recipe, flags, {}), overwrite=overwrite))

    _execute(work, _render_stage, json_out)


def _render_bench(result: dict[str, Any]) -> None:
    from rich.table import Table

    m = result["machine"]
    table = Table(
        title=f"llmzip bench — {m['cpu']} ({', '.join(m['isa']) or 'no SIMD flags'}), "
        f"{result['config']['threads']} thread(s), {result['config']['provider']}"
    )
    for col in (
        "variant",
        "kind",
        "batch×seq",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "samples/s",
        "speedup",
        "size MB",
        "accuracy",
    ):
        table.add_column(col, justify="left" if col in ("variant", "kind") else "right")
    for v in result["variants"]:
        lat = v["latency_ms"]
        table.add_row(
            v["name"],
            f"{v['kind']} {v['precision']}",
            f"{v['batch']}×{v['seq_len']}",
            f"{lat['p50']:.2f}",
            f"{lat['p90']:.2f}",
            f"{lat['p99']:.2f}",
            f"{v['throughput']:.1f}",
            f"{v['speedup_vs_baseline']:.2f}×",
            f"{v['size_mb']:.1f}",
            f"{v['accuracy']:.4f}",
        )
    from llmzip.progress import stdout_console

    console = stdout_console()
    console.print(table)
    samples = result["variants"][0]["eval_samples"]
    console.print(f"speedup: p50 vs {result['baseline']} at the same batch; accuracy on {samples} examples")


@app.command()
def bench(
    model_dirs: Annotated[
        list[Path],
        typer.Argument(
            help="Model directories: export output (ONNX) or model/quantize directories (PyTorch). "
            "The first is the speedup baseline."
        ),
    ],
    name: Annotated[
        Optional[list[str]], typer.Option("--name", help="Variant name, once per directory, in order.")
    ] = None,
    batch_sizes: Annotated[
        Optional[str], typer.Option("--batch-sizes", help="Comma-separated batch sizes, e.g. 1,8.")
    ] = None,
    seq_len: Annotated[Optional[int], typer.Option(help="Sequence length every input is padded/truncated to.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="Intra-op threads (onnxruntime and torch).")] = None,
    provider: Annotated[Optional[cfg.Provider], typer.Option(help="Execution provider.")] = None,
    warmup: Annotated[Optional[int], typer.Option(help="Untimed runs per variant and batch size.")] = None,
    iterations: Annotated[
        Optional[int], typer.Option(help="Timed runs per variant and batch size (round-robin).")
    ] = None,
    data: Data = None,
    subset: Subset = None,
    text_column: TextColumn = None,
    text_pair_column: TextPairColumn = None,
    label_column: LabelColumn = None,
    eval_split: EvalSplit = None,
    max_eval_samples: MaxEval = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Also write results.json + manifest here.")] = None,
    recipe: Recipe = None,
    overwrite: Overwrite = False,
    json_out: Json = False,
) -> None:
    """Latency p50/p90/p99, throughput, size and accuracy of several models, measured side by side.

    Examples:

        llmzip bench runs/teacher runs/onnx-int8 --data ../shared/data/sst2/test.tsv --batch-sizes 1,8 --threads 1

        llmzip bench runs/onnx-teacher runs/onnx-int8 --name fp32 --name int8 --json > bench.json
    """
    flags = {
        k: v
        for k, v in locals().items()
        if k in DATA_FLAGS or k in ("batch_sizes", "seq_len", "threads", "provider", "warmup", "iterations")
    }

    def work() -> dict[str, Any]:
        from llmzip.stages.bench import bench as stage

        return stage(
            model_dirs, config=_build("bench", recipe, flags, {}), names=name, out_dir=out, overwrite=overwrite
        )

    _execute(work, _render_bench, json_out)


@app.command()
def run(
    recipe_file: Annotated[
        Path, typer.Argument(help="YAML recipe: `model:`, optional `data:`, one section per stage.")
    ],
    out: Out,
    model: Annotated[Optional[str], typer.Option(help="Override the recipe's starting model.")] = None,
    data: Data = None,
    set_: Annotated[
        Optional[list[str]],
        typer.Option("--set", help="Override one field: section.key=value (YAML value), repeatable."),
    ] = None,
    overwrite: Overwrite = False,
    json_out: Json = False,
) -> None:
    """Run the whole chain from a recipe: finetune → distill → calibrate → quantize → export → bench.

    Examples:

        llmzip run configs/tiny.yaml --out runs/tiny

        llmzip run configs/sst2-minilm.yaml --out runs/sst2 --set distill.num_layers=2 --set bench.threads=2
    """

    def work() -> dict[str, Any]:
        import yaml

        from llmzip.stages.run import run as stage

        values = cfg.read_yaml(recipe_file)
        if model is not None:
            values["model"] = model
        if data is not None:
            cfg.set_dotted(values, "data.dataset", data)
        for item in set_ or []:
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"--set {item!r}: expected section.key=value")
            cfg.set_dotted(values, key.strip(), yaml.safe_load(raw))
        return stage(cfg.load_recipe(values), out, overwrite=overwrite)

    def render(result: dict[str, Any]) -> None:
        for key, stage in result["stages"].items():
            if stage["stage"] != "bench":
                _render_stage(
                    {
                        "stage": f"{stage['stage']} ({key})",
                        "out": stage["path"],
                        "duration_s": stage["duration_s"] or 0.0,
                        "metrics": stage["metrics"],
                    }
                )
        if "bench" in result:
            _render_bench(result["bench"])

    _execute(work, render, json_out)


def main() -> None:
    app()
