"""Exact greedy non-maximum suppression with static shapes.

Dimension key (mrcli/ops/__init__.py): N candidate boxes, D kept slots
(`max_output`). One image per call; `jax.vmap` for a batch (or for the levels of
the RPN).

Semantics: the textbook greedy NMS (torchvision's `nms`): visit the boxes by
score, highest first, ties broken by the lower index; a box that has not been
suppressed is kept and suppresses every later box whose IoU with it is
> `iou_threshold` (strictly greater). The kept boxes, in that visiting order,
fill the first slots of the output; we stop after `max_output` of them. Boxes
with score -inf or NaN, or with `valid` False, are never kept and never
suppress anything. Output slots past the kept ones hold index 0 with valid
False (0, not -1: it is a safe gather index; always read `valid`).

Algorithm and why (measured by benchmarks/nms.py on this project's 2-core x86
CPU, jax 0.10: N random proposal-like boxes on a 1333 x 800 image, IoU 0.7,
max_output 1000; run time after compilation, N = 1000 / 4000 / 20000):

1. "sorted": sort once by (-score, index) with a stable sort, then a
   `fori_loop` of min(max_output, N) steps; each step takes the first
   still-eligible box in sorted order (`argmax` of a bool vector), records it
   and clears the eligibility of the boxes whose IoU with it is > threshold
   (one IoU row, O(N)). Exact, O(N log N + max_output * N) time, O(N) memory
   (no N x N matrix): 1.3 / 4.8 / 23 ms (vmap over 2 images: 3.0 / 10 / 70 ms;
   first call with compilation 0.25-0.5 s).
2. the same loop without the sort, `argmax` over the masked float scores
   (argmax's first-occurrence rule breaks ties by index): 5.0 / 19 / 130 ms.
   A float argmax per step costs far more than a bool one.
3. blocked (the layout of TPU "padded" NMS): sorted boxes in tiles of 256;
   each tile's IoU against the buffer of kept boxes [256, max_output] at once,
   then the greedy order resolved inside the tile by a 256-step loop over its
   [256, 256] IoU matrix: 2.5 / 10 / 88 ms. The same O(N * max_output) IoU
   work in larger vector ops, but its sequential inner loop has N steps in
   all instead of max_output, which dominates on a CPU. On a GPU the tiles
   may win; the benchmark keeps it, so that this can be re-measured there.

So this module uses (1). Every loop has a static trip count (no data-dependent
`while`, no host sync on GPU); after the last eligible box the remaining steps
only write invalid slots. IoU is computed as `mrcli.ops.boxes.iou` does (a pair
with non-positive union has IoU 0); note that XLA may contract a*b+c into one
fused multiply-add, so an IoU can differ from torchvision's in the last bit,
which changes a decision only for a pair within one ulp of the threshold
(with coordinates exact in a few bits, e.g. integers, results are identical).

`batched_nms` runs the same loop where only boxes of the same class suppress
each other (an exact mask, not torchvision's coordinate-offset trick, whose
float offsets can round coordinates): the result equals per-class NMS merged
by score, in the same (score, index) order.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array, lax

__all__ = ["batched_nms", "nms"]


def _greedy(
    boxes: Array,  # [N, 4] float xyxy
    scores: Array,  # [N] float
    classes: Array | None,  # [N] int, or None for class-agnostic
    iou_threshold: float | Array,
    max_output: int,
    valid: Array | None,  # [N] bool, or None
) -> tuple[Array, Array]:
    n = boxes.shape[0]
    if boxes.shape != (n, 4) or scores.shape != (n,):
        raise ValueError(f"nms expects boxes [N, 4] and scores [N], got {boxes.shape} and {scores.shape}")
    max_output = int(max_output)
    indices = jnp.zeros((max_output,), jnp.int32)
    kept = jnp.zeros((max_output,), bool)
    if n == 0 or max_output == 0:
        return indices, kept

    # Eligible: finite-or-+inf score (NaN > -inf is False), and valid.
    eligible = scores > -jnp.inf
    if valid is not None:
        eligible = eligible & valid
    # Stable sort by -score; ineligible boxes go last (their key is +inf and
    # they stay ineligible anyway). Equal scores keep index order.
    key = jnp.where(eligible, -scores, jnp.inf)
    _, order = lax.sort((key, jnp.arange(n, dtype=jnp.int32)), num_keys=1, is_stable=True)
    b = boxes[order]  # [N, 4] in visiting order
    cand = eligible[order]  # [N] still eligible (not kept, not suppressed)
    cls = None if classes is None else classes[order]
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    areas = (x2 - x1) * (y2 - y1)  # [N]

    def step(k, carry):
        cand, indices, kept = carry
        i = jnp.argmax(cand)  # first eligible in visiting order (0 if none)
        ok = cand[i]
        bx = b[i]
        w = jnp.maximum(jnp.minimum(bx[2], x2) - jnp.maximum(bx[0], x1), 0)
        h = jnp.maximum(jnp.minimum(bx[3], y2) - jnp.maximum(bx[1], y1), 0)
        inter = w * h
        union = areas[i] + areas - inter
        pos = union > 0
        overlap = jnp.where(pos, inter / jnp.where(pos, union, 1), 0)
        suppress = overlap > iou_threshold
        if cls is not None:
            suppress = suppress & (cls == cls[i])
        # Box i leaves the candidates too (a zero-area box has IoU 0 with itself).
        cand = (cand & ~suppress).at[i].set(False)
        indices = indices.at[k].set(jnp.where(ok, order[i], 0))
        kept = kept.at[k].set(ok)
        return cand, indices, kept

    _, indices, kept = lax.fori_loop(0, min(max_output, n), step, (cand, indices, kept))
    return indices, kept


def nms(
    boxes: Array,
    scores: Array,
    iou_threshold: float | Array,
    max_output: int,
    valid: Array | None = None,
) -> tuple[Array, Array]:
    """Greedy NMS of one image, padded to `max_output` slots.

    boxes: [N, 4] float xyxy; scores: [N] float (-inf or NaN: never kept);
    iou_threshold: scalar (may be traced); suppress IoU > iou_threshold;
    max_output: static int D; valid: optional [N] bool (False: never kept).

    Returns (indices [D] int32 into the N boxes, in descending score order with
    ties by lower index; valid [D] bool). Slots past the kept boxes have index 0
    and valid False. Equal to `torchvision.ops.nms(boxes, scores, t)[:D]` for
    finite scores (see the module docstring for the last-ulp caveat).
    """
    return _greedy(boxes, scores, None, iou_threshold, max_output, valid)


def batched_nms(
    boxes: Array,
    scores: Array,
    classes: Array,
    iou_threshold: float | Array,
    max_output: int,
    valid: Array | None = None,
) -> tuple[Array, Array]:
    """Per-class greedy NMS of one image: boxes of different classes never suppress each other.

    boxes: [N, 4] float xyxy; scores: [N] float; classes: [N] int (any ids,
    e.g. class index or FPN level); iou_threshold: scalar; max_output: static
    int D; valid: optional [N] bool.

    Returns (indices [D] int32, valid [D] bool) as `nms`: the union of the
    per-class NMS results, ordered by score descending (ties by lower index),
    truncated to D; padded slots index 0, valid False. Same kept set and order
    as `torchvision.ops.batched_nms(...)[:D]` (for distinct scores, where its
    order is defined).
    """
    if classes.shape != scores.shape:
        raise ValueError(f"classes must be [N] like scores, got {classes.shape} and {scores.shape}")
    return _greedy(boxes, scores, classes, iou_threshold, max_output, valid)

