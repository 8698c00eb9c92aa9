"""`mrcli train` and `mrcli quickstart`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from mrcli.cli.display import RichReport, err, print_json
from mrcli.cli.options import DataDir, Distributed, Json, Sets


def train(
    workdir: Annotated[str, typer.Option("--workdir", help="Run directory: checkpoints, metrics.")],
    recipe: Annotated[
        Optional[str],
        typer.Option("--recipe", help="Recipe (see `mrcli recipes`); default: the run's own "
                     "config when resuming, else the defaults."),
    ] = None,
    data: Annotated[
        Optional[str], typer.Option("--data", help="Prepared dataset name (sets data.dataset).")
    ] = None,
    sets: Sets = None,
    init_from: Annotated[
        Optional[str],
        typer.Option("--init-from", help="Start from these weights (sets train.init_from): a name "
                     "from `mrcli weights list`, a .pth/.pkl file, a checkpoint directory or another "
                     "run's workdir (its best checkpoint). Arrays of another shape (another class "
                     "count) are skipped."),
    ] = None,
    distributed: Distributed = False,
    data_dir: DataDir = None,
    as_json: Json = False,
) -> None:
    """Train Mask R-CNN on a prepared dataset, on all devices; resume where it stopped.

    Running the same command on an existing workdir resumes it exactly.
    SIGTERM / Ctrl-C finish the step, save a checkpoint and exit 0.

    Examples:

      mrcli train --recipe tiny --data shapes --workdir runs/tiny

      mrcli train --recipe finetune --data parts --workdir runs/parts

      mrcli train --recipe r101_fpn --data coco --workdir runs/r101

      mrcli train --recipe tiny --workdir runs/t2 --set train.global_batch=16
    """
    from mrcli import train as train_lib

    with RichReport() as report:
        result = train_lib.run(workdir, recipe=recipe, sets=sets or [], data=data,
                               init_from=init_from, distributed=distributed, data_dir=data_dir,
                               report=report)  # fmt: skip
    err.print(f"{result.reason}: step {result.step}, last checkpoint "
              f"{result.last_checkpoint}, workdir {workdir}", highlight=False, markup=False)  # fmt: skip
    if as_json:
        print_json({"step": result.step, "reason": result.reason,
                    "last_checkpoint": result.last_checkpoint,
                    "metrics": result.metrics, "eval": result.eval})  # fmt: skip


def quickstart(
    workdir: Annotated[
        str, typer.Option("--workdir", help="Run directory for the tiny model.")
    ] = "runs/quickstart",
    sets: Sets = None,
    data_dir: DataDir = None,
    as_json: Json = False,
) -> None:
    """The whole workflow on the built-in data, on this CPU, in minutes.

    Prepares the synthetic shapes dataset, trains the `tiny` recipe, evaluates
    it (COCO box and mask AP) and writes prediction overlays for a few images;
    it says where its plots are (training curves, PR curves, confusion
    matrix, worst images). Run it again to reuse the data and the trained model.

    Example: mrcli quickstart --workdir runs/quickstart
    """
    from mrcli.quickstart import run as quickstart_run

    with RichReport() as report:
        result = quickstart_run(workdir, data_dir=data_dir, sets=sets or [], report=report)
    err.print(
        f"mask AP {result.eval['segm_AP']:.3f}, box AP {result.eval['bbox_AP']:.3f} on the shapes "
        f"val split ({', '.join(f'{k} {v:.0f} s' for k, v in result.seconds.items())})",
        highlight=False,
    )
    err.print(f"overlays: {result.overlays}", highlight=False, soft_wrap=True, markup=False)
    err.print(f"plots: {result.curves} (training curves), {result.eval_plots}/ (PR curves, confusion "
              "matrix, AP by size, worst images)", highlight=False, soft_wrap=True, markup=False)  # fmt: skip
    if as_json:
        print_json({"workdir": str(result.workdir), "overlays": str(result.overlays),
                    "curves": str(result.curves) if result.curves else None,
                    "eval_plots": str(result.eval_plots) if result.eval_plots else None,
                    "seconds": result.seconds, **result.eval})  # fmt: skip
