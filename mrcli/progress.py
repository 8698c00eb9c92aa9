"""The one way long-running library calls tell their user what happens.

train, eval, predict, export and quickstart take `report: Report | None`.
The base class says nothing (library use, tests); the command line passes a
subclass that draws rich progress bars and lines on stderr
(mrcli.cli.display.RichReport). A call reports:

    report.task("train", total=1000, done=250)     a unit of work with a bar starts
    report.advance(260, loss=1.2, lr=0.004)        progress; numbers shown beside the bar
    report.say("checkpoint at step 260", "detail") a line (kinds below)
    report.end()                                   the current bar is finished

Kinds of lines: "info" (default), "detail" (dimmed: compile times,
checkpoints), "warning" (a skipped input, a fallback) and "stage" (a heading,
e.g. quickstart's stages).
"""

from __future__ import annotations

from typing import Literal

Kind = Literal["info", "detail", "warning", "stage"]


class Report:
    """Silent by default; override what you want to show."""

    def task(self, name: str, total: int, done: int = 0) -> None:
        """A unit of work of `total` steps starts (at `done`)."""

    def advance(self, done: int, **numbers: float) -> None:
        """`done` of the current task's steps are done; `numbers` (losses, lr,
        images_per_s, ...) describe the last one."""

    def say(self, text: str, kind: Kind = "info") -> None:
        """One line for the user."""

    def end(self) -> None:
        """The current task is finished."""


def silent(report: Report | None) -> Report:
    """`report`, or a Report that says nothing."""
    return report if report is not None else Report()


class _WarningsOnly(Report):
    """Another report's warnings, nothing else (no bars, no lines)."""

    def __init__(self, inner: Report):
        self.inner = inner

    def say(self, text: str, kind: Kind = "info") -> None:
        if kind == "warning":
            self.inner.say(text, kind)


def for_process(report: Report | None, process_index: int) -> Report:
    """What process `process_index` of a multi-process run shows: everything
    on process 0; on the others only warnings, so N processes do not draw N
    progress bars of the same run (`mrcli launch` prefixes what they print)."""
    report = silent(report)
    return report if process_index == 0 else _WarningsOnly(report)
