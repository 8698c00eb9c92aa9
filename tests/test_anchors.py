"""mrcli.ops.anchors against a plain-loop reference and torchvision's AnchorGenerator."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torchvision_ref

from mrcli.ops import anchors as A

# Padded sizes: multiples of 32 with even and odd H/32 (odd -> P6 quirk), and
# one size that is not a multiple of 32.
SIZES = [(64, 96), (800, 1088), (160, 224), (100, 37)]


def ref_anchors(h, w, strides=A.STRIDES, sizes=A.SIZES, ratios=A.ASPECT_RATIOS):
    """Simple loops in float64, rounding half to even, then float32."""
    out = []
    for stride, size in zip(strides, sizes):
        fh, fw = -(-h // stride), -(-w // stride)
        sy, sx = h // fh, w // fw
        base = []
        for r in ratios:
            hr = math.sqrt(r)
            wr = 1 / hr
            bw, bh = wr * size, hr * size
            base.append([round(-bw / 2), round(-bh / 2), round(bw / 2), round(bh / 2)])
        for i in range(fh):
            for j in range(fw):
                for b in base:
                    out.append([j * sx + b[0], i * sy + b[1], j * sx + b[2], i * sy + b[3]])
    return np.array(out, np.float32)


@pytest.mark.parametrize("size", SIZES)
def test_matches_reference_loops(size):
    got = A.anchor_grid(size)
    want = ref_anchors(*size)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got, want)


@pytest.mark.parametrize("size", SIZES)
def test_matches_torchvision_anchor_generator(size):
    tv = torchvision_ref.load()
    if tv is None:
        pytest.skip("torchvision not installed")
    import torch
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    gen = AnchorGenerator(tuple((s,) for s in A.SIZES), (A.ASPECT_RATIOS,) * len(A.SIZES))
    layout = A.anchor_layout(size)
    feats = [torch.zeros(1, 1, fh, fw) for fh, fw in layout.feature_sizes]
    want = gen(ImageList(torch.zeros(1, 3, *size), [size]), feats)[0].numpy()
    assert np.array_equal(A.anchor_grid(size), want)
    assert gen.num_anchors_per_location() == [layout.anchors_per_location] * 5


def test_layout():
    lay = A.anchor_layout((800, 1088))
    assert lay.feature_sizes == ((200, 272), (100, 136), (50, 68), (25, 34), (13, 17))
    # P6 rows: 800 // 13 = 61 (torchvision's effective stride), columns 1088 // 17 = 64.
    assert lay.strides == ((4, 4), (8, 8), (16, 16), (32, 32), (61, 64))
    assert lay.counts == tuple(3 * fh * fw for fh, fw in lay.feature_sizes)
    assert lay.offsets == (0,) + tuple(np.cumsum(lay.counts)[:-1])
    assert lay.total == sum(lay.counts) == A.anchor_grid((800, 1088)).shape[0]
    grid = A.anchor_grid((800, 1088))
    p3 = grid[lay.level_slice(1)]
    assert p3.shape == (lay.counts[1], 4)
    # level P3, location (row 1, col 2), ratio 1: centre (16, 8), size 64.
    a = p3[(1 * 136 + 2) * 3 + 1]
    assert np.array_equal(a, [16 - 32, 8 - 32, 16 + 32, 8 + 32])


def test_cell_anchors_rounding():
    assert np.array_equal(A.cell_anchors(32), [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]])
    assert np.array_equal(A.cell_anchors(512)[0], [-362, -181, 362, 181])


def test_detectron2_convention():
    lay = A.anchor_layout((800, 1088), torchvision_compat=False)
    assert lay.strides[-1] == (64, 64)
    base = A.cell_anchors(32, torchvision_compat=False)
    w = base[:, 2] - base[:, 0]
    h = base[:, 3] - base[:, 1]
    np.testing.assert_allclose(w * h, 32 * 32, rtol=1e-5)
    np.testing.assert_allclose(h / w, A.ASPECT_RATIOS, rtol=1e-5)
    grid = A.anchor_grid((800, 1088), torchvision_compat=False)
    p6 = grid[lay.level_slice(4)]
    assert p6[-1, 1] + p6[-1, 3] == 2 * 12 * 64  # last row centred at y = 12 * 64


def test_constant_cached_and_read_only():
    g = A.anchor_grid((64, 96))
    assert g is A.anchor_grid([64, 96])
    with pytest.raises(ValueError):
        g[0, 0] = 1.0
    with pytest.raises(ValueError):
        A.anchor_grid((0, 64))
    with pytest.raises(ValueError):
        A.anchor_grid((64, 64), sizes=(32, 64))


def test_usable_as_a_constant_under_jit_and_vmap():
    g = A.anchor_grid((64, 96))
    deltas = jnp.zeros((2, g.shape[0], 4))

    @jax.jit
    def decode_all(d):  # the anchors enter as a compile-time constant
        from mrcli.ops import boxes

        return jax.vmap(lambda x: boxes.decode(x, jnp.asarray(g)))(d)

    out = decode_all(deltas)
    np.testing.assert_allclose(np.asarray(out[1]), g, atol=1e-4)
