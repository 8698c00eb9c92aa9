"""The mrcli command line: each command parses, calls one library function, prints.

Conventions (DESIGN.md §7): tables and progress go to stderr with rich;
machine-readable results go to stdout (`--json`); a user's mistake
(`mrcli.errors.UserError`) prints one line and exits 2; any other failure
prints one line and exits 1; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import json
import sys
from enum import Enum
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from mrcli import __version__
from mrcli import config as config_lib
from mrcli.errors import UserError

err = Console(stderr=True)
_state = {"debug": False}


class _App(typer.Typer):
    """A Typer app that turns exceptions into one line and an exit code."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except UserError as e:
            if _state["debug"]:
                raise
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            sys.exit(2)
        except Exception as e:  # noqa: BLE001 - the last line of defence
            if _state["debug"]:
                raise
            err.print(
                f"[bold red]failed:[/] {type(e).__name__}: {e} (run with --debug for the traceback)",
                highlight=False,
                soft_wrap=True,
            )
            sys.exit(1)


app = _App(
    name="mrcli",
    help=(
        "Mask R-CNN on JAX/Flax: from annotated images to a trained, evaluated and "
        "exported instance-segmentation model.\n\n"
        "Examples:\n\n"
        "  mrcli info\n\n"
        "  mrcli recipes\n\n"
        "  mrcli recipes show tiny --set train.steps=500 --json"
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        print(f"mrcli {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")
    ] = False,
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = None,
) -> None:
    _state["debug"] = debug


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


# --- info ---------------------------------------------------------------------------


@app.command()
def info(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Versions, the JAX backend and its devices, and whether bfloat16 is fast there.

    Example: mrcli info --json
    """
    from mrcli.system import system_info

    data = system_info()
    if as_json:
        _print_json(data)
        return
    table = Table(title="mrcli info", show_header=False)
    for key, value in data.items():
        if key == "devices":
            value = ", ".join(f"{d['kind']} ({d['platform']}) x{d['count']}" for d in value)
        table.add_row(key, str(value))
    err.print(table)


# --- recipes ------------------------------------------------------------------------

recipes_app = typer.Typer(
    help="List the built-in recipes, or show one fully resolved.\n\n"
    "Examples:\n\n  mrcli recipes\n\n  mrcli recipes show r101_fpn --json",
    invoke_without_command=True,
    no_args_is_help=False,
)
app.add_typer(recipes_app, name="recipes")


def _recipe_row(recipe: config_lib.Recipe) -> dict[str, Any]:
    cfg = recipe.config
    return {
        "name": recipe.name,
        "description": recipe.summary,
        "backbone": f"R{cfg.model.depth}-FPN" + (f" (width {cfg.model.width})" if cfg.model.width != 64 else ""),
        "image_size": f"{cfg.data.image_size}/{cfg.data.max_size}",
        "schedule": f"{cfg.train.steps} steps @ batch {cfg.train.global_batch}",
        "dataset": cfg.data.dataset,
    }


@recipes_app.callback()
def recipes_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """List the recipes: name, description, backbone, image size, schedule."""
    if ctx.invoked_subcommand is not None:
        return
    rows = [_recipe_row(config_lib.load_recipe(n)) for n in config_lib.recipe_names()]
    if as_json:
        _print_json(rows)
        return
    table = Table(title="recipes")
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*row.values())
    err.print(table)


@recipes_app.command("show")
def recipes_show(
    name: Annotated[str, typer.Argument(help="Recipe name (see `mrcli recipes`).")],
    sets: Annotated[
        Optional[list[str]],
        typer.Option("--set", help="Override a field: --set section.field=value (repeatable)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Show a recipe's fully resolved config (defaults + recipe + --set).

    Example: mrcli recipes show tiny --set model.dtype=bfloat16 --json
    """
    cfg = config_lib.resolve(name, sets or [])
    data = config_lib.to_dict(cfg)
    if as_json:
        _print_json(data)
        return
    changed = config_lib.diff(cfg)
    tree = Tree(f"[bold]{name}[/] (fields changed from the defaults in bold)")
    for section, values in data.items():
        branch = tree.add(f"[cyan]{section}[/]")
        for key, value in values.items():
            label = f"{key} = {value}"
            branch.add(f"[bold yellow]{label}[/]" if f"{section}.{key}" in changed else label)
    err.print(tree)


# --- data: prepare, show -------------------------------------------------------------

_DataDir = Annotated[
    Optional[str],
    typer.Option(
        "--data-dir",
        help="Directory of prepared datasets (default: $MRCLI_DATA, else ~/mrcli_data).",
    ),
]
_Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]


class _OnError(str, Enum):
    fail = "fail"
    skip = "skip"


_OnErrorOpt = Annotated[
    _OnError,
    typer.Option(
        "--on-error",
        help="fail: refuse and write nothing if any item is bad (exit 2); "
        "skip: leave out the bad items and say how many.",
    ),
]
_Check = Annotated[
    bool, typer.Option("--check", help="Only check the data and report; write nothing.")
]
_Overwrite = Annotated[
    bool, typer.Option("--overwrite", help="Replace an existing dataset of the same name.")
]

prepare_app = typer.Typer(
    help="Turn annotated images into a dataset for training (TFDS ArrayRecord shards), "
    "after checking every image and annotation.\n\n"
    "Examples:\n\n"
    "  mrcli prepare shapes\n\n"
    "  mrcli prepare coco --manual-dir ~/datasets/coco\n\n"
    "  mrcli prepare coco-json --annotations train.json --images imgs/ --name parts "
    "--val-annotations val.json",
    no_args_is_help=True,
)
app.add_typer(prepare_app, name="prepare")


@contextlib.contextmanager
def _progress_bars():
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
    from mrcli.data.prepare import DataCheckError, summary_table

    try:
        with _progress_bars() as progress:
            result = fn(progress=progress, **kwargs)
    except DataCheckError as e:
        _print_problems(e.report)
        if as_json:
            _print_json({"written": False, "error": str(e), "problems": e.report.to_json()})
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
        err.print(f"wrote [bold]{result.name}[/] to {result.path}")
    else:
        err.print("checked only (--check): nothing written")
    if as_json:
        _print_json(result.to_json())


@prepare_app.command("shapes")
def prepare_shapes_cmd(
    num_train: Annotated[int, typer.Option("--num-train", help="Training images.")] = 2000,
    num_val: Annotated[int, typer.Option("--num-val", help="Validation images.")] = 200,
    size: Annotated[int, typer.Option("--size", help="Long side of the images, pixels.")] = 128,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same dataset.")] = 0,
    name: Annotated[str, typer.Option("--name", help="Dataset name.")] = "shapes",
    data_dir: _DataDir = None,
    overwrite: _Overwrite = False,
    as_json: _Json = False,
) -> None:
    """The built-in synthetic dataset: 4 shape classes, deterministic per seed.

    Circles, squares, triangles and stars with random colours, sizes, overlaps
    and occlusion on textured backgrounds.

    Example: mrcli prepare shapes --num-train 500 --num-val 50 --seed 1
    """
    from mrcli.data.prepare import prepare_shapes

    _run_prepare(prepare_shapes, as_json, data_dir=data_dir, name=name, num_train=num_train,
                 num_val=num_val, size=size, seed=seed, overwrite=overwrite)


@prepare_app.command("coco-json")
def prepare_coco_json_cmd(
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
    data_dir: _DataDir = None,
    check: _Check = False,
    on_error: _OnErrorOpt = _OnError.fail,
    overwrite: _Overwrite = False,
    as_json: _Json = False,
) -> None:
    """Any dataset in COCO format, checked (see --check, --on-error).

    Polygons, RLE, uncompressed RLE, iscrowd, images without annotations and
    category ids that are not contiguous are all fine.

    Example: mrcli prepare coco-json --annotations train.json --images imgs/ --name parts
    --val-annotations val.json --on-error skip
    """
    from mrcli.data.prepare import prepare_coco_json

    _run_prepare(prepare_coco_json, as_json, annotations=annotations, images=images, name=name,
                 val_annotations=val_annotations, val_images=val_images, data_dir=data_dir,
                 on_error=on_error.value, check_only=check, overwrite=overwrite)


@prepare_app.command("coco")
def prepare_coco_cmd(
    year: Annotated[int, typer.Option("--year", help="2017 or 2014.")] = 2017,
    manual_dir: Annotated[
        Optional[str],
        typer.Option(
            "--manual-dir",
            help="An extracted COCO tree (annotations/instances_*.json, trainYEAR/, valYEAR/); "
            "without it the archives are downloaded into DATA_DIR/downloads.",
        ),
    ] = None,
    name: Annotated[
        Optional[str], typer.Option("--name", help="Dataset name (default coco, or cocoYEAR).")
    ] = None,
    data_dir: _DataDir = None,
    check: _Check = False,
    on_error: _OnErrorOpt = _OnError.fail,
    overwrite: _Overwrite = False,
    as_json: _Json = False,
) -> None:
    """COCO instances (train and val), downloaded or from --manual-dir.

    Example: mrcli prepare coco --manual-dir ~/datasets/coco --on-error skip
    """
    from mrcli.data.prepare import prepare_coco

    _run_prepare(prepare_coco, as_json, year=year, manual_dir=manual_dir, name=name,
                 data_dir=data_dir, on_error=on_error.value, check_only=check, overwrite=overwrite)


@app.command()
def show(
    dataset: Annotated[str, typer.Argument(help="A prepared dataset's name.")],
    out: Annotated[str, typer.Option("--out", help="Directory for the overlay PNGs.")],
    split: Annotated[str, typer.Option("--split", help="Split to show.")] = "train",
    num: Annotated[int, typer.Option("--num", help="How many images.")] = 8,
    augmented: Annotated[
        bool,
        typer.Option("--augmented", help="Show what the training pipeline feeds the model."),
    ] = False,
    recipe: Annotated[
        Optional[str],
        typer.Option("--recipe", help="Recipe whose input sizes --augmented uses."),
    ] = None,
    sets: Annotated[
        Optional[list[str]],
        typer.Option("--set", help="Override a config field (repeatable), e.g. data.hflip_prob=1."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Augmentation seed.")] = 0,
    data_dir: _DataDir = None,
    as_json: _Json = False,
) -> None:
    """Write overlay PNGs of a prepared dataset (masks, boxes, class names).

    Raw as prepared, or --augmented as the training pipeline feeds the model:
    look at the data before training on it.

    Example: mrcli show shapes --split val --out overlays/ --num 4 --augmented --recipe tiny
    """
    from mrcli.data.show import show as show_fn
    from mrcli.data.store import find_dataset

    ds = find_dataset(dataset, data_dir)
    cfg = config_lib.resolve(recipe, sets or []) if (recipe or sets) else None
    paths = show_fn(ds, split=split, out=out, num=num, augmented=augmented, cfg=cfg, seed=seed)
    err.print(f"wrote {len(paths)} overlay(s) of {dataset}/{split} to {out}")
    if as_json:
        _print_json([str(p) for p in paths])


# --- train ---------------------------------------------------------------------------


_Sets = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a config field: --set section.field=value (repeatable)."),
]
# Which trained model a command uses (eval, predict, export; mrcli.train.load_trained).
_ModelWorkdir = Annotated[
    Optional[str], typer.Option("--workdir", help="A training run's directory.")
]
_ModelCheckpoint = Annotated[
    Optional[str],
    typer.Option("--checkpoint", help="best | last | STEP of --workdir, or a checkpoint "
                 "directory (`mrcli weights import`)."),
]


def _enable_compilation_cache() -> None:
    """Reuse compiled programs across runs (a resumed run, eval after train):
    JAX's persistent cache in $JAX_COMPILATION_CACHE_DIR, else ~/.cache/mrcli/jax."""
    import os

    import jax

    path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.expanduser("~/.cache/mrcli/jax")
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _step_bar(label: str, transient: bool = False):
    """A rich progress bar on stderr: label, bar, done/total, an `info` field, elapsed, ETA."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)  # fmt: skip

    return Progress(
        TextColumn(f"[bold]{label}[/]"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
        TimeRemainingColumn(), console=err, transient=transient,
    )  # fmt: skip


class _TrainProgress:
    """The train loop's reports as a rich progress bar and log lines on stderr."""

    def __init__(self):
        self.bar = _step_bar("train")
        self.task = None

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "start":
            self.bar.start()
            self.task = self.bar.add_task("train", total=data["steps"], completed=data["step"],
                                          info="compiling...")  # fmt: skip
            self.bar.console.print(
                f"training on {data['devices']} device(s), {data['processes']} process(es)"
                + (f", resumed at step {data['step']}" if data["resumed"] else "")
            )
        elif kind == "step" and self.task is not None:
            losses = " ".join(
                f"{k.removeprefix('loss_')}={v:.3f}" for k, v in data.items()
                if k.startswith("loss_")
            )  # fmt: skip
            info = (f"loss={data['loss']:.3f} ({losses}) lr={data['lr']:.2e} "
                    f"{data['images_per_s']:.1f} img/s")  # fmt: skip
            self.bar.update(self.task, completed=data["step"], info=info)
        elif kind == "eval":
            self.bar.console.print(
                f"step {data['step']}: box AP {data.get('bbox_AP', float('nan')):.3f}, "
                f"mask AP {data.get('segm_AP', float('nan')):.3f}"
            )
        elif kind == "checkpoint":
            self.bar.console.print(f"checkpoint at step {data['step']}", style="dim")
        elif kind == "message":
            self.bar.console.print(data["text"])

    def stop(self) -> None:
        self.bar.stop()


@app.command()
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
    sets: _Sets = None,
    init_from: Annotated[
        Optional[str],
        typer.Option("--init-from", help="Start from these weights: a `mrcli weights import` "
                     "directory (a backbone or a full model) or another run's workdir (its best "
                     "checkpoint). Arrays of another shape (another class count) are skipped."),
    ] = None,
    distributed: Annotated[
        bool, typer.Option("--distributed", help="Join a multi-host run (jax.distributed); "
                           "automatic on SLURM and TPU pods.")
    ] = False,
    data_dir: _DataDir = None,
    as_json: _Json = False,
) -> None:
    """Train Mask R-CNN on a prepared dataset, on all devices; resume where it stopped.

    Running the same command on an existing workdir resumes it exactly.
    SIGTERM / Ctrl-C finish the step, save a checkpoint and exit 0.

    Examples:

      mrcli train --recipe tiny --data shapes --workdir runs/tiny

      mrcli train --recipe r101_fpn --data coco --workdir runs/r101 --set train.global_batch=32
    """
    import json as json_lib
    from pathlib import Path

    from mrcli import train as train_lib

    train_lib.maybe_initialize_distributed(distributed)
    _enable_compilation_cache()
    run_json = Path(workdir).expanduser() / train_lib.RUN_RECORD
    if recipe is None and run_json.is_file():
        cfg = config_lib.from_dict(json_lib.loads(run_json.read_text())["config"])
        cfg = config_lib.override(cfg, config_lib.parse_sets(sets or []))
    else:
        cfg = config_lib.resolve(recipe, sets or [])
    if data:
        cfg = config_lib.override(cfg, {"data.dataset": data})
    progress = _TrainProgress()
    try:
        result = train_lib.train(cfg, workdir, data_dir=data_dir, init_from=init_from,
                                 report=progress)  # fmt: skip
    finally:
        progress.stop()
    err.print(f"{result.reason}: step {result.step}, last checkpoint "
              f"{result.last_checkpoint}, workdir {workdir}")  # fmt: skip
    if as_json:
        _print_json({"step": result.step, "reason": result.reason,
                     "last_checkpoint": result.last_checkpoint,
                     "metrics": result.metrics, "eval": result.eval})  # fmt: skip


# --- eval ----------------------------------------------------------------------------


@app.command("eval")
def eval_cmd(
    workdir: _ModelWorkdir = None,
    checkpoint: _ModelCheckpoint = None,
    data: Annotated[
        Optional[str], typer.Option("--data", help="Dataset (default: the model's own).")
    ] = None,
    split: Annotated[
        Optional[str], typer.Option("--split", help="Split (default: data.eval_split).")
    ] = None,
    out: Annotated[
        Optional[str],
        typer.Option("--out", help="Where to write detections.json, bbox.json, segm.json "
                     "(default: WORKDIR/eval, else ./eval)."),
    ] = None,
    max_images: Annotated[
        Optional[int], typer.Option("--max-images", help="Evaluate the first N images only.")
    ] = None,
    sets: _Sets = None,
    data_dir: _DataDir = None,
    as_json: _Json = False,
) -> None:
    """COCO box and mask AP of a trained model on a dataset split (pycocotools).

    Examples:

      mrcli eval --workdir runs/tiny

      mrcli eval --workdir runs/r101 --checkpoint last --split val --json

      mrcli eval --checkpoint imported/ --data coco
    """
    from mrcli.evaluate import run_eval

    _enable_compilation_cache()
    result = run_eval(workdir=workdir, checkpoint=checkpoint, data=data, split=split, out=out,
                      max_images=max_images, sets=sets or [], data_dir=data_dir)  # fmt: skip
    _print_eval(result)
    if as_json:
        _print_json({"num_images": result.num_images, "results": str(result.results_path),
                     **result.summary()})  # fmt: skip


def _print_eval(result: Any) -> None:
    from mrcli.evaluate import STAT_NAMES

    kinds = [r for r in (result.bbox, result.segm) if r is not None]
    table = Table(title=f"COCO eval, {result.num_images} images")
    table.add_column("")
    for r in kinds:
        table.add_column(r.iou_type, justify="right")
    for name in STAT_NAMES:
        # COCOeval reports -1 where the split has no ground truth of that size.
        table.add_row(name, *(f"{r.stats[name]:.3f}" if r.stats[name] >= 0 else "-" for r in kinds))
    err.print(table)
    classes = Table(title="AP per class")
    classes.add_column("category")
    for r in (result.bbox, result.segm):
        if r is not None:
            classes.add_column(r.iou_type, justify="right")
    names = result.category_names
    for cat_id in result.bbox.per_class_ap:
        row = [f"{names.get(cat_id, cat_id)} ({cat_id})"]
        for r in (result.bbox, result.segm):
            if r is not None:
                row.append(f"{r.per_class_ap[cat_id]:.3f}")
        classes.add_row(*row)
    err.print(classes)
    err.print(f"results: {result.results_path}")


# --- predict -------------------------------------------------------------------------


class _PredictProgress:
    """predict's reports as a rich progress bar (stderr), skipped files as lines above it."""

    def __init__(self):
        self.bar = _step_bar("predict", transient=True)
        self.task = None

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "start":
            self.bar.start()
            self.task = self.bar.add_task("predict", total=data["total"], info="compiling...")
        elif kind == "progress" and self.task is not None:
            self.bar.update(self.task, completed=data["done"], info="")
        elif kind == "compiled":
            h, w = data["bucket"]
            self.bar.console.print(f"compiled bucket {h}x{w} in {data['seconds']:.1f} s", style="dim")
        elif kind == "skipped":
            self.bar.console.print(f"[yellow]skipped[/] {data['path']}: {data['reason']}",
                                   highlight=False, soft_wrap=True)  # fmt: skip

    def stop(self) -> None:
        self.bar.stop()


@app.command()
def predict(
    input: Annotated[
        str,
        typer.Argument(help="An image, a folder (searched recursively) or a quoted glob "
                       "('photos/**/*.jpg'). JPEG, PNG, BMP, WebP."),
    ],
    out: Annotated[str, typer.Option("--out", help="Output folder; mirrors the input tree.")],
    workdir: _ModelWorkdir = None,
    checkpoint: _ModelCheckpoint = None,
    score: Annotated[
        float, typer.Option("--score", help="Keep detections scoring above this.")
    ] = 0.5,
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
    as_json: _Json = False,
) -> None:
    """Segment images: instance label maps (PNG + JSON), overlays, COCO results.

    OUT/masks/ holds a label map per image (0 background, 1..n instances by
    score) and a JSON side file (class, score, box of each); OUT/overlays/
    the pictures; OUT/detections.json the COCO results (RLE) of all images,
    OUT/images.json their ids. Unreadable files are reported and skipped.

    Examples:

      mrcli predict photos/ --out pred/ --workdir runs/tiny

      mrcli predict 'photos/**/*.jpg' --out pred/ --checkpoint imported/ --score 0.7

      mrcli predict photo.png --out pred/ --workdir runs/r101 --format png,json --json
    """
    from mrcli.predict import run as predict_run

    _enable_compilation_cache()
    progress = _PredictProgress()
    try:
        result = predict_run(input, out, workdir=workdir, checkpoint=checkpoint, score=score,
                             formats=formats, batch_size=batch_size, overwrite=overwrite,
                             report=progress)  # fmt: skip
    finally:
        progress.stop()
    skipped = f", skipped {len(result.skipped)} unreadable file(s)" if result.skipped else ""
    err.print(
        f"predicted {result.num_images} of {result.num_inputs} image(s){skipped}: "
        f"{result.num_instances} instance(s) in {result.seconds:.1f} s, "
        f"{result.images_per_s:.1f} images/s ({result.steady_images_per_s:.1f} after compiling)",
        highlight=False, soft_wrap=True,
    )
    err.print(f"wrote {result.out}" + (f" (COCO results: {result.results_path})"
                                        if result.results_path else ""),
              highlight=False, soft_wrap=True)  # fmt: skip
    if as_json:
        _print_json(result.to_json())


# --- quickstart ----------------------------------------------------------------------


@app.command()
def quickstart(
    workdir: Annotated[
        str, typer.Option("--workdir", help="Run directory for the tiny model.")
    ] = "runs/quickstart",
    sets: _Sets = None,
    data_dir: _DataDir = None,
    as_json: _Json = False,
) -> None:
    """The whole workflow on the built-in data, on this CPU, in minutes.

    Prepares the synthetic shapes dataset, trains the `tiny` recipe, evaluates
    it (COCO box and mask AP) and writes prediction overlays for a few images.
    Run it again to reuse the data and the trained model.

    Example: mrcli quickstart --workdir runs/quickstart
    """
    from mrcli.quickstart import run as quickstart_run

    _enable_compilation_cache()
    progress = _TrainProgress()

    def report(kind: str, data: dict[str, Any]) -> None:
        if kind == "stage":
            progress.bar.console.print(f"[bold cyan]== {data['name']}[/]")
        else:
            progress(kind, data)

    try:
        result = quickstart_run(workdir, data_dir=data_dir, sets=sets or [], report=report)
    finally:
        progress.stop()
    err.print(
        f"mask AP {result.eval['segm_AP']:.3f}, box AP {result.eval['bbox_AP']:.3f} on the shapes "
        f"val split ({', '.join(f'{k} {v:.0f} s' for k, v in result.seconds.items())})",
        highlight=False,
    )
    err.print(f"overlays: {result.overlays}", highlight=False, soft_wrap=True)
    if as_json:
        _print_json({"workdir": str(result.workdir), "overlays": str(result.overlays),
                     "seconds": result.seconds, **result.eval})  # fmt: skip


# --- weights -------------------------------------------------------------------------

weights_app = typer.Typer(
    help="Import pretrained PyTorch weights into an mrcli checkpoint directory.\n\n"
    "Examples:\n\n"
    "  mrcli weights import torchvision maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth --out coco_r50/\n\n"
    "  mrcli weights import torchvision resnet101-63fe2227.pth --out r101/\n\n"
    "  mrcli weights import detectron2 model_final_f10217.pkl --out d2_r50/",
    no_args_is_help=True,
)
app.add_typer(weights_app, name="weights")


class WeightsSource(str, Enum):
    torchvision = "torchvision"
    detectron2 = "detectron2"


@weights_app.command("import")
def weights_import(
    source: Annotated[WeightsSource, typer.Argument(help="Where the file comes from.")],
    file: Annotated[str, typer.Argument(help="The .pth / .pkl checkpoint file.")],
    out: Annotated[str, typer.Option("--out", help="The mrcli checkpoint directory to write.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
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
        highlight=False,
    )
    if as_json:
        _print_json(summary)


# --- export --------------------------------------------------------------------------


def _print_verify(report: Any) -> None:
    def num(v: float, fmt: str) -> str:
        return "-" if v != v else format(v, fmt)

    table = Table(title=f"verify {report.artifact}: exported vs native")
    for name, justify in (("image", "left"), ("size", "right"), ("dets", "right"),
                          ("classes", "center"), ("box px", "right"), ("mask IoU", "right"),
                          ("score", "right"), ("", "center")):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for r in report.rows:
        table.add_row(r.name, f"{r.height}x{r.width}", f"{r.exported} / {r.native}",
                      "same" if r.same_classes else "[red]differ[/]", num(r.max_box_diff, ".3f"),
                      num(r.min_mask_iou, ".4f"), num(r.max_score_diff, ".1e"),
                      "[green]ok[/]" if r.ok else "[bold red]FAIL[/]")  # fmt: skip
    table.caption = ("dets: exported / native; box px: largest coordinate difference "
                     "(original pixels); mask IoU: smallest (pasted masks); score: largest difference")
    err.print(table)


@app.command("export")
def export_cmd(
    out: Annotated[str, typer.Option("--out", help="Directory to write the exported model to.")],
    workdir: _ModelWorkdir = None,
    checkpoint: _ModelCheckpoint = None,
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
                     "takes; default: --image-size."),
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
    data_dir: _DataDir = None,
    as_json: _Json = False,
) -> None:
    """Export a trained model as a serving artifact: preprocessing, model and
    post-processing in one function, raw uint8 images in, detections in
    original pixels out (see README, Export).

    Examples:

      mrcli export --workdir runs/tiny --out exported/ --verify

      mrcli export --checkpoint coco_r50/ --out exported/ --image-size 800x1344 --verify-images photos/

      mrcli export --workdir runs/tiny --out exported_tf/ --format savedmodel --platforms cpu

      mrcli export --workdir runs/tiny --out exported/ --verify-only --verify-images photos/
    """
    from mrcli.export import run as export_run

    _enable_compilation_cache()
    result = export_run(out, workdir=workdir, checkpoint=checkpoint, format=format,
                        batch_size=batch_size, image_size=image_size,
                        max_input_size=max_input_size, platforms=platforms,
                        verify_source=verify_images, do_verify=verify,
                        verify_only=verify_only, max_verify_images=max_images,
                        data_dir=data_dir, report=lambda text: err.print(text, style="dim"))  # fmt: skip
    data: dict[str, Any] = {}
    if result.export is not None:
        rec = result.export.record
        err.print(f"exported {rec['artifact']} to {result.export.path}: batch {rec['batch_size']}, "
                  f"images up to {rec['max_input_size'][0]}x{rec['max_input_size'][1]}, model input "
                  f"{rec['bucket'][0]}x{rec['bucket'][1]}, platforms {','.join(rec['platforms'])}",
                  highlight=False, soft_wrap=True)  # fmt: skip
        data.update({"out": str(result.export.path), "record": rec,
                     "seconds": round(result.export.seconds, 2)})  # fmt: skip
    if result.verify is not None:
        _print_verify(result.verify)
        data["verify"] = result.verify.to_json()
    if as_json:
        _print_json(data)
    if result.verify is not None and not result.verify.ok:
        bad = sum(not r.ok for r in result.verify.rows)
        err.print(f"[bold red]verify failed:[/] the exported model disagrees with the native model "
                  f"on {bad} of {len(result.verify.rows)} image(s) (boxes within 0.5 px, mask IoU "
                  "> 0.99, same classes)", highlight=False, soft_wrap=True)  # fmt: skip
        raise typer.Exit(1)


if __name__ == "__main__":  # pragma: no cover
    app()
