"""COCO results files and COCOeval (host side: numpy + pycocotools, no JAX).

Results are written as they come (one image at a time) into a JSON array, so
memory stays flat with the number of images; the file appears under its final
name only when complete (temp file + rename, docs/design.md §7).

Category ids in results are the dataset's own ids, mapped from the model's
contiguous ids 1..K with the category map stored with the dataset/checkpoint.

Keypoints are scored by OKS (iouType "keypoints", Ronchi & Perona 2017) with
the dataset's sigmas (mrcli.keypoint_sets: COCO's 17 for person keypoints),
over the categories that have keypoints.

Dimension key: D detections, H/W image height/width (original image pixels),
Kp keypoints.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pycocotools.mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mrcli.config import DEFAULT_SCORE
from mrcli.errors import UserError
from mrcli.files import write_json_atomic

# COCOeval.summarize's 12 numbers, in its order.
STAT_NAMES = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)  # fmt: skip
# COCOeval.summarize's 10 numbers for keypoints (OKS), in its order (maxDets 20,
# no small objects).
KEYPOINT_STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
IOU_TYPES = ("bbox", "segm", "keypoints")


def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """masks [D,H,W] bool/uint8 -> COCO RLEs with `counts` as str (JSON-able)."""
    if len(masks) == 0:
        return []
    rles = mask_util.encode(np.asfortranarray(np.transpose(masks, (1, 2, 0)).astype(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def to_coco_results(
    image_id: int,
    boxes: np.ndarray,  # [D,4] float, xyxy in original image pixels
    scores: np.ndarray,  # [D] float
    classes: np.ndarray,  # [D] int, contiguous 1..K
    valid: np.ndarray,  # [D] bool, padded slots False
    dataset_ids: Sequence[int],  # dataset_ids[k] = dataset category id of contiguous k (0 unused)
    masks: np.ndarray | None = None,  # [D,H,W] bool, pasted into the original image
    keypoints: np.ndarray | None = None,  # [D,Kp,3] float: x, y original pixels, score
) -> list[dict[str, Any]]:
    """One image's valid detections as COCO result dicts (bbox xywh, segmentation
    RLE, keypoints [x1, y1, s1, ...] with each keypoint's score as the third
    value, as Detectron2 writes them; COCOeval reads only x and y).

    A class the category map does not name (dataset id 0: the unused "N/A"
    outputs of torchvision's 91-slot COCO models) is left out."""
    keep = np.flatnonzero(np.asarray(valid, bool) & named_classes(dataset_ids, classes))
    rles = encode_masks(np.asarray(masks)[keep]) if masks is not None else None
    results = []
    for j, d in enumerate(keep):
        x1, y1, x2, y2 = (float(v) for v in boxes[d])
        result: dict[str, Any] = {
            "image_id": int(image_id),
            "category_id": int(dataset_ids[int(classes[d])]),
            "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
            "score": round(float(scores[d]), 5),
        }
        if rles is not None:
            result["segmentation"] = rles[j]
        if keypoints is not None:
            result["keypoints"] = [round(float(v), 3) for v in np.asarray(keypoints[d]).reshape(-1)]
        results.append(result)
    return results


def dataset_id_table(categories: Sequence[dict[str, Any]]) -> list[int]:
    """A category map -> `table[contiguous_id] = dataset id` (0 where no category)."""
    table = [0] * (1 + max(int(c["contiguous_id"]) for c in categories))
    for c in categories:
        table[int(c["contiguous_id"])] = int(c["id"])
    return table


def named_classes(dataset_ids: Sequence[int], classes: np.ndarray) -> np.ndarray:
    """classes [D] int (contiguous) -> [D] bool: the category map names that class
    (dataset id > 0), not one of the unused "N/A" outputs of torchvision's COCO models."""
    ids = np.asarray(dataset_ids)
    return ids[np.clip(np.asarray(classes, np.int64), 0, len(ids) - 1)] > 0


class ResultsWriter:
    """Streams result dicts into a JSON array at `path`, atomically.

    with ResultsWriter(path) as w: w.write(results_of_one_image) ...
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.count = 0
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self._file: io.TextIOWrapper | None = None

    def __enter__(self) -> "ResultsWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self._tmp, "w")
        self._file.write("[")
        return self

    def write(self, results: Iterable[dict[str, Any]]) -> None:
        assert self._file is not None, "use ResultsWriter as a context manager"
        for result in results:
            self._file.write(("," if self.count else "") + "\n" + json.dumps(result))
            self.count += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._file is not None
        if exc_type is None:
            self._file.write("\n]\n")
            self._file.close()
            os.replace(self._tmp, self.path)
        else:
            self._file.close()
            self._tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class EvalResult:
    iou_type: str
    # STAT_NAMES (KEYPOINT_STAT_NAMES for keypoints) -> value (-1 where COCOeval has
    # no gt of that kind)
    stats: dict[str, float]
    per_class_ap: dict[int, float]  # dataset category id -> AP@[.5:.95] (nan without gt)
    # COCOeval.eval["precision"], kept for the PR curves and AP by size (pr_curves,
    # ap_by_size): [T iou thresholds, R recall points, K classes, A areas (all, small,
    # medium, large), M maxDets (1, 10, 100)] float, -1 where a class has no gt of
    # that area. None when there were no detections to evaluate.
    precision: np.ndarray | None = field(default=None, compare=False, repr=False)
    cat_ids: tuple[int, ...] = ()  # the K axis: dataset category ids
    iou_thresholds: tuple[float, ...] = ()  # the T axis (0.5, 0.55, ..., 0.95)
    recall_points: tuple[float, ...] = ()  # the R axis (0, 0.01, ..., 1)


@dataclass(frozen=True)
class KeypointEval:
    """What COCO's keypoint eval (OKS) needs beyond the files: the keypoint set's
    sigmas and the categories that have keypoints (mrcli.keypoint_sets)."""

    sigmas: tuple[float, ...]
    category_ids: tuple[int, ...]


def stat_names(iou_type: str, max_dets: int = 100) -> tuple[str, ...]:
    """COCOeval.summarize's numbers in order; AR100 is AR{max_dets} at another maxDets."""
    if iou_type == "keypoints":
        return KEYPOINT_STAT_NAMES
    return tuple(f"AR{max_dets}" if n == "AR100" else n for n in STAT_NAMES)


def coco_evaluate(
    gt: COCO,
    results: str | os.PathLike[str] | list[dict[str, Any]],
    iou_type: str,
    image_ids: Sequence[int] | None = None,
    keypoints: KeypointEval | None = None,
    max_dets: int = 100,
) -> EvalResult:
    """COCOeval of a results file (or list) against `gt`, over `image_ids` (default: all).
    iou_type "keypoints" (OKS) needs `keypoints`: the sigmas, and the categories it
    scores (the ones with keypoints).

    `max_dets`: the detections per image scored (COCOeval's maxDets (1, 10,
    max_dets) for boxes and masks: AP, APs/m/l and AR{max_dets} at max_dets, each
    image's best by score; COCO's 100). Keypoints keep COCO's 20.

    COCOeval's printing is captured, so stdout stays clean for --json."""
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    if not isinstance(results, list):
        with open(results) as f:
            results = json.load(f)
    if iou_type == "segm" and results and "segmentation" not in results[0]:
        raise ValueError("these results have no masks (a box-only model); evaluate 'bbox' only")
    if iou_type == "keypoints" and (keypoints is None or (results and "keypoints" not in results[0])):
        raise ValueError("keypoint eval needs results with keypoints and the dataset's sigmas")
    cat_ids = sorted(gt.getCatIds()) if keypoints is None else sorted(keypoints.category_ids)
    if max_dets < 10:
        raise UserError(f"--max-dets {max_dets}: COCOeval needs at least 10 (it also reports AR1 and AR10)")
    names = stat_names(iou_type, max_dets)
    if not results:
        stats = {name: 0.0 for name in names}
        return EvalResult(iou_type, stats, {c: 0.0 for c in cat_ids}, cat_ids=tuple(cat_ids))
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iou_type)
        if image_ids is not None:
            ev.params.imgIds = list(image_ids)
        if iou_type != "keypoints":
            ev.params.maxDets = [1, 10, int(max_dets)]
        if iou_type == "keypoints":
            ev.params.kpt_oks_sigmas = np.asarray(keypoints.sigmas, np.float64)
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        if iou_type == "keypoints":
            ev.summarize()
            values = ev.stats
        else:
            values = summarize_detections(ev.eval["precision"], ev.eval["recall"], ev.params.iouThrs)
    stats = {name: float(v) for name, v in zip(names, values)}
    # precision [T iou thresholds, R recall points, K classes, A areas, M maxDets];
    # area "all" and maxDets max_dets are index 0 and -1 (COCOeval.Params).
    precision = ev.eval["precision"]
    per_class = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_class[int(cat_id)] = float(p.mean()) if p.size else float("nan")
    return EvalResult(iou_type, stats, per_class, precision=precision,
                      cat_ids=tuple(int(c) for c in ev.params.catIds),
                      iou_thresholds=tuple(float(t) for t in ev.params.iouThrs),
                      recall_points=tuple(float(r) for r in ev.params.recThrs))  # fmt: skip


def summarize_detections(precision: np.ndarray, recall: np.ndarray, iou_thresholds: np.ndarray) -> list[float]:
    """COCOeval.summarize's 12 box/mask numbers (STAT_NAMES' order) from its
    accumulated arrays, at its params.maxDets (m1, m10, mN) whatever mN is:
    pycocotools' own summarize looks for maxDets == 100 by value and reports -1
    at any other (its _summarize(maxDets=100) default).

    precision [T, R, K, A, M] and recall [T, K, A, M] (COCOeval.eval; -1 where a
    class has no gt of that area), A = (all, small, medium, large), M = maxDets."""

    def mean(values: np.ndarray) -> float:
        values = values[values > -1]
        return float(values.mean()) if values.size else -1.0

    t50, t75 = (int(np.argmin(np.abs(np.asarray(iou_thresholds) - t))) for t in (0.5, 0.75))
    return [
        mean(precision[:, :, :, 0, -1]), mean(precision[t50, :, :, 0, -1]),
        mean(precision[t75, :, :, 0, -1]),
        *(mean(precision[:, :, :, a, -1]) for a in (1, 2, 3)),
        *(mean(recall[:, :, 0, m]) for m in (0, 1, 2)),
        *(mean(recall[:, :, a, -1]) for a in (1, 2, 3)),
    ]  # fmt: skip


def check_categories(model_categories, dataset_categories, dataset_name: str) -> None:
    """Every category of the dataset must be one of the model's, by dataset id
    and name (a model may know more, e.g. torchvision's 91-slot COCO map)."""
    model_map = {int(c["id"]): c["name"] for c in model_categories}
    bad = [c for c in dataset_categories if model_map.get(int(c["id"])) != c["name"]]
    if bad:
        c = bad[0]
        have = model_map.get(int(c["id"]))
        raise UserError(
            f"the checkpoint's categories do not fit dataset {dataset_name!r}: {len(bad)} of its "
            f"{len(dataset_categories)} categories are not the model's, e.g. id {c['id']} "
            f"{c['name']!r} (the model has {have!r} there). Evaluate on the dataset the model "
            "was trained on (--data), or fine-tune it there first (mrcli train --init-from)"
        )


@dataclass(frozen=True)
class DatasetMetric:
    """A dataset's own benchmark metric, computed beside COCO's (the Cityscapes
    instance-level AP of cityscapesScripts)."""

    name: str  # what it is and what computed it, as printed
    key: str  # prefix of its numbers in DatasetEval.summary(): "cityscapes" -> cityscapes_AP
    stats: dict[str, float]  # e.g. AP, AP50 (fractions, as COCOeval's)
    per_class_ap: dict[int, float]  # dataset category id -> AP


@dataclass(frozen=True)
class DatasetEval:
    """COCO evaluation of a model on a split."""

    bbox: EvalResult
    segm: EvalResult | None  # None for a box-only model
    num_images: int
    results_path: Path  # the COCO results file (dataset category ids)
    category_names: dict[int, str]  # dataset category id -> name
    image_ids: tuple[int, ...] = ()  # the images evaluated
    official: DatasetMetric | None = None  # the dataset's own metric, where there is one
    notes: tuple[str, ...] = ()  # e.g. why the dataset's own metric was not computed
    plots: tuple[Path, ...] = ()  # the pictures drawn of it (mrcli.evaluate.write_plots)
    # What was scored, for titles: "shapes/val" and "runs/tiny step 1000".
    split: str = ""
    model: str = ""
    keypoints: EvalResult | None = None  # OKS, for a keypoint model on a keypoint dataset
    max_dets: int = 100  # detections per image scored (COCOeval maxDets) for bbox and segm

    def summary(self) -> dict[str, float]:
        """Flat numbers: bbox_AP, bbox_AP50, ..., segm_AP, ... (the 12 of each),
        keypoints_AP, ... (the 10 of OKS) and the dataset's own metric's
        (cityscapes_AP, ...)."""
        out = {f"bbox_{k}": v for k, v in self.bbox.stats.items()}
        if self.segm is not None:
            out.update({f"segm_{k}": v for k, v in self.segm.stats.items()})
        if self.keypoints is not None:
            out.update({f"keypoints_{k}": v for k, v in self.keypoints.stats.items()})
        if self.official is not None:
            out.update({f"{self.official.key}_{k}": v for k, v in self.official.stats.items()})
        return out


def score(
    ground_truth: dict[str, Any],  # a COCO-format dataset dict (Dataset.coco_ground_truth)
    results_path: Path,
    image_ids: Sequence[int],
    *,
    masks: bool,
    category_names: dict[int, str],
    out_dir: str | os.PathLike[str] | None = None,
    keypoints: KeypointEval | None = None,
    max_dets: int = 100,
) -> DatasetEval:
    """COCOeval of a results file over `image_ids`: bbox, segm with `masks`, and
    keypoints (OKS) with `keypoints`, boxes and masks at `max_dets` detections per
    image (coco_evaluate); with `out_dir`, each iou type's numbers also go to
    OUT/{bbox,segm,keypoints}.json."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = ground_truth
        gt.createIndex()
    bbox = coco_evaluate(gt, results_path, "bbox", image_ids, max_dets=max_dets)
    segm = coco_evaluate(gt, results_path, "segm", image_ids, max_dets=max_dets) if masks else None
    kps = coco_evaluate(gt, results_path, "keypoints", image_ids, keypoints) if keypoints else None
    if out_dir is not None:
        for result in (bbox, segm, kps):
            if result is not None:
                write_json_atomic(Path(out_dir) / f"{result.iou_type}.json", {
                    "stats": result.stats,
                    "per_class_ap": {str(k): v for k, v in result.per_class_ap.items()},
                    "num_images": len(image_ids),
                    **({"max_dets": max_dets} if result.iou_type != "keypoints" else {}),
                })  # fmt: skip
    return DatasetEval(bbox=bbox, segm=segm, num_images=len(image_ids), results_path=results_path,
                       category_names=category_names, image_ids=tuple(int(i) for i in image_ids),
                       keypoints=kps, max_dets=max_dets)  # fmt: skip


# --- what the pictures of an evaluation draw (mrcli.plots, mrcli.evaluate) ------------------


@dataclass(frozen=True)
class PRCurves:
    """Precision-recall curves from COCOeval's precision array (area "all", 100
    detections per image): per class and the mean over the classes with
    ground truth, at IoU 0.5 ("iou50") and averaged over IoU 0.5:0.95
    ("iou50_95"). The mean of a curve over its recall points is its AP, as
    COCOeval.summarize computes it."""

    iou_type: str
    recall: np.ndarray  # [R] float, COCOeval's recall points 0, 0.01, ..., 1
    per_class: dict[int, dict[str, np.ndarray]]  # dataset category id -> {"iou50": [R], "iou50_95": [R]}
    overall: dict[str, np.ndarray]  # {"iou50": [R], "iou50_95": [R]}: the mean over classes

    def ap(self) -> dict[int | str, dict[str, float]]:
        """Each curve's AP (its mean over the recall points); "all" for the overall."""
        out: dict[int | str, dict[str, float]] = {
            c: {k: float(v.mean()) for k, v in curves.items()} for c, curves in self.per_class.items()
        }
        out["all"] = {k: float(v.mean()) for k, v in self.overall.items()}
        return out


def pr_curves(result: EvalResult) -> PRCurves | None:
    """The PR curves of an evaluation, read from the precision array its
    COCOeval computed (no second COCOeval); None without detections. Classes
    without ground truth (precision -1) are left out."""
    if result.precision is None:
        return None
    p = result.precision[:, :, :, 0, -1]  # [T, R, K]: area "all", the last maxDets (max_dets)
    t50 = int(np.flatnonzero(np.isclose(result.iou_thresholds, 0.5))[0])
    per_class = {}
    for k, cat_id in enumerate(result.cat_ids):
        if p[0, 0, k] > -1:  # -1 for every t and r where the class has no gt
            per_class[cat_id] = {"iou50": p[t50, :, k].copy(), "iou50_95": p[:, :, k].mean(axis=0)}
    if per_class:
        overall = {key: np.mean([c[key] for c in per_class.values()], axis=0) for key in ("iou50", "iou50_95")}
    else:
        overall = {key: np.zeros(len(result.recall_points)) for key in ("iou50", "iou50_95")}
    return PRCurves(result.iou_type, np.asarray(result.recall_points), per_class, overall)


AREA_NAMES = ("small", "medium", "large")  # COCOeval's area ranges 1..3: < 32², 32²-96², > 96² px


def ap_by_size(result: EvalResult) -> dict[int | str, list[float]]:
    """AP@[.5:.95] on small, medium and large objects (COCO's area ranges): per
    dataset category id, and "all" (COCOeval's APs, APm, APl); NaN where
    there is no ground truth of that size."""

    def nan_if_missing(v: float) -> float:
        return float(v) if v >= 0 else float("nan")

    out: dict[int | str, list[float]] = {
        "all": [nan_if_missing(result.stats[k]) for k in ("APs", "APm", "APl")]
    }
    if result.precision is None:
        return out
    for k, cat_id in enumerate(result.cat_ids):
        row = []
        for a in (1, 2, 3):
            p = result.precision[:, :, k, a, -1]
            p = p[p > -1]
            row.append(float(p.mean()) if p.size else float("nan"))
        out[cat_id] = row
    return out


# A detection counts as kept above this score in the confusion matrix and the
# per-image F1: `mrcli predict`'s default --score, the detections a user sees.
KEEP_SCORE = DEFAULT_SCORE
# A detection finds an instance at IoU >= this (COCO's AP50, PASCAL VOC's criterion).
MATCH_IOU = 0.5

# What became of a ground-truth instance (ImageMatch.gt_state):
GT_FOUND, GT_CONFUSED, GT_MISSED, GT_CROWD = 0, 1, 2, 3
# ... and of a kept detection (ImageMatch.det_state):
DET_CORRECT, DET_CONFUSED, DET_FALSE, DET_IGNORED = 0, 1, 2, 3


@dataclass(frozen=True)
class ImageMatch:
    """One image's kept detections matched to its ground truth (match_image).

    gt: found (a detection of its class), confused (found only by a detection
    of another class), missed, or a crowd region (never counted). A kept
    detection: correct, confused (on an instance of another class), false (on
    no instance: background) or ignored (on a crowd region of its class, as
    COCOeval ignores it)."""

    image_id: int
    gt_classes: np.ndarray  # [G] int, dataset category ids of the image's annotations, in order
    gt_state: np.ndarray  # [G] int8, GT_*
    detections: tuple[dict[str, Any], ...]  # the D kept detections (COCO result dicts), best first
    det_classes: np.ndarray  # [D] int, dataset category ids
    det_scores: np.ndarray  # [D] float
    det_state: np.ndarray  # [D] int8, DET_*
    det_gt: np.ndarray  # [D] int, the annotation it matched (correct, confused, ignored), else -1

    @property
    def tp(self) -> int:
        return int(np.sum(self.det_state == DET_CORRECT))

    @property
    def fp(self) -> int:
        """Kept detections that are not correct: false and confused ones."""
        return int(np.sum((self.det_state == DET_FALSE) | (self.det_state == DET_CONFUSED)))

    @property
    def fn(self) -> int:
        """Instances not found with their class: missed and confused ones."""
        return int(np.sum((self.gt_state == GT_MISSED) | (self.gt_state == GT_CONFUSED)))

    @property
    def f1(self) -> float:
        """2 TP / (2 TP + FP + FN); 1 for an image with nothing to find and nothing found."""
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if denominator else 1.0


def _ious(dets: list[dict[str, Any]], gts: list[dict[str, Any]], iou_type: str) -> np.ndarray:
    """[D, G] IoU of detections with annotations (boxes xywh, or RLE masks); for a
    crowd annotation, the fraction of the detection inside it (COCOeval's rule)."""
    if not dets or not gts:
        return np.zeros((len(dets), len(gts)))
    key = "segmentation" if iou_type == "segm" else "bbox"
    crowd = [int(bool(g.get("iscrowd", 0))) for g in gts]
    ious = mask_util.iou([d[key] for d in dets], [g[key] for g in gts], crowd)
    return np.asarray(ious, np.float64).reshape(len(dets), len(gts))


def match_image(image_id: int, gts: list[dict[str, Any]], dets: list[dict[str, Any]], *, iou_type: str,
                iou_threshold: float = MATCH_IOU) -> ImageMatch:  # fmt: skip
    """Match one image's kept detections (COCO result dicts; RLE masks for
    "segm") to its annotations (COCO annotation dicts, RLE segmentations).

    First as COCOeval does at one IoU threshold: detections best score first,
    each takes the unmatched instance of its own class it overlaps most (IoU
    >= iou_threshold), or else is ignored on a crowd region of its class.
    Then the detections left take, the same way, an unmatched instance of
    any class: those are the confusions between classes. Detections still
    left are false; instances left are missed."""
    order = np.argsort([-float(d["score"]) for d in dets], kind="mergesort")
    dets = [dets[i] for i in order]
    ious = _ious(dets, gts, iou_type)
    gt_cls = np.array([int(g["category_id"]) for g in gts], np.int64)
    crowd = np.array([bool(g.get("iscrowd", 0)) for g in gts], bool)
    det_cls = np.array([int(d["category_id"]) for d in dets], np.int64)
    gt_state = np.where(crowd, GT_CROWD, GT_MISSED).astype(np.int8)
    det_state = np.full(len(dets), -1, np.int8)
    det_gt = np.full(len(dets), -1, np.int64)
    for same_class in (True, False):
        for d in range(len(dets)):
            if det_state[d] >= 0:
                continue
            free = (gt_state == GT_MISSED) & (ious[d] >= iou_threshold)
            if same_class:
                free &= gt_cls == det_cls[d]
            if free.any():
                g = int(np.argmax(np.where(free, ious[d], -1.0)))
                gt_state[g] = GT_FOUND if same_class else GT_CONFUSED
                det_state[d], det_gt[d] = (DET_CORRECT if same_class else DET_CONFUSED), g
                continue
            if same_class:
                on_crowd = crowd & (gt_cls == det_cls[d]) & (ious[d] >= iou_threshold)
                if on_crowd.any():
                    det_state[d], det_gt[d] = DET_IGNORED, int(np.argmax(np.where(on_crowd, ious[d], -1.0)))
    det_state[det_state < 0] = DET_FALSE
    return ImageMatch(
        image_id=int(image_id), gt_classes=gt_cls, gt_state=gt_state, detections=tuple(dets),
        det_classes=det_cls, det_scores=np.array([float(d["score"]) for d in dets], np.float64),
        det_state=det_state, det_gt=det_gt,
    )  # fmt: skip


def match_detections(ground_truth: dict[str, Any], results: list[dict[str, Any]], *, iou_type: str,
                     image_ids: Sequence[int], score_threshold: float = KEEP_SCORE,
                     iou_threshold: float = MATCH_IOU) -> list[ImageMatch]:  # fmt: skip
    """match_image for every image of `image_ids`, with the detections scoring
    above `score_threshold` of the ground truth's categories (as COCOeval, a
    detection of a class the dataset does not have is left out)."""
    cats = {int(c["id"]) for c in ground_truth["categories"]}
    wanted = {int(i) for i in image_ids}
    anns: dict[int, list[dict[str, Any]]] = {i: [] for i in wanted}
    for a in ground_truth["annotations"]:
        if int(a["image_id"]) in wanted:
            anns[int(a["image_id"])].append(a)
    dets: dict[int, list[dict[str, Any]]] = {i: [] for i in wanted}
    for r in results:
        if int(r["image_id"]) in wanted and float(r["score"]) > score_threshold and int(r["category_id"]) in cats:
            dets[int(r["image_id"])].append(r)
    return [match_image(i, anns[int(i)], dets[int(i)], iou_type=iou_type, iou_threshold=iou_threshold)
            for i in image_ids]  # fmt: skip


def confusion_matrix(matches: Sequence[ImageMatch], cat_ids: Sequence[int]) -> np.ndarray:
    """[K+1, K+1] int64 counts: row = ground-truth class, column = predicted
    class, index K = background. A found instance counts on the diagonal, a
    confused one at (its class, the detection's), a missed one in the
    background column, a false detection in the background row; crowd regions
    and the detections on them are not counted. So row k sums to class k's
    instances and column k to its kept detections (less the ignored ones)."""
    index = {int(c): k for k, c in enumerate(cat_ids)}
    bg = len(cat_ids)
    m = np.zeros((bg + 1, bg + 1), np.int64)
    for match in matches:
        for c, state in zip(match.gt_classes, match.gt_state):
            if state == GT_MISSED:
                m[index[int(c)], bg] += 1
        for c, state, g in zip(match.det_classes, match.det_state, match.det_gt):
            if state in (DET_CORRECT, DET_CONFUSED):
                m[index[int(match.gt_classes[g])], index[int(c)]] += 1
            elif state == DET_FALSE:
                m[bg, index[int(c)]] += 1
    return m


def worst_images(matches: Sequence[ImageMatch], n: int) -> list[ImageMatch]:
    """Up to `n` images with an error, worst first: lowest F1, then the most
    errors (false + missed + confused), then the image id."""
    wrong = [m for m in matches if m.fp + m.fn > 0]
    return sorted(wrong, key=lambda m: (m.f1, -(m.fp + m.fn), m.image_id))[:n]
