"""mrcli.ops.boxes against a plain-loop numpy reference and torchvision."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torchvision_ref
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mrcli.ops import boxes

N, M = 12, 9  # fixed shapes: one compile per jitted function

jit_iou = jax.jit(boxes.iou)
jit_ioa = jax.jit(boxes.ioa)
jit_area = jax.jit(boxes.area)
jit_clip = jax.jit(boxes.clip)
jit_encode = jax.jit(boxes.encode, static_argnums=2)
jit_decode = jax.jit(boxes.decode, static_argnums=(2, 3))

# --- independent references: deliberately simple loops, float64 ---------------


def ref_iou(a, b):
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(np.asarray(a, np.float64)):
        for j, q in enumerate(np.asarray(b, np.float64)):
            iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            inter = iw * ih
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def ref_ioa(a, b):
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(np.asarray(a, np.float64)):
        for j, q in enumerate(np.asarray(b, np.float64)):
            iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            ap = (p[2] - p[0]) * (p[3] - p[1])
            out[i, j] = iw * ih / ap if ap > 0 else 0.0
    return out


def ref_encode(g, a, w):
    out = []
    for (gx1, gy1, gx2, gy2), (ax1, ay1, ax2, ay2) in zip(np.float64(g), np.float64(a)):
        aw, ah, gw, gh = ax2 - ax1, ay2 - ay1, gx2 - gx1, gy2 - gy1
        acx, acy, gcx, gcy = ax1 + aw / 2, ay1 + ah / 2, gx1 + gw / 2, gy1 + gh / 2
        out.append(
            [w[0] * (gcx - acx) / aw, w[1] * (gcy - acy) / ah, w[2] * math.log(gw / aw), w[3] * math.log(gh / ah)]
        )
    return np.array(out)


def ref_decode(d, a, w, clamp):
    out = []
    for (dx, dy, dw, dh), (ax1, ay1, ax2, ay2) in zip(np.float64(d), np.float64(a)):
        aw, ah = ax2 - ax1, ay2 - ay1
        cx = dx / w[0] * aw + ax1 + aw / 2
        cy = dy / w[1] * ah + ay1 + ah / 2
        bw = math.exp(min(dw / w[2], clamp)) * aw
        bh = math.exp(min(dh / w[3], clamp)) * ah
        out.append([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
    return np.array(out)


# --- inputs ---------------------------------------------------------------------


def random_boxes(rng, n, lo=-50.0, hi=300.0, max_side=120.0):
    xy = rng.uniform(lo, hi, (n, 2))
    wh = rng.uniform(0.5, max_side, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def adversarial_boxes(rng, n):
    """Zero-area, inverted, identical, nested, touching, far outside the image."""
    special = np.array(
        [
            [0, 0, 0, 0],  # zero area at origin
            [5, 5, 5, 5],  # zero-area point
            [10, 10, 10, 40],  # zero-width line
            [10, 10, 40, 40],
            [10, 10, 40, 40],  # identical
            [20, 20, 30, 30],  # nested
            [40, 10, 70, 40],  # touching edge
            [30, 20, 15, 50],  # inverted (x2 < x1)
            [-1e4, -1e4, -9e3, -9e3],  # far outside
            [0.0, 0.0, 1e-3, 1e-3],  # tiny
        ],
        np.float32,
    )
    return np.concatenate([special, random_boxes(rng, n - len(special))])[:n]


CASES = ["random", "adversarial", "integer"]


def make_pair(case, seed=0):
    rng = np.random.default_rng(seed)
    if case == "random":
        return random_boxes(rng, N), random_boxes(rng, M)
    if case == "adversarial":
        a = adversarial_boxes(rng, N)
        return a, np.concatenate([a[:6], random_boxes(rng, M - 6)])
    # integer coordinates on a small grid: many exact ties and exact IoU values.
    xy = rng.integers(0, 8, (N + M, 2))
    wh = rng.integers(0, 5, (N + M, 2))
    b = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    return b[:N], b[N:]


# --- tests ------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_iou_matches_reference(case):
    a, b = make_pair(case)
    got = np.asarray(jit_iou(a, b))
    assert got.shape == (N, M) and got.dtype == np.float32
    assert np.all(np.isfinite(got)) and np.all((got >= 0) & (got <= 1))
    np.testing.assert_allclose(got, ref_iou(a, b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_iou_matches_torchvision(case):
    tv = torchvision_ref.load()
    if tv is None:
        pytest.skip("torchvision not installed")
    import torch

    a, b = make_pair(case)
    want = tv.ops.box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    got = np.asarray(jit_iou(a, b))
    # torchvision gives NaN (0/0) where the union is not positive; we define 0 there.
    undefined = ~np.isfinite(want) | (ref_iou(a, b) == 0)
    np.testing.assert_allclose(got[~undefined], want[~undefined], rtol=1e-6, atol=1e-7)
    assert np.all(got[undefined] == 0)


def test_iou_zero_area_pairs_are_zero_not_nan():
    z = jnp.array([[0, 0, 0, 0], [3, 3, 3, 3], [1, 1, 1, 5]], jnp.float32)
    got = np.asarray(boxes.iou(z, z))
    assert np.array_equal(got, np.zeros((3, 3)))
    grad = jax.grad(lambda x: boxes.iou(x, x).sum())(z)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_iou_identical_boxes_is_one():
    a, _ = make_pair("random")
    assert np.allclose(np.diag(np.asarray(jit_iou(a, a))), 1.0)


@pytest.mark.parametrize("case", CASES)
def test_ioa_matches_reference(case):
    a, b = make_pair(case)
    got = np.asarray(jit_ioa(a, b))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, ref_ioa(a, b), rtol=1e-5, atol=1e-6)


def test_area_and_clip():
    a, _ = make_pair("adversarial")
    want = [(x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in a.astype(np.float64)]
    np.testing.assert_allclose(np.asarray(jit_area(a)), want, rtol=1e-6)
    got = np.asarray(jit_clip(a, 35.0, 60.0))
    for box, c in zip(a, got):
        assert c[0] == min(max(box[0], 0), 60) and c[2] == min(max(box[2], 0), 60)
        assert c[1] == min(max(box[1], 0), 35) and c[3] == min(max(box[3], 0), 35)
    tv = torchvision_ref.load()
    if tv is not None:
        import torch

        want = tv.ops.clip_boxes_to_image(torch.from_numpy(a), (35, 60)).numpy()
        assert np.array_equal(got, want)
    # traced sizes (an unpadded image size inside a bucket) work too
    got2 = np.asarray(jit_clip(a, jnp.float32(35), jnp.int32(60)))
    assert np.array_equal(got, got2)


def _enc_dec_inputs(seed=0):
    rng = np.random.default_rng(seed)
    anchors = random_boxes(rng, N, max_side=200)
    gt = random_boxes(rng, N, max_side=300)
    deltas = rng.normal(0, 1.5, (N, 4)).astype(np.float32)
    deltas[0, 2:] = [20.0, -20.0]  # beyond the clamp / tiny
    deltas[1, 2:] = [1e4, 1e4]  # exp would overflow without the clamp
    return anchors, gt, deltas


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_decode_match_reference(weights):
    anchors, gt, deltas = _enc_dec_inputs()
    enc = np.asarray(jit_encode(gt, anchors, weights))
    np.testing.assert_allclose(enc, ref_encode(gt, anchors, weights), rtol=1e-5, atol=1e-5)
    dec = np.asarray(jit_decode(deltas, anchors, weights, boxes.DEFAULT_CLAMP))
    assert np.all(np.isfinite(dec))
    np.testing.assert_allclose(dec, ref_decode(deltas, anchors, weights, boxes.DEFAULT_CLAMP), rtol=1e-5, atol=1e-3)
    # round trip
    back = np.asarray(jit_decode(jnp.asarray(enc), anchors, weights, boxes.DEFAULT_CLAMP))
    np.testing.assert_allclose(back, gt, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_decode_match_torchvision(weights):
    tv = torchvision_ref.load()
    if tv is None:
        pytest.skip("torchvision not installed")
    import torch
    from torchvision.models.detection._utils import BoxCoder

    anchors, gt, deltas = _enc_dec_inputs(1)
    coder = BoxCoder(weights)
    want_enc = coder.encode_single(torch.from_numpy(gt), torch.from_numpy(anchors)).numpy()
    np.testing.assert_allclose(np.asarray(jit_encode(gt, anchors, weights)), want_enc, rtol=1e-5, atol=1e-5)
    want_dec = coder.decode_single(torch.from_numpy(deltas), torch.from_numpy(anchors)).numpy()
    got_dec = np.asarray(jit_decode(deltas, anchors, weights, boxes.DEFAULT_CLAMP))
    np.testing.assert_allclose(got_dec, want_dec, rtol=1e-5, atol=1e-3)
    # class-specific deltas [R, K * 4] as the box head emits them -> [R, K, 4]
    k = 3
    rng = np.random.default_rng(2)
    rel = rng.normal(0, 1, (N, 4 * k)).astype(np.float32)
    want = coder.decode_single(torch.from_numpy(rel), torch.from_numpy(anchors)).numpy().reshape(N, k, 4)
    got = np.asarray(boxes.decode(rel.reshape(N, k, 4), anchors[:, None, :], weights))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


def test_decode_clamp_argument():
    anchors, _, _ = _enc_dec_inputs()
    d = np.zeros((N, 4), np.float32)
    d[:, 2:] = 3.0
    a = np.asarray(jit_decode(d, anchors, (1.0, 1.0, 1.0, 1.0), 1.0))
    w_ratio = (a[:, 2] - a[:, 0]) / (anchors[:, 2] - anchors[:, 0])
    np.testing.assert_allclose(w_ratio, math.e, rtol=1e-5)


def test_jit_and_vmap_over_a_batch():
    rng = np.random.default_rng(3)
    a = np.stack([random_boxes(rng, N) for _ in range(2)])  # [B, N, 4]
    b = np.stack([random_boxes(rng, M) for _ in range(2)])  # [B, M, 4]
    got = np.asarray(jax.jit(jax.vmap(boxes.iou))(a, b))
    assert got.shape == (2, N, M)
    for i in range(2):
        np.testing.assert_allclose(got[i], ref_iou(a[i], b[i]), rtol=1e-5, atol=1e-6)
    enc = jax.jit(jax.vmap(lambda g, x: boxes.encode(g, x, (10.0, 10.0, 5.0, 5.0))))(a, a[:, ::-1])
    dec = jax.jit(jax.vmap(lambda d, x: boxes.decode(d, x, (10.0, 10.0, 5.0, 5.0))))(enc, a[:, ::-1])
    np.testing.assert_allclose(np.asarray(dec), a, rtol=1e-5, atol=1e-3)
    clipped = jax.jit(jax.vmap(boxes.clip))(a, jnp.array([50.0, 60.0]), jnp.array([70.0, 80.0]))
    assert clipped.shape == (2, N, 4) and float(clipped[1, :, 3].max()) <= 60.0
    areas = np.asarray(jax.jit(jax.vmap(boxes.area))(a))
    np.testing.assert_allclose(areas[1], (a[1, :, 2] - a[1, :, 0]) * (a[1, :, 3] - a[1, :, 1]), rtol=1e-6)
    cover = np.asarray(jax.jit(jax.vmap(boxes.ioa))(a, b))
    np.testing.assert_allclose(cover[1], ref_ioa(a[1], b[1]), rtol=1e-5, atol=1e-6)


coords = st.floats(-1e3, 1e3, allow_nan=False, width=32)
box_arrays = hnp.arrays(np.float32, (N, 4), elements=coords)


@settings(max_examples=25, deadline=None, database=None)
@given(box_arrays, box_arrays)
def test_iou_properties(a, b):
    """Any finite input, sorted or not, zero-area or not: finite, in [0, 1], symmetric."""
    b = b[:M]
    ab = np.asarray(jit_iou(a, b))
    ba = np.asarray(jit_iou(b, a))
    assert np.all(np.isfinite(ab)) and np.all((ab >= 0) & (ab <= 1))
    np.testing.assert_allclose(ab, ba.T, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ab, ref_iou(a, b), rtol=1e-4, atol=1e-5)
