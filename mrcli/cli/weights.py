"""`mrcli weights import`: PyTorch checkpoints into mrcli checkpoint directories."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from mrcli.cli.display import err, print_json
from mrcli.cli.options import Json

weights_app = typer.Typer(
    help="Import pretrained PyTorch weights into an mrcli checkpoint directory.\n\n"
    "Examples:\n\n"
    "  mrcli weights import torchvision maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth --out coco_r50/\n\n"
    "  mrcli weights import torchvision resnet101-63fe2227.pth --out r101/\n\n"
    "  mrcli weights import detectron2 model_final_f10217.pkl --out d2_r50/",
    no_args_is_help=True,
)


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

    torchvision: maskrcnn_resnet50_fpn state dicts (the full COCO model, for --checkpoint DIR) or ResNet-50/101 ImageNet state dicts (backbone only, for `mrcli train --init-from DIR`).

    Detectron2: model-zoo R50/R101-FPN Mask R-CNN .pkl files (BGR pixel profile, aligned RoIAlign).

    The COCO category map travels with the checkpoint.

    Example: mrcli weights import torchvision maskrcnn_resnet50_fpn_coco.pth --out coco_r50/
    """
    from mrcli.weights import import_weights

    summary = import_weights(source.value, file, out)
    kind = "backbone (for --init-from)" if summary["partial"] else (
        f"{summary['num_classes']} classes, {'masks' if summary['masks'] else 'boxes only'}"
    )
    err.print(
        f"imported {summary['source']} R{summary['depth']}-FPN {kind}, "
        f"{summary['arrays'] / 1e6:.1f} M weights -> {summary['out']}",
        highlight=False, markup=False,
    )
    if as_json:
        print_json(summary)
