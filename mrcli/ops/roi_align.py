"""RoIAlign (Mask R-CNN, He et al. 2017, §3) and its FPN multilevel form.

Dimension key (mrcli/ops/__init__.py): R rois, H/W feature height/width,
C channels, L pyramid levels. One image per call, channels last (NHWC without
the N); `jax.vmap` for a batch. Boxes are xyxy in absolute pixels of the model
input; `spatial_scale` maps them onto the feature map (1/4 for P2, ...).

Semantics: torchvision.ops.roi_align as its compiled C++/CUDA kernels compute
it (csrc/ops/cpu/roi_align_kernel.cpp, the `sampling_ratio > 0` branch):

- `aligned`: the box is shifted by -0.5 after scaling (pixel centres at
  integer + 0.5, Detectron2's ROIAlignV2); when not aligned the box's width and
  height are clamped to >= 1 (the legacy Mask R-CNN behaviour).
- each of the out x out bins averages sampling_ratio x sampling_ratio points
  on a regular grid, y = y1 + ph * bin_h + (iy + 0.5) * bin_h / sampling_ratio
  (likewise x);
- a sample with y < -1 or y > H (or x < -1 or x > W) contributes ZERO (it
  still counts in the average's denominator); otherwise y is clamped to >= 0,
  y_low = floor(y), and at y_low >= H - 1 both neighbours are row H - 1
  (likewise x); the value is the bilinear mix of the 4 neighbours.

torchvision's pure-Python fallback (used when its compiled library can't
load, e.g. on a CPU-only torch) clamps samples beyond [-1, H] x [-1, W] onto
the border instead of zeroing them; tests/test_roi_align.py shows exactly
where. The adaptive `sampling_ratio <= 0` (ceil(roi_size / out) points per
bin) is data-dependent, so it is refused: a static shape needs a static
sample count. Mask R-CNN's box and mask heads use 2 (torchvision
`MultiScaleRoIAlign(..., sampling_ratio=2)`, Detectron2 POOLER_SAMPLING_RATIO).

No gradient flows into `boxes` (as in torchvision and Detectron2, whose
backward only returns d/dfeatures); the features get the exact transpose.

Algorithm and why. The sample grid is separable: the y coordinates depend
only on (ph, iy), the x coordinates only on (pw, ix), and so do the bilinear
weights and the border rule (zero if y OR x is outside = a product of a y and
an x validity). Per box and axis we compute the 2 * out * s neighbour indices
(low/high of each sample) and weights (with the 1/s of the average and the
validity folded in); the (2s)^2 "taps" of a bin pair a y neighbour with an x
neighbour: these are exactly the 4 corners of each of its s x s sample
points. Each tap is one gather of [R, out, out, C] rows (C contiguous, so
coalesced on a GPU); the weighted sum of the taps is one XLA loop fusion that
never materialises the neighbours. FPN levels stay separate arrays: each box
gets its level's index/weights, the per-level results are stacked and indexed
by level, and XLA fuses that into one loop that evaluates only the chosen
level per output element (no concatenated copy of the pyramid, no L-fold
work). The gradient (features only) is a custom VJP: a scatter-add per tap,
in place, into one buffer of all levels, split back per level.

Measured (benchmarks/roi_align.py, 2-core x86 CPU shared with other jobs:
ranges over runs, the high ends under load; R=512, C=256, P2..P5 = 200x336 ..
25x42 of an 800x1344 input, sampling ratio 2, float32, ms per call after
compilation):

  variant                                             out=7    out=14
  this module                                         10-25    70-125
  levels concatenated into one buffer + the same taps  50-115  115-185
    (the TPU Mask R-CNN layout; the 91 MB copy alone takes 30-80 ms here)
  one gather of [R, out, out, (2s)^2, C] + weighted sum 130-430  600-1500
    (XLA:CPU materialises the gathered block)
  the same gather, two einsums (separable contraction) 370-960  1360-2650
  dense [out, H] / [out, W] interpolation matrices     380-720  880-3200
    on P3 alone (taps on P3: 7-11 / 42-120 ms): R*out*H*W*C multiply-adds,
    62 GFLOP and a 1.2 GB intermediate on P2
  value + gradient, custom VJP                        310-770  1000-1900
  value + gradient, autodiff of the concatenated form  580-1380 1150-2250
  mask head shape R=128, out=14: forward 12-21 ms, value + gradient 280-600
    (autodiff 880-920); the backward is bound by passes over the 91 MB
    gradient buffer (zeroing, 16 scatters, the split into levels)

On a GPU the taps form is a single gather-FMA kernel per call (one read of
R * out^2 * (2s)^2 rows of C, ~0.4 GB at out=7), the dense form would need
tensor-core FLOPs but the same huge intermediate; not measured here (no GPU
in this environment).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

__all__ = [
    "assign_levels", "check_sampling_ratio", "gather_taps", "multilevel_roi_align", "roi_align",
    "tap_geometry",
]

# FPN paper (Lin et al. 2017) eq. 1: k = floor(k0 + log2(sqrt(wh) / 224)),
# k0 = 4; torchvision's LevelMapper adds eps = 1e-6 before the floor so that
# a box of exactly 224 / 2^n pixels lands on its level despite rounding.
CANONICAL_SCALE = 224
CANONICAL_LEVEL = 4
LEVEL_EPS = 1e-6


def _pair(output_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(output_size, int):
        size = (output_size, output_size)
    else:
        size = tuple(int(s) for s in output_size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"output_size must be a positive int or (height, width), got {output_size!r}")
    return size


def check_sampling_ratio(sampling_ratio) -> int:
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, (int, np.integer)):
        raise TypeError(
            f"sampling_ratio must be a static Python int (the number of samples per bin side), "
            f"got {type(sampling_ratio).__name__}"
        )
    if sampling_ratio <= 0:
        raise ValueError(
            f"sampling_ratio={sampling_ratio}: the adaptive sampling of torchvision "
            "(sampling_ratio <= 0, ceil(roi_size / output_size) points per bin) depends on the "
            "box sizes, which a static-shape program can't do; pass a fixed positive ratio "
            "(Mask R-CNN uses 2)"
        )
    return int(sampling_ratio)


def _axis_taps(
    start: Array,  # [R] float32, first box edge on the feature map (after scale/offset)
    bin_size: Array,  # [R] float32, bin side in feature pixels
    size: Array,  # [R] int32, feature map extent along this axis
    out: int,
    ratio: int,
) -> tuple[Array, Array]:
    """Neighbour indices and weights of one axis: ([R, out, 2*ratio] int32, same f32).

    For each bin p and sample i the two neighbours (low, high) are interleaved
    as taps 2*i and 2*i + 1; the weights include the sample's validity (the
    kernel's border rule) and the 1/ratio of the bin average.
    """
    p = jnp.arange(out, dtype=jnp.float32)[None, :, None]
    i = jnp.arange(ratio, dtype=jnp.float32)[None, None, :]
    start = start[:, None, None]
    bin_size = bin_size[:, None, None]
    size = size[:, None, None]
    # The kernel's order of operations: y1 + ph * bin + ((iy + .5) * bin) / s.
    c = start + p * bin_size + (i + 0.5) * bin_size / ratio  # [R, out, ratio]
    valid = (c >= -1.0) & (c <= size.astype(jnp.float32))  # False for NaN too
    # Samples in [-1, 0) read pixel 0; invalid ones get weight 0 and a safe
    # index (so no NaN/overflow reaches the gather or the weights).
    c = jnp.where(valid, jnp.maximum(c, 0.0), 0.0)
    low = jnp.floor(c).astype(jnp.int32)
    at_edge = low >= size - 1
    low = jnp.where(at_edge, size - 1, low)
    high = jnp.where(at_edge, size - 1, low + 1)
    frac = jnp.where(at_edge, 0.0, c - low.astype(jnp.float32))
    keep = jnp.where(valid, 1.0 / ratio, 0.0)
    r = c.shape[0]
    idx = jnp.stack([low, high], axis=-1).reshape(r, out, 2 * ratio)
    w = jnp.stack([(1.0 - frac) * keep, frac * keep], axis=-1).reshape(r, out, 2 * ratio)
    return idx, w


def tap_geometry(
    boxes: Array,  # [R, 4] float xyxy, in the pixels that `scale` maps onto the map
    height: Array,  # [R] int32, height of each box's map
    width: Array,  # [R] int32, width of each box's map
    scale: Array,  # [R] float32, spatial scale of each box's map
    output_size: tuple[int, int],
    ratio: int,
    aligned: bool,
) -> tuple[Array, Array]:  # index [R, oh, ow, T] int32 (y * W + x in its map), weight same f32
    """The T = (2 * ratio)^2 taps of every output bin: pixel index and weight.

    Tap (a, b) pairs the y neighbour a and the x neighbour b of the same bin
    (a enumerates (sample iy, low/high)); its weight is wy * wx, which holds
    the bilinear weights, the border rule and the 1 / ratio^2 of the average.
    """
    oh, ow = output_size
    boxes = jax.lax.stop_gradient(boxes).astype(jnp.float32)
    scale = jnp.asarray(scale, jnp.float32)
    shift = 0.5 if aligned else 0.0
    x1 = boxes[:, 0] * scale - shift
    y1 = boxes[:, 1] * scale - shift
    x2 = boxes[:, 2] * scale - shift
    y2 = boxes[:, 3] * scale - shift
    roi_w = x2 - x1
    roi_h = y2 - y1
    if not aligned:  # legacy: force malformed boxes to be at least 1x1
        roi_w = jnp.maximum(roi_w, 1.0)
        roi_h = jnp.maximum(roi_h, 1.0)
    yi, wy = _axis_taps(y1, roi_h / oh, height, oh, ratio)  # [R, oh, 2s]
    xi, wx = _axis_taps(x1, roi_w / ow, width, ow, ratio)  # [R, ow, 2s]
    r, t = boxes.shape[0], 2 * ratio
    index = yi.reshape(r, oh, 1, t, 1) * width[:, None, None, None, None] + xi.reshape(r, 1, ow, 1, t)
    weight = wy.reshape(r, oh, 1, t, 1) * wx.reshape(r, 1, ow, 1, t)
    return index.reshape(r, oh, ow, t * t), weight.reshape(r, oh, ow, t * t)


def _sum_taps(
    flat: Array,  # [P, C] any dtype
    index: Array,  # [R, oh, ow, T] int32 rows of `flat`
    weight: Array,  # [R, oh, ow, T] float32
) -> Array:  # [R, oh, ow, C] float32
    # One gather of [R, oh, ow, C] per tap, weighted and summed in float32:
    # XLA fuses the T gathers and the sum into one loop, so no [R, oh, ow, T, C]
    # block of neighbours is materialised (measured 3-9x faster on CPU than one
    # gather followed by a reduction). Gathering in the features' own dtype
    # halves the bytes for bfloat16.
    pooled = None
    for t in range(index.shape[-1]):
        term = jnp.take(flat, index[..., t], axis=0, mode="clip").astype(jnp.float32) * weight[..., t, None]
        pooled = term if pooled is None else pooled + term
    return pooled


@jax.custom_vjp
def gather_taps(
    maps: tuple[Array, ...],  # L x [P_l, C] any dtype, the same C: flattened feature maps
    level: Array,  # [R] int32 in [0, L): the map each box reads
    index: Array,  # [R, oh, ow, T] int32, rows of the box's map
    weight: Array,  # [R, oh, ow, T] float32
) -> Array:  # [R, oh, ow, C] float32
    """sum_t weight[..., t] * maps[level][index[..., t]], the RoIAlign contraction.

    With several maps each box is pooled from its own map only: the per-map
    results are stacked and indexed by `level`, which XLA fuses into one loop
    that evaluates, per output element, only the selected map's taps (no
    concatenated copy of the maps, no L-fold work; checked in the optimised
    HLO on CPU: a single gather fusion).
    """
    if len(maps) == 1:
        return _sum_taps(maps[0], index, weight)
    per_map = [_sum_taps(m, jnp.minimum(index, m.shape[0] - 1), weight) for m in maps]
    return jnp.stack(per_map)[level, jnp.arange(level.shape[0])]


def _gather_taps_fwd(maps, level, index, weight):
    return gather_taps(maps, level, index, weight), (maps, level, index, weight)


def _gather_taps_bwd(res, ct):
    # The transpose, written by hand: scatter-add ct * weight of each tap, in
    # place, into one zero buffer holding all the maps, then split it. Autodiff
    # of the forward scatters every tap into every map (the lazy level select
    # transposes into L dense cotangents) and sums full-size buffers: 2-3x
    # slower on CPU. One scatter per tap keeps the updates at [R, oh, ow, C]
    # (a single scatter of all taps materialises [R, oh, ow, T, C], 0.4-1.6 GB
    # at R=512, C=256, for the same speed).
    maps, level, index, weight = res
    rows = [m.shape[0] for m in maps]
    offsets = np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.int32)
    flat_index = index + jnp.asarray(offsets)[level][:, None, None, None]
    ct = ct.astype(jnp.float32)
    grad = jnp.zeros((sum(rows), maps[0].shape[1]), jnp.float32)
    for t in range(index.shape[-1]):
        grad = grad.at[flat_index[..., t]].add(ct * weight[..., t, None], mode="promise_in_bounds")
    parts = jnp.split(grad, np.cumsum(rows)[:-1]) if len(maps) > 1 else [grad]
    return tuple(g.astype(m.dtype) for g, m in zip(parts, maps)), None, None, None


gather_taps.defvjp(_gather_taps_fwd, _gather_taps_bwd)


def roi_align(
    features: Array,  # [H, W, C] any float dtype (bfloat16 ok): one image's feature map
    boxes: Array,  # [R, 4] float xyxy, input-image pixels
    output_size: int | tuple[int, int],
    spatial_scale: float | Array = 1.0,
    sampling_ratio: int = 2,
    aligned: bool = False,
) -> Array:  # [R, out_h, out_w, C] features.dtype
    """RoIAlign of `boxes` on one feature map, = torchvision.ops.roi_align (NHWC).

    `output_size` (int or (h, w)), `sampling_ratio` (> 0) and `aligned` are
    static; `spatial_scale` may be traced. Weights are computed in float32
    whatever the features' dtype; the result has the features' dtype.
    """
    size = _pair(output_size)
    ratio = check_sampling_ratio(sampling_ratio)
    h, w, c = features.shape
    r = boxes.shape[0]
    index, weight = tap_geometry(
        boxes,
        jnp.full((r,), h, jnp.int32),
        jnp.full((r,), w, jnp.int32),
        jnp.broadcast_to(jnp.asarray(spatial_scale, jnp.float32), (r,)),
        size,
        ratio,
        bool(aligned),
    )
    pooled = gather_taps((features.reshape(h * w, c),), jnp.zeros((r,), jnp.int32), index, weight)
    return pooled.astype(features.dtype)


def assign_levels(
    boxes: Array,  # [R, 4] float xyxy, input-image pixels
    canonical_scale: float = CANONICAL_SCALE,
    canonical_level: int = CANONICAL_LEVEL,
    min_level: int = 2,
    max_level: int = 5,
) -> Array:  # [R] int32 in [min_level, max_level]
    """FPN level of each box, = torchvision's LevelMapper (poolers.py).

    level = floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6),
    clipped to [min_level, max_level], area = (x2 - x1) * (y2 - y1) (no +1),
    in float32 with torchvision's order of operations. A zero-area box goes
    to min_level; a box with negative area (sqrt gives NaN) also goes to
    min_level (torchvision's cast of NaN to int64 makes it drop such a box,
    returning zeros for it).
    """
    boxes = boxes.astype(jnp.float32)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    s = jnp.sqrt(area)
    k = jnp.floor(canonical_level + jnp.log2(s / canonical_scale) + jnp.float32(LEVEL_EPS))
    k = jnp.where(jnp.isnan(k), min_level, k)
    return jnp.clip(k, min_level, max_level).astype(jnp.int32)


def multilevel_roi_align(
    features: Sequence[Array],  # L x [H_l, W_l, C], levels min_level..max_level (P2..P5)
    boxes: Array,  # [R, 4] float xyxy, input-image pixels
    output_size: int | tuple[int, int],
    sampling_ratio: int = 2,
    aligned: bool = False,
    canonical_scale: float = CANONICAL_SCALE,
    canonical_level: int = CANONICAL_LEVEL,
    min_level: int = 2,
    max_level: int = 5,
) -> Array:  # [R, out_h, out_w, C] features[0].dtype
    """Each box pooled from its FPN level, = torchvision's MultiScaleRoIAlign.

    Level l has spatial scale 2**-l (torchvision infers the same power of two
    from the feature and image sizes). The level of a box is `assign_levels`.
    The levels are concatenated into one buffer and each box gathers from its
    own level only (one RoIAlign's worth of gathers, not L).
    """
    size = _pair(output_size)
    ratio = check_sampling_ratio(sampling_ratio)
    n_levels = max_level - min_level + 1
    if len(features) != n_levels:
        raise ValueError(
            f"multilevel_roi_align: got {len(features)} feature maps for levels "
            f"{min_level}..{max_level} ({n_levels} expected)"
        )
    channels = {f.shape[-1] for f in features}
    if len(channels) != 1 or any(f.ndim != 3 for f in features):
        raise ValueError(
            "multilevel_roi_align: every level must be [H_l, W_l, C] with the same C, got "
            f"{[tuple(f.shape) for f in features]}"
        )
    (c,) = channels
    heights = np.array([f.shape[0] for f in features], np.int32)
    widths = np.array([f.shape[1] for f in features], np.int32)
    if int(np.sum(heights.astype(np.int64) * widths)) >= 2**31:
        raise ValueError("multilevel_roi_align: the levels hold more than 2**31 pixels")
    scales = np.array([2.0**-lvl for lvl in range(min_level, max_level + 1)], np.float32)
    dtype = features[0].dtype
    k = assign_levels(boxes, canonical_scale, canonical_level, min_level, max_level) - min_level
    index, weight = tap_geometry(
        boxes, jnp.asarray(heights)[k], jnp.asarray(widths)[k], jnp.asarray(scales)[k], size, ratio, bool(aligned)
    )
    maps = tuple(f.reshape(-1, c).astype(dtype) for f in features)
    return gather_taps(maps, k, index, weight).astype(dtype)
