"""Tiled prediction of large images: overlapping windows at native scale, each
through the detector, merged back into one image's instances.

    windows = tile_windows(h, w, tile=1024, overlap=128)            # [T, 4] x0, y0, x1, y1
    dets = predict_tiled(rgb, detect_tiles, tile=1024, overlap=128)  # Detections, image pixels

`detect_tiles(list of [h_t, w_t, 3] uint8 windows, each at most tile x tile)
-> list of Detections` (window pixels) is the detector:
mrcli.inference.tile_detector builds the production one on a Predictor (every
window at scale 1, zero padded, never resized, into one (tile, tile) bucket,
batched); tests drive the same code with a translation-equivariant detector.

Masks stay compact (CroppedMasks): per detection a bool crop of its integer
box and that box, never an [D, h, w] stack for the large image. COCO RLEs are
made from the crop's column strip (`CroppedMasks.rle`), label maps are painted
crop by crop (`label_map`).

Merge rule (`merge_tiles`). Detections of all windows are mapped to image
pixels. A detection is *cut* when its box lies within `margin` (2) px of an
interior edge of its window (an edge that is not the image border): the window
may have seen only part of the instance. Two detections of different windows
and the same class are the *same instance* when their masks, restricted to the
two windows' shared region, have IoU > 0.5 (mask IoU, not box NMS: in the
shared region both windows saw the same pixels, so two views of one instance
agree there, while two touching instances do not overlap). Same-instance
pairs are grouped by union-find. In a group,
  - if some member is not cut, it saw the whole instance: the best-scoring
    uncut member is kept alone (the others are duplicates or parts of it);
  - if all members are cut (an instance larger than any window's view of it),
    the instance is the union of the parts: mask OR, box the tight box of the
    union, score the max of the parts (class, keypoints: the best part's).
Why this rule: box NMS between windows would drop one of two touching
instances whose boxes overlap and would keep the parts of a cut instance that
overlap little; union of every group would glue an uncut view to a cut
fragment that spills over. The rule needs the overlap to be wider than the
instances that must come out whole from one window (larger ones are united
from parts), and an overlap > 0 to match anything at all.
The output holds every merged instance, best first, up to `max_detections`
(default: no cap; a large image can hold more instances than the model's
detections_per_image per window).

Dimension key: T windows, D detections, h/w image size, t tile side.
Boxes: float32 xyxy (model boxes); integer boxes (crops, windows) are
x0, y0, x1, y1 with x1, y1 exclusive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pycocotools.mask as mask_util

from mrcli.errors import UserError

__all__ = ["CroppedMasks", "Detections", "tile_windows", "merge_tiles", "predict_tiled",
           "label_map", "round_tile"]  # fmt: skip

MARGIN = 2  # px: a box this close to an interior window edge is cut
MATCH_IOU = 0.5  # mask IoU in the shared region above which two views are one instance


# --- windows ----------------------------------------------------------------------------------


def round_tile(tile: int, overlap: int, divisor: int) -> tuple[int, int]:
    """(tile, overlap) rounded up to multiples of `divisor` (the model's
    data.size_divisor), so every window's anchor grid lies on the image's;
    refuses tile < 1, overlap < 0 and overlap >= tile (UserErrors naming the
    options)."""
    if tile < 1:
        raise UserError(f"--tile {tile}: must be a positive number of pixels")
    if overlap < 0:
        raise UserError(f"--tile-overlap {overlap}: must be at least 0")
    if overlap >= tile:
        raise UserError(f"--tile-overlap {overlap}: must be less than --tile {tile}")
    d = max(int(divisor), 1)
    t, o = -(-tile // d) * d, -(-overlap // d) * d
    if o >= t:
        raise UserError(f"--tile-overlap {overlap}: rounded up to {o} (a multiple of "
                        f"data.size_divisor={d}) it is not less than --tile {t}")  # fmt: skip
    return t, o


def _starts(length: int, tile: int, stride: int, align: int) -> list[int]:
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / stride) + 1
    last = -(-(length - tile) // align) * align  # flush with the edge (align 1: exactly)
    return [k * stride for k in range(n - 1)] + [last]


def tile_windows(h: int, w: int, tile: int, overlap: int, align: int = 1) -> np.ndarray:
    """Windows covering an h x w image: [T, 4] int64 (x0, y0, x1, y1), row-major.

    Origins step by tile - overlap from 0; the last window of each axis ends
    flush with the image edge, so windows are full tile x tile wherever the
    image is at least `tile` (with `align` > 1 the origins are multiples of
    it, the last one rounded up, so that window is up to align - 1 px short;
    tile - overlap must then be a multiple of align). An axis shorter than
    the tile has one window, the whole axis. overlap >= tile is a UserError
    naming --tile-overlap."""
    if tile < 1 or overlap < 0:
        raise UserError(f"--tile {tile} --tile-overlap {overlap}: the tile must be positive "
                        "and the overlap at least 0")  # fmt: skip
    if overlap >= tile:
        raise UserError(f"--tile-overlap {overlap}: must be less than --tile {tile}")
    stride = tile - overlap
    if stride % align:
        raise ValueError(f"tile_windows: tile - overlap = {stride} is not a multiple of align {align}")
    ys, xs = _starts(h, tile, stride, align), _starts(w, tile, stride, align)
    return np.array([(x, y, min(x + tile, w), min(y + tile, h)) for y in ys for x in xs], np.int64)


# --- compact masks ------------------------------------------------------------------------------


def _tight(mask: np.ndarray, x0: int, y0: int) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """A bool region at (x0, y0) -> (its pixels' tight integer box, the crop)."""
    rows = np.flatnonzero(mask.any(axis=1))
    if len(rows) == 0:
        return (x0, y0, x0, y0), np.zeros((0, 0), bool)
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return (x0 + c0, y0 + r0, x0 + c1, y0 + r1), np.ascontiguousarray(mask[r0:r1, c0:c1], bool)


def _runs(flat: np.ndarray) -> list[int]:
    """Run lengths of a flat bool array, starting with a (possibly empty) run of zeros."""
    n = flat.size
    if n == 0:
        return [0]
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    lengths = np.diff(np.concatenate([[0], change, [n]])).tolist()
    return ([0] + lengths) if flat[0] else lengths


@dataclass(frozen=True)
class CroppedMasks:
    """D instance masks of an h x w image, each a bool crop at an integer box.

    boxes [D, 4] int64 (x0, y0, x1, y1), x1/y1 exclusive, inside the image;
    crops[i] bool [y1 - y0, x1 - x0] (mask i is crops[i] there, 0 elsewhere)."""

    boxes: np.ndarray
    crops: list[np.ndarray]
    height: int
    width: int

    def __len__(self) -> int:
        return len(self.crops)

    @classmethod
    def empty(cls, height: int, width: int) -> CroppedMasks:
        return cls(np.zeros((0, 4), np.int64), [], int(height), int(width))

    @classmethod
    def from_regions(cls, regions: Sequence[tuple[np.ndarray, int, int]], height: int,
                     width: int) -> CroppedMasks:  # fmt: skip
        """(bool region, x0, y0) per mask (the region inside the image) -> tight crops."""
        tight = [_tight(np.asarray(m, bool), x, y) for m, x, y in regions]
        boxes = np.array([b for b, _ in tight], np.int64).reshape(-1, 4)
        return cls(boxes, [c for _, c in tight], int(height), int(width))

    @classmethod
    def from_dense(cls, masks: np.ndarray) -> CroppedMasks:
        """[D, h, w] bool -> tight crops (for small images and tests)."""
        d, h, w = masks.shape
        return cls.from_regions([(masks[i], 0, 0) for i in range(d)], h, w)

    def take(self, idx: Sequence[int] | np.ndarray) -> CroppedMasks:
        idx = [int(i) for i in idx]
        return CroppedMasks(self.boxes[idx].reshape(-1, 4), [self.crops[i] for i in idx],
                            self.height, self.width)  # fmt: skip

    def dense(self, i: int) -> np.ndarray:
        """Mask i as a full [h, w] bool (tests; small images)."""
        out = np.zeros((self.height, self.width), bool)
        x0, y0, x1, y1 = self.boxes[i].tolist()
        out[y0:y1, x0:x1] = self.crops[i]
        return out

    def area(self, i: int) -> int:
        return int(self.crops[i].sum())

    def region(self, i: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Mask i over the integer box (x0, y0, x1, y1): bool [y1 - y0, x1 - x0]."""
        out = np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), bool)
        bx0, by0, bx1, by1 = self.boxes[i].tolist()
        ix0, iy0, ix1, iy1 = max(x0, bx0), max(y0, by0), min(x1, bx1), min(y1, by1)
        if ix0 < ix1 and iy0 < iy1:
            out[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = self.crops[i][iy0 - by0:iy1 - by0, ix0 - bx0:ix1 - bx0]
        return out

    def rle(self, i: int) -> dict:
        """Mask i as a COCO compressed RLE of the full image ({"size": [h, w],
        "counts": str}, = pycocotools.mask.encode of the dense mask) without
        building it: the runs of the column strip x0..x1 at full height (COCO
        RLE is column-major), the columns left and right of it added to the
        first and last run of zeros."""
        h, w = self.height, self.width
        x0, y0, x1, y1 = self.boxes[i].tolist()
        crop = self.crops[i]
        if crop.size == 0 or not crop.any():
            counts = [h * w]
        else:
            strip = np.zeros((x1 - x0, h), bool)  # the strip, transposed: column-major order
            strip[:, y0:y1] = crop.T
            counts = _runs(strip.ravel())
            counts[0] += x0 * h
            after = (w - x1) * h
            if after:
                if len(counts) % 2:  # ends with a run of zeros
                    counts[-1] += after
                else:
                    counts.append(after)
        rle = mask_util.frPyObjects({"counts": counts, "size": [h, w]}, h, w)
        return {"size": [h, w], "counts": rle["counts"].decode("ascii")}

    def rles(self) -> list[dict]:
        return [self.rle(i) for i in range(len(self))]


def label_map(masks: CroppedMasks) -> tuple[np.ndarray, np.ndarray]:
    """CroppedMasks, best first -> (labels [h, w], kept [n] int), as
    mrcli.predict.label_map does for dense masks: a pixel gets the label of the
    first (best) mask covering it, masks left without pixels are dropped, the
    rest numbered 1..n (labels == k is mask kept[k - 1]); uint8 where n <= 255,
    else uint16. Painted crop by crop, no [D, h, w] stack."""
    d, h, w = len(masks), masks.height, masks.width
    if d > 65535:
        raise ValueError(f"label_map: {d} masks do not fit a 16-bit label map")
    owner = np.zeros((h, w), np.uint16 if d > 255 else np.uint8)
    for k in range(d - 1, -1, -1):  # the best mask is painted last, so it wins
        x0, y0, x1, y1 = masks.boxes[k].tolist()
        owner[y0:y1, x0:x1][masks.crops[k]] = k + 1
    counts = np.bincount(owner.ravel(), minlength=d + 1)[1:]
    kept = np.flatnonzero(counts > 0)
    n = len(kept)
    lut = np.zeros(d + 1, np.uint16 if n > 255 else np.uint8)
    lut[kept + 1] = np.arange(1, n + 1)
    return lut[owner], kept


def label_crops(labels: np.ndarray, boxes: np.ndarray) -> CroppedMasks:
    """A label map [h, w] (1..n) and each label's bounding integer box [n, 4]
    (a box holding all its pixels) -> the labels' masks as tight crops."""
    h, w = labels.shape
    regions = []
    for k, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, np.int64).tolist(), 1):
        regions.append((labels[y0:y1, x0:x1] == k, x0, y0))
    return CroppedMasks.from_regions(regions, h, w)


# --- detections --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Detections:
    """One image's (or window's) detections, in its pixels, as
    mrcli.inference.ImageDetections but with compact masks."""

    boxes: np.ndarray  # [D, 4] float32 xyxy
    scores: np.ndarray  # [D] float32
    classes: np.ndarray  # [D] int32, contiguous 1..K
    masks: CroppedMasks | None  # None: a box-only model
    height: int
    width: int
    keypoints: np.ndarray | None = None  # [D, K, 3] float32 x, y, score
    image_id: int = 0

    def __len__(self) -> int:
        return len(self.scores)


DetectTiles = Callable[[list[np.ndarray]], list[Detections]]


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _int_boxes(boxes: np.ndarray, w: int, h: int) -> np.ndarray:
    """float xyxy -> integer boxes covering them, inside the image."""
    b = np.stack([np.floor(boxes[:, 0]), np.floor(boxes[:, 1]), np.ceil(boxes[:, 2]),
                  np.ceil(boxes[:, 3])], axis=1) if len(boxes) else np.zeros((0, 4))  # fmt: skip
    b = np.clip(b, 0, [w, h, w, h]).astype(np.int64)
    return b.reshape(-1, 4)


def merge_tiles(
    windows: np.ndarray,  # [T, 4] int (x0, y0, x1, y1) in image pixels
    tiles: Sequence[Detections],  # per window, in window pixels (height, width = the window's)
    height: int,
    width: int,
    *,
    margin: float = MARGIN,
    iou: float = MATCH_IOU,
    max_detections: int | None = None,
    image_id: int = 0,
) -> Detections:
    """The windows' detections -> the image's (module docstring: the rule),
    in image pixels, best first, at most `max_detections` (None: all)."""
    windows = np.asarray(windows, np.int64).reshape(-1, 4)
    if len(tiles) != len(windows):
        raise ValueError(f"merge_tiles: {len(tiles)} tiles' detections for {len(windows)} windows")
    has_masks = any(t.masks is not None for t in tiles) or not tiles
    has_kp = any(t.keypoints is not None for t in tiles)
    boxes, scores, classes, cut, tile_of, kps = [], [], [], [], [], []
    mboxes: list[np.ndarray] = []
    crops: list[np.ndarray] = []
    for t, (d, (wx0, wy0, wx1, wy1)) in enumerate(zip(tiles, windows.tolist())):
        ww, wh = wx1 - wx0, wy1 - wy0
        b = np.clip(np.asarray(d.boxes, np.float32).reshape(-1, 4), 0, [ww, wh, ww, wh])
        b = b + np.array([wx0, wy0, wx0, wy0], np.float32)
        boxes.append(b)
        scores.append(np.asarray(d.scores, np.float32))
        classes.append(np.asarray(d.classes, np.int32))
        tile_of.append(np.full(len(b), t))
        c = np.zeros(len(b), bool)  # within margin of an interior edge of this window
        if wx0 > 0:
            c |= b[:, 0] <= wx0 + margin
        if wy0 > 0:
            c |= b[:, 1] <= wy0 + margin
        if wx1 < width:
            c |= b[:, 2] >= wx1 - margin
        if wy1 < height:
            c |= b[:, 3] >= wy1 - margin
        cut.append(c)
        if has_kp:
            k = np.asarray(d.keypoints, np.float32).copy()
            k[..., 0] += wx0
            k[..., 1] += wy0
            kps.append(k)
        if d.masks is not None:
            for i in range(len(d.masks)):  # each crop cut to its window, then shifted
                x0, y0, x1, y1 = d.masks.boxes[i].tolist()
                cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, ww), min(y1, wh)
                crop = d.masks.crops[i][cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] if cx0 < cx1 and cy0 < cy1 \
                    else np.zeros((0, 0), bool)  # fmt: skip
                (bx0, by0, bx1, by1), crop = _tight(crop, cx0 + wx0, cy0 + wy0)
                mboxes.append(np.array([bx0, by0, bx1, by1], np.int64))
                crops.append(crop)
        else:  # box-only: the box stands in for the mask when matching
            for ib in _int_boxes(b, width, height):
                mboxes.append(ib)
                crops.append(np.ones((ib[3] - ib[1], ib[2] - ib[0]), bool))
    n = sum(len(s) for s in scores)
    if n == 0:
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32),
                          CroppedMasks.empty(height, width) if has_masks else None, height, width,
                          None, image_id)  # fmt: skip
    boxes_a, scores_a, classes_a = np.concatenate(boxes), np.concatenate(scores), np.concatenate(classes)
    cut_a, tile_a = np.concatenate(cut), np.concatenate(tile_of)
    kp_a = np.concatenate(kps) if has_kp else None
    masks = CroppedMasks(np.stack(mboxes).reshape(-1, 4), crops, height, width)

    uf = _UnionFind(n)
    mb = masks.boxes
    of_tile = [np.flatnonzero(tile_a == t) for t in range(len(windows))]
    W = windows
    for a in range(len(windows)):
        # the windows after `a` that share pixels with it (neighbours only: big images have many)
        meets = (np.maximum(W[a, 0], W[a + 1:, 0]) < np.minimum(W[a, 2], W[a + 1:, 2])) & \
                (np.maximum(W[a, 1], W[a + 1:, 1]) < np.minimum(W[a, 3], W[a + 1:, 3]))  # fmt: skip
        for b in (a + 1 + np.flatnonzero(meets)).tolist():
            sx0, sy0 = int(max(W[a, 0], W[b, 0])), int(max(W[a, 1], W[b, 1]))
            sx1, sy1 = int(min(W[a, 2], W[b, 2])), int(min(W[a, 3], W[b, 3]))

            def inside(t: int) -> np.ndarray:
                sel = of_tile[t]
                m = mb[sel]
                hit = (m[:, 0] < sx1) & (m[:, 2] > sx0) & (m[:, 1] < sy1) & (m[:, 3] > sy0)
                return sel[hit]

            ia, ib = inside(a), inside(b)
            if len(ia) == 0 or len(ib) == 0:
                continue
            A, B = mb[ia], mb[ib]
            # candidate pairs: same class, boxes meeting inside the shared region
            ix0 = np.maximum(np.maximum(A[:, None, 0], B[None, :, 0]), sx0)
            iy0 = np.maximum(np.maximum(A[:, None, 1], B[None, :, 1]), sy0)
            ix1 = np.minimum(np.minimum(A[:, None, 2], B[None, :, 2]), sx1)
            iy1 = np.minimum(np.minimum(A[:, None, 3], B[None, :, 3]), sy1)
            same = classes_a[ia][:, None] == classes_a[ib][None, :]
            pa, pb = np.nonzero(same & (ix0 < ix1) & (iy0 < iy1))
            area_s: dict[int, int] = {}

            def in_shared(i: int) -> int:
                if i not in area_s:
                    area_s[i] = int(masks.region(i, sx0, sy0, sx1, sy1).sum())
                return area_s[i]

            for p, q in zip(pa.tolist(), pb.tolist()):
                i, j = int(ia[p]), int(ib[q])
                r = (int(ix0[p, q]), int(iy0[p, q]), int(ix1[p, q]), int(iy1[p, q]))
                inter = int((masks.region(i, *r) & masks.region(j, *r)).sum())
                union = in_shared(i) + in_shared(j) - inter
                if union > 0 and inter / union > iou:
                    uf.union(i, j)

    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(uf.find(i), []).append(i)
    out_boxes, out_scores, out_classes, out_kp = [], [], [], []
    out_mboxes, out_crops = [], []
    for members in groups.values():
        members = sorted(members, key=lambda i: (-scores_a[i], i))
        uncut = [i for i in members if not cut_a[i]]
        if uncut or len(members) == 1:
            k = uncut[0] if uncut else members[0]
            out_boxes.append(boxes_a[k])
            out_scores.append(scores_a[k])
            out_mboxes.append(mb[k])
            out_crops.append(masks.crops[k])
        else:  # every view is a part: the instance is their union
            k = members[0]
            ux0, uy0 = int(mb[members, 0].min()), int(mb[members, 1].min())
            ux1, uy1 = int(mb[members, 2].max()), int(mb[members, 3].max())
            region = np.zeros((uy1 - uy0, ux1 - ux0), bool)
            for i in members:
                region |= masks.region(i, ux0, uy0, ux1, uy1)
            (bx0, by0, bx1, by1), crop = _tight(region, ux0, uy0)
            if has_masks:
                box = np.array([bx0, by0, bx1, by1], np.float32)
            else:
                box = np.concatenate([boxes_a[members, :2].min(0), boxes_a[members, 2:].max(0)])
            out_boxes.append(box.astype(np.float32))
            out_scores.append(scores_a[members].max())
            out_mboxes.append(np.array([bx0, by0, bx1, by1], np.int64))
            out_crops.append(crop)
        out_classes.append(classes_a[k])
        if kp_a is not None:
            out_kp.append(kp_a[k])
    s = np.asarray(out_scores, np.float32)
    order = np.argsort(-s, kind="stable")
    if max_detections is not None:
        order = order[:max_detections]
    merged = CroppedMasks(np.stack(out_mboxes).reshape(-1, 4)[order], [out_crops[i] for i in order],
                          height, width)  # fmt: skip
    return Detections(
        boxes=np.stack(out_boxes).astype(np.float32)[order].reshape(-1, 4),
        scores=s[order],
        classes=np.asarray(out_classes, np.int32)[order],
        masks=merged if has_masks else None,
        height=int(height),
        width=int(width),
        keypoints=np.stack(out_kp)[order] if kp_a is not None else None,
        image_id=int(image_id),
    )


def predict_tiled(
    rgb: np.ndarray,  # [h, w, 3] uint8
    detect_tiles: DetectTiles,
    tile: int,
    overlap: int,
    *,
    align: int = 1,
    max_detections: int | None = None,
    image_id: int = 0,
    margin: float = MARGIN,
    iou: float = MATCH_IOU,
) -> Detections:
    """One image through `detect_tiles` window by window (tile_windows), merged
    (merge_tiles): its detections in image pixels, best first."""
    h, w = rgb.shape[:2]
    windows = tile_windows(h, w, tile, overlap, align)
    views = [rgb[y0:y1, x0:x1] for x0, y0, x1, y1 in windows.tolist()]
    tiles = detect_tiles(views)
    return merge_tiles(windows, tiles, h, w, margin=margin, iou=iou, max_detections=max_detections,
                       image_id=image_id)  # fmt: skip
