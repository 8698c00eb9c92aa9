"""IoU matching of anchors/proposals to ground truth, and the balanced fg/bg sampler.

Dimension key (mrcli/ops/__init__.py): N gt boxes (padded to max_instances,
with a valid mask), A anchors (or proposals: anything matched to gt),
C crowd regions, S sampled slots. One image per call; `jax.vmap` for a batch.

Labels everywhere: 1 foreground (positive), 0 background (negative), -1 ignored.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array, lax

from mrcli.ops import boxes as box_ops

__all__ = ["match", "match_boxes", "sample_balanced"]

# Detectron's TRAIN.CROWD_FILTER_THRESH: a box covered >= 70% by a crowd
# region is neither foreground nor background.
CROWD_IOA_THRESHOLD = 0.7


def match(
    iou: Array,
    gt_valid: Array,
    high: float,
    low: float,
    allow_low_quality_matches: bool,
) -> tuple[Array, Array]:
    """Faster R-CNN's matcher (torchvision `Matcher` + RPN `assign_targets_to_anchors`).

    iou: [N, A] float, quality of each (gt, anchor) pair, e.g. `boxes.iou(gt, anchors)`;
    gt_valid: [N] bool, False for padded gt rows (they never match);
    high, low: thresholds, low <= high (RPN 0.7 / 0.3, RoI head 0.5 / 0.5);
    allow_low_quality_matches: static bool (True for the RPN, Ren et al. 2015 §3.1.2).

    Returns (matched_gt [A] int32, labels [A] int32):
    - each anchor's best gt is the argmax over the valid gt rows (ties: lowest
      gt index, as torch's `max(dim=0)`);
    - best IoU >= high: label 1; low <= IoU < high: -1 (ignored); < low: 0;
    - with allow_low_quality_matches, for each valid gt, every anchor whose IoU
      with it equals that gt's highest IoU (ties included) becomes positive,
      matched to the anchor's own best gt (not necessarily that gt), as
      torchvision does. One deliberate difference: only where that highest IoU
      is > 0. torchvision has no such check, so a gt that overlaps no anchor
      (a box outside the image, or zero-area, which torchvision rejects at
      its input) would make every anchor positive; for any gt that overlaps
      some anchor the two agree;
    - no valid gt: every anchor is background (label 0), matched_gt 0;
    - matched_gt is the best gt for positives and 0 elsewhere (torchvision's
      `matched_idxs.clamp(min=0)`), so `gt_boxes[matched_gt]` is always a
      valid gather; use it only where labels == 1.
    """
    if iou.ndim != 2 or gt_valid.shape != iou.shape[:1]:
        raise ValueError(f"match expects iou [N, A] and gt_valid [N], got {iou.shape} and {gt_valid.shape}")
    n, a = iou.shape
    if n == 0:
        return jnp.zeros((a,), jnp.int32), jnp.zeros((a,), jnp.int32)
    # Padded rows at -1: below any IoU, so they never win a max unless all rows
    # are padding (then labels 0 below).
    q = jnp.where(gt_valid[:, None], iou, -1.0)  # [N, A]
    best = jnp.max(q, axis=0)  # [A]
    best_gt = jnp.argmax(q, axis=0).astype(jnp.int32)  # [A], first max
    labels = jnp.where(best >= high, 1, jnp.where(best >= low, -1, 0)).astype(jnp.int32)
    if allow_low_quality_matches:
        gt_best = jnp.max(q, axis=1, keepdims=True)  # [N, 1]
        ties = (q == gt_best) & gt_valid[:, None] & (gt_best > 0)  # [N, A]
        labels = jnp.where(jnp.any(ties, axis=0), 1, labels)
    labels = jnp.where(jnp.any(gt_valid), labels, 0)
    matched_gt = jnp.where(labels == 1, best_gt, 0)
    return matched_gt, labels


def match_boxes(
    gt_boxes: Array,
    gt_valid: Array,
    anchors: Array,
    high: float,
    low: float,
    allow_low_quality_matches: bool,
    crowd_boxes: Array | None = None,
    crowd_valid: Array | None = None,
    crowd_ioa_threshold: float = CROWD_IOA_THRESHOLD,
) -> tuple[Array, Array]:
    """`match` on the IoU of gt boxes and anchors, with optional crowd regions.

    gt_boxes: [N, 4] float xyxy; gt_valid: [N] bool; anchors: [A, 4] float xyxy;
    high, low, allow_low_quality_matches: as `match`;
    crowd_boxes: optional [C, 4] float xyxy (COCO iscrowd regions, kept out of
    the targets); crowd_valid: [C] bool (default all True);
    crowd_ioa_threshold: an anchor that would be background and has at least
    this fraction of its area inside a valid crowd region is ignored instead
    (label -1), since it may well cover an unannotated object (Detectron's
    crowd filter, IoA >= 0.7). Foreground anchors stay foreground.

    Returns (matched_gt [A] int32, labels [A] int32) as `match`. Memory: the
    [N, A] IoU matrix (e.g. 100 x 242k floats, 97 MB for a 1344 x 800 input).
    """
    matched_gt, labels = match(box_ops.iou(gt_boxes, anchors), gt_valid, high, low, allow_low_quality_matches)
    if crowd_boxes is not None:
        cover = box_ops.ioa(anchors, crowd_boxes)  # [A, C]
        if crowd_valid is not None:
            cover = jnp.where(crowd_valid[None, :], cover, 0.0)
        in_crowd = jnp.max(cover, axis=1, initial=0.0) >= crowd_ioa_threshold  # [A]
        labels = jnp.where((labels == 0) & in_crowd, -1, labels)
    return matched_gt, labels


def sample_balanced(
    labels: Array,
    num_samples: int,
    positive_fraction: float,
    key: Array,
) -> tuple[Array, Array, Array]:
    """Fixed-size random sample of positives and negatives (torchvision's
    `BalancedPositiveNegativeSampler`, static shapes).

    labels: [A] int, 1 positive, 0 negative, anything else (-1) never sampled;
    num_samples: static int S (RPN 256, RoI head 512); positive_fraction: static
    float (RPN 0.5, RoI head 0.25); key: a PRNG key.

    Takes P = int(S * positive_fraction) positives at most (uniformly at random
    without replacement), then fills the remaining S - #positives slots with
    uniformly random negatives. Returns (indices [S] int32 into A,
    sample_labels [S] int32, valid [S] bool): the chosen positives first
    (label 1), then the negatives (label 0); slots left over when there are
    too few candidates have index 0, label -1 and valid False.

    How: one random 31-bit key per element, ineligible elements set to -1,
    `top_k` per class (a uniformly random subset, without a dynamic shape).
    """
    if labels.ndim != 1:
        raise ValueError(f"sample_balanced expects labels [A], got {labels.shape}")
    a = labels.shape[0]
    s = int(num_samples)
    p = min(int(s * positive_fraction), a)  # torchvision: int(batch * fraction)
    k_neg = min(s, a)
    # 31 random bits, so ties (which top_k breaks by index) are very rare.
    r = (jax.random.bits(key, (a,), jnp.uint32) >> 1).astype(jnp.int32)  # [A] >= 0
    pos = labels == 1
    neg = labels == 0
    slot = jnp.arange(s, dtype=jnp.int32)  # [S]

    if p > 0:
        _, pos_idx = lax.top_k(jnp.where(pos, r, -1), p)  # [P], eligible ones first
        pos_ok = pos[pos_idx]
        n_pos = jnp.sum(pos_ok, dtype=jnp.int32)
    else:
        pos_idx = jnp.zeros((1,), jnp.int32)
        n_pos = jnp.int32(0)
    if k_neg > 0:
        _, neg_idx = lax.top_k(jnp.where(neg, r, -1), k_neg)  # [min(S, A)]
        neg_ok = neg[neg_idx]
    else:
        neg_idx = jnp.zeros((1,), jnp.int32)
        neg_ok = jnp.zeros((1,), bool)

    from_pos = slot < n_pos
    j = jnp.clip(slot - n_pos, 0, neg_idx.shape[0] - 1)
    in_neg = ~from_pos & (slot - n_pos < neg_idx.shape[0]) & neg_ok[j]
    ok = from_pos | in_neg
    idx = jnp.where(from_pos, pos_idx[jnp.minimum(slot, pos_idx.shape[0] - 1)], neg_idx[j])
    indices = jnp.where(ok, idx, 0).astype(jnp.int32)
    sample_labels = jnp.where(from_pos, 1, jnp.where(in_neg, 0, -1)).astype(jnp.int32)
    return indices, sample_labels, ok
