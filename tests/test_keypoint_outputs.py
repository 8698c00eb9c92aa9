"""Keypoints out of mrcli: eval's OKS numbers, predict's side files, COCO results
and overlays, the exported function's outputs and --verify.

The model is a micro Keypoint R-CNN (boxes + keypoints, no masks) on the figures
data, random weights with the class logits scaled so that detections come out;
its keypoints mean nothing, but every path carries them. One bucket (64 x 64),
so detect compiles once per process.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cli_runner import run_cli
from mrcli import checkpoints, coco
from mrcli import config as c

MICRO = [
    "data.image_size=64", "data.max_size=64", "data.num_workers=0", "eval.batch_size=4",
    "model.backbone.width=8", "model.fpn.channels=16", "model.anchors.sizes=8,16,32,64,128",
    "model.rpn.pre_nms_topk.test=64", "model.rpn.post_nms_topk.test=32", "model.box_head.dim=32",
    "model.keypoint_head.convs=1", "model.keypoint_head.dim=8", "model.inference.detections_per_image=6",
]  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from mrcli import model as model_lib
    from mrcli.data.prepare import prepare_figures
    from mrcli.data.store import find_dataset

    root = tmp_path_factory.mktemp("kp_out")
    prepare_figures(data_dir=root / "data", num_train=4, num_val=4, size=64)
    ds = find_dataset("figures", root / "data")
    cfg = c.resolve("tiny_keypoints", MICRO)
    _, state = model_lib.create(cfg.model, seed=1)
    pure = checkpoints._pure(state)
    pure["box_head"]["cls"]["kernel"] = pure["box_head"]["cls"]["kernel"] * 4  # spread the scores
    ckpt = checkpoints.save(root / "ckpt", pure, cfg, ds.categories)
    (root / "images").mkdir()
    for k in range(3):
        rec = ds.source("val")[k]
        (root / "images" / f"im{k}.jpg").write_bytes(rec["image"])
    return root, ckpt


def test_eval_prints_the_ten_oks_numbers_beside_box_ap(setup, capsys):
    root, ckpt = setup
    code, out, err = run_cli(capsys, "eval", "--checkpoint", str(ckpt), "--data", "figures",
                             "--data-dir", str(root / "data"), "--out", str(root / "eval"))  # fmt: skip
    assert code == 0, err
    assert "COCO keypoint eval (OKS), 4 images" in out and "bbox" in out
    table = out[out.index("COCO keypoint eval"):]
    for name in coco.KEYPOINT_STAT_NAMES:
        assert f"│ {name} " in table
    saved = json.loads((root / "eval" / "keypoints.json").read_text())
    assert set(saved["stats"]) == set(coco.KEYPOINT_STAT_NAMES)
    code, out, err = run_cli(capsys, "eval", "--checkpoint", str(ckpt), "--data", "figures",
                             "--data-dir", str(root / "data"), "--out", str(root / "eval"), "--json")  # fmt: skip
    numbers = json.loads(out)
    assert {f"keypoints_{k}" for k in coco.KEYPOINT_STAT_NAMES} <= set(numbers) and "bbox_AP" in numbers
    results = json.loads((root / "eval" / "detections.json").read_text())
    assert results and all(len(r["keypoints"]) == 3 * 7 for r in results)


def test_keypoint_ap_is_oks_with_the_datasets_sigmas(setup):
    """The ground truth's own keypoints score AP 1; moved by 2 px they score less,
    and less still with smaller sigmas (the sigmas reach COCOeval)."""
    from mrcli.data.store import find_dataset

    root, _ = setup
    ds = find_dataset("figures", root / "data")
    gt = ds.coco_ground_truth("val")
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0,
                "keypoints": a["keypoints"]} for a in gt["annotations"]]  # fmt: skip
    moved = [dict(r, keypoints=[v + 2.0 if i % 3 < 2 else v for i, v in enumerate(r["keypoints"])])
             for r in perfect]  # fmt: skip
    ids = [im["id"] for im in gt["images"]]
    kset = ds.keypoint_set

    def ap(results, sigmas):
        path = root / "res.json"
        path.write_text(json.dumps(results))
        ev = coco.score(gt, path, ids, masks=False, category_names={1: "figure"},
                        keypoints=coco.KeypointEval(sigmas, kset.category_ids))  # fmt: skip
        return ev.keypoints.stats["AP"]

    assert ap(perfect, kset.sigmas) == pytest.approx(1.0)
    wide, narrow = ap(moved, kset.sigmas), ap(moved, tuple(s / 3 for s in kset.sigmas))
    assert 0 <= narrow < wide < 1.0


def test_predict_writes_keypoints_to_side_files_results_and_overlays(setup, tmp_path, capsys):
    root, ckpt = setup
    code, out, err = run_cli(capsys, "predict", str(root / "images"), "--out", str(tmp_path / "pred"),
                             "--checkpoint", str(ckpt), "--score", "0.0", "--batch-size", "4")  # fmt: skip
    assert code == 0, err
    side = json.loads((tmp_path / "pred" / "masks" / "im0.json").read_text())
    assert side["keypoint_names"] == ["head", "neck", "left_hand", "right_hand", "hip", "left_foot", "right_foot"]
    assert side["label_map"] is None and side["instances"]  # a box + keypoint model: no label maps
    for inst in side["instances"]:
        kp = np.asarray(inst["keypoints"])
        assert kp.shape == (7, 3)
        x1, y1, x2, y2 = inst["box_xyxy"]  # decoded inside the box (to within its pixel grid)
        assert (kp[:, 0] >= x1 - 1).all() and (kp[:, 0] <= x2 + 1).all()
        assert (kp[:, 1] >= y1 - 1).all() and (kp[:, 1] <= y2 + 1).all()
    results = json.loads((tmp_path / "pred" / "detections.json").read_text())
    assert len(results[0]["keypoints"]) == 21
    first = results[0]
    np.testing.assert_allclose(np.reshape(first["keypoints"], (7, 3))[:, :2],
                               np.asarray(side["instances"][0]["keypoints"])[:, :2], atol=1e-3)  # fmt: skip
    drawn = np.asarray(Image.open(tmp_path / "pred" / "overlays" / "im0.png"))
    assert drawn.shape[:2] == (side["height"], side["width"])


def test_overlay_draws_the_skeleton_between_shown_points():
    from mrcli.data.show import overlay

    rgb = np.zeros((40, 40, 3), np.uint8)
    kp = np.array([[[5, 5, 2], [30, 5, 2], [30, 30, 0]]], np.float32)
    drawn = overlay(rgb, np.array([[0, 0, 39, 39]], np.float32), [], ["x"], keypoints=kp, skeleton=[(1, 2), (2, 3)])
    assert drawn[5, 18].any()  # on the line 1-2
    assert not drawn[18, 30].any()  # no line to the unlabelled point 3


def test_export_outputs_keypoints_and_verify_compares_them(setup, tmp_path):
    """The exported function gives heatmaps, their boxes and scale; mrcli.serving
    decodes them to the native model's keypoints; --verify passes, and fails once
    the exported keypoint head is changed."""
    from mrcli import export, serving
    from mrcli.runs import load_trained

    root, ckpt = setup
    trained = load_trained(None, str(ckpt))
    result = export.export_model(trained, tmp_path / "out", image_size=(64, 64), platforms=("cpu",))
    outputs = {o["name"]: o["shape"] for o in result.record["outputs"]}
    assert outputs["keypoint_heatmaps"] == [1, 6, 7, 56, 56]
    assert outputs["keypoint_boxes"] == [1, 6, 4] and outputs["keypoint_scale"] == [1, 2]
    assert "masks" not in outputs
    assert result.record["keypoint_names"][2] == "left_hand" and "bicubic" in result.record["keypoint_decode"]
    images = [(p.name, np.asarray(Image.open(p))) for p in sorted((root / "images").iterdir())]
    report = export.verify(tmp_path / "out", trained, images)
    assert report.ok, report.to_json()
    assert all(r.max_keypoint_diff <= export.KEYPOINT_TOLERANCE for r in report.rows if r.native)
    native = export.native_detections(trained, (64, 64), [rgb for _, rgb in images])
    served = serving.load(tmp_path / "out").predict([rgb for _, rgb in images], score_threshold=0.0)
    assert served[0]["keypoints"].shape == (len(served[0]["scores"]), 7, 3)
    np.testing.assert_allclose(served[0]["keypoints"], native[0].keypoints, atol=1e-3)
    # an image twice the capacity is shrunk on the host; its keypoints come back in its own pixels
    model = serving.load(tmp_path / "out")
    big = np.asarray(Image.fromarray(images[0][1]).resize((128, 128), Image.BILINEAR))
    got = model(big, score_threshold=0.0)
    ref = model(serving.fit(big, (64, 64)), score_threshold=0.0)
    assert len(got["scores"]) == len(ref["scores"]) > 0
    np.testing.assert_allclose(got["keypoints"][..., :2], ref["keypoints"][..., :2] * 2.0, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(got["keypoints"][..., 2], ref["keypoints"][..., 2])

    with np.load(tmp_path / "out" / "weights.npz") as z:
        tampered = {k: z[k] for k in z.files}
    tampered["keypoint_head/deconv/kernel"] = np.roll(tampered["keypoint_head/deconv/kernel"], 1, axis=-1)
    np.savez(tmp_path / "out" / "weights.npz", **tampered)
    bad = export.verify(tmp_path / "out", trained, images)
    assert not bad.ok
    assert any(r.max_keypoint_diff > export.KEYPOINT_TOLERANCE for r in bad.rows if r.native)
