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
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

from mrcli import config as config_lib
from mrcli.coco import DatasetEval, DatasetMetric
from mrcli.data import cityscapes
from mrcli.data.store import Dataset, find_dataset
from mrcli.files import write_json_atomic
from mrcli.errors import UserError
from mrcli.inference import Predictor, evaluate_split
from mrcli.progress import Report
from mrcli.runs import load_trained


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
    weights: str | None = None,
    report: Report | None = None,
) -> DatasetEval:
    """A trained model (a run's checkpoint, a checkpoint directory, or `weights`
    by name or file) on a prepared dataset's split, results written under
    `out`. `sets` change the data and eval fields of the model's config (image
    sizes, eval.batch_size, ...)."""
    trained = load_trained(workdir, checkpoint, weights, report=report)
    cfg = config_lib.override(trained.config, config_lib.parse_sets(list(sets)))
    ds = find_dataset(data or cfg.data.dataset, data_dir)
    split = ds.check_split(split or cfg.data.eval_split)
    if trained.categories is None:
        raise UserError(f"{trained.origin} carries no category map; it cannot be evaluated")
    if out is None:
        out = str(Path(workdir).expanduser() / "eval") if workdir else "eval"
    predictor = Predictor(trained.model, trained.state, cfg, report=report)
    result = evaluate_split(predictor, ds, split, out_dir=out, max_images=max_images,
                            categories=trained.categories, report=report)  # fmt: skip
    return with_dataset_metric(result, ds, split, out)


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
