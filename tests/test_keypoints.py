"""Keypoint R-CNN's pieces (He et al. 2017 §5): the head's layers, the heatmap
targets, the loss, the host decode, and one train step; each against
torchvision's own function where it has one (tests/torchvision_ref.py), else
against a hand computation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import torchvision_ref
from mrcli import keypoint_sets, model, parallel, train
from mrcli.config import load_recipe, override
from mrcli.model import losses, roi_heads
from mrcli.model.heads import upsample_2x_matrix
from mrcli.model.layers import ConvTranspose
from mrcli.ops.keypoints import heatmaps_to_keypoints, resize_bicubic

tv = torchvision_ref.load()
needs_torch = pytest.mark.skipif(tv is None, reason="torch/torchvision not installed")


@needs_torch
def test_conv_transpose_is_pytorchs():
    """layers.ConvTranspose (4 x 4, stride 2, padding 1) = torch's ConvTranspose2d,
    with the weight imported by the importers' transpose [C, O, a, b] -> [a, b, C, O]."""
    import torch

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 7, 6)).astype(np.float32)  # NHWC
    w = rng.normal(size=(6, 3, 4, 4)).astype(np.float32)  # torch [C, O, k, k]
    b = rng.normal(size=(3,)).astype(np.float32)
    layer = ConvTranspose(6, 3, 4, stride=2, padding=1, rngs=nnx.Rngs(0))
    layer.kernel[...] = jnp.asarray(w.transpose(2, 3, 0, 1))
    layer.bias[...] = jnp.asarray(b)
    ours = np.asarray(layer(jnp.asarray(x)))
    theirs = torch.nn.functional.conv_transpose2d(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(w),
                                                  torch.from_numpy(b), stride=2, padding=1)  # fmt: skip
    theirs = theirs.permute(0, 2, 3, 1).numpy()
    assert ours.shape == theirs.shape == (2, 10, 14, 3)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


@needs_torch
def test_bilinear_2x_is_torchs_interpolate():
    import torch

    x = np.random.default_rng(1).normal(size=(3, 28, 28)).astype(np.float32)
    up = upsample_2x_matrix(28)
    ours = np.einsum("ai,kij,bj->kab", up, x, up)
    theirs = torch.nn.functional.interpolate(torch.from_numpy(x)[None], scale_factor=2.0, mode="bilinear",
                                             align_corners=False, recompute_scale_factor=False)[0].numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_keypoint_targets_by_hand():
    """A 4 x 4 heatmap over the RoI (0, 0, 8, 4): cells 2 px wide, 1 px high."""
    kp = np.array([[[3.0, 1.5, 2], [8.0, 4.0, 1], [9.0, 1.0, 2], [3.0, 1.5, 0], [0.0, 0.0, 2]]], np.float32)
    rois = np.array([[0.0, 0.0, 8.0, 4.0]], np.float32)
    index, valid = roi_heads.keypoint_targets(jnp.asarray(kp), jnp.array([0]), jnp.asarray(rois), 4)
    # (3, 1.5) -> cell (x 1, y 1) = 5; (8, 4) on the right and bottom edges -> the last
    # cell, 15; (9, 1) outside; v = 0 not labelled; (0, 0) the first cell.
    assert np.asarray(valid).tolist() == [[True, True, False, False, True]]
    assert np.asarray(index)[0, [0, 1, 4]].tolist() == [5, 15, 0]


@needs_torch
def test_keypoint_targets_are_torchvisions():
    import torch
    from torchvision.models.detection.roi_heads import keypoints_to_heatmap

    rng = np.random.default_rng(2)
    rois = np.concatenate([rng.uniform(0, 50, (30, 2)), rng.uniform(60, 120, (30, 2))], 1).astype(np.float32)
    kp = np.concatenate([rng.uniform(-10, 130, (30, 17, 2)), rng.integers(0, 3, (30, 17, 1))], -1).astype(np.float32)
    kp[:5, 0, 0] = rois[:5, 2]  # on the right edge
    kp[5:10, 1, 1] = rois[5:10, 3]  # on the bottom edge
    theirs, t_valid = keypoints_to_heatmap(torch.from_numpy(kp), torch.from_numpy(rois), 56)
    ours, o_valid = roi_heads.keypoint_targets(jnp.asarray(kp), jnp.arange(30), jnp.asarray(rois), 56)
    np.testing.assert_array_equal(np.asarray(o_valid), t_valid.numpy().astype(bool))
    np.testing.assert_array_equal(np.asarray(ours), theirs.numpy())


def test_keypoint_loss_is_the_hand_computed_mean_cross_entropy():
    """Two RoIs, three keypoints, 2 x 2 heatmaps: the loss is the mean of
    -log softmax(logits)[target] over the valid keypoints only (torchvision's
    keypointrcnn_loss), and 0 with none valid."""
    logits = np.array([[[1.0, 2.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]],
                       [[0.5, 0.5, 2.0, 0.0], [1.0, -1.0, 0.0, 4.0], [0.0, 1.0, 2.0, 3.0]]], np.float32)
    targets = np.array([[1, 3, 0], [2, 0, 3]], np.int32)
    valid = np.array([[True, True, False], [True, False, True]])
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    hand = np.mean([-np.log(p[0, 0, 1]), -np.log(p[0, 1, 3]), -np.log(p[1, 0, 2]), -np.log(p[1, 2, 3])])
    terms = {k: v[None] for k, v in losses.keypoint_terms(logits, targets, valid).items()}
    terms["keypoint_norm"] = terms["keypoint_count"]
    base = {k: jnp.zeros((1,)) for k in ("rpn_cls_sum", "rpn_box_sum", "rpn_count", "rpn_fg_count", "cls_sum",
                                         "box_sum", "roi_count", "roi_fg_count", "correct", "fg_correct")}
    total, metrics = losses.combine({**base, **terms}, masks=False, keypoint_weight=1.0)
    assert float(metrics["loss_keypoint"]) == pytest.approx(hand, rel=1e-6)
    assert float(total) == pytest.approx(hand, rel=1e-6)
    terms = {k: v[None] for k, v in losses.keypoint_terms(logits, targets, valid & False).items()}
    terms["keypoint_norm"] = terms["keypoint_count"]
    _, metrics = losses.combine({**base, **terms}, masks=False, keypoint_weight=1.0)
    assert float(metrics["loss_keypoint"]) == 0.0


@needs_torch
def test_keypoint_loss_is_torchvisions():
    """Targets and loss of random proposals and keypoints = torchvision's keypointrcnn_loss."""
    import torch
    from torchvision.models.detection.roi_heads import keypointrcnn_loss

    rng = np.random.default_rng(3)
    rois = np.concatenate([rng.uniform(0, 40, (12, 2)), rng.uniform(60, 100, (12, 2))], 1).astype(np.float32)
    gt = np.concatenate([rng.uniform(0, 110, (4, 5, 2)), rng.integers(0, 3, (4, 5, 1))], -1).astype(np.float32)
    matched = rng.integers(0, 4, 12)
    logits = rng.normal(size=(12, 5, 8, 8)).astype(np.float32) * 3
    theirs = keypointrcnn_loss(torch.from_numpy(logits), [torch.from_numpy(rois)], [torch.from_numpy(gt)],
                               [torch.from_numpy(matched)]).item()  # fmt: skip
    index, valid = roi_heads.keypoint_targets(jnp.asarray(gt), jnp.asarray(matched), jnp.asarray(rois), 8)
    terms = losses.keypoint_terms(jnp.asarray(logits.reshape(12, 5, 64)), index, valid)
    assert float(terms["keypoint_sum"] / terms["keypoint_count"]) == pytest.approx(theirs, rel=1e-5)


@needs_torch
def test_decode_is_torchvisions_heatmaps_to_keypoints():
    """Positions equal, scores within 1e-4, on random maps and boxes (sub-pixel,
    thin, large), with torch's bicubic resize reproduced."""
    import torch
    from torchvision.models.detection.roi_heads import heatmaps_to_keypoints as theirs

    rng = np.random.default_rng(4)
    maps = rng.normal(size=(25, 17, 56, 56)).astype(np.float32)
    lo = rng.uniform(0, 300, (25, 2))
    boxes = np.concatenate([lo, lo + rng.uniform(0.3, 250, (25, 2))], 1).astype(np.float32)
    xy, scores = heatmaps_to_keypoints(maps, boxes)
    t_xy, t_scores = theirs(torch.from_numpy(maps), torch.from_numpy(boxes))
    np.testing.assert_array_equal(xy, t_xy[..., :2].numpy())
    np.testing.assert_allclose(scores, t_scores.numpy(), atol=1e-4)
    resized = resize_bicubic(maps[0], 33, 71)
    t_resized = torch.nn.functional.interpolate(torch.from_numpy(maps[0])[:, None], size=(33, 71),
                                                mode="bicubic", align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(resized, t_resized, atol=1e-4)


def test_decode_finds_a_peak_at_its_pixel():
    """A single peak at heatmap cell (i, j) over a 56 x 56 box at (10, 20) comes out
    at that cell's centre."""
    maps = np.zeros((1, 2, 56, 56), np.float32)
    maps[0, 0, 7, 30] = 10.0
    maps[0, 1, 50, 2] = 10.0
    xy, scores = heatmaps_to_keypoints(maps, np.array([[10.0, 20.0, 66.0, 76.0]], np.float32))
    np.testing.assert_allclose(xy[0], [[10 + 30.5, 20 + 7.5], [10 + 2.5, 20 + 50.5]])
    assert (scores > 5).all()


def test_keypoint_sets_pairs_sigmas_and_flip():
    names = keypoint_sets.COCO_PERSON_KEYPOINTS
    pairs = keypoint_sets.pairs_from_names(names)
    assert pairs[0] == (2, 3) and len(pairs) == 8  # eyes, ears, shoulders, ... ankles
    perm = keypoint_sets.flip_permutation(17, pairs)
    assert perm[0] == 0 and perm[1] == 2 and perm[16] == 15
    assert keypoint_sets.pairs_from_names(["Left Hand", "nose", "Right Hand"]) == [(1, 3)]
    sigmas, rule = keypoint_sets.sigmas_rule(names, None)
    assert sigmas == keypoint_sets.COCO_PERSON_SIGMAS and "COCO" in rule
    sigmas, rule = keypoint_sets.sigmas_rule(["a", "b"], None)
    assert sigmas == (keypoint_sets.DEFAULT_SIGMA,) * 2 and "none given" in rule
    assert keypoint_sets.sigmas_rule(["a"], [0.2])[0] == (0.2,)


def _figures_batch(cfg) -> dict[str, np.ndarray]:
    """Two 128-px images with two figures each: boxes, ellipse masks, 7 keypoints."""
    size, n, g, k = cfg.data.image_size, cfg.data.max_instances, cfg.data.mask_crop_size, 7
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(2, size, size, 3)).astype(np.float32),
        "image_info": np.tile(np.array([size, size, 1.0, size, size], np.float32), (2, 1)),
        "gt_boxes": np.zeros((2, n, 4), np.float32),
        "gt_classes": np.zeros((2, n), np.int32),
        "gt_masks": np.ones((2, n, g, g), np.uint8),
        "gt_valid": np.zeros((2, n), bool),
        "gt_crowd": np.zeros((2, n), bool),
        "gt_keypoints": np.zeros((2, n, k, 3), np.float32),
    }
    for i in range(2):
        for j, (x1, y1, x2, y2) in enumerate([(10, 12, 60, 110), (70, 20, 120, 100)]):
            batch["gt_boxes"][i, j] = (x1, y1, x2, y2)
            batch["gt_classes"][i, j] = 1
            batch["gt_valid"][i, j] = True
            batch["gt_keypoints"][i, j, :, 0] = rng.uniform(x1, x2, k)
            batch["gt_keypoints"][i, j, :, 1] = rng.uniform(y1, y2, k)
            batch["gt_keypoints"][i, j, :, 2] = rng.integers(1, 3, k)
    return batch


def test_one_step_moves_every_keypoint_head_parameter():
    """One SGD step of the tiny keypoint model (boxes + masks + keypoints: the
    unified model): finite losses, and every keypoint-head array (each conv, the
    transposed conv) changes."""
    cfg = override(load_recipe("tiny_keypoints").config,
                   {"model.masks": True, "model.keypoint_head.convs": 2, "model.keypoint_head.dim": 16,
                    "train.weight_decay": 0.0, "train.warmup_steps": 0, "train.global_batch": 2,
                    "train.optimizer": "sgd", "train.base_lr": 8.0})  # fmt: skip
    m, state = model.create(cfg.model, seed=0)
    params, constants = model.split_params(state)
    tx = train.make_optimizer(cfg.train)
    ts = train.init_state(params, tx, seed=0, constants=constants)
    flat = {".".join(map(str, p)): np.array(v) for p, v in nnx.to_flat_state(ts.params)}
    head = [k for k in flat if k.startswith("keypoint_head.")]
    assert len(head) == 2 * 2 + 2  # two convs and the deconv, kernel and bias each
    step = train.make_train_step(train.model_loss(m), tx, parallel.make_mesh(jax.devices()[:1]),
                                 train.learning_rate(cfg.train))  # fmt: skip
    ts, metrics = step(ts, _figures_batch(cfg))
    for k, v in metrics.items():
        assert np.isfinite(float(v)), k
    assert float(metrics["loss_keypoint"]) > 1.0 and float(metrics["loss_mask"]) > 0
    assert float(metrics["keypoints_visible"]) > 0
    after = {".".join(map(str, p)): np.array(v) for p, v in nnx.to_flat_state(ts.params)}
    unchanged = [k for k in head if np.array_equal(flat[k], after[k])]
    assert not unchanged, unchanged


def test_detect_gives_heatmaps_and_the_unified_model_has_both_heads():
    cfg = override(load_recipe("tiny_keypoints").config,
                   {"model.masks": True, "model.keypoint_head.convs": 1, "model.keypoint_head.dim": 8})
    m, state = model.create(cfg.model, seed=0)
    b = _figures_batch(cfg)
    dets = jax.jit(m.detect)(state, b["image"], b["image_info"])
    d = cfg.model.inference.detections_per_image
    assert dets["masks"].shape == (2, d, 28, 28)
    assert dets["keypoint_heatmaps"].shape == (2, d, 7, 56, 56)
    no_kp = override(cfg, {"model.keypoints": False})
    assert "keypoint_head" not in model.create(no_kp.model)[1]
