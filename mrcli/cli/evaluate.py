"""`mrcli eval`: COCO AP of a trained model."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from mrcli.cli.display import RichReport, err, out, print_json
from mrcli.cli.options import (
    Checkpoint, DataDir, Distributed, InferenceSets, Json, Tile, TileOverlap, Weights, Workdir,
)


def eval_cmd(
    workdir: Workdir = None,
    checkpoint: Checkpoint = None,
    weights: Weights = None,
    data: Annotated[
        Optional[str], typer.Option("--data", help="Dataset (default: the model's own).")
    ] = None,
    split: Annotated[
        Optional[str], typer.Option("--split", help="Split (default: data.eval_split).")
    ] = None,
    out_dir: Annotated[
        Optional[str],
        typer.Option("--out", help="Where to write detections.json, bbox.json, segm.json, "
                     "keypoints.json (default: WORKDIR/eval, else ./eval)."),
    ] = None,
    max_images: Annotated[
        Optional[int], typer.Option("--max-images", help="Evaluate the first N images only.")
    ] = None,
    max_dets: Annotated[
        Optional[int],
        typer.Option("--max-dets", help="Detections per image COCOeval scores (its maxDets; "
                     "default eval.max_dets: COCO's 100, or what training chose for a dense "
                     "dataset). The model keeps at least this many."),
    ] = None,
    tile: Tile = None,
    tile_overlap: TileOverlap = 128,
    plots: Annotated[
        bool,
        typer.Option("--plots/--no-plots", help="Draw precision-recall curves, AP by object size, "
                     "a confusion matrix and the worst images into OUT/plots (PNG + JSON)."),
    ] = True,
    sets: InferenceSets = None,
    data_dir: DataDir = None,
    distributed: Distributed = False,
    as_json: Json = False,
) -> None:
    """COCO box and mask AP of a trained model on a dataset split (pycocotools),
    and keypoint AP (OKS, the dataset's sigmas) for a keypoint model.

    On Cityscapes also the official instance-level AP (cityscapesScripts),
    when installed: pip install "mrcli[cityscapes]". Pictures of the
    evaluation go to OUT/plots unless --no-plots.

    Examples:

      mrcli eval --workdir runs/tiny

      mrcli eval --workdir runs/r101 --checkpoint last --split val --json

      mrcli eval --checkpoint imported/ --data coco --no-plots

      mrcli eval --workdir runs/cells --tile 1024 --max-dets 500
    """
    from mrcli.evaluate import run_eval

    with RichReport() as report:
        result = run_eval(workdir=workdir, checkpoint=checkpoint, data=data, split=split,
                          out=out_dir, max_images=max_images, max_dets=max_dets, tile=tile,
                          tile_overlap=tile_overlap, sets=sets or [],
                          data_dir=data_dir,
                          weights=weights, plots=plots, report=report,
                          distributed=distributed)  # fmt: skip
    plots_dir = str(result.plots[0].parent) if result.plots else None
    if as_json:
        print_json({"num_images": result.num_images, "max_dets": result.max_dets,
                    "results": str(result.results_path),
                    "plots": plots_dir, **result.summary()})  # fmt: skip
        _print_tables(result, err)
    else:
        _print_tables(result, out)
    for note in result.notes:
        err.print(note, highlight=False, markup=False)
    err.print(f"results: {result.results_path}", highlight=False, markup=False)
    if plots_dir:
        err.print(f"plots: {plots_dir} ({', '.join(p.name for p in result.plots)})", highlight=False,
                  markup=False, soft_wrap=True)  # fmt: skip


def _ap(value: float) -> str:
    return "-" if value != value or value < 0 else f"{value:.3f}"


def _print_tables(result: Any, console: Any) -> None:
    """The 12 COCO numbers of boxes and masks, the 10 of keypoints (OKS), then AP per class."""
    from mrcli.coco import stat_names

    kinds = [r for r in (result.bbox, result.segm) if r is not None]
    if result.split:  # a line, not the title: a long path would wrap it into the table's width
        console.print(f"COCO eval of {result.model} on {result.split}, {result.num_images} images",
                      markup=False, highlight=False, soft_wrap=True)  # fmt: skip
    table = Table(title=f"COCO eval, {result.num_images} images, maxDets {result.max_dets}")
    table.add_column("")
    for r in kinds:
        table.add_column(r.iou_type, justify="right")
    for name in stat_names("bbox", result.max_dets):
        # COCOeval reports -1 where the split has no ground truth of that size.
        table.add_row(name, *(_ap(r.stats[name]) for r in kinds))
    console.print(table)
    kp = result.keypoints
    if kp is not None:
        title = f"COCO keypoint eval (OKS), {result.num_images} images"
        table = Table(title=title, min_width=len(title))
        table.add_column("")
        table.add_column("keypoints", justify="right")
        for name, value in kp.stats.items():
            table.add_row(name, f"{value:.3f}" if value >= 0 else "-")
        console.print(table)
        kinds = kinds + [kp]
    classes = Table(title="AP per class")
    classes.add_column("category")
    for r in kinds:
        classes.add_column(r.iou_type, justify="right")
    names = result.category_names
    for cat_id in result.bbox.per_class_ap:
        # nan: the split has no instance of the class (nor a detection of it).
        classes.add_row(f"{names.get(cat_id, cat_id)} ({cat_id})",
                        *(_ap(r.per_class_ap.get(cat_id, float("nan"))) for r in kinds))  # fmt: skip
    console.print(classes)
    if result.official is not None:
        metric = result.official
        title = f"{metric.name}, {result.num_images} images"
        table = Table(title=title, min_width=len(title))
        table.add_column("")
        table.add_column("mask", justify="right")
        for name, value in metric.stats.items():
            table.add_row(name, f"{value:.3f}")
        table.add_section()
        for cat_id, value in metric.per_class_ap.items():
            table.add_row(f"{names.get(cat_id, cat_id)} ({cat_id})", f"{value:.3f}")
        console.print(table)
