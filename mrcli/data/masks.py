"""Instance masks: COCO segmentations -> compressed RLE, and the box crops the
pipeline gives the model.

Prepared datasets store one pycocotools compressed RLE (the `counts` bytes) per
instance, at the image's size. Polygons and uncompressed RLE are converted at
prepare time with pycocotools, so the stored mask is exactly what COCO's own
tools rasterise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pycocotools.mask as mask_util


def rle_counts_from_string(counts: bytes | str) -> list[int]:
    """Parse a pycocotools compressed RLE string into run lengths, in Python,
    so that malformed strings are caught before the C decoder (which trusts
    them) sees them. Mirrors rleFrString in pycocotools' maskApi.c."""
    s = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    out: list[int] = []
    p = 0
    n = len(s)
    while p < n:
        x = 0
        k = 0
        more = 1
        while more:
            if p >= n:
                raise ValueError("RLE string ends in the middle of a number")
            c = s[p] - 48
            if c < 0 or c > 63:
                raise ValueError(f"RLE string has an invalid character {chr(s[p])!r}")
            x |= (c & 0x1F) << (5 * k)
            more = c & 0x20
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def polygon_to_rle(polygons: list[list[float]], height: int, width: int) -> bytes:
    """COCO polygons (one or more parts of one instance) -> compressed counts."""
    rles = mask_util.frPyObjects([list(map(float, p)) for p in polygons], height, width)
    return mask_util.merge(rles)["counts"]


def uncompressed_to_rle(counts: list[int], height: int, width: int) -> bytes:
    rle = mask_util.frPyObjects({"counts": list(counts), "size": [height, width]}, height, width)
    return rle["counts"]


def rle_dict(counts: bytes, height: int, width: int) -> dict[str, Any]:
    return {"size": [int(height), int(width)], "counts": counts}


def decode(counts: bytes, height: int, width: int) -> np.ndarray:
    """Compressed counts -> [H, W] uint8 in {0, 1}."""
    return mask_util.decode(rle_dict(counts, height, width))


def encode(mask: np.ndarray) -> bytes:
    """[H, W] binary mask -> compressed counts."""
    return mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"]


def area(counts: bytes, height: int, width: int) -> float:
    return float(mask_util.area(rle_dict(counts, height, width)))


def tight_box(counts: bytes, height: int, width: int) -> np.ndarray:
    """xyxy box of the mask's pixels (zeros for an empty mask)."""
    x, y, w, h = mask_util.toBbox(rle_dict(counts, height, width))
    return np.array([x, y, x + w, y + h], np.float32)


def crop_and_resize(mask: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """The part of `mask` [H, W] inside `box` (xyxy, the mask's pixels),
    resampled to [size, size] uint8 in {0, 1}.

    Bilinear sampling at the centres of a size x size grid over the box
    (pixel i covers [i, i+1)), thresholded at 0.5. Mirrored boxes give mirrored
    crops exactly: crop(flip(mask), flip(box)) == crop(mask, box)[:, ::-1].
    """
    h, w = mask.shape
    x1, y1, x2, y2 = (float(v) for v in box)
    steps = (np.arange(size, dtype=np.float64) + 0.5) / size
    xs = x1 + steps * (x2 - x1) - 0.5
    ys = y1 + steps * (y2 - y1) - 0.5
    x0 = np.floor(xs)
    y0 = np.floor(ys)
    fx = (xs - x0).astype(np.float32)
    fy = (ys - y0).astype(np.float32)
    x0 = x0.astype(np.int64)
    y0 = y0.astype(np.int64)
    xa = np.clip(x0, 0, w - 1)
    xb = np.clip(x0 + 1, 0, w - 1)
    ya = np.clip(y0, 0, h - 1)
    yb = np.clip(y0 + 1, 0, h - 1)
    # Rows first (two gathers of `size` rows), then columns.
    top = mask[ya].astype(np.float32)  # [size, W]
    bottom = mask[yb].astype(np.float32)
    rows = top + fy[:, None] * (bottom - top)
    left = rows[:, xa]
    right = rows[:, xb]
    values = left + fx[None, :] * (right - left)
    return (values >= 0.5).astype(np.uint8)


def paste(crop: np.ndarray, box: np.ndarray, height: int, width: int) -> np.ndarray:
    """Inverse of crop_and_resize for display: a [S, S] crop back into an
    [height, width] mask at `box` (nearest sampling at pixel centres)."""
    s = crop.shape[0]
    x1, y1, x2, y2 = (float(v) for v in box)
    out = np.zeros((height, width), np.uint8)
    if x2 <= x1 or y2 <= y1:
        return out
    cols = np.arange(width) + 0.5
    rows = np.arange(height) + 0.5
    ci = np.floor((cols - x1) / (x2 - x1) * s).astype(np.int64)
    ri = np.floor((rows - y1) / (y2 - y1) * s).astype(np.int64)
    cin = (ci >= 0) & (ci < s)
    rin = (ri >= 0) & (ri < s)
    sub = crop[np.ix_(ri[rin], ci[cin])]
    out[np.ix_(np.nonzero(rin)[0], np.nonzero(cin)[0])] = sub
    return out
