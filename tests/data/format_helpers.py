"""Small hand-made datasets in the formats `mrcli prepare` reads besides COCO:
Cityscapes instanceIds trees, YOLO segmentation folders, labelme folders."""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import numpy as np
import yaml
from data_helpers import noise_rgb
from PIL import Image

# --- YOLO ------------------------------------------------------------------------------

YOLO_NAMES = ["bolt", "nut", "gear"]
# Per image: (split, file, (height, width), [(class, normalised polygon)] or None for no label file).
YOLO_IMAGES = [
    ("train", "a.png", (40, 60), [(0, [0.1, 0.1, 0.5, 0.15, 0.3, 0.6]),
                                 (2, [0.55, 0.2, 0.95, 0.2, 0.95, 0.9, 0.55, 0.9])]),
    ("train", "sub/b.jpg", (50, 30), [(1, [0.0, 0.0, 1.0, 0.0, 1.0, 0.4, 0.5, 0.5, 0.0, 0.4])]),
    ("train", "c.png", (32, 32), None),  # no label file: an image without instances
    ("val", "d.png", (36, 48), [(2, [0.2, 0.2, 0.8, 0.25, 0.5, 0.9]), (0, [0.05, 0.7, 0.3, 0.7, 0.2, 0.95])]),
]


def write_yolo(root: Path, names_form: str = "list", images=YOLO_IMAGES, names=YOLO_NAMES,
               val: bool = True) -> Path:
    """An Ultralytics-style dataset under ROOT; returns its data.yaml."""
    root = Path(root)
    for k, (split, name, (h, w), lines) in enumerate(images):
        if split == "val" and not val:
            split = "train"
        img = root / "images" / split / name
        img.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noise_rgb(h, w, 40 + k)).save(img, quality=95)
        if lines is not None:
            lbl = root / "labels" / split / Path(name).with_suffix(".txt")
            lbl.parent.mkdir(parents=True, exist_ok=True)
            lbl.write_text("".join(f"{c} " + " ".join(f"{v:.6f}" for v in poly) + "\n" for c, poly in lines))
    cfg = {"path": ".", "train": "images/train",
           "names": list(names) if names_form == "list" else {k: n for k, n in enumerate(names)}}
    if val:
        cfg["val"] = "images/val"
    (root / "data.yaml").write_text(yaml.safe_dump(cfg))
    return root / "data.yaml"


def yolo_pixel_polygon(poly: list[float], h: int, w: int) -> list[float]:
    return [v * (w if k % 2 == 0 else h) for k, v in enumerate(poly)]


# --- labelme -------------------------------------------------------------------------------

LABELME_SIZE = (48, 64)  # h, w of every image


def _b64_png(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def labelme_mask_patch() -> np.ndarray:
    """The region of the mask shape: a 10 x 12 patch with a hole."""
    patch = np.ones((10, 12), bool)
    patch[3:6, 4:8] = False
    return patch


def labelme_shapes() -> list[dict]:
    """One shape of each region type, a two-part instance (group_id 1), a line (no region)."""
    shape = lambda label, points, kind, group=None, **kw: {  # noqa: E731
        "label": label, "points": points, "shape_type": kind, "group_id": group, "flags": {}, **kw}
    return [
        shape("cat", [[4, 4], [20, 6], [12, 22]], "polygon"),
        shape("dog", [[30, 30], [40, 44]], "rectangle"),
        shape("dog", [[50, 12], [50, 20]], "circle"),  # centre (50, 12), radius 8
        shape("cat", [[2, 30], [14, 40]], "mask", mask=_b64_png(labelme_mask_patch().astype(np.uint8) * 255)),
        shape("person", [[22, 26], [28, 26], [28, 40], [22, 40]], "polygon", 1),  # left part
        shape("person", [[31, 26], [36, 26], [36, 40], [31, 40]], "polygon", 1),  # right part
        shape("cat", [[0, 0], [10, 10]], "line"),
    ]


def write_labelme(root: Path, *, shapes_a=None, embed_b: bool = True) -> Path:
    """A folder: a.json (image at ../images/a.png, every shape type), sub/b.json
    (the image embedded as imageData, one polygon). Returns the folder."""
    root = Path(root)
    folder = root / "ann"
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    h, w = LABELME_SIZE
    Image.fromarray(noise_rgb(h, w, 60)).save(root / "images" / "a.png")
    a = {"version": "5.5.0", "flags": {}, "shapes": labelme_shapes() if shapes_a is None else shapes_a,
         "imagePath": "..\\images\\a.png", "imageData": None, "imageHeight": h, "imageWidth": w}
    (folder / "a.json").write_text(json.dumps(a))
    buf = io.BytesIO()
    Image.fromarray(noise_rgb(h, w, 61)).save(buf, format="PNG")
    b = {"version": "5.5.0", "flags": {}, "imagePath": "b.png",
         "shapes": [{"label": "dog", "points": [[10, 10], [40, 12], [30, 40]], "shape_type": "polygon",
                     "group_id": None, "flags": {}}],
         "imageData": base64.b64encode(buf.getvalue()).decode("ascii") if embed_b else None,
         "imageHeight": h, "imageWidth": w}
    if not embed_b:
        (folder / "sub" / "b.png").write_bytes(buf.getvalue())
    (folder / "sub" / "b.json").write_text(json.dumps(b))
    return folder


def disc(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    """Pixels whose centre lies in the circle (pixel i covers [i, i + 1))."""
    ys, xs = np.mgrid[0:h, 0:w]
    return ((xs + 0.5 - cx) ** 2 + (ys + 0.5 - cy) ** 2 <= r * r).astype(np.uint8)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return float((a & b).sum() / max(1, (a | b).sum()))


# --- Cityscapes ------------------------------------------------------------------------------

CS_SIZE = (64, 128)  # h, w (the real images are 1024 x 2048)


def cityscapes_ids(variant: int) -> np.ndarray:
    """An instanceIds image: road (7), two persons (24000, 24001), a rider (25000),
    a car (26000), a car group (26: crowd), a caravan (29000: not evaluated).
    Every instance covers >= 100 pixels, the official evaluation's smallest region."""
    h, w = CS_SIZE
    ids = np.full((h, w), 7, np.int32)
    ids[:16, :] = 23  # sky
    ids[20:40, 4:16] = 24000
    ids[24:44, 18:26] = 24001
    ids[28:48, 30:40] = 25000
    ids[32:56, 44 + variant:68 + variant] = 26000
    ids[32:52, 80:104] = 26  # a group of cars
    ids[40:60, 108:124] = 29000
    return ids


def write_cityscapes(root: Path) -> Path:
    """leftImg8bit/ + gtFine/ with 2 train images (2 cities) and 1 val image."""
    root = Path(root)
    entries = [("train", "aachen", "aachen_000000_000019"), ("train", "bochum", "bochum_000000_000313"),
               ("val", "frankfurt", "frankfurt_000000_000294")]
    for k, (split, city, stem) in enumerate(entries):
        img_dir = root / "leftImg8bit" / split / city
        gt_dir = root / "gtFine" / split / city
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noise_rgb(*CS_SIZE, 70 + k)).save(img_dir / f"{stem}_leftImg8bit.png")
        Image.fromarray(cityscapes_ids(k).astype(np.uint16)).save(gt_dir / f"{stem}_gtFine_instanceIds.png")
    return root


def cs_paths(root: Path, split: str = "train", k: int = 0) -> tuple[Path, Path]:
    imgs = sorted((Path(root) / "leftImg8bit" / split).glob("*/*.png"))
    gts = sorted((Path(root) / "gtFine" / split).glob("*/*_instanceIds.png"))
    return imgs[k], gts[k]


def star_polygon(cx: float, cy: float, r: float, n: int = 5) -> list[float]:
    pts = []
    for k in range(2 * n):
        rr = r if k % 2 == 0 else r * 0.45
        t = math.pi * k / n
        pts += [cx + rr * math.cos(t), cy + rr * math.sin(t)]
    return pts
