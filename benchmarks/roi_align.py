"""RoIAlign speed: mrcli's multilevel RoIAlign against the alternatives it was chosen over.

    python benchmarks/roi_align.py                 # R=512 boxes, C=256, P2..P5 of an 800x1344 input
    python benchmarks/roi_align.py --rois 128 --sizes 14
    python benchmarks/roi_align.py --dense         # also the dense-matrix variant (slow, ~1 GB)
    python benchmarks/roi_align.py --masks         # mask targets: crop_and_resize_masks

Prints milliseconds per call (best of --repeat, after compilation) on whatever
backend JAX picks. Variants, all exact RoIAlign (checked to agree):

  mrcli           mrcli.ops.multilevel_roi_align: per box the (2s)^2 separable
                  taps (the 4 corners of each of the s x s sample points of a
                  bin), one gather of [R, out, out, C] per tap, weighted and
                  summed in one fusion; the levels stay separate and each box
                  reads only its own level (stack + index, fused lazily)
  concat+taps     the same taps from the levels concatenated into one
                  [sum H_l W_l, C] buffer with per-box offsets (the TPU Mask
                  R-CNN layout): costs a copy of the whole pyramid per call
  gather+sum      concatenated buffer, ONE gather of [R, out, out, (2s)^2, C]
                  then a weighted reduction over the taps (XLA:CPU materialises
                  the gathered block)
  einsum          the same gather, reduced by two einsums (separable contraction)
  fwd+bwd         value and gradient w.r.t. the features: mrcli's custom VJP (a
                  scatter-add per tap, in place, into one buffer of all levels)
                  against autodiff of concat+taps (scatters summed through
                  full-size buffers)
  dense (--dense) per box [out, H] and [out, W] interpolation matrices contracted
                  with the whole map (the "separable interpolation matrices"
                  alternative), on P3 (100x168) only, against mrcli on P3
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from mrcli.ops import roi_align as ra
from mrcli.ops.masks import crop_and_resize_masks


def _flat_levels(features, boxes):
    c = features[0].shape[-1]
    heights = np.array([f.shape[0] for f in features], np.int32)
    widths = np.array([f.shape[1] for f in features], np.int32)
    offsets = np.concatenate([[0], np.cumsum(heights * widths)[:-1]]).astype(np.int32)
    scales = np.array([2.0**-lvl for lvl in range(2, 6)], np.float32)
    flat = jnp.concatenate([f.reshape(-1, c) for f in features])
    k = ra.assign_levels(boxes) - 2
    return flat, jnp.asarray(offsets)[k], jnp.asarray(heights)[k], jnp.asarray(widths)[k], jnp.asarray(scales)[k]


def _taps(boxes, height, width, scale, n, s):
    x1, y1, x2, y2 = (boxes[:, i] * scale for i in range(4))
    roi_w = jnp.maximum(x2 - x1, 1.0)
    roi_h = jnp.maximum(y2 - y1, 1.0)
    yi, wy = ra._axis_taps(y1, roi_h / n, height, n, s)
    xi, wx = ra._axis_taps(x1, roi_w / n, width, n, s)
    return yi, wy, xi, wx


def _concat_taps(features, boxes, n, s):
    flat, off, height, width, scale = _flat_levels(features, boxes)
    index, weight = ra.tap_geometry(boxes, height, width, scale, (n, n), s, False)
    return ra._sum_taps(flat, index + off[:, None, None, None], weight)


concat_taps = jax.jit(_concat_taps, static_argnums=(2, 3))


@functools.partial(jax.jit, static_argnums=(2, 3))
def gather_then_reduce(features, boxes, n, s):
    flat, off, height, width, scale = _flat_levels(features, boxes)
    yi, wy, xi, wx = _taps(boxes, height, width, scale, n, s)
    r, t = boxes.shape[0], 2 * s
    index = (
        off[:, None, None, None, None]
        + yi.reshape(r, n, 1, t, 1) * width[:, None, None, None, None]
        + xi.reshape(r, 1, n, 1, t)
    )
    weight = wy.reshape(r, n, 1, t, 1) * wx.reshape(r, 1, n, 1, t)
    values = jnp.take(flat, index, axis=0, mode="clip")  # [R, n, n, 2s, 2s, C]
    return jnp.sum(values * weight[..., None], axis=(3, 4))


@functools.partial(jax.jit, static_argnums=(2, 3))
def two_einsums(features, boxes, n, s):
    flat, off, height, width, scale = _flat_levels(features, boxes)
    yi, wy, xi, wx = _taps(boxes, height, width, scale, n, s)
    r, t = boxes.shape[0], 2 * s
    index = (
        off[:, None, None, None, None]
        + yi.reshape(r, n, t, 1, 1) * width[:, None, None, None, None]
        + xi.reshape(r, 1, 1, n, t)
    )
    values = jnp.take(flat, index, axis=0, mode="clip")  # [R, n, 2s, n, 2s, C]
    values = jnp.einsum("rpaqbc,rqb->rpaqc", values, wx)
    return jnp.einsum("rpaqc,rpa->rpqc", values, wy)


@functools.partial(jax.jit, static_argnums=(2, 3))
def dense_single_level(feature, boxes, n, s):
    """Interpolation matrices [R, n, H] and [R, n, W] (the bilinear taps summed
    per bin) contracted with the whole map: R * n * H * W * C multiply-adds."""
    h, w, _ = feature.shape
    r = boxes.shape[0]
    yi, wy, xi, wx = _taps(boxes, jnp.full((r,), h), jnp.full((r,), w), jnp.full((r,), 0.125), n, s)
    ay = jnp.sum(jax.nn.one_hot(yi, h) * wy[..., None], axis=2)  # [R, n, H]
    ax = jnp.sum(jax.nn.one_hot(xi, w) * wx[..., None], axis=2)  # [R, n, W]
    return jnp.einsum("rph,hwc,rqw->rpqc", ay, feature, ax)


@functools.partial(jax.jit, static_argnums=(2, 3))
def mrcli_ml(features, boxes, n, s):
    return ra.multilevel_roi_align(features, boxes, n, s)


def _value_and_grad(pool):
    @functools.partial(jax.jit, static_argnums=(3, 4))
    def run(features, boxes, ct, n, s):
        out, vjp = jax.vjp(lambda f: pool(f, boxes, n, s), features)
        return out, vjp(ct)

    return run


mrcli_fwd_bwd = _value_and_grad(ra.multilevel_roi_align)
autodiff_fwd_bwd = _value_and_grad(_concat_taps)


@functools.partial(jax.jit, static_argnums=3)
def mask_targets(masks, boxes, matched, size):
    return crop_and_resize_masks(masks, boxes, matched, size)


@functools.partial(jax.jit, static_argnums=3)
def mask_targets_copy_first(masks, boxes, matched, size):
    """The naive form: gather each RoI's full mask [R, H, W] first."""
    per_roi = masks[matched]  # [R, H, W]
    return jax.vmap(lambda m, b: ra.roi_align(m[..., None], b[None], size, 1.0, 2)[0, ..., 0])(
        per_roi.astype(jnp.float32), boxes
    )


@jax.jit
def concat_only(features):
    return jnp.concatenate([f.reshape(-1, f.shape[-1]) for f in features])


def bench(fn, *args, repeat):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best * 1e3, first, out


def measure(rois=512, channels=256, image=(800, 1344), sizes=(7, 14), sampling_ratio=2, repeat=5,
            dense=False, log=print) -> list[dict]:
    """Rows {variant, out, ms, first_s, max_diff} for the variants of the module
    docstring on proposal-like boxes; max_diff is against mrcli's result."""
    rng = np.random.default_rng(0)
    image_h, image_w = image
    features = [
        jnp.asarray(rng.standard_normal((image_h >> lvl, image_w >> lvl, channels), np.float32))
        for lvl in range(2, 6)
    ]
    # Proposal-like boxes: log-uniform sides 16..600 px, inside the image.
    side = np.exp(rng.uniform(np.log(16), np.log(600), (rois, 2)))
    side = np.minimum(side, [image_w - 1, image_h - 1])
    x1 = rng.uniform(0, image_w - side[:, 0])
    y1 = rng.uniform(0, image_h - side[:, 1])
    boxes = jnp.asarray(np.stack([x1, y1, x1 + side[:, 0], y1 + side[:, 1]], 1), jnp.float32)
    levels = np.bincount(np.asarray(ra.assign_levels(boxes)) - 2, minlength=4)
    log(
        f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), R={rois}, C={channels}, "
        f"levels {[tuple(f.shape[:2]) for f in features]}, boxes per level P2..P5 {levels.tolist()}, "
        f"sampling ratio {sampling_ratio}"
    )
    rows = []
    ms, _, _ = bench(concat_only, features, repeat=repeat)
    log(f"  concatenating the levels alone: {ms:.1f} ms")
    rows.append({"variant": "concatenate levels only", "out": None, "ms": ms, "first_s": None, "max_diff": None})
    s = sampling_ratio
    for n in sizes:
        ref = None
        variants = [
            ("mrcli", mrcli_ml),
            ("concat+taps", concat_taps),
            ("gather+sum", gather_then_reduce),
            ("einsum", two_einsums),
        ]
        for name, fn in variants:
            ms, first, out = bench(fn, features, boxes, n, s, repeat=repeat)
            if ref is None:
                ref = out
            err = float(jnp.max(jnp.abs(out - ref)))
            rows.append({"variant": name, "out": n, "ms": ms, "first_s": first, "max_diff": err})
            log(f"  out={n:2d}  {name:12s} {ms:8.1f} ms   (first call {first:5.1f} s, max |diff| {err:.1e})")
        ct = jnp.asarray(rng.standard_normal(ref.shape), jnp.float32)
        grads = None
        for name, fn in (("mrcli fwd+bwd", mrcli_fwd_bwd), ("autodiff f+b", autodiff_fwd_bwd)):
            ms, first, (_, (g,)) = bench(fn, features, boxes, ct, n, s, repeat=repeat)
            grads = g if grads is None else grads
            err = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(g, grads))
            rows.append({"variant": name, "out": n, "ms": ms, "first_s": first, "max_diff": err})
            log(f"  out={n:2d}  {name:13s}{ms:8.1f} ms   (first call {first:5.1f} s, max |diff| {err:.1e})")
        if dense:
            p3 = features[1]
            ms, first, out = bench(dense_single_level, p3, boxes, n, s, repeat=min(repeat, 2))
            single = jax.jit(lambda f, b: ra.roi_align(f, b, n, 0.125, s))  # noqa: B023
            ms_g, _, gathered = bench(single, p3, boxes, repeat=repeat)
            err = float(jnp.max(jnp.abs(out - gathered)))
            rows.append({"variant": "dense on P3", "out": n, "ms": ms, "first_s": first, "max_diff": err})
            rows.append({"variant": "gather on P3", "out": n, "ms": ms_g, "first_s": None, "max_diff": None})
            log(
                f"  out={n:2d}  dense on P3 {ms:8.1f} ms   vs gather on P3 {ms_g:.1f} ms (max |diff| {err:.1e})"
            )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rois", type=int, default=512)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--image", type=int, nargs=2, default=(800, 1344), metavar=("H", "W"))
    parser.add_argument("--sizes", type=int, nargs="+", default=(7, 14))
    parser.add_argument("--sampling-ratio", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dense", action="store_true")
    parser.add_argument("--masks", action="store_true", help="only the mask-target benchmark")
    args = parser.parse_args()

    if args.masks:
        bench_masks(args)
        return
    measure(args.rois, args.channels, tuple(args.image), tuple(args.sizes), args.sampling_ratio,
            args.repeat, args.dense)  # fmt: skip


def bench_masks(args):
    """Mask targets for 128 foreground RoIs from 20 gt masks of the input size, 28x28."""
    rng = np.random.default_rng(0)
    image_h, image_w = args.image
    n_gt, n_roi, size = 20, 128, 28
    masks = jnp.asarray(rng.random((n_gt, image_h, image_w)) < 0.5)
    side = np.exp(rng.uniform(np.log(16), np.log(600), (n_roi, 2)))
    x1 = rng.uniform(0, image_w - side[:, 0])
    y1 = rng.uniform(0, image_h - side[:, 1])
    boxes = jnp.asarray(np.stack([x1, y1, x1 + side[:, 0], y1 + side[:, 1]], 1), jnp.float32)
    matched = jnp.asarray(rng.integers(0, n_gt, n_roi), jnp.int32)
    print(f"mask targets: {n_roi} rois, {n_gt} bool gt masks of {image_h}x{image_w}, {size}x{size}")
    ms, first, ref = bench(mask_targets, masks, boxes, matched, size, repeat=args.repeat)
    print(f"  crop_and_resize_masks      {ms:8.2f} ms   (first call {first:5.1f} s)")
    ms, first, out = bench(mask_targets_copy_first, masks, boxes, matched, size, repeat=args.repeat)
    err = float(jnp.max(jnp.abs(out - ref)))
    print(f"  [R, H, W] copy, then align {ms:8.2f} ms   (first call {first:5.1f} s, max |diff| {err:.1e})")


if __name__ == "__main__":
    main()
