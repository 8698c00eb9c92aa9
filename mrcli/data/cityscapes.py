"""Cityscapes fine instances, read for `mrcli prepare cityscapes`, and the
Cityscapes instance-level AP (cityscapesScripts) for `mrcli eval`.

The data needs a login to download, so mrcli never downloads it: extract
leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip into one folder
(`--manual-dir`), which then holds

    leftImg8bit/{train,val}/CITY/CITY_SEQ_FRAME_leftImg8bit.png     2975 + 500 images, 2048 x 1024
    gtFine/{train,val}/CITY/CITY_SEQ_FRAME_gtFine_instanceIds.png

A pixel of an instanceIds PNG is `label id * 1000 + instance index` for a
single object, or the bare label id (< 1000) for a region without instances:
stuff, void, or a group of objects too dense to separate ("cargroup"). The 8
instance classes are the labels with instances that the benchmark evaluates
(cityscapesScripts helpers/labels.py: hasInstances and not ignoreInEval);
their instances are the annotations (category id = the Cityscapes label id,
what the official evaluation expects), and their groups (id < 1000) are
crowd regions, ignored in training and by COCOeval as the official
evaluation ignores predictions on them. Everything else (stuff, void, and
caravan and trailer, which the benchmark ignores) is left out, as Detectron2's
loader does. The test split has no public ground truth and is not prepared.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from mrcli.data import masks as masklib
from mrcli.data.check import CheckReport, Converted, ConvertedSplit, Origins
from mrcli.errors import UserError

# (label id, name) of the 8 classes of the instance-level benchmark
# (cityscapesScripts helpers/labels.py; Cordts et al. 2016, Table 1).
THING_CLASSES = ((24, "person"), (25, "rider"), (26, "car"), (27, "truck"), (28, "bus"),
                 (31, "train"), (32, "motorcycle"), (33, "bicycle"))  # fmt: skip
# Label ids run 0..33 (-1, the licence plate, never appears in the PNGs).
MAX_LABEL_ID = 33
# Ids below 24 are stuff and void labels: never an instance (Detectron2 skips them first).
FIRST_THING_ID = 24
SPLITS = ("train", "val")
IMAGE_SUFFIX = "_leftImg8bit.png"
GT_SUFFIX = "_gtFine_instanceIds.png"
DOWNLOAD_HINT = (
    "Cityscapes needs a login to download: get leftImg8bit_trainvaltest.zip and "
    "gtFine_trainvaltest.zip from https://www.cityscapes-dataset.com/downloads/ and extract "
    "both into one folder, so that it holds leftImg8bit/train and gtFine/train"
)


def categories() -> list[dict[str, Any]]:
    return [{"id": cid, "name": name, "supercategory": ""} for cid, name in THING_CLASSES]


def gt_path(root: Path, image_file: str) -> Path:
    """leftImg8bit/SPLIT/CITY/X_leftImg8bit.png -> ROOT/gtFine/SPLIT/CITY/X_gtFine_instanceIds.png."""
    parts = Path(image_file).parts
    return root.joinpath("gtFine", *parts[1:-1], parts[-1][: -len(IMAGE_SUFFIX)] + GT_SUFFIX)


def _read_gt(path: Path) -> np.ndarray | str:
    """The instanceIds PNG as [H, W] int64, or why it cannot be read."""
    try:
        with Image.open(path) as img:
            return np.asarray(img).astype(np.int64)
    except (OSError, ValueError, SyntaxError) as e:
        return f"cannot read the instanceIds PNG ({e})"


def _instances(ids: np.ndarray, path: Path, iid: int, next_ann: int, report: CheckReport,
               anns: list[dict], where: dict[int, tuple[str, str]]) -> int:
    """One instanceIds image -> annotations of the 8 classes (groups as crowd)."""
    h, w = ids.shape[:2]
    things = {cid for cid, _ in THING_CLASSES}
    for value in np.unique(ids[ids >= FIRST_THING_ID]).tolist():
        label = value // 1000 if value >= 1000 else value
        if label > MAX_LABEL_ID:
            report.add("unknown_category", path, f"instance id {value} has label id {label}; Cityscapes "
                       f"labels are 0..{MAX_LABEL_ID}", image_id=iid, where=f"instance id {value}")
            report.skipped_annotations += 1
            continue
        if label not in things:
            continue
        counts = masklib.encode(ids == value)
        x1, y1, x2, y2 = masklib.tight_box(counts, h, w).tolist()
        anns.append({"id": next_ann, "image_id": iid, "category_id": label, "iscrowd": int(value < 1000),
                     "segmentation": {"size": [h, w], "counts": counts.decode("ascii")},
                     "bbox": [x1, y1, x2 - x1, y2 - y1]})
        where[next_ann] = (str(path), f"instance id {value}")
        next_ann += 1
    return next_ann


def read_cityscapes(manual_dir: str | os.PathLike, *, workers: int | None = None) -> Converted:
    """An extracted Cityscapes tree -> COCO-style train and val splits for the checker."""
    root = Path(manual_dir).expanduser()
    missing = [str(root / top / s) for top in ("leftImg8bit", "gtFine") for s in SPLITS
               if not (root / top / s).is_dir()]
    if missing:
        raise UserError(f"--manual-dir {root}: missing {', '.join(missing)}. {DOWNLOAD_HINT}")
    report = CheckReport()
    splits: dict[str, ConvertedSplit] = {}
    iid, next_ann = 1, 1
    nworkers = workers or min(8, os.cpu_count() or 1)
    for split in SPLITS:
        files = sorted((root / "leftImg8bit" / split).glob(f"*/*{IMAGE_SUFFIX}"))
        if not files:
            raise UserError(f"--manual-dir {root}: no *{IMAGE_SUFFIX} images in leftImg8bit/{split}/CITY/. "
                            f"{DOWNLOAD_HINT}")
        names = [f.relative_to(root).as_posix() for f in files]
        gts = [gt_path(root, n) for n in names]
        for orphan in sorted(set((root / "gtFine" / split).glob(f"*/*{GT_SUFFIX}")) - set(gts)):
            report.add("label_without_image", orphan, "no leftImg8bit image of this name; left out")
        with ThreadPoolExecutor(nworkers) as pool:
            read = list(pool.map(lambda p: _read_gt(p) if p.is_file() else None, gts))
        images: list[dict] = []
        anns: list[dict] = []
        ann_where: dict[int, tuple[str, str]] = {}
        for name, gt, ids in zip(names, gts, read):
            if ids is None or isinstance(ids, str):
                kind = "missing_label_file" if ids is None else "malformed_label_file"
                report.add(kind, gt, ids or f"no instanceIds PNG for {name}; its image is left out",
                           image_id=iid)
                report.skipped_images += 1
            else:
                images.append({"id": iid, "file_name": name, "height": int(ids.shape[0]),
                               "width": int(ids.shape[1])})
                next_ann = _instances(ids, gt, iid, next_ann, report, anns, ann_where)
            iid += 1
        splits[split] = ConvertedSplit({"images": images, "annotations": anns}, root,
                                       Origins(annotations=ann_where, size_from="its gtFine instanceIds PNG"))
    return Converted(categories(), splits, report, {"kind": "cityscapes", "manual_dir": str(root.resolve())})


# --- the official instance-level AP --------------------------------------------------------


@contextlib.contextmanager
def _numpy_in1d():
    """cityscapesScripts (2.3.0) marks void pixels with np.in1d, which NumPy 2.4
    removed; lend it np.isin (the same values, flattened) for the evaluation."""
    if hasattr(np, "in1d"):
        yield
        return
    np.in1d = lambda a, b: np.isin(np.ravel(a), b)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        del np.in1d


def official_eval_available() -> bool:
    try:
        import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling  # noqa: F401
    except ImportError:
        return False
    return True


def official_eval(
    results: Sequence[dict[str, Any]],  # COCO results: image_id, category_id (label id), score, RLE segmentation
    images: dict[int, str],  # image id -> file name (leftImg8bit/SPLIT/CITY/..._leftImg8bit.png)
    manual_dir: str | os.PathLike,
    work_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The Cityscapes instance-level AP of results (cityscapesScripts'
    evalInstanceLevelSemanticLabeling, as Detectron2's CityscapesInstanceEvaluator
    runs it): every detection's mask as a PNG and a list per image, matched
    against the original gtFine instanceIds PNGs (their void regions are
    needed, which the prepared dataset does not keep).

    -> {"AP": ..., "AP50": ..., "per_class_ap": {label id: AP}} (fractions, 0..1)."""
    import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling as cs_eval

    root = Path(manual_dir).expanduser()
    gts = {iid: gt_path(root, name) for iid, name in images.items()}
    absent = [str(p) for p in gts.values() if not p.is_file()]
    if absent:
        raise UserError(f"the Cityscapes AP needs the gtFine instanceIds PNGs the dataset was prepared "
                        f"from; {len(absent)} are missing, e.g. {absent[0]}")
    with contextlib.ExitStack() as stack:
        tmp = Path(work_dir) if work_dir is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        tmp = tmp.resolve()
        pred_dir = tmp / "cityscapes_predictions"
        pred_dir.mkdir(parents=True, exist_ok=True)
        per_image: dict[int, list[dict]] = {iid: [] for iid in images}
        for r in results:
            if int(r["image_id"]) in per_image:
                per_image[int(r["image_id"])].append(r)
        pred_lists, gt_list = [], []
        for iid, gt in gts.items():
            stem = Path(images[iid]).name[: -len(IMAGE_SUFFIX)]
            lines = []
            for k, r in enumerate(per_image[iid]):
                seg = r["segmentation"]
                mask = masklib.decode(seg["counts"].encode("ascii") if isinstance(seg["counts"], str)
                                      else seg["counts"], *seg["size"])
                png = f"{stem}_{k}.png"
                Image.fromarray(mask * 255).save(pred_dir / png)
                lines.append(f"{png} {int(r['category_id'])} {float(r['score'])}\n")
            (pred_dir / f"{stem}_pred.txt").write_text("".join(lines))
            pred_lists.append(str(pred_dir / f"{stem}_pred.txt"))
            gt_list.append(str(gt.resolve()))
        args = copy.copy(cs_eval.args)
        args.predictionPath = str(pred_dir)
        args.predictionWalk = None
        args.gtInstancesFile = str(tmp / "gtInstances.json")
        args.JSONOutput = False
        args.quiet = True
        args.colorized = False
        # evaluateImgLists' steps without its JSON dump of the matches (into the
        # working directory, and failing on NumPy 2's integer scalars).
        with contextlib.redirect_stdout(io.StringIO()), _numpy_in1d():
            cs_eval.setInstanceLabels(args)
            gt_instances = cs_eval.getGtInstances(gt_list, args)
            matches = cs_eval.matchGtWithPreds(pred_lists, gt_list, gt_instances, args)
            averages = cs_eval.computeAverages(cs_eval.evaluateMatches(matches, args), args)
    name_to_id = {name: cid for cid, name in THING_CLASSES}
    return {
        "AP": float(averages["allAp"]),
        "AP50": float(averages["allAp50%"]),
        "per_class_ap": {name_to_id[n]: float(v["ap"]) for n, v in averages["classes"].items()
                         if n in name_to_id},
    }
