"""The built-in synthetic keypoint dataset: stick figures with named points.

One class, "figure": a head (a disc), a neck, a hip, two arms and two legs
drawn as thick lines, upright facing the viewer (tilted up to 15 degrees),
with random proportions, arm and leg angles and colours, on the textured
backgrounds of the shapes data (mrcli.data.shapes). Seven keypoints, named
as COCO names a person's: head, neck, left_hand, right_hand, hip, left_foot,
right_foot, where "left" is the figure's own left, on the image's right (a
person facing the camera); so a horizontal flip turns a left hand into a
right one, and the pairs come from the names (mrcli.keypoint_sets). The
skeleton joins head-neck, neck-hands, neck-hip, hip-feet.

Visibility as COCO's: 2 where the point's pixel shows the figure, 1 where a
later figure covers it, 0 (and 0, 0) where it falls outside the image.
Figures overlap at most as the shapes do (each keeps `MIN_VISIBLE` of its
pixels). The keypoints carry no sigmas, so `mrcli prepare figures` takes the
rule's (mrcli.keypoint_sets.DEFAULT_SIGMA for each) and says so. Each image is
a pure function of (seed, split, index).

The tests and the `tiny_keypoints` recipe use it.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from mrcli.data import shapes
from mrcli.data.shapes import background
from mrcli.data.store import Example

KEYPOINTS = ("head", "neck", "left_hand", "right_hand", "hip", "left_foot", "right_foot")
SKELETON = ((1, 2), (2, 3), (2, 4), (2, 5), (5, 6), (5, 7))  # 1-based, as COCO's
CATEGORIES = [
    {"id": 1, "contiguous_id": 1, "name": "figure", "supercategory": "figure",
     "keypoints": list(KEYPOINTS), "skeleton": [list(p) for p in SKELETON]},
]  # fmt: skip
MIN_VISIBLE = 0.5  # fraction of a figure that must stay visible
MAX_FIGURES = 3
_SPLIT_CODES = {"train": 1, "val": 2}


def _points(rng: np.random.Generator, cx: float, cy: float, height: float) -> tuple[np.ndarray, float]:
    """The 7 keypoints [7, 2] of a figure `height` tall centred at (cx, cy), and
    its head radius; upright, then tilted about the centre."""
    head_r = height * rng.uniform(0.09, 0.12)
    top = -height / 2
    head = (0.0, top + head_r)
    neck = (0.0, top + 2 * head_r + height * 0.02)
    hip = (0.0, neck[1] + height * rng.uniform(0.3, 0.36))
    arm = height * rng.uniform(0.28, 0.36)
    leg = height / 2 - hip[1]
    points = [head, neck]
    for side in (1.0, -1.0):  # the figure's left hand is on the image's right
        angle = math.radians(rng.uniform(-60, 50))  # from horizontal, positive = down
        points.append((side * arm * math.cos(angle), neck[1] + arm * math.sin(angle)))
    points.append(hip)
    for side in (1.0, -1.0):
        spread = math.radians(rng.uniform(8, 35))
        points.append((side * leg * math.sin(spread), hip[1] + leg * math.cos(spread)))
    p = np.array(points, np.float64)
    tilt = math.radians(rng.uniform(-15, 15))
    rot = np.array([[math.cos(tilt), -math.sin(tilt)], [math.sin(tilt), math.cos(tilt)]])
    return p @ rot.T + np.array([cx, cy]), head_r


def _figure_mask(points: np.ndarray, head_r: float, thickness: float, h: int, w: int) -> np.ndarray:
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    width = max(2, int(round(thickness)))
    for a, b in SKELETON[1:]:  # the limbs and the trunk; the head is a disc
        (x1, y1), (x2, y2) = points[a - 1], points[b - 1]
        draw.line((x1, y1, x2, y2), fill=1, width=width)
        for x, y in ((x1, y1), (x2, y2)):  # round joints
            r = width / 2
            draw.ellipse((x - r, y - r, x + r, y + r), fill=1)
    x, y = points[0]
    draw.ellipse((x - head_r, y - head_r, x + head_r, y + head_r), fill=1)
    return np.asarray(canvas, dtype=bool)


def render(seed: int, split: str, index: int, size: int,
           max_figures: int = MAX_FIGURES) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """One image [h, w, 3] uint8 and its figures [(visible mask [h, w] bool,
    keypoints [7, 3] float32: x, y, visibility)]."""
    rng = np.random.default_rng([seed, _SPLIT_CODES.get(split, 3), index, 0xF16])
    short_side = int(rng.integers(int(0.75 * size), size + 1))
    h, w = (short_side, size) if rng.random() < 0.5 else (size, short_side)
    img = background(rng, h, w)
    n = int(rng.integers(1, max_figures + 1))
    full: list[np.ndarray] = []
    visible: list[np.ndarray] = []
    points: list[np.ndarray] = []
    for _ in range(n):
        for _attempt in range(10):
            height = rng.uniform(0.45, 0.9) * min(h, w)
            cx = rng.uniform(0.3 * height, w - 0.3 * height)
            cy = rng.uniform(0.35 * height, h - 0.35 * height)
            pts, head_r = _points(rng, cx, cy, height)
            m = _figure_mask(pts, head_r, height * rng.uniform(0.06, 0.09), h, w)
            new_visible = [v & ~m for v in visible]
            if m.sum() >= 40 and all(nv.sum() >= MIN_VISIBLE * f.sum() for nv, f in zip(new_visible, full)):
                break
        else:
            continue
        colour = rng.uniform(0, 255, 3)
        img[m] = colour + rng.normal(0, 4, (int(m.sum()), 3))
        visible = new_visible + [m]
        full.append(m)
        points.append(pts)
    rgb = np.clip(np.round(img), 0, 255).astype(np.uint8)
    figures = []
    for pts, vis in zip(points, visible):
        kp = np.zeros((len(KEYPOINTS), 3), np.float32)
        for k, (x, y) in enumerate(pts):
            if 0 <= x < w and 0 <= y < h:
                kp[k] = (round(x, 2), round(y, 2), 2.0 if vis[int(y), int(x)] else 1.0)
        figures.append((vis, kp))
    return rgb, figures


def make_example(seed: int, split: str, index: int, size: int) -> Example:
    rgb, figures = render(seed, split, index, size)
    keypoints = np.array([kp for _, kp in figures], np.float32).reshape(-1, len(KEYPOINTS), 3)
    return shapes.synthetic_example(split, index, rgb, [m for m, _ in figures], [1] * len(figures), keypoints)


def generate(num: int, split: str, *, size: int = 128, seed: int = 0, on_example=None) -> list[Example]:
    return shapes.generate(num, split, size=size, seed=seed, on_example=on_example, make=make_example)
