"""`mrcli show` and `mrcli datasets`: prepared datasets looked at and listed."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from mrcli.cli.display import err, print_json
from mrcli.cli.display import out as stdout
from mrcli.cli.options import DataDir, Json, Sets


def show(
    dataset: Annotated[str, typer.Argument(help="A prepared dataset's name.")],
    out: Annotated[str, typer.Option("--out", help="Directory for the overlay PNGs (or the --stats plots).")],
    split: Annotated[str, typer.Option("--split", help="Split to show.")] = "train",
    num: Annotated[int, typer.Option("--num", help="How many images.")] = 8,
    augmented: Annotated[
        bool,
        typer.Option("--augmented", help="Show what the training pipeline feeds the model."),
    ] = False,
    recipe: Annotated[
        Optional[str],
        typer.Option("--recipe", help="Recipe whose input sizes --augmented uses; --stats checks "
                     "its input size, anchors, data.max_instances and detections per image."),
    ] = None,
    sets: Sets = None,
    seed: Annotated[int, typer.Option("--seed", help="Augmentation seed.")] = 0,
    stats: Annotated[
        bool,
        typer.Option("--stats", help="Instead of overlays: the split's statistics as PNGs + JSON "
                     "(instances per class and per image, object sizes with the anchors of --recipe, "
                     "aspect ratios, image sizes), a table, and warnings where the recipe does not "
                     "fit the data."),
    ] = False,
    data_dir: DataDir = None,
    as_json: Json = False,
) -> None:
    """Look at a prepared dataset: overlay PNGs (masks, boxes, class names), or --stats.

    Raw as prepared, or --augmented as the training pipeline feeds the model:
    look at the data before training on it. --stats draws the split's
    statistics for a recipe (its input size, anchors, data.max_instances and
    detections per image) and warns where they do not fit the data.

    Examples:

      mrcli show shapes --split val --out overlays/ --num 4

      mrcli show shapes --out overlays/ --augmented --recipe tiny

      mrcli show shapes --stats --recipe tiny --out stats/
    """
    if stats:
        if augmented:
            from mrcli.errors import UserError

            raise UserError("--stats and --augmented: pick one (--stats counts the data as prepared)")
        _show_stats(dataset, out=out, split=split, recipe=recipe, sets=sets or [], data_dir=data_dir,
                    as_json=as_json)  # fmt: skip
        return
    from mrcli.data.show import show_dataset

    paths = show_dataset(dataset, data_dir=data_dir, split=split, out=out, num=num,
                         augmented=augmented, recipe=recipe, sets=sets or [], seed=seed)  # fmt: skip
    err.print(f"wrote {len(paths)} overlay(s) of {dataset}/{split} to {out}", highlight=False,
              markup=False, soft_wrap=True)  # fmt: skip
    if as_json:
        print_json([str(p) for p in paths])


def _show_stats(dataset: str, *, out: str, split: str, recipe: Optional[str], sets: list[str],
                data_dir: Optional[str], as_json: bool) -> None:  # fmt: skip
    from rich.table import Table

    from mrcli.cli.display import RichReport
    from mrcli.data.show import stats_dataset

    with RichReport() as report:
        result = stats_dataset(dataset, data_dir=data_dir, split=split, out=out, recipe=recipe, sets=sets,
                               report=report)  # fmt: skip
    numbers = result.stats.to_json()
    if as_json:
        print_json({**numbers, "warnings": result.warnings, "plots": [str(p) for p in result.paths]})
    else:
        setting = ("recipe " + recipe if recipe else "the defaults") + (" with --set" if sets else "")
        table = Table(title=f"{dataset}/{split} for {setting}", show_header=False)
        table.add_column("")
        table.add_column("", justify="right")
        sizes, at_input, anchors = (numbers["object_size_px"], numbers["object_size_at_input_px"],
                                    numbers["anchors"])  # fmt: skip
        rows = {
            "images": numbers["images"],
            "instances (crowd regions)": f"{numbers['instances']} ({numbers['crowd']})",
            "images without instances": numbers["empty_images"],
            "instances per image, mean / max": f"{numbers['instances_per_image']['mean']:.1f} / "
                                               f"{numbers['instances_per_image']['max']}",
            "object size px, min / median / max": f"{sizes['min']:.0f} / {sizes['median']:.0f} / "
                                                  f"{sizes['max']:.0f}",
            "at the input size": f"{at_input['min']:.0f} / {at_input['median']:.0f} / {at_input['max']:.0f}",
            "anchors reach px": f"{anchors['reach_px'][0]:.1f} - {anchors['reach_px'][1]:.0f}",
            "objects below / above it": f"{anchors['objects_smaller']} / {anchors['objects_larger']}",
        }  # fmt: skip
        for key, value in rows.items():
            table.add_row(key, str(value))
        table.add_section()
        for name, count in numbers["per_class"].items():
            table.add_row(name, str(count))
        stdout.print(table)
    for line in result.warnings:
        err.print(f"warning: {line}", style="yellow", highlight=False, markup=False, soft_wrap=True)
    err.print(f"wrote {len(result.paths)} plot(s) of {dataset}/{split} to {out} "
              f"({', '.join(p.name for p in result.paths)}, each with its .json)",
              highlight=False, markup=False, soft_wrap=True)  # fmt: skip


def datasets(data_dir: DataDir = None, as_json: Json = False) -> None:
    """List the prepared datasets: name, classes, images and instances per split.

    Example: mrcli datasets --data-dir ~/mrcli_data
    """
    from rich.table import Table

    from mrcli.data.store import describe_datasets, resolve_data_dir

    rows = describe_datasets(data_dir)
    if as_json:
        print_json(rows)
        return
    if not rows:
        err.print(f"no prepared datasets in {resolve_data_dir(data_dir)}; prepare one with "
                  "`mrcli prepare shapes|coco|coco-json|cityscapes|yolo|labelme`",
                  highlight=False, markup=False, soft_wrap=True)  # fmt: skip
        return
    table = Table(title=f"datasets in {resolve_data_dir(data_dir)}")
    table.add_column("name", no_wrap=True)
    table.add_column("classes", justify="right")
    table.add_column("split", no_wrap=True)
    table.add_column("images", justify="right")
    table.add_column("instances", justify="right")
    for row in rows:
        for k, (split, n) in enumerate(row["splits"].items()):
            table.add_row(row["name"] if k == 0 else "", str(row["classes"]) if k == 0 else "",
                          split, f"{n['images']:,}", f"{n['instances']:,}")  # fmt: skip
        table.add_section()
    stdout.print(table)
