"""`mrcli predict`: images to instance masks, overlays and COCO results."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from mrcli.cli.display import RichReport, err, print_json
from mrcli.cli.options import Checkpoint, Distributed, InferenceSets, Json, Tile, TileOverlap, Weights, Workdir
from mrcli.config import DEFAULT_SCORE


def predict(
    input: Annotated[
        str,
        typer.Argument(help="An image, a folder (searched recursively) or a quoted glob "
                       "('photos/**/*.jpg'). JPEG, PNG, BMP, WebP, TIFF."),
    ],
    out: Annotated[str, typer.Option("--out", help="Output folder; mirrors the input tree.")],
    workdir: Workdir = None,
    checkpoint: Checkpoint = None,
    weights: Weights = None,
    score: Annotated[
        float, typer.Option("--score", help="Keep detections scoring above this.")
    ] = DEFAULT_SCORE,
    formats: Annotated[
        Optional[str],
        typer.Option("--format", help="Comma-separated: png (instance label maps), json (a side "
                     "file per image + the run's COCO results), overlay. Default: all."),
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Images per batch (rounded up to the devices).")
    ] = 8,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace outputs of an earlier run.")
    ] = False,
    tile: Tile = None,
    tile_overlap: TileOverlap = 128,
    sets: InferenceSets = None,
    distributed: Distributed = False,
    as_json: Json = False,
) -> None:
    """Segment images: instance label maps (PNG + JSON), overlays, COCO results.

    OUT/masks/ holds a label map per image (0 background, 1..n instances by
    score) and a JSON side file (class, score, box of each); OUT/overlays/
    the pictures; OUT/detections.json the COCO results (RLE) of all images,
    OUT/images.json their ids. Unreadable files are reported and skipped.

    Examples:

      mrcli predict photos/ --out pred/ --workdir runs/tiny

      mrcli predict 'photos/**/*.jpg' --out pred/ --workdir runs/r101 --score 0.7

      mrcli predict photo.png --out pred/ --workdir runs/r101 --format png,json

      mrcli predict slides/ --out pred/ --workdir runs/x --tile 1024
    """
    from mrcli.predict import run as predict_run

    with RichReport() as report:
        result = predict_run(input, out, workdir=workdir, checkpoint=checkpoint, score=score,
                             formats=formats, batch_size=batch_size, overwrite=overwrite,
                             weights=weights, sets=sets or [], report=report,
                             distributed=distributed, tile=tile,
                             tile_overlap=tile_overlap)  # fmt: skip
    skipped = f", skipped {len(result.skipped)} unreadable file(s)" if result.skipped else ""
    err.print(
        f"predicted {result.num_images} of {result.num_inputs} image(s){skipped}: "
        f"{result.num_instances} instance(s) in {result.seconds:.1f} s, "
        f"{result.images_per_s:.1f} images/s ({result.steady_images_per_s:.1f} after compiling)",
        highlight=False, soft_wrap=True,
    )
    err.print(f"wrote {result.out}" + (f" (COCO results: {result.results_path})"
                                        if result.results_path else ""),
              highlight=False, soft_wrap=True, markup=False)  # fmt: skip
    if as_json:
        print_json(result.to_json())
