"""What the command line draws: the progress line at any width, on a terminal
and in a log file (issue 19: below ~160 columns the old bar showed no step and
no ETA; piped to a file there were no step lines at all)."""

import io
import re
import time

import pytest
from rich.console import Console

from mrcli.cli.display import RichReport, duration, progress_line

NUMBERS = dict(loss=1.8151, loss_rpn_cls=0.2, loss_rpn_box=0.1, loss_cls=0.5, loss_box=0.4,
               loss_mask=0.6, lr=0.004, images_per_s=18.31)  # fmt: skip


@pytest.mark.parametrize("width", [40, 60, 80, 100, 160, 240])
def test_progress_line_keeps_step_loss_speed_and_eta_at_any_width(width):
    line, bar = progress_line("train", 260, 1000, NUMBERS, elapsed=130, eta=372, width=width)
    assert len(line) + (bar + 1 if bar else 0) <= width
    for piece in ("260/1000", "loss=1.815", "18.3 img/s", "ETA 6:12"):
        assert piece in line, (width, line)


def test_progress_line_drops_the_loss_breakdown_first():
    full, _ = progress_line("train", 260, 1000, NUMBERS, elapsed=130, eta=372, width=240)
    assert "(rpn_cls=0.200" in full and "lr=4.00e-03" in full
    at80, bar = progress_line("train", 260, 1000, NUMBERS, elapsed=130, eta=372, width=80)
    assert "rpn_cls" not in at80 and "lr=4.00e-03" in at80 and bar >= 10
    narrow, _ = progress_line("train", 260, 1000, NUMBERS, elapsed=130, eta=372, width=50)
    assert "lr=" not in narrow and narrow.startswith("260/1000")


def test_plain_line_has_everything_and_labels_elapsed():
    line, bar = progress_line("train", 260, 1000, NUMBERS, elapsed=3725, eta=None, width=None)
    assert bar == 0
    assert line == ("train 260/1000 loss=1.815 (rpn_cls=0.200 rpn_box=0.100 cls=0.500 box=0.400 "
                    "mask=0.600) lr=4.00e-03 18.3 img/s elapsed 1:02:05 ETA ?")  # fmt: skip


def test_terminal_at_80_columns_shows_step_and_eta():
    buf = io.StringIO()
    report = RichReport(Console(file=buf, force_terminal=True, width=80))
    report.task("train", total=20)
    for k in range(1, 21):
        time.sleep(0.002)
        report.advance(k, **NUMBERS)
    report.end()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())  # without the escapes
    last = [ln for ln in text.replace("\r", "\n").splitlines() if "20/20" in ln][-1]
    assert len(last) <= 80
    assert "━" in last and "loss=1.815" in last and "18.3 img/s" in last and "ETA 0:00" in last


def test_log_file_gets_plain_lines_every_twentieth_and_an_estimate(monkeypatch):
    clock = iter(range(0, 10_000, 5))  # every call 5 s later
    monkeypatch.setattr("mrcli.cli.display.time.perf_counter", lambda: next(clock))
    buf = io.StringIO()
    report = RichReport(Console(file=buf, width=80))  # not a terminal
    report.task("train", total=400)
    for k in range(10, 401, 10):
        report.advance(k, **NUMBERS)
    report.end()
    lines = buf.getvalue().splitlines()
    steps = [int(m.group(1)) for ln in lines if (m := re.match(r"train (\d+)/400 ", ln))]
    # the first update, then every 20th of the task (or 30 s), and the last
    assert steps[0] == 10 and steps[-1] == 400 and len(steps) <= 41
    assert all("ETA" in ln for ln in lines if ln.startswith("train "))
    estimate = [ln for ln in lines if "about" in ln]
    assert len(estimate) == 1 and "for the remaining 380 of 400" in estimate[0]


def test_duration_words():
    assert [duration(s) for s in (7, 460, 11_530)] == ["7 s", "7 min 40 s", "3 h 12 min"]
