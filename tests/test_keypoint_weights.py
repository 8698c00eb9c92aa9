"""Keypoint R-CNN weights: torchvision's and Detectron2's keypoint heads import to
the same arrays (the weights made here from mrcli's own, under each publisher's
names), with the person category and COCO's 17 keypoints; the catalogue lists
the published models with their numbers."""

from __future__ import annotations

import pickle

import numpy as np
from weights_helpers import _oihw, detectron2_names, initial_arrays, model_config, torchvision_state

from mrcli import checkpoints, keypoint_sets, weights
from mrcli.weights import catalogue

DEPTH = 14  # a small ResNet: the names and shapes are what is tested


def _keypoint_model():
    cfg = model_config(num_classes=1, masks=False, keypoints=True, backbone__depth=DEPTH, backbone__width=8,
                       fpn__channels=16, box_head__dim=32, keypoint_head__convs=3, keypoint_head__dim=8)  # fmt: skip
    return cfg, initial_arrays(cfg)


def _torchvision_keypoint_state(flat):
    sd = torchvision_state(flat, DEPTH)
    for i in range(3):
        sd[f"roi_heads.keypoint_head.{2 * i}.weight"] = _oihw(flat[("keypoint_head", "convs", str(i), "kernel")])
        sd[f"roi_heads.keypoint_head.{2 * i}.bias"] = flat[("keypoint_head", "convs", str(i), "bias")]
    deconv = flat[("keypoint_head", "deconv", "kernel")]  # [4, 4, C, K]
    sd["roi_heads.keypoint_predictor.kps_score_lowres.weight"] = np.ascontiguousarray(deconv.transpose(2, 3, 0, 1))
    sd["roi_heads.keypoint_predictor.kps_score_lowres.bias"] = flat[("keypoint_head", "deconv", "bias")]
    return sd


def _detectron2_keypoint_state(tv_sd):
    sd = detectron2_names({k: v for k, v in tv_sd.items() if "keypoint" not in k})
    for i in range(3):
        for p in ("weight", "bias"):
            sd[f"roi_heads.keypoint_head.conv_fcn{i + 1}.{p}"] = tv_sd[f"roi_heads.keypoint_head.{2 * i}.{p}"]
    for p in ("weight", "bias"):
        sd[f"roi_heads.keypoint_head.score_lowres.{p}"] = tv_sd[f"roi_heads.keypoint_predictor.kps_score_lowres.{p}"]
    return sd


def test_torchvision_and_detectron2_keypoint_heads_import_to_the_same_arrays(tmp_path):
    cfg, flat = _keypoint_model()
    tv_sd = _torchvision_keypoint_state(flat)
    (tmp_path / "tv.pkl").write_bytes(pickle.dumps(tv_sd, protocol=2))
    (tmp_path / "d2.pkl").write_bytes(pickle.dumps({"model": _detectron2_keypoint_state(tv_sd)}, protocol=2))
    a_state, a_cfg, a_cats, _ = weights.convert("torchvision", tmp_path / "tv.pkl")
    b_state, b_cfg, b_cats, _ = weights.convert("detectron2", tmp_path / "d2.pkl")
    for mcfg in (a_cfg, b_cfg):
        assert (mcfg.keypoints, mcfg.masks, mcfg.num_classes) == (True, False, 1)
        kh = mcfg.keypoint_head
        assert (kh.num_keypoints, kh.convs, kh.dim) == (17, 3, 8)
    assert (a_cfg.keypoint_head.coordinate_offset, b_cfg.keypoint_head.coordinate_offset) == (0.0, 0.5)
    for cats in (a_cats, b_cats):
        (person,) = cats
        assert person["name"] == "person" and tuple(person["keypoints"]) == keypoint_sets.COCO_PERSON_KEYPOINTS
        assert tuple(person["keypoint_sigmas"]) == keypoint_sets.COCO_PERSON_SIGMAS
    fa, fb = checkpoints.flatten(a_state), checkpoints.flatten(b_state)
    for k in (k for k in flat if k[0] == "keypoint_head"):
        np.testing.assert_array_equal(fa[k], flat[k], err_msg=".".join(k))
        np.testing.assert_array_equal(fb[k], flat[k], err_msg=".".join(k))
    summary = weights.import_weights("detectron2", tmp_path / "d2.pkl", tmp_path / "ckpt")
    assert summary["keypoints"] and summary["categories"] == 1
    assert checkpoints.load(tmp_path / "ckpt").config.model.keypoints


def test_the_catalogue_lists_the_keypoint_models():
    tv = catalogue.get("tv-keypointrcnn-r50-fpn-coco")
    assert (tv.coco_box_ap, tv.coco_keypoint_ap, tv.checksum) == (54.6, 65.0, "sha256:fc266e95")
    assert tv.url == "https://download.pytorch.org/models/keypointrcnn_resnet50_fpn_coco-fc266e95.pth"
    assert abs(tv.size_mb - 226.054 * 2**20 / 1e6) < 0.05  # torchvision gives MiB
    one, three = catalogue.get("d2-keypointrcnn-r50-fpn-1x-coco"), catalogue.get("d2-keypointrcnn-r50-fpn-3x-coco")
    assert (one.coco_box_ap, one.coco_keypoint_ap, three.coco_box_ap, three.coco_keypoint_ap) == (53.6, 64.0, 55.4, 65.5)
    assert one.url.endswith("/137261548/model_final_04e291.pkl") and one.checksum == "md5:04e291"
    assert three.url.endswith("/137849621/model_final_a6e10b.pkl") and three.checksum == "md5:a6e10b"
    assert catalogue.problems(catalogue.entries()) == []
