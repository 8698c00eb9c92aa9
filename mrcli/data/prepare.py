"""`mrcli prepare`: COCO (instances or person keypoints), any COCO-format
dataset (keypoints included), Cityscapes, YOLO segmentation labels, labelme
folders and the built-in shapes and figures, checked and written as TFDS
ArrayRecord datasets (see `mrcli.data.store`).

Cityscapes, YOLO and labelme are read into COCO-style dicts by their readers
(mrcli.data.cityscapes, .yolo, .labelme) and checked by the same checker as
COCO (mrcli.data.check), each problem named by its original file and line or
shape. `val_fraction` holds out a val split where a format has none
(mrcli.data.split).

Each `prepare_*` function checks everything first; with fatal problems and
`on_error="fail"` it raises `DataCheckError` (a UserError: exit 2) and writes
nothing; with `on_error="skip"` it writes what is good and reports what was
skipped. `check_only=True` checks without writing.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from mrcli import keypoint_sets
from mrcli.data import cityscapes as cityscapes_lib
from mrcli.data import figures as figures_lib
from mrcli.data import labelme as labelme_lib
from mrcli.data import shapes as shapes_lib
from mrcli.data import store
from mrcli.data import yolo as yolo_lib
from mrcli.data.check import FATAL, KINDS, CheckReport, Converted, check_coco, load_json
from mrcli.data.split import hold_out
from mrcli.errors import UserError

OnError = Literal["fail", "skip"]
# progress(description, total) -> advance(): how the CLI shows progress bars.
Progress = Callable[[str, int], Callable[[], None]]


def _no_progress(description: str, total: int) -> Callable[[], None]:
    return lambda: None


class DataCheckError(UserError):
    """Fatal problems in the data with --on-error fail: nothing was written."""

    def __init__(self, message: str, report: CheckReport):
        super().__init__(message)
        self.report = report


@dataclass
class PrepareResult:
    name: str
    record: dict[str, Any]
    report: CheckReport = field(default_factory=CheckReport)
    path: Path | None = None  # the dataset's directory when written
    written: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "written": self.written,
            "path": str(self.path) if self.path else None,
            "record": self.record,
            "problems": self.report.to_json(),
        }


def _fail_message(report: CheckReport, check_only: bool) -> str:
    counts = report.counts()
    fatal = {k: n for k, n in counts.items() if KINDS[k].severity == FATAL}
    listing = ", ".join(f"{n} {k}" for k, n in fatal.items())
    what = "checked only" if check_only else "nothing written"
    if report.hints:  # a likely cause, where --on-error skip would drop most of the data
        return f"{sum(fatal.values())} problem(s) in the data ({listing}); {what}. " + "; ".join(report.hints)
    return (
        f"{sum(fatal.values())} problem(s) in the data ({listing}); {what}. Fix the data, or "
        f"re-run with --on-error skip to leave out the {report.skipped_images} bad image(s) "
        f"and {report.skipped_annotations} bad annotation(s)"
    )


def _empty_categories(categories: list[dict[str, Any]], splits: dict[str, list[store.Example]],
                      report: CheckReport, drop: bool) -> tuple[list, dict]:  # fmt: skip
    """Categories without any instance in any split are reported (a class the
    model would learn nothing about, e.g. labelme2coco's `_background_`); with
    `drop` they are left out and the others renumbered 1..K."""
    used = set()
    for examples in splits.values():
        for e in examples:
            used.update(int(c) for c in np.asarray(e.classes))
    empty = [c for c in categories if int(c["contiguous_id"]) not in used]
    for c in empty:
        why = " (labelme2coco writes this one)" if c["name"] == "_background_" else ""
        report.add("empty_category", "categories", f"category {c['id']} {c['name']!r} has no instance"
                   f"{why}: the model would learn a class it never sees"
                   + ("; left out" if drop else "; --drop-empty-categories leaves it out"))  # fmt: skip
    if not drop or not empty:
        return categories, splits
    kept = [c for c in categories if int(c["contiguous_id"]) in used]
    lut = np.zeros(max(int(c["contiguous_id"]) for c in categories) + 1, np.int32)
    renumbered = []
    for k, c in enumerate(kept, 1):
        lut[int(c["contiguous_id"])] = k
        renumbered.append({**c, "contiguous_id": k})
    splits = {s: [dataclasses.replace(e, classes=lut[np.asarray(e.classes, np.int64)].astype(np.int32))
                  for e in examples] for s, examples in splits.items()}  # fmt: skip
    return renumbered, splits


def _finish(
    name: str,
    data_dir: str | os.PathLike | None,
    categories: list[dict[str, Any]],
    splits: dict[str, list[store.Example]],
    report: CheckReport,
    source: dict[str, Any],
    *,
    on_error: OnError,
    check_only: bool,
    overwrite: bool,
    progress: Progress,
    drop_empty_categories: bool = False,
) -> PrepareResult:
    if on_error not in ("fail", "skip"):
        raise UserError(f"--on-error {on_error!r}: expected fail or skip")
    if report.fatal and on_error == "fail":
        raise DataCheckError(_fail_message(report, check_only), report)
    categories, splits = _empty_categories(categories, splits, report, drop_empty_categories)
    for split, examples in splits.items():
        if not examples:
            raise UserError(f"split {split!r} has no images left to write")
    record = {
        "source": source,
        "categories": categories,
        "splits": store.record_summary(categories, splits),
        "fingerprint": store.fingerprint(categories, splits),
        "problems": report.counts(),
        "skipped": {"images": report.skipped_images, "annotations": report.skipped_annotations},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    result = PrepareResult(name, record, report)
    if check_only:
        return result
    total = sum(len(v) for v in splits.values())
    advance = progress(f"writing {name}", total)
    path = store.write_dataset(
        name, data_dir, splits, record, overwrite=overwrite, on_example=lambda split: advance(),
        extra_files={"problems.json": json.dumps(report.to_json(), indent=1).encode()},
    )
    result.path, result.written = path, True
    return result


def _with_val_fraction(splits: dict[str, list[store.Example]], val_fraction: float | None,
                       has_val: str) -> dict[str, list[store.Example]]:
    """Hold out `val_fraction` of the train images as split "val" (mrcli.data.split);
    refused when the data has a val split already (`has_val` says where it comes from)."""
    if val_fraction is None:
        return splits
    if "val" in splits:
        raise UserError(f"--val-fraction: {has_val} already gives a val split; drop one of the two")
    train, val = hold_out(splits["train"], val_fraction)
    return {"train": train, "val": val, **{k: v for k, v in splits.items() if k != "train"}}


def _check_target(name: str, data_dir, overwrite: bool, check_only: bool) -> None:
    store.check_name(name)
    target = store.resolve_data_dir(data_dir) / name
    if target.exists() and not overwrite and not check_only:
        raise UserError(
            f"{target} already exists; pass --overwrite to replace it or --name to pick another name"
        )


# --- shapes -----------------------------------------------------------------------------


def prepare_shapes(
    *,
    data_dir: str | os.PathLike | None = None,
    name: str = "shapes",
    num_train: int = 2000,
    num_val: int = 200,
    size: int = 128,
    seed: int = 0,
    overwrite: bool = False,
    progress: Progress = _no_progress,
) -> PrepareResult:
    """The built-in synthetic shapes dataset (see `mrcli.data.shapes`)."""
    return _prepare_synthetic("shapes", shapes_lib.generate, list(shapes_lib.CATEGORIES), 32, name=name,
                              data_dir=data_dir, num_train=num_train, num_val=num_val, size=size, seed=seed,
                              overwrite=overwrite, progress=progress)  # fmt: skip


def _prepare_synthetic(kind: str, generate: Callable[..., list[store.Example]],
                       categories: list[dict[str, Any]], min_size: int, *, name: str,
                       data_dir: str | os.PathLike | None, num_train: int, num_val: int, size: int,
                       seed: int, overwrite: bool, progress: Progress) -> PrepareResult:  # fmt: skip
    """A built-in synthetic dataset: train and val generated from the seed."""
    _check_target(name, data_dir, overwrite, False)
    if num_train < 1 or num_val < 1:
        raise UserError("--num-train and --num-val must be at least 1")
    if not min_size <= size <= 4096:
        raise UserError(f"--size {size}: expected {min_size}..4096 pixels")
    splits = {}
    for split, n in (("train", num_train), ("val", num_val)):
        advance = progress(f"generating {split}", n)
        splits[split] = generate(n, split, size=size, seed=seed, on_example=advance)
    source = {"kind": kind, "num_train": num_train, "num_val": num_val, "size": size, "seed": seed}
    return _finish(name, data_dir, categories, splits, CheckReport(), source,
                   on_error="fail", check_only=False, overwrite=overwrite, progress=progress)


def prepare_figures(
    *,
    data_dir: str | os.PathLike | None = None,
    name: str = "figures",
    num_train: int = 2000,
    num_val: int = 200,
    size: int = 128,
    seed: int = 0,
    overwrite: bool = False,
    progress: Progress = _no_progress,
) -> PrepareResult:
    """The built-in synthetic keypoint dataset (see `mrcli.data.figures`): its
    keypoints give no sigmas, so they take the rule's (keypoint_sets.sigmas_rule)."""
    categories = []
    for cat in figures_lib.CATEGORIES:
        completed, rule = keypoint_sets.complete(cat, None, None)
        categories.append({**completed, "keypoint_sigmas_from": rule})
    return _prepare_synthetic("figures", figures_lib.generate, categories, 64, name=name, data_dir=data_dir,
                              num_train=num_train, num_val=num_val, size=size, seed=seed, overwrite=overwrite,
                              progress=progress)  # fmt: skip


# --- any COCO-format dataset -------------------------------------------------------------


def prepare_coco_json(
    *,
    annotations: str | os.PathLike,
    images: str | os.PathLike,
    name: str,
    val_annotations: str | os.PathLike | None = None,
    val_images: str | os.PathLike | None = None,
    val_fraction: float | None = None,
    data_dir: str | os.PathLike | None = None,
    on_error: OnError = "fail",
    check_only: bool = False,
    overwrite: bool = False,
    drop_empty_categories: bool = False,
    progress: Progress = _no_progress,
    source: dict[str, Any] | None = None,
) -> PrepareResult:
    """A COCO-format dataset: `annotations` + `images` become split "train",
    `val_annotations` + `val_images` (default: `images`) split "val", or
    `val_fraction` of the train images (by image, stratified by class)."""
    _check_target(name, data_dir, overwrite, check_only)
    parts = [("train", Path(annotations), Path(images))]
    if val_annotations is not None:
        parts.append(("val", Path(val_annotations), Path(val_images or images)))
    report = CheckReport()
    splits: dict[str, list[store.Example]] = {}
    categories = None
    for split, ann_path, img_dir in parts:
        data = load_json(ann_path)
        advance = progress(f"checking {split} images", len(data["images"]))
        checked = check_coco(data, img_dir, categories=categories, json_name=str(ann_path),
                             on_image=advance)
        if categories is None:
            categories = checked.categories
            if not categories:
                raise UserError(f"{ann_path}: no valid categories; a COCO file lists them under 'categories'")
        report.extend(checked.report)
        splits[split] = checked.examples
    splits = _with_val_fraction(splits, val_fraction, "--val-annotations")
    src = source or {
        "kind": "coco-json",
        **{f"{s}_annotations": str(a.resolve()) for s, a, _ in parts},
        **{f"{s}_images": str(i.resolve()) for s, _, i in parts},
        **({"val_fraction": val_fraction} if val_fraction is not None else {}),
    }
    return _finish(name, data_dir, categories, splits, report, src, on_error=on_error,
                   check_only=check_only, overwrite=overwrite, progress=progress,
                   drop_empty_categories=drop_empty_categories)  # fmt: skip


# --- formats read into COCO-style dicts: Cityscapes, YOLO, labelme ---------------------------


def _prepare_converted(
    converted: Converted,
    *,
    name: str,
    data_dir: str | os.PathLike | None,
    val_fraction: float | None,
    has_val: str,
    on_error: OnError,
    check_only: bool,
    overwrite: bool,
    progress: Progress,
    drop_empty_categories: bool = False,
) -> PrepareResult:
    """Check every split of a converted dataset with the COCO checker, hold
    out a val split if asked, write."""
    report = CheckReport()
    report.extend(converted.report)
    splits: dict[str, list[store.Example]] = {}
    categories = None
    for split, part in converted.splits.items():
        advance = progress(f"checking {split} images", len(part.data["images"]))
        checked = check_coco({**part.data, "categories": converted.categories}, part.images_dir,
                             categories=categories, json_name=str(part.images_dir), on_image=advance,
                             origins=part.origins)  # fmt: skip
        categories = checked.categories
        report.extend(checked.report)
        splits[split] = checked.examples
    if not categories:
        where = converted.source.get("folder") or converted.source.get("data") or "the data"
        raise UserError(f"{where}: no classes: no shape has a label; label the images first")
    splits = _with_val_fraction(splits, val_fraction, has_val)
    source = {**converted.source, **({"val_fraction": val_fraction} if val_fraction is not None else {})}
    return _finish(name, data_dir, categories, splits, report, source, on_error=on_error,
                   check_only=check_only, overwrite=overwrite, progress=progress,
                   drop_empty_categories=drop_empty_categories)  # fmt: skip


def prepare_yolo(
    *,
    data: str | os.PathLike,
    name: str,
    val_fraction: float | None = None,
    data_dir: str | os.PathLike | None = None,
    on_error: OnError = "fail",
    check_only: bool = False,
    overwrite: bool = False,
    drop_empty_categories: bool = False,
    progress: Progress = _no_progress,
) -> PrepareResult:
    """A YOLO segmentation dataset (Ultralytics data.yaml; mrcli.data.yolo):
    its train, val and test splits, or `val_fraction` of train as val."""
    _check_target(name, data_dir, overwrite, check_only)
    converted = yolo_lib.read_yolo(data)
    return _prepare_converted(converted, name=name, data_dir=data_dir, val_fraction=val_fraction,
                              has_val=f"{data} (val:)", on_error=on_error, check_only=check_only,
                              overwrite=overwrite, progress=progress,
                              drop_empty_categories=drop_empty_categories)  # fmt: skip


def prepare_labelme(
    *,
    folder: str | os.PathLike,
    name: str,
    classes: str | os.PathLike | None = None,
    val_fraction: float | None = None,
    data_dir: str | os.PathLike | None = None,
    on_error: OnError = "fail",
    check_only: bool = False,
    overwrite: bool = False,
    drop_empty_categories: bool = False,
    progress: Progress = _no_progress,
) -> PrepareResult:
    """A folder of labelme JSON files (mrcli.data.labelme) as split "train",
    and `val_fraction` of it as "val"; classes from `classes` (one name a line)
    or the labels seen, sorted."""
    _check_target(name, data_dir, overwrite, check_only)
    converted = labelme_lib.read_labelme(folder, classes)
    return _prepare_converted(converted, name=name, data_dir=data_dir, val_fraction=val_fraction,
                              has_val="", on_error=on_error, check_only=check_only,
                              overwrite=overwrite, progress=progress,
                              drop_empty_categories=drop_empty_categories)  # fmt: skip


def prepare_cityscapes(
    *,
    manual_dir: str | os.PathLike,
    name: str = "cityscapes",
    data_dir: str | os.PathLike | None = None,
    on_error: OnError = "fail",
    check_only: bool = False,
    overwrite: bool = False,
    progress: Progress = _no_progress,
) -> PrepareResult:
    """Cityscapes fine instances, train and val as published (mrcli.data.cityscapes),
    from an extracted leftImg8bit/ + gtFine/ tree (never downloaded: it needs a login)."""
    _check_target(name, data_dir, overwrite, check_only)
    converted = cityscapes_lib.read_cityscapes(manual_dir)
    return _prepare_converted(converted, name=name, data_dir=data_dir, val_fraction=None,
                              has_val="", on_error=on_error, check_only=check_only,
                              overwrite=overwrite, progress=progress)  # fmt: skip


# --- COCO -----------------------------------------------------------------------------------

COCO_YEARS = (2014, 2017)


def coco_urls(year: int) -> dict[str, str]:
    base = "http://images.cocodataset.org"
    return {
        "train_images": f"{base}/zips/train{year}.zip",
        "val_images": f"{base}/zips/val{year}.zip",
        "annotations": f"{base}/annotations/annotations_trainval{year}.zip",
    }


def coco_layout(root: Path, year: int, keypoints: bool = False) -> dict[str, Path]:
    """Where an extracted COCO tree keeps its parts: the instances files, or the
    person keypoints files with `keypoints`."""
    stem = "person_keypoints" if keypoints else "instances"
    return {
        "train_annotations": root / "annotations" / f"{stem}_train{year}.json",
        "val_annotations": root / "annotations" / f"{stem}_val{year}.json",
        "train_images": root / f"train{year}",
        "val_images": root / f"val{year}",
    }


def extract_zip(archive: Path, extract_dir: Path, progress: Progress = _no_progress) -> Path:
    """Extract `archive` into EXTRACT_DIR/<archive stem> once (reused later).

    Python's zipfile, not TFDS's extractor: that one needs TensorFlow
    (tf.io.gfile). Extracted into a temporary directory and renamed, so a
    half-extracted archive is never reused."""
    target = extract_dir / archive.name.removesuffix(".zip")
    if target.is_dir():
        return target
    extract_dir.mkdir(parents=True, exist_ok=True)
    tmp = extract_dir / f".{target.name}.incomplete-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            advance = progress(f"extracting {archive.name}", len(members))
            for member in members:
                zf.extract(member, tmp)
                advance()
        os.rename(tmp, target)
    except zipfile.BadZipFile as e:
        raise UserError(f"{archive}: not a valid zip archive ({e}); delete it and run again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def prepare_coco(
    *,
    year: int = 2017,
    manual_dir: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    name: str | None = None,
    on_error: OnError = "fail",
    check_only: bool = False,
    overwrite: bool = False,
    progress: Progress = _no_progress,
    download_manager: Any = None,
    keypoints: bool = False,
) -> PrepareResult:
    """COCO instances train/val of `year` (with `keypoints`: COCO's person
    keypoints, dataset "coco_person"), from `manual_dir` (an extracted COCO
    tree: annotations/instances_{train,val}YEAR.json or
    person_keypoints_{train,val}YEAR.json, trainYEAR/, valYEAR/) or downloaded
    with TFDS's download manager into DATA_DIR/downloads/coco (its `download`;
    the archives are extracted with `extract_zip`)."""
    if year not in COCO_YEARS:
        raise UserError(f"--year {year}: COCO instances exist for {', '.join(map(str, COCO_YEARS))}")
    base = "coco_person" if keypoints else "coco"
    name = name or (base if year == 2017 else f"{base}{year}")
    _check_target(name, data_dir, overwrite, check_only)
    stem = "person_keypoints" if keypoints else "instances"
    if manual_dir is not None:
        root = Path(manual_dir).expanduser()
        layout = coco_layout(root, year, keypoints)
        missing = [str(p) for p in layout.values() if not p.exists()]
        if missing:
            raise UserError(
                f"--manual-dir {root}: missing {', '.join(missing)}; expected an extracted COCO {year} "
                f"tree: annotations/{stem}_train{year}.json, annotations/{stem}_val{year}.json, "
                f"train{year}/, val{year}/"
            )
        origin = {"manual_dir": str(root.resolve())}
    else:
        if download_manager is None:
            import tensorflow_datasets as tfds

            download_manager = tfds.download.DownloadManager(
                download_dir=store.resolve_data_dir(data_dir) / "downloads",  # + /coco
                dataset_name="coco",
            )
        urls = coco_urls(year)
        archives = download_manager.download(urls)
        extract_dir = store.resolve_data_dir(data_dir) / "downloads" / "coco" / "extracted"
        paths = {k: extract_zip(Path(os.fspath(v)), extract_dir, progress) for k, v in archives.items()}
        layout = coco_layout(paths["annotations"], year, keypoints)
        layout["train_images"] = paths["train_images"] / f"train{year}"
        layout["val_images"] = paths["val_images"] / f"val{year}"
        origin = {"urls": urls}
    return prepare_coco_json(
        annotations=layout["train_annotations"],
        images=layout["train_images"],
        val_annotations=layout["val_annotations"],
        val_images=layout["val_images"],
        name=name,
        data_dir=data_dir,
        on_error=on_error,
        check_only=check_only,
        overwrite=overwrite,
        progress=progress,
        source={"kind": "coco", "year": year, **({"keypoints": True} if keypoints else {}), **origin},
    )


# --- reports ----------------------------------------------------------------------------------


def summary_table(result: PrepareResult):
    """A rich table: per split images, instances, crowd, empty images, sizes; per class counts."""
    from rich.table import Table

    rec = result.record
    splits = rec["splits"]
    title = f"{result.name}" + (f"  ({result.path})" if result.path else "  (not written)")
    t = Table(title=title, title_justify="left")
    t.add_column("")
    for s in splits:
        t.add_column(s, justify="right")
    rows = [
        ("images", "images"), ("instances", "instances"), ("crowd regions", "crowd"),
        ("images without annotations", "empty_images"),
    ]
    for label, key in rows:
        t.add_row(label, *[f"{splits[s][key]:,}" for s in splits])
    t.add_row("smallest image (h x w)", *[f"{splits[s]['min_size'][0]} x {splits[s]['min_size'][1]}" for s in splits])
    t.add_row("largest image (h x w)", *[f"{splits[s]['max_size'][0]} x {splits[s]['max_size'][1]}" for s in splits])
    if all("keypoints" in splits[s] for s in splits):
        t.add_row("instances with keypoints", *[f"{splits[s]['keypoint_instances']:,}" for s in splits])
        t.add_row("labelled keypoints", *[f"{splits[s]['keypoints']:,}" for s in splits])
    t.add_section()
    for cat in rec["categories"]:
        t.add_row(f"{cat['contiguous_id']:>3} {cat['name']} (id {cat['id']})",
                  *[f"{splits[s]['per_class'][cat['name']]:,}" for s in splits])
    kset = keypoint_sets.KeypointSet.of(rec["categories"])
    if kset is not None:
        t.add_section()
        first = next(c for c in rec["categories"] if c.get("keypoints"))
        pairs = ", ".join(f"{kset.names[a - 1]}/{kset.names[b - 1]}" for a, b in kset.flip_pairs)
        blank = [""] * (len(splits) - 1)
        t.add_row("keypoints", f"{kset.num_keypoints}: {', '.join(kset.names)}", *blank)
        t.add_row("flipped pairs", pairs or "none", *blank)
        t.add_row("OKS sigmas", first.get("keypoint_sigmas_from", ""), *blank)
    t.add_section()
    t.add_row("fingerprint", *([rec["fingerprint"]] + [""] * (len(splits) - 1)))
    return t


def problems_table(report: CheckReport):
    """A rich table of problem counts per kind with what was (or would be) done."""
    from rich.table import Table

    t = Table(title="problems", title_justify="left")
    t.add_column("kind")
    t.add_column("severity")
    t.add_column("count", justify="right")
    t.add_column("--on-error skip does / what was done")
    for kind, n in report.counts().items():
        k = KINDS[kind]
        t.add_row(kind, k.severity, f"{n:,}", k.action)
    return t


def problem_lines(report: CheckReport, *, max_notes_per_kind: int = 10) -> list[str]:
    """Every fatal and fixed problem, one line each; notes capped per kind."""
    lines = []
    shown: dict[str, int] = {}
    for p in report.problems:
        if p.severity == "note":
            shown[p.kind] = shown.get(p.kind, 0) + 1
            if shown[p.kind] > max_notes_per_kind:
                continue
        lines.append(f"{p.severity}: {p}")
    for kind, n in shown.items():
        if n > max_notes_per_kind:
            lines.append(f"note: ... and {n - max_notes_per_kind} more {kind} (all in --json / problems.json)")
    return lines
