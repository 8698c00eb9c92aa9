"""Keypoint heatmaps -> keypoints (host, numpy), as torchvision's heatmaps_to_keypoints.

Dimension key (mrcli/ops/__init__.py): D detections, K keypoints, S heatmap side
(56), h/w the sides of one box's upsampled map.

Keypoint R-CNN (He et al. 2017 §5) predicts per detection and keypoint an
S x S map of logits over the detection's box. torchvision
(roi_heads.heatmaps_to_keypoints) and Detectron2 (structures/keypoints.py)
decode a box's maps alike: resize them bicubically (align_corners=False) to
ceil(box width) x ceil(box height) pixels, take each map's argmax (the first
in row-major order on ties), and place the keypoint at that pixel's centre,
x = x1 + (i + 0.5) * width / ceil(width) (Heckbert 1990: c = d + 0.5), the
box sides clamped to at least 1. torchvision's score of a keypoint is the
resized map's value there (a logit); that is the one given here.

The resized map's size depends on the box, so this is not a static shape;
it runs on the host, like the pasting of masks (mrcli.ops.masks), one box at
a time, vectorised over the K maps. The bicubic weights and the order of the
sums are torch's (ATen UpSampleKernel.cpp, HelperInterpCubic, A = -0.75:
the source index s = (dst + 0.5) * in / out - 0.5 not clamped, taps
floor(s) - 1 .. floor(s) + 2 clamped to the map, the width pass inside the
height pass), in float32, so values agree to a few ulps and an argmax can only
move between near-equal neighbours.
"""

from __future__ import annotations

import numpy as np

__all__ = ["bicubic_taps", "heatmaps_to_keypoints", "resize_bicubic"]

_A = np.float32(-0.75)  # torch's bicubic convolution constant (Keys 1981 with a = -0.75)


def _cc1(x: np.ndarray) -> np.ndarray:  # |x| <= 1
    return ((_A + np.float32(2)) * x - (_A + np.float32(3))) * x * x + np.float32(1)


def _cc2(x: np.ndarray) -> np.ndarray:  # 1 < |x| < 2
    return ((_A * x - np.float32(5) * _A) * x + np.float32(8) * _A) * x - np.float32(4) * _A


def bicubic_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """torch's bicubic (align_corners=False) source taps of each output pixel:
    (index [out, 4] int64 clamped to the input, weight [out, 4] float32)."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    t = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1))
    weights = np.stack([_cc2(t + np.float32(1)), _cc1(t), _cc1(np.float32(1) - t),
                        _cc2(np.float32(2) - t)], axis=1)  # fmt: skip
    index = np.clip(i0[:, None] + np.arange(-1, 3)[None, :], 0, in_size - 1)
    return index, weights.astype(np.float32)


def resize_bicubic(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """[K, S, S] float32 -> [K, height, width] float32, = torch's
    F.interpolate(mode="bicubic", align_corners=False) to that size."""
    maps = np.asarray(maps, np.float32)
    iy, wy = bicubic_taps(maps.shape[1], height)
    ix, wx = bicubic_taps(maps.shape[2], width)
    # The width pass: one value per (map row, output column), summed tap by tap.
    rows = maps[:, :, ix[:, 0]] * wx[:, 0]
    for j in range(1, 4):
        rows += maps[:, :, ix[:, j]] * wx[:, j]  # [K, S, width]
    out = rows[:, iy[:, 0], :] * wy[:, 0, None]
    for j in range(1, 4):
        out += rows[:, iy[:, j], :] * wy[:, j, None]  # [K, height, width]
    return out


def heatmaps_to_keypoints(
    heatmaps: np.ndarray,  # [D, K, S, S] float32 logits, each map over its box
    boxes: np.ndarray,  # [D, 4] float32 xyxy, the pixels the keypoints come out in
) -> tuple[np.ndarray, np.ndarray]:  # xy [D, K, 2] float32, scores [D, K] float32
    """Each detection's keypoints (the module docstring): positions in the boxes'
    pixels and torchvision's scores (the resized map's logit at the argmax)."""
    heatmaps = np.asarray(heatmaps, np.float32)
    boxes = np.asarray(boxes, np.float32)
    d, k = heatmaps.shape[:2]
    if boxes.shape != (d, 4):
        raise ValueError(f"heatmaps_to_keypoints: boxes must be [{d}, 4], got {boxes.shape}")
    xy = np.zeros((d, k, 2), np.float32)
    scores = np.zeros((d, k), np.float32)
    widths = np.maximum(boxes[:, 2] - boxes[:, 0], np.float32(1))
    heights = np.maximum(boxes[:, 3] - boxes[:, 1], np.float32(1))
    for i in range(d):
        w, h = int(np.ceil(widths[i])), int(np.ceil(heights[i]))
        roi_map = resize_bicubic(heatmaps[i], h, w)  # [K, h, w]
        pos = roi_map.reshape(k, -1).argmax(axis=1)  # the first maximum, as torch
        x_int, y_int = pos % w, pos // w
        xy[i, :, 0] = (x_int.astype(np.float32) + np.float32(0.5)) * (widths[i] / np.float32(w)) + boxes[i, 0]
        xy[i, :, 1] = (y_int.astype(np.float32) + np.float32(0.5)) * (heights[i] / np.float32(h)) + boxes[i, 1]
        scores[i] = roi_map[np.arange(k), y_int, x_int]
    return xy, scores
