"""`llmzip bench` and `llmzip run`: measuring models side by side, and the whole chain from a recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from llmzip import config as cfg
from llmzip import recipe as recipes
from llmzip.cli.common import (
    DATA_FLAGS,
    Data,
    EvalSplit,
    Json,
    LabelColumn,
    MaxEval,
    Out,
    Overwrite,
    Recipe,
    Subset,
    TextColumn,
    TextPairColumn,
    _build,
    _execute,
    _render_stage,
)
from llmzip.errors import ConfigError


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

        values = recipes.read_yaml(recipe_file)
        if model is not None:
            values["model"] = model
        if data is not None:
            recipes.set_dotted(values, "data.dataset", data)
        for item in set_ or []:
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"--set {item!r}: expected section.key=value")
            recipes.set_dotted(values, key.strip(), yaml.safe_load(raw))
        return stage(recipes.load_recipe(values), out, overwrite=overwrite)

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
