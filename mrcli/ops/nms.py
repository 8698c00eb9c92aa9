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
   all instead of max_output, which dominates on a CPU.
4. `nms_blocked` below: (3) with the 256-step inner loop replaced by a
   fixed-point iteration of a few steps: tiles of 512, 0.86 / 6.2 / 75 ms
   (2026-11-25, machine shared; (1) measured 0.93 / 3.7 / 28 ms in the same
   run). Less sequential, more arithmetic: slower than (1) on a CPU beyond
   1000 boxes, built for accelerators.

So `nms` and `batched_nms` use (1) on a CPU. Their loop has a static trip
count (no host sync on a GPU); after the last eligible box the remaining steps
only write invalid slots.

On an accelerator the same loop is the problem: min(max_output, N) = 1000-2000
dependent steps per call, each a few kernel launches (several microseconds
each on a GPU), against a few hundred microseconds of actual work. So
`nms_blocked` and `batched_nms_blocked` give the same result in few steps, the
tile form of (3) with the sequential part replaced by a fixed-point iteration
(Cluster-NMS, Zheng et al. 2020, "Enhancing Geometric Factors in Model
Learning and Inference for Object Detection and Instance Segmentation", §4;
the TPU reference's padded NMS resolves its tiles the same way): sorted boxes
in tiles of `tile`; a static `fori_loop` over the tiles; per tile, the boxes
kept so far ([max_output] buffer) suppress the tile's boxes in one IoU block,
then the greedy order inside the tile is resolved from its upper-triangular
suppression matrix S (S[i, j]: i before j and IoU > threshold) by iterating

    keep <- candidates & ~any_i(keep[i] & S[i, :])

from keep = candidates until nothing changes. The fixed point is unique and is
the greedy result (box j's entry depends only on the boxes before it), and
after m iterations the first m boxes are final, so `tile` iterations bound the
loop; it stops when an iteration changes nothing, after as many iterations as
the longest chain of "suppressed by a box that is itself kept" inside the
tile, a handful on proposals (benchmarks/nms.py measures them). This inner
`while_loop` is the one data-dependent trip count in mrcli (docs/design.md
§2): on a GPU each of its iterations costs a predicate read by the host
(~10 us) where a static loop costs none, which is why the iterations must be
few. Work is O(N * (max_output + tile)) IoUs, memory O(tile * (max_output +
tile)). Tiles after the `max_output`-th kept box have no candidates and
converge in one iteration.

`nms_auto` and `batched_nms_auto` run the greedy loop on a CPU and the blocked
form on any other platform (GPU, TPU), chosen when the program is lowered,
per platform (`lax.platform_dependent`): a compiled program holds one of the
two, and an export for cpu and cuda holds each where it belongs. The model's
configs (`model.rpn.nms`, `model.inference.nms`: "auto", "greedy" or
"blocked"; `nms_for` / `batched_nms_for` map them) can force either. All
forms return the same indices (tests/test_nms.py runs every case through
each). IoU is computed as `mrcli.ops.boxes.iou` does (a pair
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

from mrcli.ops import boxes as box_ops

__all__ = [
    "ALGORITHMS",
    "DEFAULT_TILE",
    "batched_nms",
    "batched_nms_auto",
    "batched_nms_blocked",
    "batched_nms_for",
    "nms",
    "nms_auto",
    "nms_blocked",
    "nms_for",
]

# What the model configs accept (`model.rpn.nms`, `model.inference.nms`).
ALGORITHMS: tuple[str, ...] = ("auto", "greedy", "blocked")

# Boxes per tile of the blocked form. 512 is the TPU reference's padded-NMS
# tile (NMS_TILE_SIZE); a [tile, tile] suppression block and a [max_output,
# tile] one per step. benchmarks/nms.py measures 256 / 512 / 1024 / one tile.
DEFAULT_TILE = 512


def _check_shapes(boxes: Array, scores: Array, classes: Array | None) -> None:
    n = boxes.shape[0]
    if boxes.shape != (n, 4) or scores.shape != (n,):
        raise ValueError(f"nms expects boxes [N, 4] and scores [N], got {boxes.shape} and {scores.shape}")
    if classes is not None and classes.shape != scores.shape:
        raise ValueError(f"classes must be [N] like scores, got {classes.shape} and {scores.shape}")


def _visiting_order(scores: Array, valid: Array | None) -> tuple[Array, Array]:
    """(order [N] int32: indices by score descending, ties by lower index, the
    ineligible last; eligible [N] bool in that order)."""
    n = scores.shape[0]
    # Eligible: finite-or-+inf score (NaN > -inf is False), and valid.
    eligible = scores > -jnp.inf
    if valid is not None:
        eligible = eligible & valid
    # Stable sort by -score; ineligible boxes go last (their key is +inf and
    # they stay ineligible anyway). Equal scores keep index order.
    key = jnp.where(eligible, -scores, jnp.inf)
    _, order = lax.sort((key, jnp.arange(n, dtype=jnp.int32)), num_keys=1, is_stable=True)
    return order, eligible[order]


def _greedy(
    boxes: Array,  # [N, 4] float xyxy
    scores: Array,  # [N] float
    classes: Array | None,  # [N] int, or None for class-agnostic
    iou_threshold: float | Array,
    max_output: int,
    valid: Array | None,  # [N] bool, or None
) -> tuple[Array, Array]:
    _check_shapes(boxes, scores, classes)
    n = boxes.shape[0]
    max_output = int(max_output)
    indices = jnp.zeros((max_output,), jnp.int32)
    kept = jnp.zeros((max_output,), bool)
    if n == 0 or max_output == 0:
        return indices, kept

    order, cand = _visiting_order(scores, valid)  # cand: still eligible (not kept, not suppressed)
    b = boxes[order]  # [N, 4] in visiting order
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


def _blocked(
    boxes: Array,  # [N, 4] float xyxy
    scores: Array,  # [N] float
    classes: Array | None,  # [N] int, or None for class-agnostic
    iou_threshold: float | Array,
    max_output: int,
    valid: Array | None,  # [N] bool, or None
    tile: int,
) -> tuple[Array, Array, Array]:
    """The blocked form (module docstring): (indices [D], valid [D], iterations
    [T] int32: the fixed-point iterations of each of the T tiles)."""
    _check_shapes(boxes, scores, classes)
    n = boxes.shape[0]
    d = int(max_output)
    if n == 0 or d == 0:
        return jnp.zeros((d,), jnp.int32), jnp.zeros((d,), bool), jnp.zeros((0,), jnp.int32)
    if int(tile) < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    order, cand = _visiting_order(scores, valid)
    t = min(int(tile), n)
    nb = -(-n // t)
    pad = nb * t - n  # padding boxes: zeros, never candidates
    b = jnp.pad(boxes[order], ((0, pad), (0, 0))).reshape(nb, t, 4)
    c = jnp.pad(cand, (0, pad)).reshape(nb, t)
    o = jnp.pad(order, (0, pad)).reshape(nb, t)
    cls = None if classes is None else jnp.pad(classes[order], (0, pad)).reshape(nb, t)
    before = jnp.arange(t)[:, None] < jnp.arange(t)[None, :]  # [t, t]: row visited first

    def tile_step(k, carry):
        kept_boxes, kept_cls, kept_ok, indices, count, iterations = carry
        bb, cc, oo = b[k], c[k], o[k]  # [t, 4], [t], [t]
        # Nothing after the d-th kept box reaches the output.
        cc = cc & (count < d)
        # Suppressed by a box kept in an earlier tile (the kept box is the
        # IoU's first argument, as in the greedy loop: same arithmetic).
        hit = (box_ops.iou(kept_boxes, bb) > iou_threshold) & kept_ok[:, None]  # [d, t]
        s = (box_ops.iou(bb, bb) > iou_threshold) & before  # [t, t]
        if cls is not None:
            hit = hit & (kept_cls[:, None] == cls[k][None, :])
            s = s & (cls[k][:, None] == cls[k][None, :])
        cc = cc & ~jnp.any(hit, axis=0)

        def changed(state):
            _, again, it = state
            return again & (it < t)

        def iterate(state):
            keep, _, it = state
            new = cc & ~jnp.any(s & keep[:, None], axis=0)
            return new, jnp.any(new != keep), it + 1

        keep, _, it = lax.while_loop(changed, iterate, (cc, jnp.bool_(True), jnp.int32(0)))
        pos = jnp.where(keep, count + jnp.cumsum(keep) - 1, d)  # slot d and beyond: dropped
        kept_boxes = kept_boxes.at[pos].set(bb, mode="drop")
        kept_ok = kept_ok.at[pos].set(True, mode="drop")
        if cls is not None:
            kept_cls = kept_cls.at[pos].set(cls[k], mode="drop")
        indices = indices.at[pos].set(oo, mode="drop")
        iterations = iterations.at[k].set(it)
        return kept_boxes, kept_cls, kept_ok, indices, count + jnp.sum(keep), iterations

    init = (
        jnp.zeros((d, 4), boxes.dtype),
        jnp.zeros((d,), jnp.int32 if classes is None else classes.dtype),
        jnp.zeros((d,), bool),
        jnp.zeros((d,), jnp.int32),
        jnp.int32(0),
        jnp.zeros((nb,), jnp.int32),
    )
    _, _, ok, indices, _, iterations = lax.fori_loop(0, nb, tile_step, init)
    return jnp.where(ok, indices, 0), ok, iterations


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


def nms_blocked(
    boxes: Array,
    scores: Array,
    iou_threshold: float | Array,
    max_output: int,
    valid: Array | None = None,
    tile: int = DEFAULT_TILE,
) -> tuple[Array, Array]:
    """`nms`, computed in tiles with a fixed-point iteration per tile (the
    accelerator form, module docstring): the same arguments and exactly the
    same result. tile: static int, boxes per tile (a larger tile: fewer tiles,
    a larger [tile, tile] block)."""
    indices, ok, _ = _blocked(boxes, scores, None, iou_threshold, max_output, valid, tile)
    return indices, ok


def batched_nms_blocked(
    boxes: Array,
    scores: Array,
    classes: Array,
    iou_threshold: float | Array,
    max_output: int,
    valid: Array | None = None,
    tile: int = DEFAULT_TILE,
) -> tuple[Array, Array]:
    """`batched_nms` in the blocked form: the same arguments (plus `tile`, as
    `nms_blocked`) and exactly the same result."""
    indices, ok, _ = _blocked(boxes, scores, classes, iou_threshold, max_output, valid, tile)
    return indices, ok


def _auto(
    boxes: Array,  # [N, 4] float xyxy
    scores: Array,  # [N] float
    classes: Array | None,  # [N] int, or None for class-agnostic
    iou_threshold: float | Array,
    max_output: int,
    valid: Array | None,  # [N] bool, or None
) -> tuple[Array, Array]:
    """The greedy loop when lowered for a CPU, the blocked form for any other platform."""
    valid = jnp.ones(scores.shape, bool) if valid is None else valid
    extra = () if classes is None else (classes,)

    def greedy(b, s, t, v, *c):
        return _greedy(b, s, c[0] if c else None, t, max_output, v)

    def blocked(b, s, t, v, *c):
        return _blocked(b, s, c[0] if c else None, t, max_output, v, DEFAULT_TILE)[:2]

    thr = jnp.asarray(iou_threshold, jnp.float32)
    return lax.platform_dependent(boxes, scores, thr, valid, *extra, cpu=greedy, default=blocked)


def nms_auto(
    boxes: Array,
    scores: Array,
    iou_threshold: float | Array,
    max_output: int,
    valid: Array | None = None,
) -> tuple[Array, Array]:
    """`nms` on a CPU, `nms_blocked` elsewhere (module docstring); the same
    arguments and result."""
    return _auto(boxes, scores, None, iou_threshold, max_output, valid)


def batched_nms_auto(
    boxes: Array,
    scores: Array,
    classes: Array,
    iou_threshold: float | Array,
    max_output: int,
    valid: Array | None = None,
) -> tuple[Array, Array]:
    """`batched_nms` on a CPU, `batched_nms_blocked` elsewhere; the same
    arguments and result."""
    if classes.shape != scores.shape:
        raise ValueError(f"classes must be [N] like scores, got {classes.shape} and {scores.shape}")
    return _auto(boxes, scores, classes, iou_threshold, max_output, valid)


def _check_algorithm(algorithm: str) -> None:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown NMS algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}")


def nms_for(algorithm: str):
    """The `nms` form a config names: "greedy" -> nms, "blocked" -> nms_blocked,
    "auto" -> nms_auto."""
    _check_algorithm(algorithm)
    return {"greedy": nms, "blocked": nms_blocked, "auto": nms_auto}[algorithm]


def batched_nms_for(algorithm: str):
    """The `batched_nms` form a config names (as `nms_for`)."""
    _check_algorithm(algorithm)
    return {"greedy": batched_nms, "blocked": batched_nms_blocked, "auto": batched_nms_auto}[algorithm]
