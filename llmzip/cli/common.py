"""What every `llmzip` verb shares: the Typer app, option types, config building, error handling, summaries.

Heavy libraries (torch, transformers, onnxruntime, datasets) are imported inside the commands, never here,
so `llmzip --help` answers instantly.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from llmzip import config as cfg
from llmzip import recipe as recipes
from llmzip.errors import LlmzipError, Terminated


class _OneLineErrors(typer.core.TyperGroup):
    """Usage errors (a typo in a choice, a missing argument, an unknown flag) end like every other failure: one
    `error:` line on stderr naming the fix and exit code 2, not click's boxed usage panel."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except typer.TyperException as err:  # typer's own click: UsageError, BadParameter, NoSuchOption, ...
            ctx = getattr(err, "ctx", None)
            if type(err).__name__ == "NoArgsIsHelpError" and ctx is not None:  # `llmzip VERB` alone: its help
                typer.echo(ctx.get_help())
                sys.exit(0)
            where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            _print_error(f"{err.format_message().replace('Value error, ', '')}{where}")
            sys.exit(getattr(err, "exit_code", 2))
        except typer.Abort:
            _print_error("aborted")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    name="llmzip",
    help="Make transformer models small and fast: finetune → distill → calibrate → quantize → export → bench.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


@app.callback()
def _global_options(
    allow_pickle: Annotated[
        bool,
        typer.Option(
            "--allow-pickle",
            help="Also load pickle weights (*.bin, no safetensors). Pickle can run code: only for folders you trust.",
        ),
    ] = False,
) -> None:
    """Make transformer models small and fast: finetune → distill → calibrate → quantize → export → bench."""
    if allow_pickle:
        os.environ["LLMZIP_ALLOW_PICKLE"] = "1"  # read by llmzip.modeling where weights are loaded


# Option types of the verbs themselves (a stage's config options are derived from its config class:
# llmzip/cli/options.py).
Out = Annotated[Path, typer.Option("--out", "-o", help="Output directory (written atomically).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.")]
Json = Annotated[bool, typer.Option("--json", help="Print the machine-readable result on stdout, nothing else.")]
Recipe = Annotated[
    Optional[Path], typer.Option("--recipe", help="Take defaults from this stage's section of a YAML recipe.")
]
Data = Annotated[
    Optional[str],
    typer.Option(
        "--data",
        help="Hub dataset id, local folder of split files, or one file (default: the built-in demo sample).",
        rich_help_panel="Data",
    ),
]
Resume = Annotated[
    bool, typer.Option("--resume", help="Continue from the last checkpoint of an interrupted run with the same --out.")
]


def _print_error(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {escape(message)}")


def _fail(message: str, code: int) -> None:
    _print_error(message)
    raise typer.Exit(code)


def _build(stage: str, recipe: Path | None, flags: dict[tuple[str, ...], Any]) -> Any:
    """Stage config = recipe section (with the recipe's shared `data`) overridden by the flags the user set
    (keyed by their path in the config, e.g. ("data", "dataset"))."""
    section: dict[str, Any] = {}
    if recipe is not None:
        values = recipes.read_yaml(recipe)
        section = dict(values.get(stage) or {})
        if "data" in {f.name for f in dataclasses.fields(cfg.STAGE_CONFIGS[stage])}:
            section["data"] = recipes.merge(values.get("data") or {}, section.get("data") or {})
    for path, value in flags.items():
        target = section
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = value
    return recipes.from_dict(cfg.STAGE_CONFIGS[stage], section, prefix="" if recipe is None else f"{stage}.")


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def _execute(work: Callable[[], Any], render: Callable[[Any], None], as_json: bool) -> None:
    """Run a stage; LlmzipError becomes one red line and its exit code. Anything else is a bug: traceback.

    SIGTERM (a CI timeout, `kill`, a container stop) unwinds like Ctrl-C: the stage removes its temporary output
    and any previous output stays as it was.
    """
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        result = work()
    except LlmzipError as err:
        _fail(str(err), err.exit_code)
    except Terminated as err:  # a stage may say more precisely what is left (a search keeps what it measured)
        _fail(str(err) or "terminated (SIGTERM); no output was written, any previous output is unchanged", 143)
    except KeyboardInterrupt as err:
        _fail(str(err) or "interrupted; no output was written, any previous output is unchanged", 130)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun only rank 0 writes the artifact and reports it
    if as_json:
        from llmzip.artifact import strict_json

        sys.stdout.write(strict_json(result, where="the result"))
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
