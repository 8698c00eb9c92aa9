"""Mask R-CNN losses (He et al. 2017 §3: L = L_cls + L_box + L_mask, plus the RPN's
two terms), in float32, normalised as torchvision does (docs/design.md §6):

- RPN objectness: binary cross-entropy averaged over the sampled anchors of the
  whole batch; RPN box: smooth-L1 summed over the positive anchors, divided by the
  number of sampled anchors (torchvision rpn.compute_loss);
- RoI classification: softmax cross-entropy averaged over the sampled RoIs; RoI
  box: smooth-L1 of the gt class's deltas summed over the foreground RoIs, divided
  by the number of sampled RoIs (torchvision fastrcnn_loss);
- mask: per-pixel sigmoid cross-entropy of the gt class's mask, averaged over
  the foreground RoIs' M x M pixels (torchvision maskrcnn_loss);
- keypoints: softmax cross-entropy over the S x S heatmap positions of each
  labelled keypoint inside its foreground RoI, averaged over those keypoints
  (torchvision keypointrcnn_loss; Detectron2's "visible" normaliser), or
  divided by a constant (model.keypoint_head.loss_normalization).

Functions here work on one image and return (sum, count) pairs, so that a batch
(and a data-parallel batch) is normalised by its totals, as torchvision
concatenates the images before averaging.

Dimension key: S sampled anchors or RoIs (the heatmap side in keypoint_terms),
K foreground classes (K + 1 with background) or keypoints, F mask or keypoint
slots, M mask side.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def smooth_l1(x: Array, beta: float) -> Array:
    """Huber-like loss of Fast R-CNN (Girshick 2015 eq. 3) with torchvision's `beta`:
    0.5 x^2 / beta where |x| < beta, else |x| - 0.5 beta; beta = 0 is L1 (Detectron2)."""
    ax = jnp.abs(x)
    if beta <= 0:
        return ax
    return jnp.where(ax < beta, 0.5 * jnp.square(x) / beta, ax - 0.5 * beta)


def sigmoid_bce(logits: Array, targets: Array) -> Array:
    """Elementwise binary cross-entropy with logits (numerically stable form)."""
    return jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def rpn_terms(
    logits: Array,  # [S] objectness logits of the sampled anchors
    deltas: Array,  # [S, 4] predicted deltas of the sampled anchors
    label: Array,  # [S] 1 positive, 0 negative
    valid: Array,  # [S] bool
    box_target: Array,  # [S, 4]
    beta: float,
) -> dict[str, Array]:
    """Sums and counts of one image's RPN losses."""
    v = valid.astype(jnp.float32)
    fg = (label == 1) & valid
    cls = sigmoid_bce(logits.astype(jnp.float32), (label == 1).astype(jnp.float32))
    box = smooth_l1(deltas.astype(jnp.float32) - box_target, beta).sum(-1)
    return {
        "rpn_cls_sum": jnp.sum(cls * v),
        "rpn_box_sum": jnp.sum(jnp.where(fg, box, 0.0)),
        "rpn_count": jnp.sum(v),
        "rpn_fg_count": jnp.sum(fg.astype(jnp.float32)),
    }


def box_terms(
    logits: Array,  # [S, K+1]
    deltas: Array,  # [S, K+1, 4]
    cls_target: Array,  # [S] int 0..K
    valid: Array,  # [S] bool
    box_target: Array,  # [S, 4]
    beta: float,
) -> dict[str, Array]:
    """Sums and counts of one image's RoI classification and box losses."""
    v = valid.astype(jnp.float32)
    fg = (cls_target > 0) & valid
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    ce = -jnp.take_along_axis(logp, cls_target[:, None], axis=-1)[:, 0]
    d = jnp.take_along_axis(deltas.astype(jnp.float32), cls_target[:, None, None], axis=1)[:, 0]
    box = smooth_l1(d - box_target, beta).sum(-1)
    correct = (jnp.argmax(logits, axis=-1) == cls_target) & valid
    fg_correct = correct & fg
    return {
        "cls_sum": jnp.sum(ce * v),
        "box_sum": jnp.sum(jnp.where(fg, box, 0.0)),
        "roi_count": jnp.sum(v),
        "roi_fg_count": jnp.sum(fg.astype(jnp.float32)),
        "correct": jnp.sum(correct.astype(jnp.float32)),
        "fg_correct": jnp.sum(fg_correct.astype(jnp.float32)),
    }


def mask_terms(
    logits: Array,  # [F, M, M] logits of the gt class's mask
    targets: Array,  # [F, M, M] 0/1
    valid: Array,  # [F] bool
) -> dict[str, Array]:
    """Sum of the per-pixel BCE over the valid slots, and their pixel count."""
    v = valid.astype(jnp.float32)
    bce = sigmoid_bce(logits.astype(jnp.float32), targets).sum(axis=(1, 2))
    pixels = logits.shape[1] * logits.shape[2]
    return {"mask_sum": jnp.sum(bce * v), "mask_pixels": jnp.sum(v) * pixels}


def keypoint_terms(
    logits: Array,  # [F, K, S*S] heatmap logits over the positions
    targets: Array,  # [F, K] int, the target position
    valid: Array,  # [F, K] bool: a foreground slot's labelled keypoint inside its RoI
) -> dict[str, Array]:
    """Sum of the softmax cross-entropy over the S*S positions (He et al. 2017 §5)
    at the valid keypoints, and their count."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    ce = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # [F, K]
    v = valid.astype(jnp.float32)
    return {"keypoint_sum": jnp.sum(ce * v), "keypoint_count": jnp.sum(v)}


def _mean(total: Array, count: Array) -> Array:
    return total / jnp.maximum(count, 1.0)


def combine(terms: dict[str, Array], masks: bool,
            keypoint_weight: float | None = None) -> tuple[Array, dict[str, Array]]:  # fmt: skip
    """Per-image sums [B] -> (total loss, metrics), normalised by batch totals.
    With `keypoint_weight` (a keypoint model) the keypoint loss is
    keypoint_sum / keypoint_norm times it: keypoint_norm is the visible
    keypoints' count or a constant per image (model.keypoint_head.loss_normalization)."""
    t = {k: jnp.sum(v) for k, v in terms.items()}
    metrics = {
        "loss_rpn_cls": _mean(t["rpn_cls_sum"], t["rpn_count"]),
        "loss_rpn_box": _mean(t["rpn_box_sum"], t["rpn_count"]),
        "loss_cls": _mean(t["cls_sum"], t["roi_count"]),
        "loss_box": _mean(t["box_sum"], t["roi_count"]),
        "rpn_fg_fraction": _mean(t["rpn_fg_count"], t["rpn_count"]),
        "roi_fg_fraction": _mean(t["roi_fg_count"], t["roi_count"]),
        "accuracy": _mean(t["correct"], t["roi_count"]),
        "fg_accuracy": _mean(t["fg_correct"], t["roi_fg_count"]),
    }
    if masks:
        metrics["loss_mask"] = _mean(t["mask_sum"], t["mask_pixels"])
    if keypoint_weight is not None:
        metrics["loss_keypoint"] = keypoint_weight * _mean(t["keypoint_sum"], t["keypoint_norm"])
        metrics["keypoints_visible"] = t["keypoint_count"]
    loss = sum(v for k, v in metrics.items() if k.startswith("loss_"))
    return loss, metrics
