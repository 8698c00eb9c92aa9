"""Detections -> COCO results files -> COCOeval tables (host side, numpy + pycocotools).

Results are written as they come (one image at a time) into a JSON array, so
memory stays flat with the number of images; the file appears under its final
name only when complete (temp file + rename, DESIGN.md §7).

Category ids in results are the dataset's own ids, mapped from the model's
contiguous ids 1..K with the category map stored with the dataset/checkpoint.

Dimension key: D detections, H/W image height/width (original image pixels).
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

from mrcli.files import write_json_atomic

# COCOeval.summarize's 12 numbers, in its order.
STAT_NAMES = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)  # fmt: skip
IOU_TYPES = ("bbox", "segm")


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
) -> list[dict[str, Any]]:
    """One image's valid detections as COCO result dicts (bbox xywh, segmentation RLE).

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
    stats: dict[str, float]  # STAT_NAMES -> value (-1 where COCOeval has no gt of that kind)
    per_class_ap: dict[int, float]  # dataset category id -> AP@[.5:.95] (nan without gt)


def coco_evaluate(
    gt: COCO,
    results: str | os.PathLike[str] | list[dict[str, Any]],
    iou_type: str,
    image_ids: Sequence[int] | None = None,
) -> EvalResult:
    """COCOeval of a results file (or list) against `gt`, over `image_ids` (default: all).

    COCOeval's printing is captured, so stdout stays clean for --json."""
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    if not isinstance(results, list):
        with open(results) as f:
            results = json.load(f)
    if iou_type == "segm" and results and "segmentation" not in results[0]:
        raise ValueError("these results have no masks (a box-only model); evaluate 'bbox' only")
    cat_ids = sorted(gt.getCatIds())
    if not results:
        stats = {name: 0.0 for name in STAT_NAMES}
        return EvalResult(iou_type, stats, {c: 0.0 for c in cat_ids})
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iou_type)
        if image_ids is not None:
            ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {name: float(v) for name, v in zip(STAT_NAMES, ev.stats)}
    # precision [T iou thresholds, R recall points, K classes, A areas, M maxDets];
    # area "all" and maxDets 100 are index 0 and -1 (COCOeval.Params).
    precision = ev.eval["precision"]
    per_class = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_class[int(cat_id)] = float(p.mean()) if p.size else float("nan")
    return EvalResult(iou_type, stats, per_class)


# --- the model over a dataset split -----------------------------------------------------


@dataclass(frozen=True)
class ImageDetections:
    """One image's valid detections in its original pixels (host side)."""

    image_id: int
    boxes: np.ndarray  # [D,4] float32 xyxy, original image pixels
    scores: np.ndarray  # [D] float32
    classes: np.ndarray  # [D] int32, contiguous 1..K
    masks: np.ndarray | None  # [D,H,W] bool pasted into the original image, or None
    height: int
    width: int


def image_detections(
    dets: dict[str, np.ndarray],  # one image: boxes [D,4] (input px), scores, classes, valid, masks [D,M,M]
    image_info: np.ndarray,  # [5] (orig_h, orig_w, scale, resized_h, resized_w)
    image_id: int,
    mask_threshold: float = 0.5,
) -> ImageDetections:
    """Model detections of one image -> its original pixels, masks pasted.

    Boxes scale by orig/resized per axis (torchvision's transform.postprocess);
    masks are pasted at those boxes into the original image and thresholded
    (torchvision's paste_masks_in_image, mrcli.ops.masks.paste_masks)."""
    from mrcli.ops.masks import paste_masks

    orig_h, orig_w, _, resized_h, resized_w = (float(v) for v in image_info)
    keep = np.flatnonzero(np.asarray(dets["valid"], bool))
    ratio = np.array(
        [orig_w / resized_w, orig_h / resized_h, orig_w / resized_w, orig_h / resized_h],
        np.float32,
    )
    boxes = np.asarray(dets["boxes"], np.float32)[keep] * ratio
    h, w = int(round(orig_h)), int(round(orig_w))
    masks = None
    if "masks" in dets:
        masks = paste_masks(np.asarray(dets["masks"], np.float32)[keep], boxes, h, w,
                            threshold=mask_threshold)  # fmt: skip
    return ImageDetections(
        image_id=int(image_id),
        boxes=boxes,
        scores=np.asarray(dets["scores"], np.float32)[keep],
        classes=np.asarray(dets["classes"], np.int32)[keep],
        masks=masks,
        height=h,
        width=w,
    )


@dataclass(frozen=True)
class DatasetEval:
    """COCO evaluation of a model on a split."""

    bbox: EvalResult
    segm: EvalResult | None  # None for a box-only model
    num_images: int
    results_path: Path  # the COCO results file (dataset category ids)
    category_names: dict[int, str]  # dataset category id -> name

    def summary(self) -> dict[str, float]:
        """Flat numbers: bbox_AP, bbox_AP50, ..., segm_AP, ... (the 12 of each)."""
        out = {f"bbox_{k}": v for k, v in self.bbox.stats.items()}
        if self.segm is not None:
            out.update({f"segm_{k}": v for k, v in self.segm.stats.items()})
        return out


def evaluate_model(
    model: Any,  # mrcli.model.Model
    model_state: Any,  # its full nnx.State
    dataset: Any,  # mrcli.data.store.Dataset
    cfg: Any,  # mrcli.config.Config
    *,
    split: str,
    out_dir: str | os.PathLike[str] | None = None,
    mesh: Any = None,
    max_images: int | None = None,
    categories: list[dict[str, Any]] | None = None,
    report: Any = None,
) -> DatasetEval:
    """Run inference over `split` in fixed-shape batches, write the COCO results
    file (streaming), and score it with COCOeval (bbox, and segm with masks).

    `categories` is the model's category map (a checkpoint's); it must cover
    the dataset's (check_categories). `report(done, total)` is called after
    each batch."""
    import tempfile

    import jax

    from mrcli.data import pipeline
    from mrcli.train import data_sharded, make_mesh, replicated

    if jax.process_count() > 1:
        from mrcli.errors import UserError

        # Each process would see only its shard of the split; merging the
        # per-process results files is not written yet.
        raise UserError("evaluation runs on one host: run `mrcli eval` without jax.distributed")
    categories = categories if categories is not None else dataset.categories
    check_categories(categories, dataset.categories, dataset.name)
    dataset_ids = dataset_id_table(categories)
    mesh = mesh if mesh is not None else make_mesh()
    n_dev = mesh.devices.size
    batch_size = cfg.eval.batch_size
    if batch_size % n_dev:
        batch_size = -(-batch_size // n_dev) * n_dev  # round up: padding is never counted
    batches = pipeline.eval_batches(cfg, dataset, split=split, global_batch=batch_size,
                                    max_images=max_images)  # fmt: skip
    detect = jax.jit(
        model.detect,
        in_shardings=(replicated(mesh), data_sharded(mesh), data_sharded(mesh)),
    )
    state = jax.device_put(model_state, replicated(mesh))
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="mrcli-eval-"))
    results_path = out / "detections.json"
    image_ids: list[int] = []
    total = len(batches)
    with batches, ResultsWriter(results_path) as writer:
        for done, batch in enumerate(batches, 1):
            dets = jax.device_get(detect(state, batch["image"], batch["image_info"]))
            for i in range(batch["image"].shape[0]):
                if batch["is_padding"][i]:
                    continue
                one = {k: v[i] for k, v in dets.items()}
                d = image_detections(one, batch["image_info"][i], int(batch["image_id"][i]))
                image_ids.append(d.image_id)
                writer.write(to_coco_results(d.image_id, d.boxes, d.scores, d.classes,
                                             np.ones(len(d.scores), bool), dataset_ids, d.masks))  # fmt: skip
            if report is not None:
                report(done, total)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = dataset.coco_ground_truth(split)
        gt.createIndex()
    bbox = coco_evaluate(gt, results_path, "bbox", image_ids)
    segm = coco_evaluate(gt, results_path, "segm", image_ids) if cfg.model.masks else None
    if out_dir is not None:
        for result in (bbox, segm):
            if result is not None:
                write_json_atomic(out / f"{result.iou_type}.json", {
                    "stats": result.stats,
                    "per_class_ap": {str(k): v for k, v in result.per_class_ap.items()},
                    "num_images": len(image_ids),
                })  # fmt: skip
    names = {int(c["id"]): c["name"] for c in dataset.categories}
    return DatasetEval(bbox=bbox, segm=segm, num_images=len(image_ids), results_path=results_path,
                       category_names=names)  # fmt: skip


def check_categories(model_categories, dataset_categories, dataset_name: str) -> None:
    """Every category of the dataset must be one of the model's, by dataset id
    and name (a model may know more, e.g. torchvision's 91-slot COCO map)."""
    model_map = {int(c["id"]): c["name"] for c in model_categories}
    bad = [c for c in dataset_categories if model_map.get(int(c["id"])) != c["name"]]
    if bad:
        from mrcli.errors import UserError

        c = bad[0]
        have = model_map.get(int(c["id"]))
        raise UserError(
            f"the checkpoint's categories do not fit dataset {dataset_name!r}: {len(bad)} of its "
            f"{len(dataset_categories)} categories are not the model's, e.g. id {c['id']} "
            f"{c['name']!r} (the model has {have!r} there). Evaluate on the dataset the model "
            "was trained on (--data), or fine-tune it there first (mrcli train --init-from)"
        )


def run_eval(
    *,
    workdir: str | None = None,
    checkpoint: str | None = None,
    data: str | None = None,
    split: str | None = None,
    out: str | None = None,
    max_images: int | None = None,
    sets: Sequence[str] = (),
    data_dir: str | None = None,
) -> "DatasetEval":
    """`mrcli eval`: a trained model (a run's checkpoint or a checkpoint
    directory) on a prepared dataset's split, results written under `out`."""
    from mrcli import config as config_lib
    from mrcli.data.store import find_dataset
    from mrcli.train import load_trained

    trained = load_trained(workdir, checkpoint)
    cfg = config_lib.override(trained.config, config_lib.parse_sets(list(sets)))
    ds = find_dataset(data or cfg.data.dataset, data_dir)
    split = ds.check_split(split or cfg.data.eval_split)
    categories = trained.categories
    if categories is None:
        from mrcli.errors import UserError

        raise UserError(f"{trained.origin} carries no category map; it cannot be evaluated")
    if out is None:
        out = str(Path(workdir).expanduser() / "eval") if workdir else "eval"
    return evaluate_model(trained.model, trained.state, ds, cfg, split=split, out_dir=out,
                          max_images=max_images, categories=categories)  # fmt: skip


