"""What the command line shows: consoles, JSON, tables, and the progress renderer.

`out` is stdout (a command's output: tables, lists, --json), `err` is stderr
(progress, messages). Messages are printed with rich markup off, so that text
in square brackets (a file name, `pip install "mrcli[tf]"`) stays as written.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn,
    TimeRemainingColumn,
)  # fmt: skip
from rich.table import Table

from mrcli.progress import Kind, Report

out = Console()
err = Console(stderr=True)

_STYLES = {"info": "", "detail": "dim", "warning": "yellow", "stage": "bold cyan"}


def print_json(data: Any) -> None:
    """`data` as indented JSON on stdout."""
    print(json.dumps(data, indent=2))


def key_value_table(title: str, rows: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False)
    for key, value in rows.items():
        table.add_row(key, str(value))
    return table


def format_numbers(numbers: dict[str, float]) -> str:
    """A training step's numbers beside the bar: the loss and its terms, the LR,
    images/s; other numbers are left out."""
    parts = []
    if "loss" in numbers:
        terms = " ".join(f"{k.removeprefix('loss_')}={v:.3f}" for k, v in numbers.items()
                         if k.startswith("loss_"))  # fmt: skip
        parts.append(f"loss={numbers['loss']:.3f}" + (f" ({terms})" if terms else ""))
    if "lr" in numbers:
        parts.append(f"lr={numbers['lr']:.2e}")
    if "images_per_s" in numbers:
        parts.append(f"{numbers['images_per_s']:.1f} img/s")
    return " ".join(parts)


class RichReport(Report):
    """mrcli.progress.Report drawn on stderr: a rich progress bar per task (name,
    bar, done/total, numbers, elapsed, ETA) and lines above it."""

    def __init__(self, console: Console = err):
        self.console = console
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def task(self, name: str, total: int, done: int = 0) -> None:
        self.end()
        self._bar = Progress(
            TextColumn("[bold]{task.description}[/]"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=self.console,
        )  # fmt: skip
        self._bar.start()
        self._task = self._bar.add_task(name, total=total, completed=done, info="compiling...")

    def advance(self, done: int, **numbers: float) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=done, info=format_numbers(numbers))

    def say(self, text: str, kind: Kind = "info") -> None:
        if kind == "stage":
            text = f"== {text}"
        self.console.print(text, style=_STYLES[kind], markup=False, highlight=False, soft_wrap=True)

    def end(self) -> None:
        if self._bar is not None:
            self._bar.stop()
        self._bar, self._task = None, None

    def __enter__(self) -> RichReport:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.end()
