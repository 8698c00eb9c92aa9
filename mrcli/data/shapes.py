"""The built-in synthetic dataset: coloured shapes on textured backgrounds.

Four classes (circle, square, triangle, star) with random colours, sizes,
rotations, overlaps and occlusion (later shapes cover earlier ones; a shape
is only kept when at least `MIN_VISIBLE` of it stays visible, so every
visible shape is annotated), on smooth random two-colour textures with pixel
noise. Image sizes vary: the long side is `size`, the short side 75-100% of
it, landscape or portrait. Each image is a pure function of (seed, split,
index), so a dataset is reproducible from its seed, image by image.

The quickstart (`recipes/tiny.py`) and the tests use it.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
from PIL import Image, ImageDraw

from mrcli.data import images as imagelib
from mrcli.data import masks as masklib
from mrcli.data.store import Example

CLASSES = ("circle", "square", "triangle", "star")
CATEGORIES = [
    {"id": i, "contiguous_id": i, "name": n, "supercategory": "shape"}
    for i, n in enumerate(CLASSES, start=1)
]
MIN_VISIBLE = 0.4  # fraction of a shape that must stay visible
MAX_SHAPES = 6
_SPLIT_CODES = {"train": 1, "val": 2}


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        pts = [(math.cos(angle + math.pi / 4 + k * math.pi / 2) * r, math.sin(angle + math.pi / 4 + k * math.pi / 2) * r) for k in range(4)]
    elif kind == "triangle":
        pts = [(math.cos(angle + k * 2 * math.pi / 3) * r, math.sin(angle + k * 2 * math.pi / 3) * r) for k in range(3)]
    elif kind == "star":
        pts = []
        for k in range(10):
            rr = r if k % 2 == 0 else 0.45 * r
            a = angle + k * math.pi / 5
            pts.append((math.cos(a) * rr, math.sin(a) * rr))
    else:
        raise ValueError(kind)
    return [(cx + x, cy + y) for x, y in pts]


def _shape_mask(kind: str, h: int, w: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=1)
    else:
        draw.polygon(_polygon(kind, cx, cy, r, angle), fill=1)
    return np.asarray(canvas, dtype=bool)


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random textured [h, w, 3] background (two-colour gradient, optional stripes, noise):
    the shapes and the figures datasets draw on it."""
    c1 = rng.uniform(0, 255, 3)
    c2 = rng.uniform(0, 255, 3)
    gh, gw = rng.integers(2, 9, size=2)
    coarse = (rng.random((gh, gw)) * 255).astype(np.uint8)
    t = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BILINEAR), np.float32) / 255.0
    img = c1 + (c2 - c1) * t[..., None]
    if rng.random() < 0.5:  # stripes
        period = rng.uniform(6, 24)
        theta = rng.uniform(0, math.pi)
        yy, xx = np.mgrid[0:h, 0:w]
        phase = (xx * math.cos(theta) + yy * math.sin(theta)) / period
        img += (np.sin(2 * math.pi * phase) * rng.uniform(5, 25))[..., None]
    img += rng.normal(0, 6, (h, w, 3))
    return img


def render(seed: int, split: str, index: int, size: int,
           max_shapes: int = MAX_SHAPES) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One image [h, w, 3] uint8 and its instances [(class 1..4, visible mask [h, w] bool)]."""
    rng = np.random.default_rng([seed, _SPLIT_CODES.get(split, 3), index])
    long_side = size
    short_side = int(rng.integers(int(0.75 * size), size + 1))
    h, w = (short_side, long_side) if rng.random() < 0.5 else (long_side, short_side)
    img = background(rng, h, w)
    n = 0 if rng.random() < 0.03 else int(rng.integers(1, max_shapes + 1))
    full: list[np.ndarray] = []
    visible: list[np.ndarray] = []
    classes: list[int] = []
    for _ in range(n):
        for _attempt in range(10):
            cls = int(rng.integers(1, len(CLASSES) + 1))
            r = rng.uniform(0.07, 0.25) * min(h, w)
            cx = rng.uniform(0.3 * r, w - 0.3 * r)
            cy = rng.uniform(0.3 * r, h - 0.3 * r)
            angle = rng.uniform(0, 2 * math.pi)
            m = _shape_mask(CLASSES[cls - 1], h, w, cx, cy, r, angle)
            if m.sum() < 30:
                continue
            new_visible = [v & ~m for v in visible]
            if all(nv.sum() >= MIN_VISIBLE * f.sum() for nv, f in zip(new_visible, full)):
                break
        else:
            continue
        colour = rng.uniform(0, 255, 3)
        shade = rng.normal(0, 4, (h, w, 3))
        img[m] = (colour + shade[m])
        visible = new_visible + [m]
        full.append(m)
        classes.append(cls)
    rgb = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return rgb, list(zip(classes, visible))


def make_example(seed: int, split: str, index: int, size: int, max_shapes: int = MAX_SHAPES) -> Example:
    rgb, instances = render(seed, split, index, size, max_shapes)
    return synthetic_example(split, index, rgb, [m for _, m in instances], [c for c, _ in instances])


def synthetic_example(split: str, index: int, rgb: np.ndarray, masks: list[np.ndarray], classes: list[int],
                      keypoints: np.ndarray | None = None) -> Example:  # fmt: skip
    """A generated image [h, w, 3] uint8 with its instances (masks [h, w] bool, classes,
    keypoints [n, K, 3] or None) as the Example to store: JPEG bytes, tight boxes,
    mask areas; image id index + 1, annotation ids 100 (index + 1) + 1, 2, ..."""
    h, w = rgb.shape[:2]
    data = imagelib.encode_jpeg(rgb, quality=92)
    rles = [masklib.encode(m) for m in masks]
    boxes = [masklib.tight_box(r, h, w) for r in rles]
    return Example(
        image_id=index + 1,
        file_name=f"{split}/{index + 1:06d}.jpg",
        height=h,
        width=w,
        load=lambda data=data: data,
        ann_ids=np.arange(1, len(masks) + 1, dtype=np.int64) + 100 * (index + 1),
        boxes=np.array(boxes, np.float32).reshape(-1, 4),
        classes=np.array(classes, np.int32).reshape(-1),
        crowd=np.zeros(len(masks), bool),
        areas=np.array([float(m.sum()) for m in masks], np.float32),
        rles=rles,
        keypoints=keypoints,
        image_sha256=hashlib.sha256(data).hexdigest(),
    )


def generate(num: int, split: str, *, size: int = 128, seed: int = 0, on_example=None,
             make=make_example) -> list[Example]:  # fmt: skip
    """`num` examples of `split`, each `make(seed, split, index, size)` (the shapes'
    by default; mrcli.data.figures passes its own)."""
    out = []
    for k in range(num):
        out.append(make(seed, split, k, size))
        if on_example is not None:
            on_example()
    return out
