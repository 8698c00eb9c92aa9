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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pycocotools.mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

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


@dataclass(frozen=True)
class KeypointEval:
    """What COCO's keypoint eval (OKS) needs beyond the files: the keypoint set's
    sigmas and the categories that have keypoints (mrcli.keypoint_sets)."""

    sigmas: tuple[float, ...]
    category_ids: tuple[int, ...]


def stat_names(iou_type: str) -> tuple[str, ...]:
    return KEYPOINT_STAT_NAMES if iou_type == "keypoints" else STAT_NAMES


def coco_evaluate(
    gt: COCO,
    results: str | os.PathLike[str] | list[dict[str, Any]],
    iou_type: str,
    image_ids: Sequence[int] | None = None,
    keypoints: KeypointEval | None = None,
) -> EvalResult:
    """COCOeval of a results file (or list) against `gt`, over `image_ids` (default: all).
    iou_type "keypoints" (OKS) needs `keypoints`: the sigmas, and the categories it
    scores (the ones with keypoints).

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
    names = stat_names(iou_type)
    if not results:
        stats = {name: 0.0 for name in names}
        return EvalResult(iou_type, stats, {c: 0.0 for c in cat_ids})
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iou_type)
        if image_ids is not None:
            ev.params.imgIds = list(image_ids)
        if iou_type == "keypoints":
            ev.params.kpt_oks_sigmas = np.asarray(keypoints.sigmas, np.float64)
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {name: float(v) for name, v in zip(names, ev.stats)}
    # precision [T iou thresholds, R recall points, K classes, A areas, M maxDets];
    # area "all" and maxDets 100 are index 0 and -1 (COCOeval.Params).
    precision = ev.eval["precision"]
    per_class = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_class[int(cat_id)] = float(p.mean()) if p.size else float("nan")
    return EvalResult(iou_type, stats, per_class)


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
    keypoints: EvalResult | None = None  # OKS, for a keypoint model on a keypoint dataset

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
) -> DatasetEval:
    """COCOeval of a results file over `image_ids`: bbox, segm with `masks`, and
    keypoints (OKS) with `keypoints`; with `out_dir`, each iou type's numbers
    also go to OUT/{bbox,segm,keypoints}.json."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = ground_truth
        gt.createIndex()
    bbox = coco_evaluate(gt, results_path, "bbox", image_ids)
    segm = coco_evaluate(gt, results_path, "segm", image_ids) if masks else None
    kps = coco_evaluate(gt, results_path, "keypoints", image_ids, keypoints) if keypoints else None
    if out_dir is not None:
        for result in (bbox, segm, kps):
            if result is not None:
                write_json_atomic(Path(out_dir) / f"{result.iou_type}.json", {
                    "stats": result.stats,
                    "per_class_ap": {str(k): v for k, v in result.per_class_ap.items()},
                    "num_images": len(image_ids),
                })  # fmt: skip
    return DatasetEval(bbox=bbox, segm=segm, num_images=len(image_ids), results_path=results_path,
                       category_names=category_names, image_ids=tuple(int(i) for i in image_ids),
                       keypoints=kps)  # fmt: skip
