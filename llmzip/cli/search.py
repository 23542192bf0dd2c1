"""`llmzip compress`: the measured search for the smallest or fastest model within an accuracy budget."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from llmzip import recipe as recipes
from llmzip.cli.common import Data, Json, Out, Overwrite, _execute, _fail
from llmzip.config.choices import Objective
from llmzip.errors import GateError


def compress(
    out: Out,
    teacher: Annotated[
        Optional[str], typer.Argument(help="The fine-tuned teacher (folder or hub id); default: the recipe's model.")
    ] = None,
    data: Data = None,
    recipe_file: Annotated[
        Optional[Path],
        typer.Option(
            "--recipe", help="YAML: `model`, `data`, base stage sections, and `compress:` (budget, candidates)."
        ),
    ] = None,
    max_accuracy_drop: Annotated[
        Optional[float], typer.Option(help="Points below the teacher allowed, on data's eval split.")
    ] = None,
    objective: Annotated[Optional[Objective], typer.Option(help="What to minimise within the budget.")] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Every stage on a few rows and steps (also BENCH_QUICK=1): minutes.")
    ] = False,
    set_: Annotated[
        Optional[list[str]],
        typer.Option("--set", help="Override one field: section.key=value (YAML value), repeatable."),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue the search in OUT: stages and measurements already done are reused."),
    ] = False,
    overwrite: Overwrite = False,
    json_out: Json = False,
) -> None:
    """Search for the smallest (or fastest) model within an accuracy budget: every candidate is made by the stages
    (distill with pruning / embedding compression → calibrate → quantize → export) and measured beside the teacher.

    Examples:

        llmzip compress runs/sst2/teacher --data ../shared/data/sst2 --max-accuracy-drop 1.5 --objective size -o runs/c

        llmzip compress --recipe configs/compress-sst2.yaml -o runs/compress --resume
    """

    def work() -> dict[str, Any]:
        from llmzip.modeling import source_config
        from llmzip.search.compress import compress as stage
        from llmzip.search.plan import build_plan, teacher_shape

        values: dict[str, Any] = recipes.read_yaml(recipe_file) if recipe_file is not None else {}
        if teacher is not None:
            values["model"] = teacher
        if data is not None:
            recipes.set_dotted(values, "data.dataset", data)
        if max_accuracy_drop is not None:
            recipes.set_dotted(values, "compress.max_accuracy_drop", max_accuracy_drop)
        if objective is not None:
            recipes.set_dotted(values, "compress.objective", objective.value)
        recipes.apply_sets(values, set_ or [])
        shape, task = None, None
        if isinstance(values.get("model"), str):
            from llmzip.tasks import task_of

            model_config = source_config(values["model"])
            task = task_of(model_config).kind.value
            if not (values.get("compress") or {}).get("candidates"):
                shape = teacher_shape(model_config)
        quick_run = quick or os.environ.get("BENCH_QUICK") == "1"
        plan = build_plan(values, teacher_shape=shape, quick=quick_run, task=task)
        done["result"] = stage(plan, out, resume=resume, overwrite=overwrite)
        return done["result"]

    done: dict[str, Any] = {}
    _execute(work, render, json_out)
    result = done.get("result")
    if result is not None and result.get("best") is None:  # after the results are printed and written
        err = GateError(
            f"no candidate is within {result['max_accuracy_drop_pt']} pt of the teacher on the selection split; "
            f"every measurement is in {out}/results.json (widen the budget or add candidates, then --resume)"
        )
        _fail(str(err), err.exit_code)


def render(result: dict[str, Any]) -> None:
    from llmzip.progress import stdout_console
    from llmzip.search.report import markdown

    stdout_console().print(markdown(result), markup=False, highlight=False)
