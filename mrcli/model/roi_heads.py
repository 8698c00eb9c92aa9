"""RoI head targets and detection post-processing, pure functions of one image
(`jax.vmap` them).

Training (Fast R-CNN, Girshick 2015 §2.3; torchvision RoIHeads): the proposals
plus the gt boxes are matched to gt (IoU >= 0.5 foreground, else background),
`roi_heads.batch_per_image` are sampled with at most
`roi_heads.positive_fraction` foreground (positives first), and box targets
are encoded with `box_head.coder_weights` (10, 10, 5, 5). The mask head trains
on the first `mask_head.fg_slots` sampled RoIs,
which are the foreground ones (the sampler puts positives first), and the
keypoint head on the first `keypoint_head.fg_slots` (torchvision's positive
proposals; its loss counts only labelled keypoints inside their RoI, which is
Detectron2's selection of proposals with visible keypoints).

Mask targets (He et al. 2017 §3: "the intersection between an RoI and its
associated ground-truth mask"): the data gives each gt mask cropped to its
box and resampled to G x G; a RoI's 28 x 28 target is RoIAlign of that crop
with the RoI mapped into the crop's frame, binarised at 0.5 (as Detectron2 and
the TPU Mask R-CNN; torchvision keeps the soft values).

Inference (torchvision RoIHeads.postprocess_detections): softmax scores,
class-specific decoding, clip to the resized image, background dropped,
(RoI, class) pairs with score > score_threshold and sides >= 0.01 px are
candidates; the best `inference.pre_nms_topk` of them go through per-class NMS
(0.5; `inference.nms` picks the exact greedy loop or its blocked accelerator
form) and the best `inference.detections_per_image` remain.

Dimension key: P proposals, N gt boxes, S sampled RoIs, F mask slots,
R rois, K foreground classes (K + 1 with background), D detections,
G gt mask crop side, M mask side (28), K keypoints (keypoint_targets).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mrcli.ops import boxes as box_ops
from mrcli.config import InferenceConfig, RoIHeadsConfig
from mrcli.ops.nms import batched_nms_for
from mrcli.ops.masks import crop_and_resize_masks
from mrcli.ops.sampling import match_boxes, sample_balanced

Array = jax.Array

# torchvision postprocess_detections: remove_small_boxes(min_size=1e-2).
MIN_DETECTION_SIZE = 1e-2


def sample_rois(
    cfg: RoIHeadsConfig,
    coder_weights: tuple[float, float, float, float],  # model.box_head.coder_weights
    proposals: Array,  # [P, 4]
    proposal_valid: Array,  # [P] bool
    gt_boxes: Array,  # [N, 4]
    gt_classes: Array,  # [N] int, 1..K
    gt_target: Array,  # [N] bool: valid, non-crowd
    gt_crowd: Array,  # [N] bool: valid crowd region
    key: Array,
) -> dict[str, Array]:
    """Sampled RoIs of one image: rois [S, 4], cls_target [S] (0 background, 1..K),
    fg [S] bool, valid [S] bool, matched_gt [S] (an index into N), box_target [S, 4]."""
    candidates = jnp.concatenate([proposals, gt_boxes])  # [P + N, 4]
    cand_valid = jnp.concatenate([proposal_valid, gt_target])
    matched, labels = match_boxes(
        gt_boxes, gt_target, candidates, cfg.fg_iou, cfg.bg_iou, False,
        crowd_boxes=gt_boxes, crowd_valid=gt_crowd,
    )
    labels = jnp.where(cand_valid, labels, -1)
    index, label, valid = sample_balanced(
        labels, cfg.batch_per_image, cfg.positive_fraction, key
    )
    rois = candidates[index]
    matched_gt = matched[index]
    fg = label == 1
    cls_target = jnp.where(fg, gt_classes[matched_gt], 0).astype(jnp.int32)
    g = jnp.where(fg[:, None], gt_boxes[matched_gt], rois)
    # Background and unused slots get targets of a box on itself (zeros): never a NaN.
    safe_rois = jnp.where(valid[:, None], rois, jnp.array([0.0, 0.0, 1.0, 1.0]))
    g = jnp.where(valid[:, None], g, safe_rois)
    box_target = box_ops.encode(g, safe_rois, coder_weights)
    return {
        "rois": rois,
        "cls_target": cls_target,
        "fg": fg,
        "valid": valid,
        "matched_gt": matched_gt,
        "box_target": box_target,
    }


def mask_targets(
    gt_masks: Array,  # [N, G, G] gt masks cropped to their boxes (0/1)
    gt_boxes: Array,  # [N, 4]
    matched_gt: Array,  # [F] index into N
    rois: Array,  # [F, 4]
    size: int,  # M
    sampling_ratio: int = 2,
) -> Array:
    """[F, M, M] float32 0/1 targets: RoIAlign of each RoI's matched gt crop, with the
    RoI in the crop's frame ((roi - gt_x1y1) * G / gt_wh), binarised at 0.5.
    The crop's pixel centres are at (i + 0.5) in that frame, hence `aligned`."""
    g_side = gt_masks.shape[-1]
    gt = gt_boxes[matched_gt]  # [F, 4]
    wh = jnp.maximum(gt[:, 2:] - gt[:, :2], 1e-6)  # [F, 2]
    frame = (rois - jnp.tile(gt[:, :2], 2)) * jnp.tile(g_side / wh, 2)  # [F, 4] crop pixels
    soft = crop_and_resize_masks(gt_masks, frame, matched_gt, size, sampling_ratio, aligned=True)
    return (soft >= 0.5).astype(jnp.float32)


def keypoint_targets(
    gt_keypoints: Array,  # [N, K, 3] x, y (input pixels), visibility 0/1/2
    matched_gt: Array,  # [F] index into N
    rois: Array,  # [F, 4]
    size: int,  # S, the heatmap side
) -> tuple[Array, Array]:
    """Heatmap targets of each RoI's matched instance: (index [F, K] int32, the
    position y * S + x of each keypoint on the S x S heatmap over the RoI;
    valid [F, K] bool: labelled (v > 0) and inside the RoI).

    As torchvision's keypoints_to_heatmap (= Detectron2's, from Caffe2):
    x = floor((x - x1) * S / w) and likewise y, a keypoint on the RoI's right
    (bottom) edge taken into the last column (row); continuous coordinates map
    to discrete cells by Heckbert 1990's d = floor(c)."""
    kp = gt_keypoints[matched_gt]  # [F, K, 3]
    x1, y1, x2, y2 = (rois[:, i, None] for i in range(4))  # [F, 1] each
    scale_x = size / jnp.maximum(x2 - x1, 1e-6)
    scale_y = size / jnp.maximum(y2 - y1, 1e-6)
    x, y = kp[..., 0], kp[..., 1]
    xi = jnp.floor((x - x1) * scale_x).astype(jnp.int32)
    yi = jnp.floor((y - y1) * scale_y).astype(jnp.int32)
    xi = jnp.where(x == x2, size - 1, xi)
    yi = jnp.where(y == y2, size - 1, yi)
    inside = (xi >= 0) & (yi >= 0) & (xi < size) & (yi < size)
    valid = inside & (kp[..., 2] > 0)
    return jnp.where(valid, yi * size + xi, 0).astype(jnp.int32), valid


def detections(
    cfg: InferenceConfig,
    coder_weights: tuple[float, float, float, float],  # model.box_head.coder_weights
    rois: Array,  # [R, 4]
    roi_valid: Array,  # [R] bool
    logits: Array,  # [R, K+1]
    deltas: Array,  # [R, K+1, 4]
    image_hw: Array,  # [2] resized height, width
) -> dict[str, Array]:
    """Detections of one image: boxes [D, 4], scores [D], classes [D] int32 (1..K),
    valid [D], best first; invalid slots are zeros."""
    r, k1 = logits.shape
    k = k1 - 1
    scores = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[:, 1:]  # [R, K]
    boxes = box_ops.decode(deltas.astype(jnp.float32), rois[:, None, :], coder_weights)
    boxes = box_ops.clip(boxes, image_hw[0], image_hw[1])[:, 1:]  # [R, K, 4]
    big = ((boxes[..., 2] - boxes[..., 0]) >= MIN_DETECTION_SIZE) & (
        (boxes[..., 3] - boxes[..., 1]) >= MIN_DETECTION_SIZE
    )
    ok = (scores > cfg.score_threshold) & big & roi_valid[:, None]  # [R, K]
    flat_scores = jnp.where(ok, scores, -jnp.inf).reshape(-1)  # [R*K], index r*K + (class-1)
    n = min(cfg.pre_nms_topk, r * k)
    cand_scores, cand = jax.lax.top_k(flat_scores, n)  # best first, ties by index
    cand_boxes = boxes.reshape(-1, 4)[cand]
    cand_classes = (cand % k + 1).astype(jnp.int32)
    cand_valid = cand_scores > -jnp.inf
    keep, keep_valid = batched_nms_for(cfg.nms)(
        cand_boxes, cand_scores, cand_classes, cfg.nms_threshold, cfg.detections_per_image,
        valid=cand_valid,
    )
    d_scores = jnp.where(keep_valid, cand_scores[keep], 0.0)
    return {
        "boxes": jnp.where(keep_valid[:, None], cand_boxes[keep], 0.0),
        "scores": d_scores,
        "classes": jnp.where(keep_valid, cand_classes[keep], 0),
        "valid": keep_valid,
    }
