"""The training forward against an independent computation on a hand-built case.

Every weight is zero except the output biases, so the network's outputs are
known constants: objectness logits and deltas per aspect ratio, class logits,
box deltas and mask logits per class. Sampling sizes exceed the candidates, so
the sampled sets are known (all labelled anchors; all proposals + gt boxes).
With one proposal kept per level (pre-NMS top-1: the first anchor, ties go to
the lowest index) the proposals are known too. The test recomputes anchors'
labels, targets and all five losses in numpy and compares with Model.loss.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from mrcli import model
from mrcli.config import Config, override
from mrcli.ops.anchors import anchor_grid

H = W = 64
G = 56  # gt mask crop side: 2 x 28, so a RoI equal to its gt box samples pixel centres
BETA = 1.0 / 9.0

CFG = override(Config(), {f"model.{k}": v for k, v in {
    "num_classes": 3, "backbone.depth": 14, "backbone.width": 8, "backbone.freeze_at": 0,
    "backbone.norm": "group_norm", "fpn.channels": 8, "anchors.sizes": (8, 16, 32, 64, 128),
    "rpn.pre_nms_topk.train": 1, "rpn.post_nms_topk.train": 5,
    "rpn.batch_per_image": 4096, "rpn.positive_fraction": 1.0,
    "roi_heads.batch_per_image": 16, "roi_heads.positive_fraction": 1.0, "mask_head.fg_slots": 16,
    "box_head.dim": 16, "mask_head.dim": 8, "mask_head.convs": 1, "roi_align.aligned": True,
}.items()}).model
OBJ_BIAS = np.array([2.0, -1.0, 0.5], np.float32)  # per aspect ratio; ratio 0 wins top-1
RPN_DELTA_BIAS = np.array(
    [[0.1, -0.05, 0.2, -0.1], [0.0, 0.1, -0.2, 0.3], [-0.1, 0.05, 0.1, 0.0]], np.float32
)
CLS_BIAS = np.array([0.3, -0.2, 0.5, 0.1], np.float32)
BOX_DELTA_BIAS = np.arange(16, dtype=np.float32).reshape(4, 4) * 0.05 - 0.3
MASK_BIAS = np.array([0.0, 0.7, -0.4, 1.2], np.float32)

# Image 0: two objects; image 1: one; image 2: padding (must not count).
GT = [
    [((0, 2, 30, 32), 2, "left"), ((30, 20, 62, 44), 3, "full")],
    [((10, 34, 50, 60), 1, "full")],
    [((0, 0, 60, 60), 1, "full")],
]
N = 3


def _batch():
    b = len(GT)
    boxes = np.zeros((b, N, 4), np.float32)
    classes = np.zeros((b, N), np.int32)
    masks = np.zeros((b, N, G, G), np.uint8)
    valid = np.zeros((b, N), bool)
    for i, objs in enumerate(GT):
        for j, (box, c, kind) in enumerate(objs):
            boxes[i, j], classes[i, j], valid[i, j] = box, c, True
            masks[i, j] = 1
            if kind == "left":
                masks[i, j, :, G // 2:] = 0
    rng = np.random.default_rng(0)
    return {
        "image": rng.normal(size=(b, H, W, 3)).astype(np.float32),
        "image_info": np.tile(np.array([H, W, 1.0, H, W], np.float32), (b, 1)),
        "gt_boxes": boxes, "gt_classes": classes, "gt_masks": masks, "gt_valid": valid,
        "gt_crowd": np.zeros((b, N), bool), "is_padding": np.array([False, False, True]),
    }


def _state():
    m, state = model.create(CFG, seed=0)
    state = jax.tree.map(np.zeros_like, state)
    net = m.module(state)
    net.rpn.objectness.bias[...] = OBJ_BIAS
    net.rpn.deltas.bias[...] = RPN_DELTA_BIAS.reshape(-1)
    net.box_head.cls.bias[...] = CLS_BIAS
    net.box_head.deltas.bias[...] = BOX_DELTA_BIAS.reshape(-1)
    net.mask_head.predictor.bias[...] = MASK_BIAS
    return m, nnx.state(net)


# --- the independent computation -----------------------------------------------------------


def _iou(a, b):
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def _encode(g, a, w=(1.0, 1.0, 1.0, 1.0)):
    aw, ah = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    gw, gh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
    return np.stack([
        w[0] * ((g[:, 0] + gw / 2) - (a[:, 0] + aw / 2)) / aw,
        w[1] * ((g[:, 1] + gh / 2) - (a[:, 1] + ah / 2)) / ah,
        w[2] * np.log(gw / aw), w[3] * np.log(gh / ah),
    ], 1)


def _decode(d, a):
    aw, ah = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    cx, cy = a[:, 0] + aw / 2 + d[:, 0] * aw, a[:, 1] + ah / 2 + d[:, 1] * ah
    w, h = aw * np.exp(d[:, 2]), ah * np.exp(d[:, 3])
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)


def _smooth_l1(x):
    ax = np.abs(x)
    return np.where(ax < BETA, 0.5 * x * x / BETA, ax - 0.5 * BETA)


def _bce(logit, target):
    return np.logaddexp(0, logit) - logit * target


def _expected():
    anchors = anchor_grid((H, W), sizes=CFG.anchors.sizes).astype(np.float64)
    ratio = np.arange(len(anchors)) % 3
    counts = [(H // s) * (W // s) * 3 for s in (4, 8, 16, 32, 64)]
    first = np.cumsum([0] + counts[:-1])
    t = dict.fromkeys(["rpn_cls", "rpn_box", "rpn_n", "rpn_pos", "cls", "box", "roi_n", "roi_fg",
                       "correct", "fg_correct", "mask", "mask_n"], 0.0)
    for objs in GT[:2]:  # the padding image contributes nothing
        gt = np.array([o[0] for o in objs], np.float64)
        cls = np.array([o[1] for o in objs])
        # RPN labels (Faster R-CNN §3.1.2 with torchvision's low-quality matches).
        iou = _iou(anchors, gt)  # [A, n]
        best = iou.max(1)
        label = np.where(best >= 0.7, 1, np.where(best < 0.3, 0, -1))
        label[(iou == iou.max(0, keepdims=True)).any(1)] = 1
        pos = label == 1
        sampled = label >= 0
        obj = OBJ_BIAS[ratio]
        t["rpn_cls"] += _bce(obj[sampled], pos[sampled]).sum()
        target = _encode(gt[iou.argmax(1)][pos], anchors[pos])
        t["rpn_box"] += _smooth_l1(RPN_DELTA_BIAS[ratio[pos]] - target).sum()
        t["rpn_n"] += sampled.sum()
        t["rpn_pos"] += pos.sum()
        # Proposals: the first anchor of each level (ratio 0), decoded and clipped.
        props = np.clip(_decode(np.tile(RPN_DELTA_BIAS[0], (5, 1)), anchors[first]), 0, W)
        assert (_iou(props, gt) < 0.5).all()  # precondition: proposals are background
        rois_cls = np.concatenate([np.zeros(5, int), cls])  # 5 proposals + the gt boxes
        logp = CLS_BIAS - np.log(np.exp(CLS_BIAS).sum())
        t["cls"] += -logp[rois_cls].sum()
        t["box"] += _smooth_l1(BOX_DELTA_BIAS[cls] - 0.0).sum()  # gt RoIs: zero targets
        t["roi_n"] += len(rois_cls)
        t["roi_fg"] += len(cls)
        t["correct"] += (rois_cls == np.argmax(CLS_BIAS)).sum()
        t["fg_correct"] += (cls == np.argmax(CLS_BIAS)).sum()
        # Masks: the gt RoIs on their own crops: left half or all ones at 28 x 28.
        for (_, c, kind) in objs:
            target = np.ones((28, 28))
            if kind == "left":
                target[:, 14:] = 0
            t["mask"] += _bce(MASK_BIAS[c], target).sum()
            t["mask_n"] += 28 * 28
    return {
        "loss_rpn_cls": t["rpn_cls"] / t["rpn_n"],
        "loss_rpn_box": t["rpn_box"] / t["rpn_n"],
        "loss_cls": t["cls"] / t["roi_n"],
        "loss_box": t["box"] / t["roi_n"],
        "loss_mask": t["mask"] / t["mask_n"],
        "rpn_fg_fraction": t["rpn_pos"] / t["rpn_n"],
        "roi_fg_fraction": t["roi_fg"] / t["roi_n"],
        "accuracy": t["correct"] / t["roi_n"],
        "fg_accuracy": t["fg_correct"] / t["roi_fg"],
    }


def test_training_loss_matches_hand_computation():
    m, state = _state()
    loss, metrics = jax.jit(m.loss)(state, _batch(), jax.random.key(0))
    expected = _expected()
    assert expected["rpn_fg_fraction"] > 0 and expected["loss_rpn_box"] > 0
    for key, value in expected.items():
        np.testing.assert_allclose(float(metrics[key]), value, rtol=2e-5, err_msg=key)
    total = sum(v for k, v in expected.items() if k.startswith("loss_"))
    np.testing.assert_allclose(float(loss), total, rtol=2e-5)


def test_mask_targets_from_box_crops():
    """A RoI's target is the part of its gt's box-aligned crop that it covers."""
    import jax.numpy as jnp

    from mrcli.model.roi_heads import mask_targets

    crop = np.zeros((2, G, G), np.uint8)
    crop[0, :, : G // 2] = 1  # gt 0: left half
    crop[1, G // 2:, :] = 1  # gt 1: bottom half
    gt = np.array([[10, 20, 50, 60], [0, 0, 28, 14]], np.float32)
    rois = np.array([[10, 20, 50, 60], [10, 20, 30, 60], [30, 20, 50, 60], [0, 7, 28, 14],
                     [0, 0, 28, 14]], np.float32)
    matched = np.array([0, 0, 0, 1, 1], np.int32)
    t = np.asarray(mask_targets(jnp.asarray(crop), jnp.asarray(gt), jnp.asarray(matched),
                                jnp.asarray(rois), 28))
    half = np.zeros((28, 28))
    half[:, :14] = 1
    np.testing.assert_array_equal(t[0], half)  # the gt box itself
    np.testing.assert_array_equal(t[1], np.ones((28, 28)))  # its left half
    np.testing.assert_array_equal(t[2], np.zeros((28, 28)))  # its right half
    np.testing.assert_array_equal(t[3], np.ones((28, 28)))  # bottom half of gt 1
    np.testing.assert_array_equal(t[4], half.T[::-1])  # gt 1 itself: bottom half
