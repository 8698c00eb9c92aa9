"""Options that several commands share, declared once (typer Annotated types)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
Distributed = Annotated[
    bool, typer.Option("--distributed", help="Join a multi-host run (jax.distributed); automatic "
                       "on SLURM, TPU pods, under `mrcli launch` and where JAX_COORDINATOR_ADDRESS "
                       "is set.")
]
DataDir = Annotated[
    Optional[str],
    typer.Option(
        "--data-dir",
        help="Directory of prepared datasets (default: $MRCLI_DATA, else ~/mrcli_data).",
    ),
]
Sets = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a config field: --set section.field=value (repeatable)."),
]
# eval, predict, export: only how the trained model runs (mrcli.runs.with_sets).
InferenceSets = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Change how the model runs: data.*, eval.*, model.inference.* "
                 "(thresholds, detections per image), model.rpn.*_nms_topk.test (repeatable)."),
]
# Which trained model a command uses (eval, predict, export; mrcli.runs.load_trained).
Workdir = Annotated[Optional[str], typer.Option("--workdir", help="A training run's directory.")]
Weights = Annotated[
    Optional[str],
    typer.Option("--weights", help="Pretrained weights instead of --workdir: a name from "
                 "`mrcli weights list` (downloaded once), a .pth/.pkl file or a checkpoint directory."),
]
Checkpoint = Annotated[
    Optional[str],
    typer.Option("--checkpoint", help="best | last | STEP of --workdir, or a checkpoint "
                 "directory (`mrcli weights import`)."),
]


class OnError(str, Enum):
    fail = "fail"
    skip = "skip"


OnErrorOpt = Annotated[
    OnError,
    typer.Option(
        "--on-error",
        help="fail: refuse and write nothing if any item is bad (exit 2); "
        "skip: leave out the bad items and say how many.",
    ),
]
Check = Annotated[bool, typer.Option("--check", help="Only check the data and report; write nothing.")]
Tile = Annotated[
    Optional[int],
    typer.Option("--tile", help="Predict every image in overlapping tiles of this side (pixels) at its own "
                 "scale, merged (mrcli.tiling; rounded up to data.size_divisor)."),
]
TileOverlap = Annotated[
    int, typer.Option("--tile-overlap", help="Pixels shared by neighbouring tiles (with --tile).")
]
