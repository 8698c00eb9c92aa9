"""`mrcli compare`: training runs side by side."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from mrcli.cli.display import err, out, print_json
from mrcli.cli.options import Json


def _duration(seconds: float | None) -> str:
    """95 -> 1m35s, 7500 -> 2h05m."""
    if seconds is None:
        return "-"
    minutes, s = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{s:02d}s" if minutes else f"{s}s"


def _best(summary: Any, key: str) -> str:
    if key not in summary.best:
        return "-"
    value, step = summary.best[key]
    return f"{value:.3f}" + (f" ({step})" if step is not None else "")


def compare(
    runs: Annotated[list[str], typer.Argument(help="Training run directories (mrcli train --workdir).")],
    out_dir: Annotated[
        str, typer.Option("--out", help="Where to write compare.png (+ compare.json): the runs' curves overlaid.")
    ] = "compare",
    as_json: Json = False,
) -> None:
    """Compare training runs: recipe, dataset, steps, best box and mask AP (and
    at which step), images/s and wall time, and one plot of their curves.

    The recipe is the one each run's config is closest to (a run does not
    record its recipe), with the fields it changes listed under the table.
    The best AP is the periodic eval's, or else `mrcli eval`'s of the run.

    Examples:

      mrcli compare runs/tiny runs/tiny_sgd

      mrcli compare runs/* --out compare/ --json
    """
    from mrcli.runs import compare as compare_runs

    result = compare_runs(runs, out_dir)
    if as_json:
        print_json({"runs": [s.to_json() for s in result.runs], "plot": str(result.plot)})
    else:
        table = Table(title=f"{len(result.runs)} run(s)", caption="AP: the best (at step); wall: training time",
                      box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True, pad_edge=False)  # fmt: skip
        for column in ("run", "recipe", "dataset", "steps", "box AP", "mask AP", "img/s", "wall"):
            text = column in ("run", "recipe", "dataset")
            table.add_column(column, justify="left" if text else "right", no_wrap=not text,
                             overflow="fold" if text else "ellipsis")  # fmt: skip
        for s in result.runs:
            recipe = s.recipe + (f" +{len(s.changed)}" if s.changed else "")
            steps = f"{s.step}" + (f"/{s.planned_steps}" if s.step != s.planned_steps else "")
            table.add_row(s.workdir.name, recipe, s.dataset, steps, _best(s, "bbox_AP"), _best(s, "segm_AP"),
                          f"{s.images_per_s:.1f}" if s.images_per_s is not None else "-", _duration(s.wall_s))  # fmt: skip
        out.print(table)
        for s in result.runs:
            if s.changed:
                fields = ", ".join(f"{k}={v}" for k, v in s.changed.items())
                out.print(f"{s.workdir.name}: {s.recipe} with {fields}", highlight=False, markup=False,
                          soft_wrap=True)  # fmt: skip
        for s in result.runs:
            if s.best_from == "mrcli eval":
                out.print(f"{s.workdir.name}: AP from mrcli eval (no periodic eval in the run)",
                          highlight=False, markup=False)  # fmt: skip
    err.print(f"plot: {result.plot}", highlight=False, markup=False)
