"""`mrcli export`: a serving artifact of a trained model, checked against the model."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from mrcli.cli.display import RichReport, err, print_json
from mrcli.cli.display import out as stdout
from mrcli.cli.options import Checkpoint, DataDir, InferenceSets, Json, Weights, Workdir


def _verify_table(report: Any) -> Table:
    def num(v: float, fmt: str) -> str:
        return "-" if v != v else format(v, fmt)

    table = Table(title=f"verify {report.artifact}: exported vs native")
    for name, justify in (("image", "left"), ("size", "right"), ("dets", "right"),
                          ("classes", "center"), ("box px", "right"), ("mask IoU", "right"),
                          ("keypoint px", "right"), ("score", "right"), ("", "center")):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for r in report.rows:
        table.add_row(r.name, f"{r.height}x{r.width}", f"{r.exported} / {r.native}",
                      "same" if r.same_classes else "[red]differ[/]", num(r.max_box_diff, ".3f"),
                      num(r.min_mask_iou, ".4f"), num(r.max_keypoint_diff, ".3f"),
                      num(r.max_score_diff, ".1e"),
                      "[green]ok[/]" if r.ok else "[bold red]FAIL[/]")  # fmt: skip
    table.caption = ("dets: exported / native; box px: largest coordinate difference "
                     "(original pixels); mask IoU: smallest (pasted masks); keypoint px: largest "
                     "keypoint coordinate difference; score: largest difference")
    return table


def export(
    out: Annotated[str, typer.Option("--out", help="Directory to write the exported model to.")],
    workdir: Workdir = None,
    checkpoint: Checkpoint = None,
    weights: Weights = None,
    format: Annotated[
        str, typer.Option("--format", help="stablehlo (jax.export; needs only jax) or savedmodel "
                          "(TensorFlow, via jax2tf; pip install 'mrcli\\[tf]').")
    ] = "stablehlo",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per call.")] = 1,
    image_size: Annotated[
        Optional[str],
        typer.Option("--image-size", help="HxW padded model input (the bucket), multiples of "
                     "data.size_divisor; default: the config's first bucket."),
    ] = None,
    max_input_size: Annotated[
        Optional[str],
        typer.Option("--max-input-size", help="HxW of the largest raw image the artifact "
                     "takes as it is (mrcli.serving shrinks larger ones); default: the largest "
                     "image of the model's dataset."),
    ] = None,
    platforms: Annotated[
        str, typer.Option("--platforms", help="Comma-separated: cpu, cuda, rocm, tpu.")
    ] = "cpu,cuda",
    verify: Annotated[
        bool,
        typer.Option("--verify", help="Run the artifact and the native model and fail (exit 1) "
                     "unless they agree; on the model dataset's eval split unless --verify-images."),
    ] = False,
    verify_images: Annotated[
        Optional[str],
        typer.Option("--verify-images", metavar="IMAGES",
                     help="Verify on these images (a folder, file or quoted glob); implies --verify."),
    ] = None,
    verify_only: Annotated[
        bool, typer.Option("--verify-only", help="Verify the export already at --out against the "
                           "model; write nothing.")
    ] = False,
    max_images: Annotated[
        int, typer.Option("--max-images", help="Verify on at most this many images (0 = all).")
    ] = 8,
    sets: InferenceSets = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier export at --out.")
    ] = False,
    data_dir: DataDir = None,
    as_json: Json = False,
) -> None:
    """Export a trained model as a serving artifact: preprocessing, model and
    post-processing in one function, raw uint8 images in, detections in
    original pixels out (see README, Export).

    Examples:

      mrcli export --workdir runs/tiny --out exported/ --verify

      mrcli export --checkpoint coco_r50/ --out exported/ --image-size 800x1344

      mrcli export --workdir runs/tiny --out tf/ --format savedmodel

      mrcli export --workdir runs/tiny --out exported/ --verify-images photos/
    """
    from mrcli.export import run as export_run

    with RichReport() as report:
        result = export_run(out, workdir=workdir, checkpoint=checkpoint, format=format,
                            batch_size=batch_size, image_size=image_size,
                            max_input_size=max_input_size, platforms=platforms,
                            verify_source=verify_images, do_verify=verify,
                            verify_only=verify_only, max_verify_images=max_images,
                            data_dir=data_dir, weights=weights, sets=sets or [],
                            overwrite=overwrite, report=report)  # fmt: skip
    data: dict[str, Any] = {}
    if result.export is not None:
        rec = result.export.record
        err.print(f"exported {rec['artifact']} to {result.export.path}: batch {rec['batch_size']}, "
                  f"images up to {rec['max_input_size'][0]}x{rec['max_input_size'][1]}, model input "
                  f"{rec['bucket'][0]}x{rec['bucket'][1]}, platforms {','.join(rec['platforms'])}",
                  highlight=False, soft_wrap=True, markup=False)  # fmt: skip
        data.update({"out": str(result.export.path), "record": rec,
                     "seconds": round(result.export.seconds, 2)})  # fmt: skip
    if result.verify is not None:
        (err if as_json else stdout).print(_verify_table(result.verify))
        data["verify"] = result.verify.to_json()
    if as_json:
        print_json(data)
    if result.verify is not None and not result.verify.ok:
        bad = sum(not r.ok for r in result.verify.rows)
        err.print(f"[bold red]verify failed:[/] the exported model disagrees with the native model "
                  f"on {bad} of {len(result.verify.rows)} image(s) (boxes within 0.5 px, mask IoU "
                  "> 0.99, keypoints within 1 px, same classes)", highlight=False, soft_wrap=True)  # fmt: skip
        raise typer.Exit(1)
