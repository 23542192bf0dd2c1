"""`llmzip bench` and `llmzip run`: measuring models side by side, and the whole chain from a recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from llmzip import recipe as recipes
from llmzip.cli.common import Data, Json, Out, Overwrite, Recipe, _build, _execute, _fail, _render_stage
from llmzip.cli.options import stage_options
from llmzip.errors import GateError


def _render_bench(result: dict[str, Any]) -> None:
    if "workload" in result:  # a causal LM's bench (llmzip/bench/lm.py)
        from llmzip.bench.lm import render_markdown
        from llmzip.progress import stdout_console

        stdout_console().print(render_markdown(result), markup=False, highlight=False)
        return
    from rich.markup import escape
    from rich.table import Table

    from llmzip.bench.report import isa_summary, saturation_text, speedup_text
    from llmzip.progress import stdout_console

    m, c = result["machine"], result["config"]
    table = Table(
        title=f"llmzip bench — {m['cpu']} ({isa_summary(m['isa'])}), {c['threads']} thread(s), {c['provider']}"
    )
    for col in (
        "variant",
        "kind",
        "batch×seq",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "IQR ms",
        "samples/s",
        "speedup (95% CI)",
        "size MB",
        "accuracy",
        "int8 saturates here",
    ):
        table.add_column(col, justify="left" if col in ("variant", "kind") else "right")
    for v in result["variants"]:
        lat = v["latency_ms"]
        table.add_row(
            escape(v["name"]),
            f"{v['kind']} {v['precision']}",
            f"{v['batch']}×{v['seq_len']}",
            f"{lat['p50']:.2f}",
            f"{lat['p90']:.2f}",
            f"{lat['p99']:.2f}",
            f"{lat['iqr']:.2f}",
            f"{v['throughput']:.1f}",
            speedup_text(v, result["baseline"]),
            f"{v['size_mb']:.1f}",
            "—" if v["accuracy"] is None else f"{v['accuracy']:.4f}",
            saturation_text(v),
        )
    console = stdout_console()
    console.print(table)
    samples = result["variants"][0]["eval_samples"]
    console.print(
        f"speedup: p50 vs {result['baseline']} at the same batch, 95% interval from the paired round-robin rounds; "
        f"accuracy on {samples} examples"
    )
    load = m.get("cpu_load")
    if load:
        console.print(
            f"CPU load while timing: mean {load['mean_pct']:.0f}%, max {load['max_pct']:.0f}% "
            f"(others {load['other_pct']:.0f}%)"
        )
    for warning in result.get("warnings", []):
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    for note in result.get("notes", []):
        console.print(f"[dim]note: {escape(note)}[/]")


def _enforce_gates(result: dict[str, Any] | None) -> None:
    """After the results are printed and written: a failed gate is one red line and GateError's exit code."""
    failures = ((result or {}).get("gates") or {}).get("failures") or []
    if failures:
        err = GateError("gate failed: " + "; ".join(failures))
        _fail(str(err), err.exit_code)


@stage_options("bench")
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
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            "-o",
            help="Also write results.json, report.md, latency_vs_accuracy.png + manifest here.",
        ),
    ] = None,
    recipe: Recipe = None,
    overwrite: Overwrite = False,
    json_out: Json = False,
    flags: dict[tuple[str, ...], Any] | None = None,
) -> None:
    """Latency p50/p90/p99, throughput, size and accuracy of several models, measured side by side.

    Examples:

        llmzip bench runs/teacher runs/onnx-int8 --data ../shared/data/sst2/test.tsv --batch-sizes 1,8 --threads 1

        llmzip bench runs/onnx-teacher runs/onnx-int8 --name fp32 --name int8 --json > bench.json

        llmzip bench runs/onnx-fp32 runs/onnx-int8 --min-speedup 1.3 --max-accuracy-drop 0.5 -o runs/bench  # CI

        llmzip bench runs/teacher runs/onnx-fp32 runs/onnx-int8 --baseline torch-bf16 --baseline ort-dynamic-int8

        llmzip bench runs/onnx-fp32 runs/onnx-int8 --provider openvino --ep-precision bf16  # llmzip[openvino]
    """
    done: dict[str, Any] = {}

    def work() -> dict[str, Any]:
        from llmzip.stages.bench import bench as stage

        done["result"] = stage(
            model_dirs, config=_build("bench", recipe, flags or {}), names=name, out_dir=out, overwrite=overwrite
        )
        return done["result"]

    _execute(work, _render_bench, json_out)
    _enforce_gates(done.get("result"))


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
        from llmzip.pipeline.run import run as stage

        values = recipes.read_yaml(recipe_file)
        if model is not None:
            values["model"] = model
        if data is not None:
            recipes.set_dotted(values, "data.dataset", data)
        recipes.apply_sets(values, set_ or [])
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

    done: dict[str, Any] = {}

    def work_and_keep() -> dict[str, Any]:
        done["result"] = work()
        return done["result"]

    _execute(work_and_keep, render, json_out)
    _enforce_gates((done.get("result") or {}).get("bench"))
