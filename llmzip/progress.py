"""Rich progress on stderr (stdout is kept for results and --json), shared by every long stage."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


class LineProgress:
    """Progress for logs (CI, `2> run.log`): a plain line every 10% or 30 s instead of a live bar."""

    def __init__(self) -> None:
        self.tasks: dict[int, dict[str, Any]] = {}

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> int:
        task = len(self.tasks)
        self.tasks[task] = {
            "description": description,
            "total": total or 0,
            "completed": 0.0,
            "info": "",
            "start": time.time(),
            "shown_at": 0.0,
            "shown_pct": -1,
        }
        return task

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, completed=self.tasks[task]["completed"] + advance)

    def update(self, task: int, completed: float | None = None, info: str | None = None, **_: Any) -> None:
        t = self.tasks[task]
        if completed is not None:
            t["completed"] = completed
        if info is not None:
            t["info"] = info
        pct = int(100 * t["completed"] / t["total"]) if t["total"] else 0
        now = time.time()
        if (
            pct // 10 > t["shown_pct"] // 10
            or now - t["shown_at"] > 30
            or (t["total"] and t["completed"] >= t["total"])
        ):
            if t["shown_pct"] == pct and now - t["shown_at"] <= 30:
                return
            t["shown_pct"], t["shown_at"] = pct, now
            console.print(
                f"{t['description']}: {t['completed']:.0f}/{t['total']:.0f} ({pct}%) "
                f"{now - t['start']:.0f}s {t['info']}".rstrip(),
                highlight=False,
            )


@contextmanager
def progress() -> Iterator[Any]:
    if not console.is_terminal:
        yield LineProgress()
        return
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


def stdout_console() -> Console:
    """Results on stdout; in a log or CI (not a terminal) wide enough that tables never squeeze into '…'."""
    plain = Console()
    return plain if plain.is_terminal else Console(width=160)


def step(message: str) -> None:
    """A one-line status for work without a natural count (loading, exporting)."""
    console.print(f"[dim]·[/] {message}", highlight=False)


def trainer_callback(description: str) -> Any:
    """A transformers TrainerCallback that drives a rich bar instead of tqdm (Trainer runs with disable_tqdm)."""
    from transformers import TrainerCallback

    class RichCallback(TrainerCallback):
        def __init__(self) -> None:
            self._cm: Any = None
            self._bar: Any = None
            self._task: Any = None
            self.history: list[dict[str, float]] = []
            self.step_times: list[float] = []
            self._last = 0.0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if int(os.environ.get("RANK", "0")) != 0:  # one bar per job, not one per torchrun rank
                return
            self._cm = progress()
            self._bar = self._cm.__enter__()
            self._task = self._bar.add_task(description, total=state.max_steps, info="")

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._last = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.step_times.append(time.perf_counter() - self._last)
            if self._bar is not None:
                self._bar.update(self._task, completed=state.global_step)

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any
        ) -> None:
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


def quiet_libraries() -> None:
    """Library warnings and tqdm bars (uninitialized heads, shard writing) drown what llmzip prints on stderr."""
    import datasets
    import huggingface_hub
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    huggingface_hub.utils.logging.set_verbosity_error()  # offline retries: the one-line error says it all
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
