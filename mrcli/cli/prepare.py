"""`mrcli prepare shapes|figures|coco-json|coco|cityscapes|yolo|labelme`: datasets in,
checked, written."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any, Iterator, Optional

import typer
from rich.markup import escape

from mrcli.cli.display import err, print_json
from mrcli.cli.options import Check, DataDir, Json, OnError, OnErrorOpt

DropEmpty = Annotated[
    bool, typer.Option("--drop-empty-categories", help="Leave out categories without any instance "
                       "(e.g. labelme2coco's _background_) instead of keeping them as classes.")
]
Overwrite = Annotated[
    bool, typer.Option("--overwrite", help="Replace an existing dataset of the same name.")
]
# The built-in synthetic datasets' options (shapes, figures).
NumTrain = Annotated[int, typer.Option("--num-train", help="Training images.")]
NumVal = Annotated[int, typer.Option("--num-val", help="Validation images.")]
Size = Annotated[int, typer.Option("--size", help="Long side of the images, pixels.")]
Seed = Annotated[int, typer.Option("--seed", help="Same seed, same dataset.")]
ValFraction = Annotated[
    Optional[float],
    typer.Option("--val-fraction", help="Hold out this fraction of the images as the val split "
                 "(by image, stratified by class, the same images every time), e.g. 0.1."),
]

prepare_app = typer.Typer(
    help="Turn annotated images into a dataset for training (TFDS ArrayRecord shards), "
    "after checking every image and annotation.\n\n"
    "Examples:\n\n"
    "  mrcli prepare shapes\n\n"
    "  mrcli prepare figures\n\n"
    "  mrcli prepare coco --manual-dir ~/datasets/coco\n\n"
    "  mrcli prepare coco --keypoints --manual-dir ~/datasets/coco\n\n"
    "  mrcli prepare coco-json --annotations train.json --images img/ --name parts\n\n"
    "  mrcli prepare cityscapes --manual-dir ~/datasets/cityscapes\n\n"
    "  mrcli prepare yolo --data data.yaml --name parts\n\n"
    "  mrcli prepare labelme --folder annotations/ --name parts --val-fraction 0.1",
    no_args_is_help=True,
)


@contextlib.contextmanager
def _progress_bars() -> Iterator[Any]:
    """A `progress(description, total) -> advance()` callable drawing rich bars on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=err, transient=True,
    ) as bars:

        def progress(description: str, total: int):
            task = bars.add_task(description, total=total)
            return lambda: bars.advance(task)

        yield progress


def _print_problems(report: Any) -> None:
    from mrcli.data.prepare import problem_lines, problems_table

    if not report.problems:
        return
    for line in problem_lines(report):
        err.print(line, highlight=False, markup=False, soft_wrap=True)
    err.print(problems_table(report))


def _run_prepare(fn: Any, as_json: bool, **kwargs: Any) -> None:
    """Run a prepare function with progress bars; print its problems, summary and result."""
    from mrcli.data.prepare import DataCheckError, summary_table

    try:
        with _progress_bars() as progress:
            result = fn(progress=progress, **kwargs)
    except DataCheckError as e:
        _print_problems(e.report)
        if as_json:
            print_json({"written": False, "error": str(e), "problems": e.report.to_json()})
        raise
    _print_problems(result.report)
    err.print(summary_table(result))
    skipped = result.record["skipped"]
    if skipped["images"] or skipped["annotations"]:
        err.print(
            f"skipped {skipped['images']} image(s) and {skipped['annotations']} annotation(s) "
            "with problems (--on-error skip)"
        )
    if result.written:
        err.print(f"wrote [bold]{escape(result.name)}[/] to {escape(str(result.path))}")
    else:
        err.print("checked only (--check): nothing written")
    if as_json:
        print_json(result.to_json())


@prepare_app.command("shapes")
def prepare_shapes(
    num_train: NumTrain = 2000,
    num_val: NumVal = 200,
    size: Size = 128,
    seed: Seed = 0,
    name: Annotated[str, typer.Option("--name", help="Dataset name.")] = "shapes",
    data_dir: DataDir = None,
    overwrite: Overwrite = False,
    as_json: Json = False,
) -> None:
    """The built-in synthetic dataset: 4 shape classes, deterministic per seed.

    Circles, squares, triangles and stars with random colours, sizes, overlaps
    and occlusion on textured backgrounds.

    Example: mrcli prepare shapes --num-train 500 --num-val 50 --seed 1
    """
    from mrcli.data import prepare

    _run_prepare(prepare.prepare_shapes, as_json, data_dir=data_dir, name=name,
                 num_train=num_train, num_val=num_val, size=size, seed=seed, overwrite=overwrite)  # fmt: skip


@prepare_app.command("figures")
def prepare_figures(
    num_train: NumTrain = 2000,
    num_val: NumVal = 200,
    size: Size = 128,
    seed: Seed = 0,
    name: Annotated[str, typer.Option("--name", help="Dataset name.")] = "figures",
    data_dir: DataDir = None,
    overwrite: Overwrite = False,
    as_json: Json = False,
) -> None:
    """The built-in synthetic keypoint dataset: stick figures with 7 named keypoints.

    Head, neck, hands, hip and feet (left and right as a person facing the
    camera), with masks, occlusion and COCO's visibility flags, on textured
    backgrounds; deterministic per seed. The tiny_keypoints recipe trains on it.

    Example: mrcli prepare figures --num-train 500 --num-val 50
    """
    from mrcli.data import prepare

    _run_prepare(prepare.prepare_figures, as_json, data_dir=data_dir, name=name,
                 num_train=num_train, num_val=num_val, size=size, seed=seed, overwrite=overwrite)  # fmt: skip


@prepare_app.command("coco-json")
def prepare_coco_json(
    annotations: Annotated[
        str, typer.Option("--annotations", help="COCO-format JSON of the training split.")
    ],
    images: Annotated[str, typer.Option("--images", help="Directory of the training images.")],
    name: Annotated[str, typer.Option("--name", help="Dataset name (lower case, digits, _).")],
    val_annotations: Annotated[
        Optional[str], typer.Option("--val-annotations", help="COCO-format JSON of the val split.")
    ] = None,
    val_images: Annotated[
        Optional[str],
        typer.Option("--val-images", help="Directory of the val images (default: --images)."),
    ] = None,
    val_fraction: ValFraction = None,
    data_dir: DataDir = None,
    check: Check = False,
    on_error: OnErrorOpt = OnError.fail,
    drop_empty_categories: DropEmpty = False,
    overwrite: Overwrite = False,
    as_json: Json = False,
) -> None:
    """Any dataset in COCO format, checked (see --check, --on-error).

    Polygons, RLE, uncompressed RLE, iscrowd, images without annotations and
    category ids that are not contiguous are all fine. Keypoints (COCO's
    person_keypoints format: a category's `keypoints` and `skeleton`, each
    annotation's x, y, v triplets) are read and checked too; a category may
    add `flip_pairs` and `keypoint_sigmas` (else taken from the names and the
    README's rule).

    Without --val-annotations, --val-fraction holds out a val split.

    Example:

      mrcli prepare coco-json --annotations train.json --images img/ --name parts
    --val-annotations val.json --on-error skip
    """
    from mrcli.data import prepare

    _run_prepare(prepare.prepare_coco_json, as_json, annotations=annotations, images=images,
                 name=name, val_annotations=val_annotations, val_images=val_images,
                 val_fraction=val_fraction, data_dir=data_dir, on_error=on_error.value,
                 check_only=check, overwrite=overwrite,
                 drop_empty_categories=drop_empty_categories)  # fmt: skip


@prepare_app.command("cityscapes")
def prepare_cityscapes(
    manual_dir: Annotated[
        str,
        typer.Option("--manual-dir", help="The folder holding the extracted leftImg8bit/ and "
                     "gtFine/ (Cityscapes needs a login to download, so mrcli never does)."),
    ],
    name: Annotated[str, typer.Option("--name", help="Dataset name.")] = "cityscapes",
    data_dir: DataDir = None,
    check: Check = False,
    on_error: OnErrorOpt = OnError.fail,
    overwrite: Overwrite = False,
    as_json: Json = False,
) -> None:
    """Cityscapes fine instances: 8 classes, train and val as published.

    Instances from gtFine/*/*/*_instanceIds.png; the groups of a class (ids
    below 1000) are crowd regions, ignored as the official evaluation does.
    `mrcli eval` prints the COCO AP, and the Cityscapes AP when
    cityscapesscripts is installed (pip install "mrcli[cityscapes]").

    Example: mrcli prepare cityscapes --manual-dir ~/datasets/cityscapes
    """
    from mrcli.data import prepare

    _run_prepare(prepare.prepare_cityscapes, as_json, manual_dir=manual_dir, name=name,
                 data_dir=data_dir, on_error=on_error.value, check_only=check, overwrite=overwrite)  # fmt: skip


@prepare_app.command("yolo")
def prepare_yolo(
    data: Annotated[str, typer.Option("--data", help="The dataset's data.yaml (Ultralytics).")],
    name: Annotated[str, typer.Option("--name", help="Dataset name (lower case, digits, _).")],
    val_fraction: ValFraction = None,
    data_dir: DataDir = None,
    check: Check = False,
    on_error: OnErrorOpt = OnError.fail,
    drop_empty_categories: DropEmpty = False,
    overwrite: Overwrite = False,
    as_json: Json = False,
) -> None:
    """A YOLO segmentation dataset (Ultralytics layout: data.yaml, images/, labels/).

    One .txt per image, a class id and a normalised polygon per line; names as
    a list or a mapping. Problems are named by label file and line. Without a
    val split in data.yaml, --val-fraction holds one out.

    Example:

      mrcli prepare yolo --data data.yaml --name parts --val-fraction 0.1
    """
    from mrcli.data import prepare

    _run_prepare(prepare.prepare_yolo, as_json, data=data, name=name, val_fraction=val_fraction,
                 data_dir=data_dir, on_error=on_error.value, check_only=check, overwrite=overwrite,
                 drop_empty_categories=drop_empty_categories)  # fmt: skip


@prepare_app.command("labelme")
def prepare_labelme(
    folder: Annotated[str, typer.Option("--folder", help="The folder of labelme .json files.")],
    name: Annotated[str, typer.Option("--name", help="Dataset name (lower case, digits, _).")],
    classes: Annotated[
        Optional[str],
        typer.Option("--classes", help="A file of class names, one a line, in id order "
                     "(default: the labels seen, sorted)."),
    ] = None,
    val_fraction: ValFraction = None,
    data_dir: DataDir = None,
    check: Check = False,
    on_error: OnErrorOpt = OnError.fail,
    drop_empty_categories: DropEmpty = False,
    overwrite: Overwrite = False,
    as_json: Json = False,
) -> None:
    """A folder of labelme JSON files (one per image; polygons, rectangles,
    circles, masks; group_id joins the parts of one instance).

    The image is imageData when the file embeds it, else imagePath relative to
    the JSON. Problems are named by file and shape, e.g. "a.json (shapes\\[2])".

    Example:

      mrcli prepare labelme --folder annotations/ --name parts --val-fraction 0.1
    """
    from mrcli.data import prepare

    _run_prepare(prepare.prepare_labelme, as_json, folder=folder, name=name, classes=classes,
                 val_fraction=val_fraction, data_dir=data_dir, on_error=on_error.value,
                 check_only=check, overwrite=overwrite,
                 drop_empty_categories=drop_empty_categories)  # fmt: skip


@prepare_app.command("coco")
def prepare_coco(
    year: Annotated[int, typer.Option("--year", help="2017 or 2014.")] = 2017,
    manual_dir: Annotated[
        Optional[str],
        typer.Option(
            "--manual-dir",
            help="An extracted COCO tree (annotations/instances_*.json or person_keypoints_*.json, "
            "trainYEAR/, valYEAR/); without it the archives are downloaded into DATA_DIR/downloads.",
        ),
    ] = None,
    keypoints: Annotated[
        bool,
        typer.Option("--keypoints", help="COCO's person keypoints (person_keypoints_*.json: 17 "
                     "keypoints per person) instead of the 80-class instances; dataset coco_person."),
    ] = False,
    name: Annotated[
        Optional[str], typer.Option("--name", help="Dataset name (default coco or coco_person, "
                                    "with the year if not 2017).")
    ] = None,
    data_dir: DataDir = None,
    check: Check = False,
    on_error: OnErrorOpt = OnError.fail,
    overwrite: Overwrite = False,
    as_json: Json = False,
) -> None:
    """COCO instances (train and val), or with --keypoints COCO's person keypoints,
    downloaded or from --manual-dir.

    Examples:

      mrcli prepare coco --manual-dir ~/datasets/coco --on-error skip

      mrcli prepare coco --keypoints --manual-dir ~/datasets/coco
    """
    from mrcli.data import prepare

    _run_prepare(prepare.prepare_coco, as_json, year=year, manual_dir=manual_dir, name=name,
                 data_dir=data_dir, on_error=on_error.value, check_only=check, overwrite=overwrite,
                 keypoints=keypoints)  # fmt: skip
