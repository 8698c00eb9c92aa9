"""`mrcli eval`: a trained model's COCO box, mask and keypoint AP on a prepared dataset's split.

    result = run_eval(workdir="runs/tiny")            # its best checkpoint, data.eval_split
    result.bbox.stats["AP"], result.segm.stats["AP"], result.results_path
    result.keypoints.stats["AP"]                      # a keypoint model (OKS)

The model (a run's checkpoint or a checkpoint directory, mrcli.runs) goes
through mrcli.inference.evaluate_split, which the periodic evaluation of
training also runs: the results file (dataset category ids) and the COCOeval
numbers (mrcli.coco) land in OUT (default WORKDIR/eval, else ./eval).

A dataset with a benchmark metric of its own gets it too, beside COCO's:
Cityscapes the instance-level AP of cityscapesScripts (`mrcli[cityscapes]`),
in OUT/cityscapes.json; without cityscapesscripts the result says so and the
COCO AP is the one printed.

OUT/eval.json says what was evaluated (the checkpoint, its step, the split)
beside the numbers. With `plots` (the default), pictures of the evaluation go
to OUT/plots/ (`write_plots`), each with a .json of its numbers:

    pr_bbox.png, pr_segm.png        precision-recall per class and overall, at IoU
                                    0.5 and over 0.5:0.95 (COCOeval's precision array)
    ap_by_size_bbox.png, ..._segm   AP on small / medium / large objects per class
    confusion_matrix.png            at IoU 0.5 for the kept detections (score above
    confusion_matrix_normalised.png coco.KEEP_SCORE), with a background row and column
    worst_images.png                the images of lowest F1: ground truth and
                                    prediction side by side, errors marked
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from mrcli import coco, parallel, runs, tiling
from mrcli import plots as plotlib
from mrcli.coco import DatasetEval, DatasetMetric
from mrcli.config import Config
from mrcli.data import cityscapes
from mrcli.data import images as imagelib
from mrcli.data import masks as masklib
from mrcli.data.show import CROWD_GREY, blend
from mrcli.data.store import Dataset, find_dataset
from mrcli.files import write_json_atomic
from mrcli.errors import UserError
from mrcli.inference import Predictor, evaluate_split
from mrcli.progress import Report, for_process, silent
from mrcli.runs import load_trained, with_sets

PLOTS_DIR = "plots"
# Images in the gallery of the worst ones.
GALLERY_SIZE = 8


def run_eval(
    *,
    workdir: str | None = None,
    checkpoint: str | None = None,
    data: str | None = None,
    split: str | None = None,
    out: str | None = None,
    max_images: int | None = None,
    max_dets: int | None = None,
    tile: int | None = None,
    tile_overlap: int = 128,
    sets: Sequence[str] = (),
    data_dir: str | None = None,
    weights: str | None = None,
    plots: bool = True,
    report: Report | None = None,
    distributed: bool = False,
) -> DatasetEval:
    """A trained model (a run's checkpoint, a checkpoint directory, or `weights`
    by name or file) on a prepared dataset's split, results written under
    `out` (with `plots`, the pictures too: OUT/plots). `sets` change its
    inference fields (mrcli.runs.with_sets: image sizes, eval.batch_size,
    thresholds, detections per image). `max_dets` (default eval.max_dets, COCO's
    100) is how many detections per image COCOeval scores: the model then keeps
    at least that many (model.inference.detections_per_image raised to it, and
    its test-time proposals to at least twice it), so the results file holds up
    to max_dets per image. `tile`: every image is predicted in overlapping
    windows at its own scale and merged (inference.evaluate_split).

    On several processes (`distributed`, or a detected cluster) they divide
    the split (inference.evaluate_split) and all return the same numbers;
    process 0 writes eval.json, the dataset's own metric and the plots."""
    parallel.maybe_initialize_distributed(distributed)
    report = for_process(report, jax.process_index())
    trained = with_sets(load_trained(workdir, checkpoint, weights, report=report), sets)
    if tile is not None:
        tiling.round_tile(tile, tile_overlap, 1)  # a bad --tile fails before any work
    if max_dets is not None:
        trained = with_sets(trained, max_dets_sets(trained.config, max_dets))
    cfg = trained.config
    ds = find_dataset(data or cfg.data.dataset, data_dir)
    split = ds.check_split(split or cfg.data.eval_split)
    if trained.categories is None:
        raise UserError(f"{trained.origin} carries no category map; it cannot be evaluated")
    if out is None:
        out = str(Path(workdir).expanduser() / runs.EVAL_DIR) if workdir else runs.EVAL_DIR
    predictor = Predictor(trained.model, trained.state, cfg, report=report)
    result = evaluate_split(predictor, ds, split, out_dir=out, max_images=max_images,
                            categories=trained.categories, report=report, tile=tile,
                            tile_overlap=tile_overlap)  # fmt: skip
    result = dataclasses.replace(result, split=f"{ds.name}/{split}", model=trained.origin)
    if jax.process_index() != 0:
        return result
    result = with_dataset_metric(result, ds, split, out)
    write_json_atomic(Path(out) / runs.EVAL_RECORD, {
        "checkpoint": trained.origin, "step": trained.step, "dataset": ds.name, "split": split,
        "num_images": result.num_images, "max_dets": result.max_dets, **result.summary(),
    })  # fmt: skip
    if plots:
        result = dataclasses.replace(result, plots=tuple(write_plots(result, ds, split, Path(out) / PLOTS_DIR,
                                                                     report=report)))  # fmt: skip
    return result


def max_dets_sets(cfg: Config, max_dets: int) -> list[str]:
    """The --set pairs that score `max_dets` detections per image: eval.max_dets,
    and where the model keeps fewer, its detections per image raised to it and
    its test-time proposals (per image, before the box head) to at least twice
    it (torchvision keeps 10x: 1000 proposals for 100 detections)."""
    if max_dets < 10:
        raise UserError(f"--max-dets {max_dets}: COCOeval needs at least 10 (it also reports AR1 and AR10)")
    sets = [f"eval.max_dets={max_dets}"]
    if cfg.model.inference.detections_per_image < max_dets:
        sets.append(f"model.inference.detections_per_image={max_dets}")
    rpn = cfg.model.rpn
    if rpn.post_nms_topk.test < 2 * max_dets:
        sets.append(f"model.rpn.post_nms_topk.test={2 * max_dets}")
        sets.append(f"model.rpn.pre_nms_topk.test={max(rpn.pre_nms_topk.test, 2 * max_dets)}")
    return sets


CITYSCAPES_AP = "Cityscapes instance-level AP (cityscapesScripts)"


def with_dataset_metric(result: DatasetEval, ds: Dataset, split: str, out: str | Path) -> DatasetEval:
    """The dataset's own metric beside COCO's, where it has one (Cityscapes),
    or a note saying why not."""
    source = ds.record.get("source", {})
    if source.get("kind") != "cityscapes" or result.segm is None:
        return result
    if not cityscapes.official_eval_available():
        return dataclasses.replace(result, notes=result.notes + (
            f"printed: the COCO AP; for the {CITYSCAPES_AP}, pip install \"mrcli[cityscapes]\"",))
    names = ds.file_names(split)
    with open(result.results_path) as f:
        detections = json.load(f)
    numbers = cityscapes.official_eval(detections, {i: names[i] for i in result.image_ids},
                                       source["manual_dir"])  # fmt: skip
    write_json_atomic(Path(out) / "cityscapes.json", {**numbers, "num_images": result.num_images})
    metric = DatasetMetric(CITYSCAPES_AP, "cityscapes", {"AP": numbers["AP"], "AP50": numbers["AP50"]},
                           numbers["per_class_ap"])  # fmt: skip
    return dataclasses.replace(result, official=metric)


# Colours and line styles of the gallery's boxes: Okabe & Ito (2008) colours
# (told apart with the common colour-vision deficiencies), and a line style
# each, so the kinds stay apart in grayscale too.
CORRECT = ((0, 158, 115), "-")  # bluish green, solid
CONFUSED = ((204, 121, 167), "-.")  # reddish purple, dash-dot: found with the wrong class
WRONG = ((213, 94, 0), "--")  # vermillion, dashed: a missed instance or a false detection
CROWD = (CROWD_GREY, ":")  # a crowd region, not counted


def write_plots(result: DatasetEval, ds: Dataset, split: str, out: str | Path, *,
                score_threshold: float = coco.KEEP_SCORE, gallery_size: int = GALLERY_SIZE,
                report: Report | None = None) -> list[Path]:  # fmt: skip
    """The pictures of an evaluation in `out` (module docstring); returns the
    PNGs written. The PR curves and AP by size come from the precision arrays
    of the evaluation's own COCOeval; the confusion matrix and the gallery
    from its results file matched to the split's ground truth (coco.match_detections)
    with mask IoU (box IoU for a box-only model)."""
    report = silent(report)
    out = Path(out)
    names = result.category_names
    where = f"{ds.name}/{split}, {result.num_images} images"
    kind_name = {"bbox": "box", "segm": "mask"}
    paths = []
    for r in (result.bbox, result.segm):
        if r is None:
            continue
        curves = coco.pr_curves(r)
        if curves is not None:
            ap = {("all" if c == "all" else names.get(c, str(c))): v for c, v in curves.ap().items()}
            paths.append(plotlib.pr_curves(
                out / f"pr_{r.iou_type}.png", recall=curves.recall, ap=ap, overall=curves.overall,
                per_class={names.get(c, str(c)): v for c, v in curves.per_class.items()},
                title=f"{kind_name[r.iou_type]} precision-recall, {where}",
            ))  # fmt: skip
        sizes = coco.ap_by_size(r)
        paths.append(plotlib.ap_by_size(
            out / f"ap_by_size_{r.iou_type}.png", title=f"{kind_name[r.iou_type]} AP by object size, {where}",
            per_class={("all" if c == "all" else names.get(c, str(c))): v for c, v in sizes.items()},
            ylabel=f"{kind_name[r.iou_type]} AP @[.5:.95] (0-1)",
        ))  # fmt: skip
    report.say("matching detections to the ground truth for the confusion matrix", "detail")
    iou_type = "segm" if result.segm is not None else "bbox"
    ground_truth = ds.coco_ground_truth(split)
    with open(result.results_path) as f:
        detections = json.load(f)
    matches = coco.match_detections(ground_truth, detections, iou_type=iou_type, image_ids=result.image_ids,
                                    score_threshold=score_threshold)  # fmt: skip
    cat_ids = [int(c["id"]) for c in ds.categories]
    matrix = coco.confusion_matrix(matches, cat_ids)
    labels = [names.get(c, str(c)) for c in cat_ids] + ["background"]
    rule = f"{kind_name[iou_type]} IoU >= {coco.MATCH_IOU}, detections scoring above {score_threshold}"
    how = {"iou_type": iou_type, "iou_threshold": coco.MATCH_IOU, "score_threshold": score_threshold}
    totals = {"tp": sum(m.tp for m in matches), "fp": sum(m.fp for m in matches),
              "fn": sum(m.fn for m in matches)}  # fmt: skip
    for normalised, name in ((False, "confusion_matrix"), (True, "confusion_matrix_normalised")):
        paths.append(plotlib.confusion_matrix(
            out / f"{name}.png", matrix=matrix, names=labels, normalised=normalised,
            note=f"{rule}; background: missed (column), false (row)", extra={**how, **totals},
            title=f"confusion matrix{' (each row sums to 1)' if normalised else ''}, {where}",
        ))  # fmt: skip
    worst = coco.worst_images(matches, gallery_size)
    items, shown = _gallery_items(ds, split, worst, names)
    paths.append(plotlib.gallery(
        out / "worst_images.png", items=items, columns=("ground truth", "prediction"),
        title=f"the {len(worst)} worst images by F1 ({rule}), {where}",
        legend=[("correct", *CORRECT), ("wrong class", *CONFUSED), ("missed / false", *WRONG),
                ("crowd region (not counted)", *CROWD)],
        numbers={"images": shown, "images_with_errors": sum(1 for m in matches if m.fp + m.fn), **how},
    ))  # fmt: skip
    return paths


def _gallery_items(ds: Dataset, split: str, worst: list[coco.ImageMatch],
                   names: dict[int, str]) -> tuple[list[tuple[str, plotlib.Panel, plotlib.Panel]], list[dict]]:  # fmt: skip
    """(caption, ground-truth panel, prediction panel) of each image, and what
    each shows."""
    index = {int(i): k for k, i in enumerate(ds.index(split)["image_id"])}
    src = ds.source(split)
    items, shown = [], []
    for m in worst:
        rec = src[index[m.image_id]]
        h, w = int(rec["height"]), int(rec["width"])
        rgb = np.asarray(imagelib.decode_rgb(rec["image"]))
        # Ground truth, in the record's order (the order of the annotations matched).
        as_class = {int(g): int(c) for g, c, s in zip(m.det_gt, m.det_classes, m.det_state)
                    if s == coco.DET_CONFUSED}  # fmt: skip
        gt_labels, gt_looks = [], []
        for g, (c, state) in enumerate(zip(m.gt_classes, m.gt_state)):
            name = names.get(int(c), str(c))
            if state == coco.GT_FOUND:
                gt_labels.append(name), gt_looks.append(CORRECT)
            elif state == coco.GT_CONFUSED:
                gt_labels.append(f"{name}, found as {names.get(as_class[g], as_class[g])}")
                gt_looks.append(CONFUSED)
            elif state == coco.GT_MISSED:
                gt_labels.append(f"MISSED {name}"), gt_looks.append(WRONG)
            else:
                gt_labels.append(f"crowd: {name}"), gt_looks.append(CROWD)
        # Only the errors' masks are filled, so the eye goes to them and the photo stays visible.
        errors = [k for k, look in enumerate(gt_looks) if look in (CONFUSED, WRONG)]
        gt_masks = [masklib.decode(rec["rles"][k], h, w) for k in errors]
        left = plotlib.Panel(blend(rgb, gt_masks, [gt_looks[k][0] for k in errors]),
                             np.asarray(rec["boxes"], np.float32).reshape(-1, 4), gt_labels,
                             [c for c, _ in gt_looks], [s for _, s in gt_looks])  # fmt: skip
        # The kept detections, best first.
        det_labels, det_looks = [], []
        for d, c, state, g in zip(m.detections, m.det_classes, m.det_state, m.det_gt):
            text = f"{names.get(int(c), str(c))} {float(d['score']):.2f}"
            if state == coco.DET_CORRECT:
                det_labels.append(text), det_looks.append(CORRECT)
            elif state == coco.DET_CONFUSED:
                gt_name = names.get(int(m.gt_classes[g]), str(m.gt_classes[g]))
                det_labels.append(f"{text}, is {gt_name}"), det_looks.append(CONFUSED)
            elif state == coco.DET_FALSE:
                det_labels.append(f"FALSE {text}"), det_looks.append(WRONG)
            else:
                det_labels.append(f"{text} on a crowd region"), det_looks.append(CROWD)
        boxes = np.array([[x, y, x + bw, y + bh] for x, y, bw, bh in (d["bbox"] for d in m.detections)],
                         np.float32).reshape(-1, 4)  # fmt: skip
        errors = [k for k, look in enumerate(det_looks) if look in (CONFUSED, WRONG)]
        det_masks = [masklib.decode(m.detections[k]["segmentation"]["counts"].encode(), h, w)
                     for k in errors if "segmentation" in m.detections[k]]  # fmt: skip
        right = plotlib.Panel(blend(rgb, det_masks, [det_looks[k][0] for k in errors]), boxes, det_labels,
                              [c for c, _ in det_looks], [s for _, s in det_looks])  # fmt: skip
        file_name = rec["file_name"].decode() if isinstance(rec["file_name"], bytes) else str(rec["file_name"])
        counts = {
            "correct": m.tp,
            "missed": int(np.sum(m.gt_state == coco.GT_MISSED)),
            "false": int(np.sum(m.det_state == coco.DET_FALSE)),
            "wrong_class": int(np.sum(m.det_state == coco.DET_CONFUSED)),
        }
        caption = (f"image {m.image_id} ({Path(file_name).name}), F1 {m.f1:.2f}: "
                   + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items()))  # fmt: skip
        items.append((caption, left, right))
        shown.append({"image_id": m.image_id, "file_name": file_name, "f1": m.f1, "tp": m.tp, "fp": m.fp,
                      "fn": m.fn, **counts})  # fmt: skip
    return items, shown
