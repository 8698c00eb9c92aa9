"""Mask targets against the numpy RoIAlign kernel port and torchvision's
project_masks_on_boxes; mask pasting against torchvision's paste_masks_in_image."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrcli.ops.masks import crop_and_resize_masks, paste_masks
from test_roi_align import adversarial_boxes, random_boxes, roi_align_reference
from test_roi_align import tv  # noqa: F401  (fixture: torchvision with its eager Python RoIAlign)


# ---------------------------------------------------------------- crop_and_resize_masks


def _crop_reference(masks, boxes, matched_idx, size, ratio=2, aligned=False):
    out = np.zeros((len(boxes), size, size))
    for r, (box, i) in enumerate(zip(boxes, matched_idx)):
        if 0 <= i < len(masks):
            out[r] = roi_align_reference(masks[i][..., None], box[None], size, 1.0, ratio, aligned)[0, ..., 0]
    return out


_crop = jax.jit(crop_and_resize_masks, static_argnames=("size", "sampling_ratio", "aligned"))


@pytest.mark.parametrize("dtype", [np.bool_, np.uint8, np.float32])
def test_crop_matches_kernel_port(dtype):
    rng = np.random.default_rng(0)
    n, h, w, size = 3, 20, 24, 8
    masks = rng.random((n, h, w)) < 0.4
    boxes = np.concatenate([adversarial_boxes(h, w, 1.0), random_boxes(rng, 18, h, w)])
    matched = rng.integers(0, n, len(boxes)).astype(np.int32)
    matched[[2, 5]] = [-1, n]  # unmatched / out of range: empty targets
    for aligned in (False, True):
        ours = _crop(
            jnp.asarray(masks.astype(dtype)), jnp.asarray(boxes), jnp.asarray(matched), size=size, aligned=aligned
        )
        assert ours.dtype == jnp.float32 and ours.shape == (len(boxes), size, size)
        ref = _crop_reference(masks.astype(np.float64), boxes, matched, size, aligned=aligned)
        np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-5, rtol=0)
    assert np.all(np.asarray(ours)[[2, 5]] == 0)


def test_crop_equals_torchvision_project_masks_when_adaptive_ratio_is_two(tv):
    """torchvision samples ceil(roi_side / M) points per bin side; for sides in
    (M, 2M] that is our fixed 2, so the targets are the same."""
    import torch
    from torchvision.models.detection.roi_heads import project_masks_on_boxes

    rng = np.random.default_rng(1)
    n, h, w, size = 4, 48, 56, 14
    masks = rng.random((n, h, w)) < 0.5
    side = rng.uniform(size + 0.5, 2 * size - 0.5, (12, 2))
    x1 = rng.uniform(0, w - side[:, 0])
    y1 = rng.uniform(0, h - side[:, 1])
    boxes = np.stack([x1, y1, x1 + side[:, 0], y1 + side[:, 1]], 1).astype(np.float32)
    matched = rng.integers(0, n, 12).astype(np.int32)
    ours = _crop(jnp.asarray(masks), jnp.asarray(boxes), jnp.asarray(matched), size=size)
    theirs = project_masks_on_boxes(
        torch.from_numpy(masks), torch.from_numpy(boxes), torch.from_numpy(matched).long(), size
    ).numpy()
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-5, rtol=0)


def test_crop_under_vmap_over_images():
    rng = np.random.default_rng(2)
    masks = rng.random((2, 3, 16, 20)) < 0.5
    boxes = np.stack([random_boxes(rng, 10, 16, 20) for _ in range(2)])
    matched = rng.integers(-1, 3, (2, 10)).astype(np.int32)
    crop = jax.jit(jax.vmap(functools.partial(crop_and_resize_masks, size=6)))
    out = np.asarray(crop(masks, boxes, matched))
    for b in range(2):
        np.testing.assert_allclose(out[b], _crop_reference(masks[b].astype(float), boxes[b], matched[b], 6), atol=1e-5)


def test_crop_refuses_adaptive_sampling():
    with pytest.raises(ValueError, match="adaptive"):
        crop_and_resize_masks(jnp.zeros((1, 4, 4)), jnp.zeros((1, 4)), jnp.zeros((1,), jnp.int32), 28, -1)


# ---------------------------------------------------------------- paste_masks


def _paste_boxes(rng, height, width):
    """Boxes torchvision can paste: each intersects the image (it raises or
    misbehaves on boxes wholly outside)."""
    inside = random_boxes(rng, 20, height, width, spill=0.0)
    spill = random_boxes(rng, 20, height, width, spill=0.4)
    special = np.array(
        [
            [0, 0, width, height],  # the whole image
            [0, 0, 0.5, 0.5],  # tiny at the origin
            [10.2, 7.7, 10.9, 8.1],  # tiny inside
            [width - 1.5, height - 1.5, width - 0.2, height - 0.3],  # tiny at the far corner
            [-30.5, 5, 4.5, 20],  # across the left border
            [width - 6, -12, width + 40, 9.5],  # across the top-right corner
            [-100, -100, width + 100, height + 100],  # much larger than the image
            [width - 1, 3, width - 1, 9],  # zero width on the last column
            [3, 4, 3, 4],  # a point
            [0, height - 2, width, height],  # a thin strip at the bottom
        ],
        np.float32,
    )
    return np.concatenate([inside, spill, special])


def _keep_intersecting(boxes, masks, height, width):
    # torchvision's int boxes after expansion must overlap the image; the
    # random spilled boxes almost always do, drop the few that don't.
    m = masks.shape[-1]
    scale = np.float32((m + 2) / m)
    half = (boxes[:, 2:] - boxes[:, :2]) * np.float32(0.5) * scale
    centre = (boxes[:, 2:] + boxes[:, :2]) * np.float32(0.5)
    lo = np.trunc(centre - half)
    hi = np.trunc(centre + half)
    ok = (hi[:, 0] >= 0) & (hi[:, 1] >= 0) & (lo[:, 0] < width) & (lo[:, 1] < height)
    return boxes[ok], masks[ok]


@pytest.mark.parametrize("m", [28, 7])
def test_paste_matches_torchvision_paste_masks_in_image(tv, m):
    import torch
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    rng = np.random.default_rng(3 + m)
    height, width = 61, 83
    boxes = _paste_boxes(rng, height, width)
    masks = rng.random((len(boxes), m, m)).astype(np.float32)
    masks[::3] = (masks[::3] > 0.5).astype(np.float32)  # some hard 0/1 masks: values exactly 0.5 between them
    boxes, masks = _keep_intersecting(boxes, masks, height, width)
    assert len(boxes) > 40

    theirs = paste_masks_in_image(torch.from_numpy(masks)[:, None], torch.from_numpy(boxes), (height, width))
    theirs = theirs[:, 0].numpy()
    probs = paste_masks(masks, boxes, height, width, threshold=None)
    assert probs.dtype == np.float32 and probs.shape == theirs.shape
    # Same taps and weights; torch's compiled kernel contracts some a*b + c into
    # fused multiply-adds (which ones depends on the loop and the CPU build), so
    # values agree to a few float32 ulps (max seen 9e-7), not bit for bit.
    np.testing.assert_allclose(probs, theirs, atol=2e-6, rtol=0)

    binary = paste_masks(masks, boxes, height, width)
    assert binary.dtype == np.bool_
    # Hence only a pixel within those ulps of the threshold may flip.
    differ = binary != (theirs > 0.5)
    assert not np.any(differ & (np.abs(theirs - 0.5) > 2e-6))
    assert differ.sum() <= 3


def test_paste_boxes_outside_the_image_are_empty_and_nothing_leaks():
    height, width = 20, 30
    boxes = np.array([[-50, -50, -10, -10], [40, 2, 60, 10], [5, 25, 12, 40], [2, 3, 12, 13]], np.float32)
    masks = np.ones((4, 28, 28), np.float32)
    out = paste_masks(masks, boxes, height, width)
    assert out.shape == (4, height, width)
    assert not out[:3].any()
    # A full mask: the box grows by 30/28 to [1.64, 2.64, 12.36, 13.36],
    # truncated to [1, 2, 12, 13]; the padded mask's edge pixels interpolate
    # to 0.75 there (> 0.5), so exactly those inclusive ranges are set.
    ys, xs = np.nonzero(out[3])
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (1, 12, 2, 13)
    assert out[3].sum() == 12 * 12


def test_paste_empty_and_bad_shapes():
    assert paste_masks(np.zeros((0, 28, 28)), np.zeros((0, 4)), 5, 6).shape == (0, 5, 6)
    with pytest.raises(ValueError, match=r"\[D, M, M\]"):
        paste_masks(np.zeros((2, 28, 14)), np.zeros((2, 4)), 5, 6)
    with pytest.raises(ValueError, match=r"\[D, 4\]"):
        paste_masks(np.zeros((2, 28, 28)), np.zeros((3, 4)), 5, 6)
