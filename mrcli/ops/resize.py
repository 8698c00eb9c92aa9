"""Bilinear resizing of uint8 images in jnp, bit for bit PIL's `Image.resize(BILINEAR)`.

The input pipeline resizes with PIL (mrcli.data.pipeline); an exported model
resizes inside its compiled function (mrcli.export). Both must give the same
pixels, or the exported model sees another input than the model it came from.
This is PIL's algorithm (Pillow's libImaging/Resample.c) with sizes that are
traced values, so one compiled program resizes any image up to a static
capacity to any size up to a static output shape:

- two passes, each rounded to uint8 (PIL's clip8): horizontal first, except
  that Pillow >= 13 runs the vertical pass first when the height shrinks by
  more than twice as many pixels as the width (`vertical_first_rule`);
- each output pixel o of a pass reads the taps x around its centre
  c = (o + 0.5) * in / out with the triangle filter widened by the scale
  when shrinking (antialiasing): weight tri((x + 0.5 - c) / max(in / out, 1)),
  normalised to sum 1, then turned into 22-bit fixed point (rounded half up)
  and applied in integer arithmetic.

PIL computes the weights in double precision. Here they are exact integer
ratios: with D = 2 max(in, out) and n = (2x + 1) out - (2o + 1) in, the weight
is max(D - |n|, 0) / D, so the fixed-point coefficient is
round(2^22 a / sum(a)) for the integers a = max(D - |n|, 0), computed by long
division in int32. The two agree exactly: 2^22 a / sum(a) is never within
1 / (2 sum(a)) of a rounding tie (sum(a) < 2^23), far more than double
precision's error (tested against PIL over many sizes).

Dimension key: H/W input (capacity) height/width, Ho/Wo output height/width,
C channels, O output positions of one pass, T taps.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import Array

__all__ = ["resize_bilinear_float", "resize_bilinear_uint8", "num_taps"]

PRECISION_BITS = 22  # Pillow: 32 - 8 (uint8 pixel) - 2 (headroom)


def num_taps(max_factor: float) -> int:
    """Taps per output pixel (PIL's ksize) when shrinking by at most `max_factor`."""
    return 2 * math.ceil(max(float(max_factor), 1.0)) + 1


def _coefficients(
    in_size: Array,  # [] int32, 1 <= in_size <= input capacity
    out_size: Array,  # [] int32, 1 <= out_size <= out_cap
    out_cap: int,
    taps: int,
) -> tuple[Array, Array]:
    """(index [O,T] int32 into the input, coefficient [O,T] int32 in 2^-22 units);
    output positions >= out_size get all-zero coefficients."""
    n_in = jnp.asarray(in_size, jnp.int32)
    n_out = jnp.asarray(out_size, jnp.int32)
    o = jnp.arange(out_cap, dtype=jnp.int32)[:, None]  # [O,1]
    t = jnp.arange(taps, dtype=jnp.int32)[None, :]  # [1,T]
    big = jnp.maximum(n_in, n_out)
    # PIL's first tap: int(c - support + 0.5) clamped at 0, with support = max(in, out) / out.
    first = jnp.maximum(jnp.floor_divide((2 * o + 1) * n_in - 2 * big + n_out, 2 * n_out), 0)
    x = first + t  # [O,T]
    n = (2 * x + 1) * n_out - (2 * o + 1) * n_in
    a = jnp.maximum(2 * big - jnp.abs(n), 0)
    a = jnp.where((x < n_in) & (o < n_out), a, 0)
    total = jnp.maximum(jnp.sum(a, axis=1, keepdims=True), 1)  # [O,1]
    # q = floor(a * 2^23 / total) by long division (a <= total, all int32).
    def step(_, qr):
        q, r = qr
        r = 2 * r
        bit = (r >= total).astype(jnp.int32)
        return 2 * q + bit, r - bit * total

    q, _ = jax.lax.fori_loop(0, PRECISION_BITS + 1, step, (a // total, a % total))
    coeff = (q + 1) >> 1  # round(a * 2^22 / total), half up
    return jnp.clip(x, 0, None), coeff


def _pass(image: Array, index: Array, coeff: Array, axis: int) -> Array:
    """One pass along `axis` of an int32 image: out[.., o, ..] = clip8(sum_t image[.., index[o, t], ..]
    * coeff[o, t]) (PIL's rounding: add half, shift, clamp to 0..255). A loop over the
    taps (one gather each) compiles faster than unrolling them and runs as fast."""
    limit = image.shape[axis] - 1
    shape = [1] * image.ndim
    shape[axis] = index.shape[0]
    out_shape = list(image.shape)
    out_shape[axis] = index.shape[0]

    def tap(t, acc):
        idx = jnp.minimum(jax.lax.dynamic_index_in_dim(index, t, 1, keepdims=False), limit)
        k = jax.lax.dynamic_index_in_dim(coeff, t, 1, keepdims=False)
        return acc + jnp.take(image, idx, axis=axis) * k.reshape(shape)

    acc = jnp.full(out_shape, 1 << (PRECISION_BITS - 1), jnp.int32)
    acc = jax.lax.fori_loop(0, index.shape[1], tap, acc)
    return jnp.clip(acc >> PRECISION_BITS, 0, 255)


def resize_bilinear_uint8(
    image: Array,  # [H,W,C] uint8; only the top-left in_hw part is read
    in_hw: Array,  # [2] int32 (h, w): the image's size, 1..H and 1..W
    out_hw: Array,  # [2] int32 (rh, rw): the size to resize to, 1..Ho and 1..Wo
    out_shape: tuple[int, int],  # (Ho, Wo), static
    max_factor: float = 1.0,  # static: the largest in/out ratio of any call (sets the taps)
    vertical_first_rule: bool = True,  # static: Pillow >= 13's pass order (False: Pillow <= 12)
) -> Array:  # [Ho,Wo,C] uint8: the resized image top-left, zeros elsewhere
    """PIL's `Image.fromarray(image[:h, :w]).resize((rw, rh), BILINEAR)`, padded with zeros."""
    ho, wo = out_shape
    taps = num_taps(max_factor)
    x = image.astype(jnp.int32)
    h, w = in_hw[0].astype(jnp.int32), in_hw[1].astype(jnp.int32)
    rh, rw = out_hw[0].astype(jnp.int32), out_hw[1].astype(jnp.int32)
    idx_w, k_w = _coefficients(w, rw, wo, taps)
    idx_h, k_h = _coefficients(h, rh, ho, taps)
    h_first = _pass(_pass(x, idx_w, k_w, axis=1), idx_h, k_h, axis=0)  # via [H,Wo,C]
    if not vertical_first_rule:
        return h_first.astype(jnp.uint8)
    # Pillow 13 (libImaging/Resample.c): vertical first iff h - rh > 0 and h - rh > 2 (w - rw).
    v_first = _pass(_pass(x, idx_h, k_h, axis=0), idx_w, k_w, axis=1)  # via [Ho,W,C]
    vertical = (h - rh > 0) & (h - rh > 2 * (w - rw))
    return jnp.where(vertical, v_first, h_first).astype(jnp.uint8)


def resize_bilinear_float(
    image: Array,  # [H,W,C] float32; only the top-left in_hw part is read
    in_hw: Array,  # [2] int32 (h, w): the image's size, 1..H and 1..W
    out_hw: Array,  # [2] int32 (rh, rw): the size to resize to, 1..Ho and 1..Wo
    out_shape: tuple[int, int],  # (Ho, Wo), static
) -> Array:  # [Ho,Wo,C] float32: the resized image top-left; rows/columns beyond it undefined
    """Bilinear interpolation without antialiasing, half-pixel centres: PyTorch's
    F.interpolate(mode="bilinear", align_corners=False) with the output size
    given (torchvision's GeneralizedRCNNTransform resizes the normalised image
    so), the jnp twin of mrcli.data.pipeline.resize_normalized: source = (o +
    0.5) * in / out - 0.5 in float32, clamped at 0, the upper neighbour clamped
    at the edge."""

    def taps(n_in: Array, n_out: Array, size: int):
        ratio = n_in.astype(jnp.float32) / n_out.astype(jnp.float32)
        src = (jnp.arange(size, dtype=jnp.float32) + 0.5) * ratio - 0.5
        src = jnp.maximum(src, 0.0)
        low = jnp.minimum(src.astype(jnp.int32), n_in - 1)
        high = jnp.minimum(low + 1, n_in - 1)
        frac = jnp.clip(src - low.astype(jnp.float32), 0.0, 1.0)
        return low, high, 1.0 - frac, frac

    ho, wo = out_shape
    y0, y1, wy0, wy1 = taps(in_hw[0].astype(jnp.int32), out_hw[0].astype(jnp.int32), ho)
    x0, x1, wx0, wx1 = taps(in_hw[1].astype(jnp.int32), out_hw[1].astype(jnp.int32), wo)
    rows = image[y0] * wy0[:, None, None] + image[y1] * wy1[:, None, None]  # [Ho,W,C]
    return rows[:, x0] * wx0[None, :, None] + rows[:, x1] * wx1[None, :, None]
