"""Dense scenes: the instance limits come from the data (mrcli.train.instance_limits),
nothing is truncated, and COCOeval's maxDets follows (`mrcli eval --max-dets`)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pycocotools.mask as mask_util
import pytest
from common import MICRO_SETS  # benchmarks/common.py
from PIL import Image

from mrcli import coco
from mrcli import config as c
from mrcli import train as train_lib
from mrcli.data import pipeline
from mrcli.data.prepare import prepare_coco_json
from mrcli.data.store import find_dataset
from mrcli.evaluate import max_dets_sets, run_eval
from mrcli.progress import Report

GRID = (10, 15)  # squares per row, rows: 150 instances per image


class Lines(Report, list):
    def say(self, text, kind="info"):
        self.append(text)


def _dense_coco(root, images: int, side: int = 128) -> dict:
    """`images` pictures of side x side, each with 150 6x6 squares on a grid (2 classes)."""
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    out = {"images": [], "annotations": [],
           "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}  # fmt: skip
    for i in range(1, images + 1):
        rgb = np.full((side, side, 3), 30, np.uint8)
        for r in range(GRID[1]):
            for k in range(GRID[0]):
                x, y, cls = 4 + 8 * k, 4 + 8 * r, 1 + (r + k + i) % 2
                rgb[y: y + 6, x: x + 6] = (220, 40, 40) if cls == 1 else (40, 220, 40)
                mask = np.zeros((side, side), np.uint8)
                mask[y: y + 6, x: x + 6] = 1
                rle = mask_util.encode(np.asfortranarray(mask))
                rle["counts"] = rle["counts"].decode()
                out["annotations"].append({"id": len(out["annotations"]) + 1, "image_id": i,
                                           "category_id": cls, "segmentation": rle,
                                           "bbox": [x, y, 6, 6], "area": 36.0, "iscrowd": 0})  # fmt: skip
        Image.fromarray(rgb).save(root / "imgs" / f"{i}.png")
        out["images"].append({"id": i, "file_name": f"{i}.png", "height": side, "width": side})
    return out


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("dense")
    for split, n in (("train", 8), ("val", 2)):
        (root / split).mkdir()
        (root / f"{split}.json").write_text(json.dumps(_dense_coco(root / split, n)))
    prepare_coco_json(annotations=root / "train.json", images=root / "train" / "imgs", name="dense",
                      val_annotations=root / "val.json", val_images=root / "val" / "imgs",
                      data_dir=root / "data")  # fmt: skip
    return root / "data"


def test_limits_are_raised_to_hold_the_data_never_lowered_and_set_ones_are_kept():
    cfg = c.resolve("tiny", [])  # 16 gt slots, 64 RoIs (16 foreground), 16 mask slots, 20 detections
    assert train_lib.instance_limits(cfg, 6, 6) == {}  # shapes: every limit already holds it
    got = train_lib.instance_limits(cfg, 150, 180)
    assert got == {
        "data.max_instances": 152,  # 150 rounded up to 8
        "model.roi_heads.batch_per_image": 640,  # 150 / 0.25 = 600, rounded up to 64
        "model.mask_head.fg_slots": 152,
        "model.inference.detections_per_image": 230,  # 1.25 * 180 = 225, rounded up to 10
        "eval.max_dets": 230,
        "model.rpn.post_nms_topk.test": 460, "model.rpn.pre_nms_topk.test": 460,
        "model.rpn.post_nms_topk.train": 640, "model.rpn.pre_nms_topk.train": 640,
    }  # fmt: skip
    keypoints = train_lib.instance_limits(c.resolve("tiny_keypoints", []), 150, 180)
    assert keypoints["model.keypoint_head.fg_slots"] == 152
    # What a resumed run keeps as it started (mrcli.train.train) covers every limit.
    assert set(got) | set(keypoints) <= train_lib.LIMIT_KEYS
    assert train_lib.instance_limits(cfg, 150, 180, train_lib.LIMIT_KEYS) == {}
    kept = train_lib.instance_limits(cfg, 150, 180, frozenset({"data.max_instances", "eval.max_dets"}))
    assert "data.max_instances" not in kept and "eval.max_dets" not in kept
    assert kept["model.inference.detections_per_image"] == 230
    big = c.resolve("r50_fpn_1x", [])  # 100 slots, 512 RoIs (128 foreground, 128 mask slots)
    assert train_lib.instance_limits(big, 120, 90) == {"data.max_instances": 120}


def test_max_dets_scores_what_100_cuts_off():
    """150 perfect boxes in one image: COCO's 100 caps the recall at 2/3; 300 sees them all."""
    boxes = [[8.0 * (k % 15), 8.0 * (k // 15), 6.0, 6.0] for k in range(150)]
    gt = {"images": [{"id": 1, "height": 128, "width": 128}, {"id": 2, "height": 128, "width": 128}],
          "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": k + 1, "image_id": 1, "category_id": 1, "bbox": b, "area": 36.0,
                           "iscrowd": 0} for k, b in enumerate(boxes)]}  # fmt: skip
    gt["annotations"] += [{"id": 1000 + k, "image_id": 2, "category_id": 1, "bbox": b, "area": 36.0,
                           "iscrowd": 0} for k, b in enumerate(boxes[:20])]  # fmt: skip
    results = [{"image_id": 1, "category_id": 1, "bbox": b, "score": 1.0 - k / 1000}
               for k, b in enumerate(boxes)]  # fmt: skip
    from pycocotools.coco import COCO

    truth = COCO()
    truth.dataset = gt
    truth.createIndex()
    at100 = coco.coco_evaluate(truth, results, "bbox", [1])
    at300 = coco.coco_evaluate(truth, results, "bbox", [1], max_dets=300)
    assert at100.stats["AR100"] == pytest.approx(100 / 150, abs=1e-6) and at100.stats["AP"] < 0.7
    assert at300.stats["AR300"] == pytest.approx(1.0) and at300.stats["AP"] == pytest.approx(1.0)
    assert "AR100" not in at300.stats  # labelled with the maxDets used
    # An image with fewer than 100 detections scores the same either way.
    sparse = [{"image_id": 2, "category_id": 1, "bbox": b, "score": 0.5} for b in boxes[:20]]
    a, b = (coco.coco_evaluate(truth, sparse, "bbox", [2], max_dets=m) for m in (100, 300))
    assert a.stats["AP"] == b.stats["AP"] == pytest.approx(1.0)
    with pytest.raises(Exception, match="--max-dets 5"):
        coco.coco_evaluate(truth, results, "bbox", [1], max_dets=5)


def test_max_dets_raises_what_the_model_keeps():
    cfg = c.resolve("tiny", [])  # 20 detections, 128 test proposals
    assert max_dets_sets(cfg, 300) == ["eval.max_dets=300", "model.inference.detections_per_image=300",
                                       "model.rpn.post_nms_topk.test=600", "model.rpn.pre_nms_topk.test=600"]
    assert max_dets_sets(c.resolve("r50_fpn_1x", []), 100) == ["eval.max_dets=100"]


def test_150_instances_per_image_train_and_evaluate_untruncated(dense_dir, tmp_path):
    ds = find_dataset("dense", dense_dir)
    assert ds.index("train")["num_instances"].tolist() == [150] * 8
    sets = [*MICRO_SETS, "data.image_size=128", "data.max_size=128", "data.num_workers=0",
            "data.dataset=dense", "data.hflip_prob=0", "model.num_classes=2", "model.inference.score_threshold=0.0",
            "train.global_batch=8", "train.steps=2", "train.warmup_steps=1", "train.decay_steps=1",
            "train.eval_every=2", "train.checkpoint_every=2", "train.log_every=1"]  # fmt: skip
    cfg = c.resolve("tiny", sets)
    lines = Lines()
    chosen = train_lib.for_dataset(cfg, ds, report=lines)
    said = [s for s in lines if s.startswith("limits for dataset 'dense'")]
    assert len(said) == 1 and "up to 150 instances per training image" in said[0], lines
    assert "data.max_instances=152" in said[0] and "model.inference.detections_per_image=190" in said[0]
    # Every instance reaches the model: no slot truncation.
    with pipeline.train_batches(chosen, ds, num_steps=1, num_workers=0) as it:
        batch = next(it)
    assert batch["gt_valid"].sum(axis=1).tolist() == [150] * 8

    run = tmp_path / "run"
    result = train_lib.train(cfg, run, data_dir=dense_dir, report=Lines())
    assert result.step == 2 and "segm_AR190" in result.eval  # scored at the chosen maxDets
    record = json.loads((run / "run.json").read_text())["config"]
    assert record["data"]["max_instances"] == 152 and record["eval"]["max_dets"] == 190

    ev = run_eval(workdir=str(run), out=str(tmp_path / "eval300"), max_dets=300, plots=False,
                  data_dir=str(dense_dir))
    per_image = Counter(d["image_id"] for d in json.loads(ev.results_path.read_text()))
    assert ev.max_dets == 300 and "segm_AR300" in ev.summary()
    assert max(per_image.values()) > 190  # more than the run's own 190 were kept and scored
    assert max(per_image.values()) <= 300
    saved = json.loads((tmp_path / "eval300" / "eval.json").read_text())
    assert saved["max_dets"] == 300

    # Tiled: each 128 px image in 64 px windows (overlap 32) at its own scale, merged.
    tiled = run_eval(workdir=str(run), out=str(tmp_path / "tiled"), tile=64, tile_overlap=32,
                     plots=False, data_dir=str(dense_dir))  # fmt: skip
    rows = json.loads(tiled.results_path.read_text())
    assert tiled.num_images == 2 and {r["image_id"] for r in rows} == {1, 2}
    assert all(set(r) == {"image_id", "category_id", "bbox", "score", "segmentation"} for r in rows)
    whole = [r for r in rows if mask_util.area(r["segmentation"]) > 0]
    assert whole and all(r["segmentation"]["size"] == [128, 128] for r in rows)  # image pixels
    # The run trained at 128 px on 128 px images: one 128 px window is the same input as the
    # untiled eval's (scale 1), so the same detections (rounded as the results file rounds).
    same = run_eval(workdir=str(run), out=str(tmp_path / "same"), tile=128, tile_overlap=32, plots=False,
                    data_dir=str(dense_dir))  # fmt: skip
    plain = run_eval(workdir=str(run), out=str(tmp_path / "plain"), plots=False, data_dir=str(dense_dir))

    def boxes(ev):
        return sorted((r["image_id"], r["category_id"], r["score"], *r["bbox"])
                      for r in json.loads(ev.results_path.read_text()))  # fmt: skip

    a, b = boxes(same), boxes(plain)
    assert len(a) == len(b) and np.allclose(np.array(a), np.array(b), atol=2e-3)


def test_training_on_crops_is_evaluated_tiled_at_its_own_scale(dense_dir, tmp_path):
    """--set data.train_crop=64 on the 128 px dense images: 64 px windows, one bucket,
    and the periodic eval in 64 px tiles (overlap 16) of the whole images."""
    sets = [*MICRO_SETS, "data.dataset=dense", "data.train_crop=64", "data.num_workers=0",
            "model.num_classes=2", "train.global_batch=8", "train.steps=2", "train.warmup_steps=1",
            "train.decay_steps=1", "train.eval_every=2", "train.checkpoint_every=2"]  # fmt: skip
    cfg = c.resolve("tiny", sets)
    ds = find_dataset("dense", dense_dir)
    chosen = train_lib.for_dataset(cfg, ds)
    with pipeline.train_batches(chosen, ds, num_steps=1, num_workers=0) as it:
        batch = next(it)
    assert batch["image"].shape == (8, 64, 64, 3)
    # A 64 px window of the grid holds 7 x 7 whole squares plus cut ones: fewer than 150.
    assert 40 <= batch["gt_valid"].sum(axis=1).min() and batch["gt_valid"].sum(axis=1).max() < 150
    lines = Lines()
    result = train_lib.train(cfg, tmp_path / "crops", data_dir=dense_dir, report=lines)
    assert result.step == 2 and result.eval is not None and "segm_AP" in result.eval
    assert any("compiled the train step for 64x64" in s for s in lines), lines
