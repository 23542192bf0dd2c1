"""Rich progress on stderr (stdout is kept for results and --json), shared by every long stage."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


@contextmanager
def progress() -> Iterator[Progress]:
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
    )
    with bar:
        yield bar


def step(message: str) -> None:
    """A one-line status for work without a natural count (loading, exporting)."""
    console.print(f"[dim]·[/] {message}", highlight=False)


def trainer_callback(description: str) -> Any:
    """A transformers TrainerCallback that drives a rich bar instead of tqdm (Trainer runs with disable_tqdm)."""
    from transformers import TrainerCallback

    class RichCallback(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self._cm: Any = None
            self._bar: Progress | None = None
            self._task: Any = None
            self.history: list[dict[str, float]] = []

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if not state.is_world_process_zero:
                return
            self._cm = progress()
            self._bar = self._cm.__enter__()
            self._task = self._bar.add_task(description, total=state.max_steps, info="")

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self._bar is not None:
                self._bar.update(self._task, completed=state.global_step)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
                   **kwargs: Any) -> None:
            if not logs:
                return
            self.history.append({"step": state.global_step, **logs})
            if self._bar is not None:
                shown = {k: v for k, v in logs.items() if k in ("loss", "eval_loss", "eval_accuracy")}
                self._bar.update(self._task, info="  ".join(f"{k}={v:.4g}" for k, v in shown.items()))

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self._cm is not None:
                self._cm.__exit__(None, None, None)
                self._cm = self._bar = None

    return RichCallback()
