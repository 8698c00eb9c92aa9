"""Region proposals and RPN targets (Ren et al. 2015, "Faster R-CNN", §3.1; FPN
form of Lin et al. 2017 §4.1), as pure functions of one image (`jax.vmap` them).

Proposals follow torchvision's RegionProposalNetwork.filter_proposals with
static shapes: per level, the top-k anchors by objectness logit (k =
min(pre_nms_topk, anchors of the level)) are decoded (box-coder weights 1, dw/dh
clamped at log(1000/16)), clipped to the resized image, boxes with a side below
`rpn.min_size` are dropped (never kept by NMS), NMS 0.7 runs on the sigmoid
scores within the level (`rpn.nms` picks the exact greedy loop or its blocked
accelerator form), and the best `post_nms_topk` over all levels remain, best
first. No gradient flows into proposals (torchvision detaches them).

Dimension key: A anchors (all levels, level-major), L levels, P proposals,
N gt boxes, S sampled anchors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mrcli.ops import boxes as box_ops
from mrcli.config import AnchorConfig, RPNConfig
from mrcli.ops import anchors as anchor_ops
from mrcli.ops.nms import nms_for
from mrcli.ops.sampling import match_boxes, sample_balanced

Array = jax.Array

# RPN box coder: unit weights (torchvision RegionProposalNetwork, Detectron2 RPN).
RPN_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)


def anchors_for(cfg: AnchorConfig, image_hw: tuple[int, int]) -> tuple[np.ndarray, anchor_ops.AnchorLayout]:
    """The anchors of a padded input (H, W): ([A, 4] float32 numpy constant, layout)."""
    strides = anchor_ops.STRIDES[: len(cfg.sizes)]
    grid = anchor_ops.anchor_grid(
        image_hw, strides, cfg.sizes, cfg.aspect_ratios, cfg.torchvision_grid
    )
    layout = anchor_ops.anchor_layout(
        image_hw, strides, len(cfg.aspect_ratios), cfg.torchvision_grid
    )
    return grid, layout


def proposal_counts(cfg: RPNConfig, training: bool) -> tuple[int, int]:
    """(pre-NMS top-k per level, post-NMS top-k per image): the one place the
    train and test values are chosen."""
    return cfg.pre_nms_topk.pick(training), cfg.post_nms_topk.pick(training)


def num_proposals(cfg: RPNConfig, layout: anchor_ops.AnchorLayout, training: bool) -> int:
    """P, the static number of proposal slots per image."""
    pre, post = proposal_counts(cfg, training)
    k_max = max(min(pre, n) for n in layout.counts)
    return min(post, len(layout.counts) * min(k_max, post))


def proposals(
    cfg: RPNConfig,
    logits: Array,  # [A] objectness logits
    deltas: Array,  # [A, 4]
    anchors: np.ndarray,  # [A, 4] xyxy
    layout: anchor_ops.AnchorLayout,
    image_hw: Array,  # [2] resized (unpadded) height, width
    training: bool,
) -> tuple[Array, Array, Array]:
    """Proposals of one image: (boxes [P, 4], scores [P] sigmoid, valid [P]), best first.
    Invalid slots (fewer than P boxes survive) have score 0 and valid False."""
    pre, post = proposal_counts(cfg, training)
    logits = jax.lax.stop_gradient(logits).astype(jnp.float32)
    deltas = jax.lax.stop_gradient(deltas).astype(jnp.float32)
    anchors = jnp.asarray(anchors)
    h, w = image_hw[0], image_hw[1]
    # Per level top-k, padded to a common k (score -inf, never kept) so that one
    # vmapped NMS serves all levels: one compiled loop instead of L.
    k_max = max(min(pre, n) for n in layout.counts)
    out_k = min(k_max, post)
    level_boxes, level_scores, level_ok = [], [], []
    for level in range(len(layout.counts)):
        sl = layout.level_slice(level)
        k = min(pre, layout.counts[level])
        top_logits, idx = jax.lax.top_k(logits[sl], k)  # [k]
        boxes = box_ops.decode(deltas[sl][idx], anchors[sl][idx], RPN_BOX_WEIGHTS)
        boxes = box_ops.clip(boxes, h, w)  # [k, 4]
        big = ((boxes[:, 2] - boxes[:, 0]) >= cfg.min_size) & (
            (boxes[:, 3] - boxes[:, 1]) >= cfg.min_size
        )
        pad = k_max - k
        level_boxes.append(jnp.pad(boxes, ((0, pad), (0, 0))))
        level_scores.append(jnp.pad(jax.nn.sigmoid(top_logits), (0, pad)))
        level_ok.append(jnp.pad(big, (0, pad)))
    boxes = jnp.stack(level_boxes)  # [L, k_max, 4]
    scores = jnp.stack(level_scores)  # [L, k_max]
    nms = nms_for(cfg.nms)  # greedy or blocked: the same result (mrcli/ops/nms.py)
    keep, keep_valid = jax.vmap(
        lambda b, s, v: nms(b, s, cfg.nms_threshold, out_k, valid=v)
    )(boxes, scores, jnp.stack(level_ok))  # [L, out_k]
    boxes = jnp.take_along_axis(boxes, keep[..., None], axis=1).reshape(-1, 4)
    scores = jnp.where(keep_valid, jnp.take_along_axis(scores, keep, axis=1), -jnp.inf).reshape(-1)
    p = min(post, scores.shape[0])
    best, idx = jax.lax.top_k(scores, p)  # best first over all levels
    valid = best > -jnp.inf
    return boxes[idx], jnp.where(valid, best, 0.0), valid


def targets(
    cfg: RPNConfig,
    anchors: np.ndarray,  # [A, 4]
    gt_boxes: Array,  # [N, 4]
    gt_target: Array,  # [N] bool: a valid, non-crowd gt
    gt_crowd: Array,  # [N] bool: a valid crowd region (ignored, never a target)
    key: Array,
) -> dict[str, Array]:
    """RPN training targets of one image (Faster R-CNN §3.1.2): anchors with IoU >= 0.7
    (or a gt's best anchor) positive, < 0.3 negative, anchors mostly inside a crowd
    region ignored; `batch_per_image` sampled, at most `positive_fraction`
    positive. Returns index [S] into A, label [S] (1/0, -1 unused slot), valid [S],
    box_target [S, 4] (encoded with unit weights; meaningful where label == 1)."""
    anchors = jnp.asarray(anchors)
    matched, labels = match_boxes(
        gt_boxes, gt_target, anchors, cfg.fg_iou, cfg.bg_iou, True,
        crowd_boxes=gt_boxes, crowd_valid=gt_crowd,
    )
    index, label, valid = sample_balanced(
        labels, cfg.batch_per_image, cfg.positive_fraction, key
    )
    a = anchors[index]
    g = gt_boxes[matched[index]]
    fg = label == 1
    # Dummy unit boxes where not foreground, so that encode never sees a zero side.
    safe_g = jnp.where(fg[:, None], g, a)
    box_target = box_ops.encode(safe_g, a, RPN_BOX_WEIGHTS)
    return {"index": index, "label": label, "valid": valid, "box_target": box_target}
