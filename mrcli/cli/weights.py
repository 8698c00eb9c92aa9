"""`mrcli weights import`: PyTorch checkpoints into mrcli checkpoint directories."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from rich.markup import escape
from rich.table import Table

from mrcli.cli.display import RichReport, err, out, print_json
from mrcli.cli.options import Json

weights_app = typer.Typer(
    help="Pretrained weights: the catalogue by name (downloaded, verified and cached once), "
    "and PyTorch files imported into mrcli checkpoint directories.\n\n"
    "Examples:\n\n"
    "  mrcli weights list\n\n"
    "  mrcli weights get tv-maskrcnn-r50-fpn-coco\n\n"
    "  mrcli weights get d2-msra-r50-imagenet --file R-50.pkl\n\n"
    "  mrcli weights import torchvision maskrcnn_coco.pth --out coco_r50/",
    no_args_is_help=True,
)


@weights_app.command("list")
def weights_list(as_json: Json = False) -> None:
    """The weights mrcli knows by name: what, from where, size, published
    accuracy, licence, and whether they are cached here ($MRCLI_WEIGHTS).

    Example: mrcli weights list --json
    """
    from mrcli.weights import listing

    rows = listing()
    if as_json:
        print_json(rows)
        return
    table = Table(title="pretrained weights (mrcli weights list --json: URLs, checksums)")
    for name, justify in (("name / what", "left"), ("MB", "right"), ("published", "left"),
                          ("licence", "left"), ("cached", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        if r["coco_box_ap"] is not None:
            published = f"COCO box {r['coco_box_ap']}" + (
                f"\nmask {r['coco_mask_ap']}" if r["coco_mask_ap"] is not None else "") + (
                f"\nkeypoints {r['coco_keypoint_ap']}" if r.get("coco_keypoint_ap") is not None else "")
        else:
            published = f"ImageNet\ntop-1 {r['imagenet_top1']}"
        table.add_row(f"[bold]{r['name']}[/]\n[dim]{escape(r['what'])}[/]",
                      f"{r['size_mb']:.0f}" + ("" if r["size_exact"] else "~"), published,
                      r["licence"].split(" (")[0], "yes" if r["cached"] else "-", end_section=True)  # fmt: skip
    out.print(table)


@weights_app.command("get")
def weights_get(
    name: Annotated[str, typer.Argument(help="A name from `mrcli weights list`.")],
    file: Annotated[
        Optional[str],
        typer.Option("--file", help="The publisher's file, downloaded by hand (checked, then cached)."),
    ] = None,
    as_json: Json = False,
) -> None:
    """Download (or take from --file), verify, cache and import weights; prints
    the checkpoint directory, for --checkpoint, --weights or --init-from.

    Examples:

      mrcli weights get tv-maskrcnn-r50-fpn-coco

      mrcli weights get d2-maskrcnn-r50-fpn-3x-coco --file model_final_f10217.pkl
    """
    from mrcli.weights import fetch

    with RichReport() as report:
        path = fetch(name, file=file, report=report)
    if as_json:
        print_json({"name": name, "path": str(path)})
    else:
        print(path)


class WeightsSource(str, Enum):
    torchvision = "torchvision"
    detectron2 = "detectron2"


@weights_app.command("import")
def weights_import(
    source: Annotated[WeightsSource, typer.Argument(help="Where the file comes from.")],
    file: Annotated[str, typer.Argument(help="The .pth / .pkl checkpoint file.")],
    out: Annotated[str, typer.Option("--out", help="The mrcli checkpoint directory to write.")],
    as_json: Json = False,
) -> None:
    """Convert a torchvision or Detectron2 checkpoint (never running code from it).

    torchvision: maskrcnn_resnet50_fpn and keypointrcnn_resnet50_fpn state dicts (the full COCO model, for --checkpoint DIR) or ResNet-50/101 ImageNet state dicts (backbone only, for `mrcli train --init-from DIR`).

    Detectron2: model-zoo R50/R101-FPN Mask R-CNN and Keypoint R-CNN .pkl files (BGR pixel profile, aligned RoIAlign).

    The COCO category map travels with the checkpoint.

    Example:

      mrcli weights import torchvision maskrcnn_coco.pth --out coco_r50/
    """
    from mrcli.weights import import_weights

    summary = import_weights(source.value, file, out)
    heads = [h for h, on in (("masks", summary["masks"]), ("keypoints", summary.get("keypoints"))) if on]
    kind = "backbone (for --init-from)" if summary["partial"] else (
        f"{summary['num_classes']} classes, {' + '.join(heads) or 'boxes only'}"
    )
    err.print(
        f"imported {summary['source']} R{summary['depth']}-FPN {kind}, "
        f"{summary['arrays'] / 1e6:.1f} M weights -> {summary['out']}",
        highlight=False, markup=False,
    )
    if as_json:
        print_json(summary)
