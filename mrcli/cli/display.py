"""What the command line shows: consoles, JSON, tables, and the progress renderer.

`out` is stdout (a command's output: tables, lists, --json), `err` is stderr
(progress, messages). Messages are printed with rich markup off, so that text
in square brackets (a file name, `pip install "mrcli[tf]"`) stays as written.
"""

from __future__ import annotations

import json
import time
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.table import Table
from rich.text import Text

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


def _clock(seconds: float) -> str:
    """0:07, 2:05, 1:02:05."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def duration(seconds: float) -> str:
    """A run's length in words: 45 s, 7 min 40 s, 3 h 12 min."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


# The pieces of a progress line, in display order, and which go first when the
# line is too wide: the loss breakdown, then the LR, the elapsed time, the task
# name. The step, the loss, images/s and the ETA always stay (issue 19: at 80
# columns the old bar showed none of them).
_DROP_ORDER = ("terms", "lr", "elapsed", "name")
_BAR_MIN, _BAR_MAX = 10, 30


def progress_pieces(name: str, done: int, total: int, numbers: dict[str, float],
                    elapsed: float, eta: float | None) -> dict[str, str]:
    """The texts of a progress line by role (see _DROP_ORDER), without the bar."""
    pieces = {"name": name, "count": f"{done}/{total}"}
    if "loss" in numbers:
        pieces["loss"] = f"loss={numbers['loss']:.3f}"
        terms = " ".join(f"{k.removeprefix('loss_')}={v:.3f}" for k, v in numbers.items()
                         if k.startswith("loss_"))  # fmt: skip
        if terms:
            pieces["terms"] = f"({terms})"
    if "lr" in numbers:
        pieces["lr"] = f"lr={numbers['lr']:.2e}"
    if "images_per_s" in numbers:
        pieces["speed"] = f"{numbers['images_per_s']:.1f} img/s"
    pieces["elapsed"] = _clock(elapsed)
    pieces["eta"] = f"ETA {_clock(eta)}" if eta is not None else "ETA ?"
    return pieces


def progress_line(name: str, done: int, total: int, numbers: dict[str, float], *,
                  elapsed: float, eta: float | None, width: int | None) -> tuple[str, int]:
    """(line, bar width): a task's progress in at most `width` columns, with
    `bar width` columns left for a bar after the name (0: no bar). `width`
    None: the whole line, no bar (a log file)."""
    pieces = progress_pieces(name, done, total, numbers, elapsed, eta)
    if width is None:
        pieces["elapsed"] = f"elapsed {pieces['elapsed']}"
        return " ".join(pieces.values()), 0
    drop = list(_DROP_ORDER)
    while True:
        text = " ".join(pieces.values())
        room = width - len(text) - 1  # the bar and its space
        if room >= _BAR_MIN:
            return text, min(room, _BAR_MAX)
        if not drop:
            return text[:width], 0
        pieces.pop(drop.pop(0), None)


class _Line:
    """The live progress line: re-rendered (with the console's width) on every refresh."""

    def __init__(self, report: RichReport):
        self.report = report

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        r = self.report
        line, bar = progress_line(r.name, r.done, r.total, r.numbers, elapsed=r.elapsed(),
                                  eta=r.eta(), width=options.max_width)  # fmt: skip
        if not bar:
            yield Text(line, no_wrap=True, overflow="crop")
            return
        head, _, tail = line.partition(" ")
        if not line.startswith(r.name):  # the name was dropped: the bar comes first
            head, tail = "", line
        filled = round(bar * r.done / max(r.total, 1))
        yield Text.assemble(
            (head + " " if head else "", "bold"), ("━" * filled, "magenta"),
            ("━" * (bar - filled), "grey23"), " ", tail, no_wrap=True, overflow="crop",
        )  # fmt: skip


class RichReport(Report):
    """mrcli.progress.Report on stderr. On a terminal, one live line per task
    that fits the terminal's width (name, bar, step/total, loss, images/s,
    elapsed, ETA; the loss breakdown, LR, elapsed time and name are dropped in
    that order when it is narrow). Elsewhere (a log file, a pipe) a plain line
    every twentieth of the task or every 30 s, and at its end. Once the first
    steps are timed, a line says how long the rest will take."""

    PLAIN_EVERY_S = 30.0

    def __init__(self, console: Console = err):
        self.console = console
        self._live: Live | None = None
        self.name, self.total, self.done = "", 0, 0
        self.numbers: dict[str, float] = {}
        self._active = False

    # --- timing -------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.perf_counter() - self._t_start

    def eta(self) -> float | None:
        """Seconds left, from the pace since the task's first update (which
        leaves out compilation and start-up); None until two updates."""
        if self._t_first is None or self.done <= self._done_first:
            return None
        pace = (time.perf_counter() - self._t_first) / (self.done - self._done_first)
        return pace * (self.total - self.done)

    # --- Report -------------------------------------------------------------------------
    def task(self, name: str, total: int, done: int = 0) -> None:
        self.end()
        self.name, self.total, self.done, self.numbers = name, total, done, {}
        self._t_start = time.perf_counter()
        self._t_first: float | None = None
        self._done_first = done
        self._estimated = False
        self._printed_done, self._printed_t = done, self._t_start
        self._active = True
        if self.console.is_terminal:
            self._live = Live(_Line(self), console=self.console, refresh_per_second=4,
                              transient=False, redirect_stdout=False)  # fmt: skip
            self._live.start()

    def advance(self, done: int, **numbers: float) -> None:
        if not self._active:
            return
        now = time.perf_counter()
        self.done, self.numbers = done, numbers
        if self._t_first is None:
            self._t_first, self._done_first = now, done
        eta = self.eta()
        if eta is not None and not self._estimated:
            self._estimated = True
            if eta >= 60:
                per = (now - self._t_first) / (done - self._done_first)
                self.say(f"{self.name}: about {duration(eta)} for the remaining "
                         f"{self.total - done} of {self.total} (at {per:.3g} s each)", "detail")  # fmt: skip
        if self._live is None and (
            now == self._t_first or done >= self.total
            or done - self._printed_done >= max(1, -(-self.total // 20))
            or now - self._printed_t >= self.PLAIN_EVERY_S
        ):  # fmt: skip
            self._printed_done, self._printed_t = done, now
            line, _ = progress_line(self.name, done, self.total, numbers,
                                    elapsed=self.elapsed(), eta=eta, width=None)  # fmt: skip
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def say(self, text: str, kind: Kind = "info") -> None:
        if kind == "stage":
            text = f"== {text}"
        self.console.print(text, style=_STYLES[kind], markup=False, highlight=False, soft_wrap=True)

    def end(self) -> None:
        if self._live is not None:
            self._live.stop()
        self._live, self._active = None, False

    def __enter__(self) -> RichReport:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.end()
