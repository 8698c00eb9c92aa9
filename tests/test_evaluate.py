"""COCO results writing and scoring: right numbers, not only running.

Known detections (perfect, shifted, missing, duplicated, wrong class) go
through mrcli's writer and scorer; the same detections, written by hand as
COCO results, go through pycocotools directly; the 12 numbers must agree.
"""

import contextlib
import io
import json

import numpy as np
import pycocotools.mask as mask_util
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mrcli.coco import STAT_NAMES, ResultsWriter, coco_evaluate, to_coco_results

H, W = 60, 80
# Dataset category ids are not contiguous: contiguous 1 -> 3, 2 -> 7.
DATASET_IDS = [0, 3, 7]


def _rect_mask(x1, y1, x2, y2):
    m = np.zeros((H, W), bool)
    m[y1:y2, x1:x2] = True
    return m


def _gt():
    """Three images with rectangular instances of two classes."""
    rng = np.random.default_rng(0)
    images, anns, masks = [], [], {}
    ann_id = 1
    for image_id in (10, 11, 12):
        images.append({"id": image_id, "width": W, "height": H, "file_name": f"{image_id}.png"})
        for _ in range(3):
            x1, y1 = int(rng.integers(0, 50)), int(rng.integers(0, 30))
            x2, y2 = x1 + int(rng.integers(8, 28)), y1 + int(rng.integers(8, 28))
            m = _rect_mask(x1, y1, x2, y2)
            rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            cls = int(rng.integers(1, 3))
            anns.append({
                "id": ann_id, "image_id": image_id, "category_id": DATASET_IDS[cls],
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": int(m.sum()),
                "segmentation": rle, "iscrowd": 0,
            })  # fmt: skip
            masks[ann_id] = (m, (x1, y1, x2, y2), cls)
            ann_id += 1
    data = {
        "images": images, "annotations": anns,
        "categories": [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}],
    }  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
    return coco, masks


def _detections(coco, masks, case):
    """Per image: (boxes, scores, classes, masks) for a named case."""
    rng = np.random.default_rng(1)
    out = {}
    for image_id in coco.getImgIds():
        dets = []
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
            m, (x1, y1, x2, y2), cls = masks[ann["id"]]
            score = float(rng.uniform(0.5, 1.0))
            if case == "shifted":
                dx = 3
                m = np.roll(m, dx, axis=1)
                x1, x2 = x1 + dx, x2 + dx
            if case == "missing" and ann["id"] % 2 == 0:
                continue
            if case == "wrong_class":
                cls = 3 - cls
            dets.append(((x1, y1, x2, y2), score, cls, m))
            if case == "duplicated":
                dets.append(((x1, y1, x2, y2), score * 0.9, cls, m))
        out[image_id] = dets
    return out


def _direct_results(per_image):
    """Hand-written COCO results, without mrcli."""
    results = []
    for image_id, dets in per_image.items():
        for (x1, y1, x2, y2), score, cls, m in dets:
            rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            results.append({
                "image_id": image_id, "category_id": DATASET_IDS[cls],
                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score, "segmentation": rle,
            })  # fmt: skip
    return results


def _direct_stats(coco, results, iou_type):
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(results), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


@pytest.mark.parametrize("case", ["perfect", "shifted", "missing", "duplicated", "wrong_class"])
def test_ap_matches_pycocotools_directly(tmp_path, case):
    coco, masks = _gt()
    per_image = _detections(coco, masks, case)
    path = tmp_path / "eval" / "detections.json"
    pad = 5  # padded detection slots, never written
    with ResultsWriter(path) as writer:
        for image_id, dets in per_image.items():
            n = len(dets)
            boxes = np.zeros((n + pad, 4), np.float32)
            scores = np.zeros((n + pad,), np.float32)
            classes = np.zeros((n + pad,), np.int32)
            full = np.zeros((n + pad, H, W), bool)
            valid = np.arange(n + pad) < n
            for i, (box, score, cls, m) in enumerate(dets):
                boxes[i], scores[i], classes[i], full[i] = box, score, cls, m
            scores[n:] = 0.99  # garbage in padded slots must not leak
            writer.write(to_coco_results(image_id, boxes, scores, classes, valid, DATASET_IDS, full))
    written = json.loads(path.read_text())
    assert len(written) == sum(len(d) for d in per_image.values())
    assert {r["category_id"] for r in written} <= {3, 7}
    direct = _direct_results(per_image)
    for iou_type in ("bbox", "segm"):
        ours = coco_evaluate(coco, path, iou_type)
        expected = _direct_stats(coco, direct, iou_type)
        np.testing.assert_allclose([ours.stats[n] for n in STAT_NAMES], expected, atol=1e-6)
        if case == "perfect":
            assert ours.stats["AP"] == pytest.approx(1.0)
        if case == "duplicated":  # lower-scored duplicates are false positives
            assert 0.5 < ours.stats["AP"] < 1.0
        if case == "wrong_class":
            assert ours.stats["AP"] == pytest.approx(0.0)
        if case == "missing":
            assert 0.2 < ours.stats["AP"] < 0.9
        assert set(ours.per_class_ap) == {3, 7}


def test_writer_is_atomic(tmp_path):
    path = tmp_path / "r.json"
    with pytest.raises(RuntimeError):
        with ResultsWriter(path) as writer:
            writer.write([{"image_id": 1}])
            raise RuntimeError("killed")
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_no_detections_scores_zero():
    coco, _ = _gt()
    result = coco_evaluate(coco, [], "segm")
    assert result.stats["AP"] == 0.0


def test_classes_without_a_category_are_left_out():
    """torchvision's 91-slot COCO models have unused "N/A" outputs: a detection of
    such a class has no dataset id and is not written (not as category 0)."""
    from mrcli.coco import dataset_id_table, to_coco_results

    table = dataset_id_table([{"id": 1, "contiguous_id": 1, "name": "person"},
                              {"id": 3, "contiguous_id": 3, "name": "car"}])  # fmt: skip
    assert table == [0, 1, 0, 3]
    boxes = np.array([[0, 0, 4, 4]] * 4, np.float32)
    out = to_coco_results(7, boxes, np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 2, 3, 2]),
                          np.array([True, True, True, False]), table)  # fmt: skip
    assert [(r["category_id"], r["score"]) for r in out] == [(1, 0.9), (3, 0.7)]
