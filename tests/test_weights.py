"""Checkpoint import: safe loading (a malicious pickle is refused), the loader that
works without torch, and the torchvision / Detectron2 / ResNet-backbone mappings."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

import torchvision_ref
from mrcli import checkpoints, model, weights
from mrcli.errors import UserError

tv = torchvision_ref.load()
needs_torch = pytest.mark.skipif(tv is None, reason="torch/torchvision not installed")


class _Evil:
    """Unpickling this runs a shell command (the attack docs/design.md §8 guards against)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_plain_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model_final.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": np.ones(3)}, "x": _Evil(marker)}))
    with pytest.raises(weights.UnsafeCheckpoint, match=r"refusing to load .*(posix|os)\.system"):
        weights.load_file(path)
    with pytest.raises(UserError, match="refusing"):
        weights.import_weights("detectron2", path, tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


@needs_torch
@pytest.mark.parametrize("use_torch", [True, False], ids=["torch.load", "restricted"])
def test_malicious_torch_file_is_refused(tmp_path, use_torch):
    import torch

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.ones(2), "payload": _Evil(marker)}, path)
    with pytest.raises(weights.UnsafeCheckpoint, match=r"refusing to load .*system"):
        weights.load_file(path, use_torch=use_torch)
    assert not marker.exists()


@needs_torch
def test_restricted_loader_equals_torch_load(tmp_path):
    import torch

    torch.manual_seed(0)
    sd = {
        "a": torch.randn(3, 4).t(),  # non-contiguous view
        "b": torch.randn(5, dtype=torch.float64)[1:4],  # storage offset
        "c": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "d": torch.tensor(2.5),  # 0-d
        "e": torch.randn(4).to(torch.bfloat16),
        "f": torch.randn(4).half(),
        "g": torch.tensor([True, False]),
        "p": torch.nn.Parameter(torch.randn(2, 2)),
    }
    sd["shared"] = sd["a"]  # the same storage twice
    path = tmp_path / "sd.pth"
    torch.save({"state_dict": sd, "epoch": 3}, path)
    ref = weights.load_file(path, use_torch=True)["state_dict"]
    got = weights.load_file(path, use_torch=False)["state_dict"]
    assert set(ref) == set(got) == set(sd)
    for k in sd:
        r, g = np.asarray(ref[k]), np.asarray(got[k])
        assert g.shape == tuple(sd[k].shape), k
        np.testing.assert_array_equal(g.astype(np.float64), r.astype(np.float64), err_msg=k)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "x.pth"
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        weights.load_file(path)
    with pytest.raises(UserError, match="no such file"):
        weights.load_file(tmp_path / "missing.pth")


def test_coco_categories():
    cats = weights.coco_categories("rank")
    assert len(cats) == 80 and cats[-1] == {
        "id": 90, "contiguous_id": 80, "name": "toothbrush", "supercategory": "indoor"
    }
    if tv is not None:
        from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

        names = MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
        for c in weights.coco_categories("coco_id"):
            assert names[c["contiguous_id"]] == c["name"]


# --- mappings -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tv_state_dict():
    """A random torchvision maskrcnn_resnet50_fpn state dict with non-trivial BN."""
    if tv is None:
        pytest.skip("torch/torchvision not installed")
    import torch

    torch.manual_seed(1)
    tvm = tv.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    sd = {k: v.numpy().copy() for k, v in tvm.state_dict().items()}
    rng = np.random.default_rng(0)
    for k in sd:
        if k.endswith("running_var"):
            sd[k] = rng.uniform(0.5, 2.0, sd[k].shape).astype(np.float32)
        elif k.endswith("running_mean"):
            sd[k] = rng.normal(0, 0.1, sd[k].shape).astype(np.float32)
    return sd


def _detectron2_names(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same weights under Detectron2's names and class layout (background last;
    class-specific box and mask outputs without background)."""
    out = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            continue
        n = k
        n = n.replace("backbone.body.conv1.", "backbone.bottom_up.stem.conv1.")
        n = n.replace("backbone.body.bn1.", "backbone.bottom_up.stem.conv1.norm.")
        for s in range(4):
            n = n.replace(f"backbone.body.layer{s + 1}.", f"backbone.bottom_up.res{s + 2}.")
        for i in (1, 2, 3):
            n = n.replace(f".bn{i}.", f".conv{i}.norm.")
        n = n.replace(".downsample.0.", ".shortcut.").replace(".downsample.1.", ".shortcut.norm.")
        for i in range(4):
            n = n.replace(f"backbone.fpn.inner_blocks.{i}.0.", f"backbone.fpn_lateral{i + 2}.")
            n = n.replace(f"backbone.fpn.layer_blocks.{i}.0.", f"backbone.fpn_output{i + 2}.")
            n = n.replace(f"roi_heads.mask_head.{i}.0.", f"roi_heads.mask_head.mask_fcn{i + 1}.")
        n = n.replace("rpn.head.conv.0.0.", "proposal_generator.rpn_head.conv.")
        n = n.replace("rpn.head.cls_logits.", "proposal_generator.rpn_head.objectness_logits.")
        n = n.replace("rpn.head.bbox_pred.", "proposal_generator.rpn_head.anchor_deltas.")
        n = n.replace("box_head.fc6.", "box_head.fc1.").replace("box_head.fc7.", "box_head.fc2.")
        n = n.replace("mask_predictor.conv5_mask.", "mask_head.deconv.")
        n = n.replace("mask_predictor.mask_fcn_logits.", "mask_head.predictor.")
        if "cls_score" in n:
            v = np.concatenate([v[1:], v[:1]])  # background last
        elif "bbox_pred" in n and "roi_heads" in n:
            v = v[4:]
        elif n.startswith("roi_heads.mask_head.predictor."):
            v = v[1:]
        out[n] = v
    return out


def test_torchvision_and_detectron2_mappings_agree(tmp_path, tv_state_dict):
    import torch

    tv_path = tmp_path / "tv.pth"
    torch.save({k: torch.from_numpy(v) for k, v in tv_state_dict.items()}, tv_path)
    d2_path = tmp_path / "model_final.pkl"
    with open(d2_path, "wb") as f:
        d2 = _detectron2_names(tv_state_dict)
        # buffers older Detectron2 checkpoints carry
        d2["pixel_mean"] = np.array([103.53, 116.28, 123.675], np.float32).reshape(3, 1, 1)
        d2["pixel_std"] = np.array([57.375, 57.12, 58.395], np.float32).reshape(3, 1, 1)
        d2["proposal_generator.anchor_generator.cell_anchors.0"] = np.zeros((3, 4), np.float32)
        pickle.dump({"model": d2, "__author__": "test"}, f)

    a_state, a_cfg, a_cats, a_partial = weights.convert("torchvision", tv_path)
    b_state, b_cfg, b_cats, b_partial = weights.convert("detectron2", d2_path)
    assert (a_cfg.backbone.depth, a_cfg.num_classes, a_cfg.masks) == (50, 90, True)
    assert not a_partial and not b_partial
    assert (b_cfg.backbone.stride_in_1x1, b_cfg.roi_align.aligned, b_cfg.input.pixel_order,
            b_cfg.box_head.smooth_l1_beta, b_cfg.rpn.smooth_l1_beta) == (True, True, "bgr", 0.0, 0.0)
    assert not b_cfg.anchors.torchvision_grid
    np.testing.assert_allclose(b_cfg.input.pixel_std, (57.375, 57.12, 58.395), rtol=1e-6)
    assert a_cats[0]["contiguous_id"] == 1 and b_cats is None  # 90 classes: not Detectron2's COCO
    fa, fb = checkpoints.flatten(a_state), checkpoints.flatten(b_state)
    assert set(fa) == set(fb)
    for k in fa:
        if k[:2] == ("box_head", "deltas") or k[:2] == ("mask_head", "predictor"):
            # background outputs: zero in the Detectron2 import
            np.testing.assert_array_equal(fb[k][..., 4:] if k[1] == "deltas" else fb[k][..., 1:],
                                          fa[k][..., 4:] if k[1] == "deltas" else fa[k][..., 1:])
            continue
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=".".join(k))

    # The folded BN is torchvision's FrozenBatchNorm2d arithmetic.
    sd = tv_state_dict
    p = "backbone.body.layer3.2.bn2."
    scale = sd[p + "weight"] / np.sqrt(sd[p + "running_var"] + 1e-5)
    np.testing.assert_allclose(fa[("backbone", "res4", "2", "norm2", "scale")], scale, rtol=1e-6)
    np.testing.assert_allclose(
        fa[("backbone", "res4", "2", "norm2", "bias")], sd[p + "bias"] - sd[p + "running_mean"] * scale,
        rtol=1e-5, atol=1e-7,
    )
    # fc6 is re-ordered from (C, y, x) to (y, x, C) inputs.
    w = sd["roi_heads.box_head.fc6.weight"].reshape(1024, 256, 7, 7)
    np.testing.assert_array_equal(fa[("box_head", "fc6", "kernel")][(3 * 7 + 5) * 256 + 17], w[:, 17, 3, 5])


def test_import_full_model_writes_a_checkpoint(tmp_path, tv_state_dict):
    import torch

    path = tmp_path / "maskrcnn_resnet50_fpn_coco.pth"
    torch.save({k: torch.from_numpy(v) for k, v in tv_state_dict.items()}, path)
    summary = weights.import_weights("torchvision", path, tmp_path / "ckpt")
    assert summary["num_classes"] == 90 and summary["categories"] == 80 and not summary["partial"]
    ckpt = checkpoints.load(tmp_path / "ckpt")
    assert ckpt.config.model.num_classes == 90 and ckpt.config.model.backbone.depth == 50
    assert ckpt.source == {"kind": "torchvision", "file": path.name}
    assert [c["name"] for c in ckpt.categories[:3]] == ["person", "bicycle", "car"]
    _, shapes = model.abstract(ckpt.config.model)
    state = checkpoints.restore(shapes, ckpt.state)
    np.testing.assert_array_equal(
        np.asarray(state["rpn"]["objectness"]["bias"][...]), tv_state_dict["rpn.head.cls_logits.bias"]
    )
    # A torchvision file imported as Detectron2 is a clear user error.
    with pytest.raises(UserError, match="not a Detectron2"):
        weights.import_weights("detectron2", path, tmp_path / "other")


@needs_torch
def test_import_resnet_backbone_is_partial(tmp_path):
    import torch

    torch.manual_seed(2)
    path = tmp_path / "resnet50.pth"
    torch.save(tv.models.resnet50(weights=None).state_dict(), path)
    summary = weights.import_weights("torchvision", path, tmp_path / "r50")
    assert summary["partial"] and summary["depth"] == 50
    ckpt = checkpoints.load(tmp_path / "r50")
    assert ckpt.partial and ckpt.categories is None
    assert set(ckpt.state) == {"backbone"}
    m, fresh = model.create(ckpt.config.model, seed=0)
    state = checkpoints.restore(fresh, ckpt.state, partial=True)
    got = np.asarray(state["backbone"]["stem"]["kernel"][...])
    np.testing.assert_allclose(got, ckpt.state["backbone"]["stem"]["kernel"])
    np.testing.assert_array_equal(  # heads keep their fresh initialisation
        np.asarray(state["box_head"]["fc7"]["kernel"][...]), np.asarray(fresh["box_head"]["fc7"]["kernel"][...])
    )
    with pytest.raises(UserError, match="missing"):
        checkpoints.restore(fresh, ckpt.state)  # not partial: the heads are missing


def test_cli_refuses_a_malicious_file(tmp_path):
    """`mrcli weights import` on a pickle that runs code: exit 2, one clear line."""
    import subprocess
    import sys

    marker = tmp_path / "pwned"
    path = tmp_path / "model_final.pkl"
    path.write_bytes(pickle.dumps({"model": {}, "x": _Evil(marker)}))
    proc = subprocess.run(
        [sys.executable, "-m", "mrcli.cli", "weights", "import", "detectron2", str(path),
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "refusing to load" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()
