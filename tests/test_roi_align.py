"""RoIAlign against (i) a loop-by-loop numpy port of torchvision's compiled
kernel (csrc/ops/cpu/roi_align_kernel.cpp) in float64, the border reference,
and (ii) torchvision itself (its pure-Python fallback on this CPU torch, and
MultiScaleRoIAlign / LevelMapper for the multilevel op).

Shapes are fixed per test (R_PAD boxes, small maps) so that few programs are
compiled; the spatial scale is a traced argument.
"""

from __future__ import annotations

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import torchvision_ref
from mrcli.ops.roi_align import assign_levels, multilevel_roi_align, roi_align

R_PAD = 32  # every box set is padded to this many boxes: one compile per static config


# ---------------------------------------------------------------- reference


def roi_align_reference(features, boxes, output_size, spatial_scale, sampling_ratio, aligned):
    """torchvision's compiled RoIAlign forward for one image, plain loops, float64.

    features [H, W, C], boxes [R, 4] xyxy -> [R, oh, ow, C]. Transcribed from
    the algorithm of roi_align_forward_kernel_impl / bilinear_interpolate
    (pre_calc_for_bilinear_interpolate), with sampling_ratio > 0.
    """
    feats = np.asarray(features, np.float64)
    height, width, channels = feats.shape
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    out = np.zeros((len(boxes), oh, ow, channels))
    offset = 0.5 if aligned else 0.0
    for r, box in enumerate(np.asarray(boxes, np.float64)):
        start_w = box[0] * spatial_scale - offset
        start_h = box[1] * spatial_scale - offset
        end_w = box[2] * spatial_scale - offset
        end_h = box[3] * spatial_scale - offset
        roi_w = end_w - start_w
        roi_h = end_h - start_h
        if not aligned:
            roi_w = max(roi_w, 1.0)
            roi_h = max(roi_h, 1.0)
        bin_h = roi_h / oh
        bin_w = roi_w / ow
        count = max(sampling_ratio * sampling_ratio, 1)
        for ph in range(oh):
            for pw in range(ow):
                acc = np.zeros(channels)
                for iy in range(sampling_ratio):
                    y = start_h + ph * bin_h + (iy + 0.5) * bin_h / sampling_ratio
                    for ix in range(sampling_ratio):
                        x = start_w + pw * bin_w + (ix + 0.5) * bin_w / sampling_ratio
                        acc += _bilinear(feats, y, x)
                out[r, ph, pw] = acc / count
    return out


def _bilinear(feats, y, x):
    height, width, _ = feats.shape
    # The border rule is a discontinuity: a sample within float32 rounding of
    # -1, H or W may fall on either side in float32 and float64, so a test box
    # must not put one there (exactly on it is fine: dyadic values are exact).
    for v, edge in ((y, -1.0), (y, height), (x, -1.0), (x, width)):
        assert not 0 < abs(v - edge) < 1e-5, f"ill-posed test: sample {v} within rounding of the border {edge}"
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return 0.0  # "empty": the kernel skips samples beyond the border
    y = max(y, 0.0)
    x = max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (
        hy * hx * feats[y_low, x_low]
        + hy * lx * feats[y_low, x_high]
        + ly * hx * feats[y_high, x_low]
        + ly * lx * feats[y_high, x_high]
    )


def _pad(boxes):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    assert len(boxes) <= R_PAD
    pad = np.tile(np.array([[0, 0, 4, 4]], np.float32), (R_PAD - len(boxes), 1))
    return np.concatenate([boxes, pad]), len(boxes)


@functools.partial(jax.jit, static_argnames=("output_size", "sampling_ratio", "aligned"))
def _jit_roi_align(features, boxes, spatial_scale, *, output_size, sampling_ratio, aligned):
    return roi_align(features, boxes, output_size, spatial_scale, sampling_ratio, aligned)


def _ours(features, boxes, output_size, scale, ratio, aligned):
    padded, n = _pad(boxes)
    out = _jit_roi_align(
        jnp.asarray(features), jnp.asarray(padded), jnp.float32(scale),
        output_size=output_size, sampling_ratio=ratio, aligned=aligned,
    )
    return np.asarray(out)[:n]


def adversarial_boxes(height, width, scale):
    """Boxes in image pixels for a map of height x width at `scale`."""
    ih, iw = height / scale, width / scale
    return np.array(
        [
            [0, 0, iw, ih],  # the whole map
            [5, 5, 5, 5],  # zero area
            [3.3, 7.1, 3.3, 9.9],  # zero width
            [10, 12, 6, 8],  # x2 < x1, y2 < y1
            [-40, -30, -5, -2],  # entirely before the map
            [iw + 3, ih + 2, iw + 50, ih + 60],  # entirely after the map
            [-0.537 / scale, -0.641 / scale, 0.463 / scale, 0.3 / scale],  # samples in [-1, 0)
            [-3 / scale, 2, 2 / scale, ih * 0.5],  # partly left, beyond -1
            [iw * 0.5, ih * 0.7, iw * 1.4, ih * 1.6],  # partly beyond right/bottom
            [iw - 1.13 / scale, ih - 1.07 / scale, iw + 0.87 / scale, ih + 0.91 / scale],  # straddles H, W
            [1.01, 2.02, 1.03, 2.05],  # tiny
            [-10 * iw, -10 * ih, 11 * iw, 11 * ih],  # huge
            [-1e4, -1e4, -1e4 + 1, -1e4 + 1],  # far negative
            [0.25, 0.25, 0.75 / scale, 0.75 / scale],
        ],
        np.float32,
    )


def random_boxes(rng, n, ih, iw, spill=0.3):
    """Random boxes, some spilling `spill` of the image past each side."""
    x = rng.uniform(-spill * iw, (1 + spill) * iw, (n, 2))
    y = rng.uniform(-spill * ih, (1 + spill) * ih, (n, 2))
    return np.stack([x.min(1), y.min(1), x.max(1), y.max(1)], 1).astype(np.float32)


# ---------------------------------------------------------------- vs the kernel port


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("ratio", [1, 2, 3])
def test_matches_kernel_port_on_adversarial_and_random_boxes(aligned, ratio):
    rng = np.random.default_rng(10 * ratio + aligned)
    height, width = 9, 13
    feats = rng.standard_normal((height, width, 3)).astype(np.float32)
    for scale in (1.0, 0.5, 0.25, 1 / 3):
        boxes = np.concatenate(
            [adversarial_boxes(height, width, scale), random_boxes(rng, 10, height / scale, width / scale)]
        )
        ours = _ours(feats, boxes, 5, scale, ratio, aligned)
        ref = roi_align_reference(feats, boxes, 5, scale, ratio, aligned)
        np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0, err_msg=f"scale={scale}")


def test_non_square_output_and_single_pixel_maps():
    rng = np.random.default_rng(1)
    for height, width in ((1, 1), (1, 6), (5, 1), (7, 4)):
        feats = rng.standard_normal((height, width, 2)).astype(np.float32)
        boxes = np.concatenate([adversarial_boxes(height, width, 1.0), random_boxes(rng, 8, height, width)])
        for aligned in (False, True):
            ours = _ours(feats, boxes, (3, 4), 1.0, 2, aligned)
            ref = roi_align_reference(feats, boxes, (3, 4), 1.0, 2, aligned)
            np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0, err_msg=f"{height}x{width}")


def test_border_rule_zero_beyond_minus_one_and_size():
    """A constant map shows the rule: each bin = (samples inside [-1, H] x [-1, W]) / s^2."""
    feats = np.ones((4, 6, 1), np.float32)
    # x samples at -2.5, -1.5, -0.5, 0.5 (bins of 1 px, 1 sample): the first two are out.
    boxes = np.array([[-3, 0, 1, 4], [2, 1, 8, 3], [0, 3, 6, 7]], np.float32)
    ours = _ours(feats, boxes, 4, 1.0, 1, False)[..., 0]
    np.testing.assert_array_equal(ours[0], np.tile([0, 0, 1, 1], (4, 1)))
    # x from 2 to 8, samples at 2.75, 4.25, 5.75, 7.25: the last is > W = 6.
    np.testing.assert_array_equal(ours[1], np.tile([1, 1, 1, 0], (4, 1)))
    # y samples at 3.5, 4.5, 5.5, 6.5 with H = 4: rows 2..4 out, 3.5 in (clamped to row 3).
    np.testing.assert_array_equal(ours[2], np.tile([[1], [0], [0], [0]], (1, 4)))


def test_bfloat16_features_float32_weights():
    rng = np.random.default_rng(2)
    feats = rng.standard_normal((9, 13, 4)).astype(np.float32)
    feats_bf16 = jnp.asarray(feats, jnp.bfloat16)
    boxes = random_boxes(rng, 12, 9, 13)
    padded, n = _pad(boxes)
    out = _jit_roi_align(
        feats_bf16, jnp.asarray(padded), jnp.float32(1.0), output_size=5, sampling_ratio=2, aligned=True
    )
    assert out.dtype == jnp.bfloat16
    # Reference on the same (rounded) inputs: only the output rounding differs.
    ref = roi_align_reference(np.asarray(feats_bf16.astype(jnp.float32)), boxes, 5, 1.0, 2, True)
    np.testing.assert_allclose(np.asarray(out, np.float32)[:n], ref, atol=2e-2, rtol=1e-2)


def test_refuses_adaptive_sampling_ratio():
    feats = jnp.zeros((4, 4, 1))
    boxes = jnp.zeros((1, 4))
    for bad in (0, -1):
        with pytest.raises(ValueError, match="adaptive"):
            roi_align(feats, boxes, 7, 1.0, bad)
    with pytest.raises(TypeError, match="static Python int"):
        roi_align(feats, boxes, 7, 1.0, jnp.int32(2))


def test_gradient_is_the_transpose_and_boxes_get_none():
    rng = np.random.default_rng(3)
    f = jnp.asarray(rng.standard_normal((6, 7, 2)), jnp.float32)
    f2 = jnp.asarray(rng.standard_normal((6, 7, 2)), jnp.float32)
    boxes = jnp.asarray(random_boxes(rng, 5, 6, 7))
    ct = jnp.asarray(rng.standard_normal((5, 3, 3, 2)), jnp.float32)

    def inner(feats, b):
        return jnp.sum(roi_align(feats, b, 3, 1.0, 2, False) * ct)

    g_feats, g_boxes = jax.jit(jax.grad(inner, argnums=(0, 1)))(f, boxes)
    # The op is linear in the features: <A^T ct, f2> = <A f2, ct>.
    np.testing.assert_allclose(jnp.vdot(g_feats, f2), inner(f2, boxes), rtol=1e-5)
    np.testing.assert_array_equal(g_boxes, 0)


def test_multilevel_gradient_is_the_transpose_under_vmap():
    """The custom VJP (one scatter-add into the concatenated levels, split back)
    is the exact transpose of the forward, per level, batched with vmap."""
    rng = np.random.default_rng(11)
    image_h, image_w = 256, 320
    pyramids = [_pyramid(rng, image_h, image_w, 2) for _ in range(2)]
    feats = [jnp.stack([jnp.asarray(f) for f in fs]) for fs in zip(*pyramids)]  # L x [B, H, W, C]
    probe = [jnp.asarray(rng.standard_normal(f.shape), jnp.float32) for f in feats]
    side = np.exp(rng.uniform(np.log(8), np.log(300), (2, 12, 2)))
    side[:, :4] = np.array([20.0, 80.0, 300.0, 600.0])[:, None]  # one box per level P2..P5
    xy = rng.uniform(-20, 200, (2, 12, 2))
    boxes = jnp.asarray(np.concatenate([xy, xy + side], -1), jnp.float32)
    ct = jnp.asarray(rng.standard_normal((2, 12, 3, 3, 2)), jnp.float32)
    pool = jax.vmap(lambda f, b: multilevel_roi_align(f, b, 3))

    def inner(f):
        return jnp.sum(pool(f, boxes) * ct)

    grads = jax.jit(jax.grad(inner))(feats)
    assert [g.shape for g in grads] == [f.shape for f in feats]
    assert all(float(jnp.abs(g).sum()) > 0 for g in grads)
    lhs = sum(jnp.vdot(g, p) for g, p in zip(grads, probe))
    np.testing.assert_allclose(lhs, jax.jit(inner)(probe), rtol=1e-5)


# ---------------------------------------------------------------- vs torchvision


@pytest.fixture(scope="module")
def tv():
    torchvision = torchvision_ref.load()
    if torchvision is None:
        pytest.skip("torch/torchvision not installed")
    # Without its compiled library torchvision runs its Python RoIAlign through
    # torch.compile (5-10 s per shape); the eager function is the same math.
    mod = sys.modules["torchvision.ops.roi_align"]
    saved = mod._roi_align
    mod._roi_align = getattr(saved, "__wrapped__", saved)
    yield torchvision
    mod._roi_align = saved


def _tv_roi_align(tv, feats, boxes, output_size, scale, ratio, aligned):
    import torch

    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(feats, -1, 0)))[None]
    rois = torch.from_numpy(np.concatenate([np.zeros((len(boxes), 1), np.float32), boxes], 1))
    out = tv.ops.roi_align(x, rois, output_size, scale, ratio, aligned)
    return np.moveaxis(out.numpy(), 1, -1)


def test_matches_torchvision_inside_the_map(tv):
    rng = np.random.default_rng(4)
    height, width = 9, 13
    feats = rng.standard_normal((height, width, 3)).astype(np.float32)
    for aligned in (False, True):
        for scale in (1.0, 0.5):
            boxes = random_boxes(rng, R_PAD, height / scale, width / scale, spill=0.0)
            ours = _ours(feats, boxes, 5, scale, 2, aligned)
            theirs = _tv_roi_align(tv, feats, boxes, 5, scale, 2, aligned)
            np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_where_torchvision_python_fallback_differs_at_the_border(tv):
    """The fallback clamps a sample beyond [-1, H] x [-1, W] onto the border
    (it has no "empty" test); the compiled kernels (and we) give it zero.

    Exactly the bins with such a sample differ, and by exactly those samples'
    clamped border values / s^2; everywhere else all three agree."""
    rng = np.random.default_rng(5)
    height, width, ratio = 6, 8, 2
    feats = rng.standard_normal((height, width, 2)).astype(np.float32)
    boxes = np.concatenate(
        [adversarial_boxes(height, width, 1.0)[[0, 6, 7, 8, 9, 11]], random_boxes(rng, 10, height, width, 0.5)]
    )
    ours = _ours(feats, boxes, 4, 1.0, ratio, False)
    fallback = _tv_roi_align(tv, feats, boxes, 4, 1.0, ratio, False)
    np.testing.assert_allclose(ours, roi_align_reference(feats, boxes, 4, 1.0, ratio, False), atol=1e-4)

    # Per bin: the contribution of the out-of-range samples, as the fallback computes them.
    expected_gap = np.zeros_like(ours)
    for r, (x1, y1, x2, y2) in enumerate(boxes.astype(np.float64)):
        bin_h, bin_w = max(y2 - y1, 1) / 4, max(x2 - x1, 1) / 4
        for ph in range(4):
            for pw in range(4):
                for iy in range(ratio):
                    y = y1 + ph * bin_h + (iy + 0.5) * bin_h / ratio
                    for ix in range(ratio):
                        x = x1 + pw * bin_w + (ix + 0.5) * bin_w / ratio
                        if y < -1 or y > height or x < -1 or x > width:
                            yc = min(max(y, 0.0), height - 1.0)
                            xc = min(max(x, 0.0), width - 1.0)
                            expected_gap[r, ph, pw] += _bilinear(feats.astype(np.float64), yc, xc) / ratio**2
    outside = np.any(expected_gap != 0, axis=-1)
    assert outside.any() and (~outside).any()
    # (float32 coordinates of the huge box are good to ~1e-5 relative in the fallback)
    np.testing.assert_allclose(fallback - ours, expected_gap, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(fallback[~outside], ours[~outside], atol=1e-4)


def test_assign_levels_matches_torchvision_level_mapper(tv):
    import torch
    from torchvision.ops.poolers import LevelMapper

    rng = np.random.default_rng(6)
    sides = np.concatenate(
        [
            [0.0, 1e-3, 1.0, 55.9, 56.0, 111.99, 112.0, 112.01, 223.9, 224.0, 224.1, 447.9, 448.0, 448.1, 5000],
            rng.uniform(0, 900, 200),
        ]
    )
    aspect = np.exp(rng.uniform(-1.5, 1.5, len(sides)))
    aspect[:15] = 1.0
    w, h = sides * np.sqrt(aspect), sides / np.sqrt(aspect)
    x1, y1 = rng.uniform(-50, 500, (2, len(sides)))
    boxes = np.stack([x1, y1, x1 + w, y1 + h], 1).astype(np.float32)
    ours = np.asarray(jax.jit(assign_levels)(jnp.asarray(boxes)))
    theirs = LevelMapper(2, 5)([torch.from_numpy(boxes)]).numpy() + 2
    np.testing.assert_array_equal(ours, theirs)
    assert set(ours) == {2, 3, 4, 5}


def _pyramid(rng, image_h, image_w, channels):
    return [
        rng.standard_normal((image_h >> lvl, image_w >> lvl, channels)).astype(np.float32) for lvl in range(2, 6)
    ]


def test_multilevel_matches_torchvision_multiscale_roi_align(tv):
    import torch
    from torchvision.ops import MultiScaleRoIAlign

    rng = np.random.default_rng(7)
    image_h, image_w = 512, 640
    feats = _pyramid(rng, image_h, image_w, 3)
    # Sides from 8 to 500 px: every level is used; boxes inside the image.
    side = np.exp(rng.uniform(np.log(8), np.log(500), (R_PAD, 2)))
    x1 = rng.uniform(0, image_w - side[:, 0])
    y1 = rng.uniform(0, image_h - side[:, 1])
    boxes = np.stack([x1, y1, x1 + side[:, 0], y1 + side[:, 1]], 1).astype(np.float32)
    levels = np.asarray(assign_levels(jnp.asarray(boxes)))
    assert set(levels) == {2, 3, 4, 5}

    for output_size in (7, 14):
        pool = jax.jit(multilevel_roi_align, static_argnums=2)
        ours = pool([jnp.asarray(f) for f in feats], jnp.asarray(boxes), output_size)
        pooler = MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], output_size, sampling_ratio=2)
        x = {f"p{i + 2}": torch.from_numpy(np.moveaxis(f, -1, 0).copy())[None] for i, f in enumerate(feats)}
        theirs = pooler(x, [torch.from_numpy(boxes)], [(image_h, image_w)]).numpy()
        np.testing.assert_allclose(np.asarray(ours), np.moveaxis(theirs, 1, -1), atol=1e-4, rtol=0)


# ---------------------------------------------------------------- multilevel, jit + vmap


def test_multilevel_equals_single_level_roi_align_on_each_boxs_level():
    """Pure JAX check (no torchvision): the flattened gather = RoIAlign on the box's level,
    including the border rule and aligned=True; and it runs under jit + vmap."""
    rng = np.random.default_rng(8)
    image_h, image_w = 256, 320
    batch = [_pyramid(rng, image_h, image_w, 2) for _ in range(2)]
    boxes = np.stack([random_boxes(rng, 16, image_h, image_w, spill=0.2) for _ in range(2)])
    boxes[:, :4] = adversarial_boxes(image_h // 4, image_w // 4, 0.25)[[1, 3, 8, 11]]
    feats = [jnp.stack([jnp.asarray(img[i]) for img in batch]) for i in range(4)]  # L x [B, H, W, C]

    pool = jax.jit(jax.vmap(lambda f, b: multilevel_roi_align(f, b, 4, sampling_ratio=2, aligned=True)))
    out = np.asarray(pool(feats, jnp.asarray(boxes)))
    assert out.shape == (2, 16, 4, 4, 2)
    for b in range(2):
        levels = np.asarray(assign_levels(jnp.asarray(boxes[b])))
        for r in range(16):
            lvl = levels[r]
            ref = roi_align_reference(batch[b][lvl - 2], boxes[b, r : r + 1], 4, 2.0**-lvl, 2, True)[0]
            np.testing.assert_allclose(out[b, r], ref, atol=1e-4, err_msg=f"image {b} box {r} level {lvl}")


def test_roi_align_under_vmap_over_images():
    rng = np.random.default_rng(9)
    feats = rng.standard_normal((3, 9, 13, 2)).astype(np.float32)
    boxes = np.stack([random_boxes(rng, R_PAD, 18, 26) for _ in range(3)])
    out = jax.jit(jax.vmap(lambda f, b: roi_align(f, b, 5, 0.5, 2, False)))(feats, boxes)
    for i in range(3):
        np.testing.assert_allclose(out[i], roi_align_reference(feats[i], boxes[i], 5, 0.5, 2, False), atol=1e-4)


def test_multilevel_rejects_wrong_number_of_levels():
    with pytest.raises(ValueError, match="4 expected"):
        multilevel_roi_align([jnp.zeros((8, 8, 1))] * 3, jnp.zeros((2, 4)), 7)
