"""Box arithmetic: pure jnp on (..., 4) xyxy boxes.

Dimension key (as in mrcli/ops/__init__.py): N, M box counts; "..." any leading
batch dimensions. Boxes are xyxy (x1, y1, x2, y2) in absolute pixels of the
model input unless a name says otherwise.

Widths are `x2 - x1` with no "+1" (the continuous-coordinate convention of
torchvision and Detectron2; the original Caffe Faster R-CNN used `x2 - x1 + 1`).
Every function is written for any leading shape or for one image, and is
jit-able and vmappable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax.numpy as jnp
from jax import Array

# Largest dw, dh fed to exp() when decoding: log(1000/16), i.e. a box may grow
# at most 1000/16 = 62.5 times its anchor (torchvision BoxCoder's
# `bbox_xform_clip`, from Detectron's `BBOX_XFORM_CLIP`).
DEFAULT_CLAMP = math.log(1000.0 / 16)

__all__ = ["DEFAULT_CLAMP", "area", "clip", "decode", "encode", "ioa", "iou"]


def area(boxes: Array) -> Array:
    """Area (x2 - x1) * (y2 - y1) of each box.

    boxes: [..., 4] float xyxy. Returns [...] of the same dtype.

    Not clamped: an inverted box (x2 < x1 xor y2 < y1) has a negative area, as in
    torchvision's `box_area`; `iou` never lets that leak into its result.
    """
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def iou(a: Array, b: Array) -> Array:
    """Pairwise intersection over union.

    a: [N, 4] float xyxy; b: [M, 4] float xyxy. Returns [N, M] float in [0, 1].

    The same arithmetic as torchvision's `box_iou` (inter / (area_a + area_b -
    inter), clamped intersection sides), so thresholds decide alike, except
    that a pair whose union is not positive (two zero-area boxes, or inverted
    boxes) gets IoU 0 instead of NaN. No NaN or inf for finite input, and the
    gradient is NaN-free too.
    """
    area_a = area(a)  # [N]
    area_b = area(b)  # [M]
    lt = jnp.maximum(a[:, None, :2], b[None, :, :2])  # [N, M, 2]
    rb = jnp.minimum(a[:, None, 2:], b[None, :, 2:])  # [N, M, 2]
    wh = jnp.maximum(rb - lt, 0)  # [N, M, 2]
    inter = wh[..., 0] * wh[..., 1]  # [N, M]
    union = area_a[:, None] + area_b[None, :] - inter  # [N, M]
    ok = union > 0
    return jnp.where(ok, inter / jnp.where(ok, union, 1), 0)


def ioa(a: Array, b: Array) -> Array:
    """Pairwise intersection over the area of the first box.

    a: [N, 4] float xyxy; b: [M, 4] float xyxy. Returns [N, M] float in [0, 1]:
    the fraction of each `a` box covered by each `b` box (e.g. a = anchors,
    b = crowd regions; Detectron's crowd filter). 0 where `a` has no positive area.
    """
    area_a = area(a)  # [N]
    lt = jnp.maximum(a[:, None, :2], b[None, :, :2])  # [N, M, 2]
    rb = jnp.minimum(a[:, None, 2:], b[None, :, 2:])  # [N, M, 2]
    wh = jnp.maximum(rb - lt, 0)  # [N, M, 2]
    inter = wh[..., 0] * wh[..., 1]  # [N, M]
    ok = area_a[:, None] > 0
    return jnp.where(ok, inter / jnp.where(ok, area_a[:, None], 1), 0)


def clip(boxes: Array, height: float | Array, width: float | Array) -> Array:
    """Clip boxes to the image [0, width] x [0, height].

    boxes: [..., 4] float xyxy; height, width: scalars (Python numbers or 0-d
    arrays, e.g. the unpadded image size inside a bucket). Returns [..., 4].
    As torchvision's `clip_boxes_to_image`: x clamped to [0, width], y to [0, height].
    """
    x = jnp.clip(boxes[..., 0::2], 0, width)
    y = jnp.clip(boxes[..., 1::2], 0, height)
    return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


def encode(
    boxes: Array,
    anchors: Array,
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
) -> Array:
    """Regression targets (dx, dy, dw, dh) of `boxes` relative to `anchors`.

    boxes: [..., 4] float xyxy (targets, e.g. matched gt boxes);
    anchors: [..., 4] float xyxy (reference boxes: anchors or proposals),
    broadcastable against `boxes`; weights: (wx, wy, ww, wh) Python floats.
    Returns deltas [..., 4] float.

    The Faster R-CNN parametrisation (Ren et al. 2015, eq. 2; R-CNN appendix C),
    arithmetic as torchvision's `encode_boxes`:
      dx = wx * (gx - ax) / aw,  dy = wy * (gy - ay) / ah,
      dw = ww * log(gw / aw),    dh = wh * log(gh / ah),
    with widths x2 - x1 and centres x1 + 0.5 * w. Anchors must have positive
    sides (as torchvision, a zero-size anchor gives inf/NaN); targets with a
    zero side give -inf in dw/dh, so callers pass only positive gt boxes (or
    mask the result).
    """
    wx, wy, ww, wh = weights
    aw = anchors[..., 2] - anchors[..., 0]
    ah = anchors[..., 3] - anchors[..., 1]
    ax = anchors[..., 0] + 0.5 * aw
    ay = anchors[..., 1] + 0.5 * ah
    gw = boxes[..., 2] - boxes[..., 0]
    gh = boxes[..., 3] - boxes[..., 1]
    gx = boxes[..., 0] + 0.5 * gw
    gy = boxes[..., 1] + 0.5 * gh
    dx = wx * (gx - ax) / aw
    dy = wy * (gy - ay) / ah
    dw = ww * jnp.log(gw / aw)
    dh = wh * jnp.log(gh / ah)
    return jnp.stack([dx, dy, dw, dh], axis=-1)


def decode(
    deltas: Array,
    anchors: Array,
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    clamp: float = DEFAULT_CLAMP,
) -> Array:
    """Boxes from regression deltas: the inverse of `encode`.

    deltas: [..., 4] float (dx, dy, dw, dh); anchors: [..., 4] float xyxy,
    broadcastable against `deltas` (for class-specific deltas [R, K, 4] pass
    anchors[:, None, :]); weights: (wx, wy, ww, wh) Python floats; clamp: the
    largest dw, dh (after dividing by the weights) passed to exp, default
    log(1000/16) (torchvision `bbox_xform_clip`). Returns boxes [..., 4] xyxy.

    Arithmetic as torchvision's `BoxCoder.decode_single`: centre = d * size +
    centre, size = exp(min(d, clamp)) * size, corners = centre -/+ 0.5 * size.
    """
    wx, wy, ww, wh = weights
    aw = anchors[..., 2] - anchors[..., 0]
    ah = anchors[..., 3] - anchors[..., 1]
    ax = anchors[..., 0] + 0.5 * aw
    ay = anchors[..., 1] + 0.5 * ah
    dx = deltas[..., 0] / wx
    dy = deltas[..., 1] / wy
    dw = jnp.minimum(deltas[..., 2] / ww, clamp)
    dh = jnp.minimum(deltas[..., 3] / wh, clamp)
    cx = dx * aw + ax
    cy = dy * ah + ay
    w = jnp.exp(dw) * aw
    h = jnp.exp(dh) * ah
    return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)
