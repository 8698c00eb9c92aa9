"""labelme folders (one JSON per image), read for `mrcli prepare labelme`.

Each `*.json` under the folder (searched recursively) is a labelme file:
`imagePath` (relative to the JSON; Windows separators are fine), `imageData`
(the image itself, base64; labelme uses it first when present, and so does
mrcli), `imageHeight`/`imageWidth`, and `shapes`, each with a `label`,
`points` ([[x, y], ...] in image pixels), `shape_type` and `group_id`:

    polygon, oriented_rectangle   the polygon (3 or more points)
    rectangle                     two opposite corners
    circle                        the centre and a point on the circle
    mask                          `mask`: a base64 PNG of the region, its top-left
                                  corner at points[0] (labelme >= 5.3)
    line, linestrip, point        not regions: left out with a note

Shapes with the same label and `group_id` are the parts of one instance (a
person behind a pole); a shape without a group_id is an instance of its own.
The classes are the labels seen, sorted, or the lines of `--classes FILE` in
that order (labelme's labels.txt: the `__ignore__` and `_background_` lines
are skipped). Category ids are 1..K in that order.

Each instance becomes one COCO annotation: polygons as they are (labelme's
points are the coordinates of COCO's polygons, as labelme's own labelme2coco
writes them), rectangles as 4-point polygons, circles as polygons with one
vertex per pixel of circumference (at least 16; IoU with the disc > 0.99);
an instance with a mask part becomes one RLE of the union of its parts.
`check_coco` then checks it like any COCO file, every problem named by the
JSON file and its `shapes[i]`.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import os
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from mrcli.data import images as imagelib
from mrcli.data import masks as masklib
from mrcli.data.check import CheckReport, Converted, ConvertedSplit, Origins
from mrcli.errors import UserError

REGIONS = ("polygon", "oriented_rectangle", "rectangle", "circle", "mask")
NOT_REGIONS = ("line", "linestrip", "point", "points")
# Lines of labelme's labels.txt that are not classes.
NOT_CLASSES = ("__ignore__", "_background_")


def read_classes(path: str | os.PathLike) -> list[str]:
    """--classes FILE: one class name a line, in category-id order."""
    path = Path(path).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--classes {path}: cannot read it ({e})") from None
    names = [line.strip() for line in lines if line.strip() and line.strip() not in NOT_CLASSES]
    if not names:
        raise UserError(f"--classes {path}: no class names in it (one name a line)")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"--classes {path}: {', '.join(map(repr, twice))} listed more than once")
    return names


def circle_polygon(cx: float, cy: float, r: float) -> list[float]:
    """A polygon through the circle with a vertex per pixel of circumference (>= 16)."""
    n = max(16, math.ceil(2 * math.pi * r))
    t = np.arange(n) * (2 * math.pi / n)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1).reshape(-1).tolist()


def _points(shape: dict) -> list[tuple[float, float]] | None:
    pts = shape.get("points")
    if not isinstance(pts, list) or not all(
        isinstance(p, (list, tuple)) and len(p) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in p)
        for p in pts
    ):
        return None
    return [(float(x), float(y)) for x, y in pts]


def _decode_mask(text: Any) -> np.ndarray | None:
    """labelme's `mask`: base64 PNG -> [h, w] bool, or None when unreadable."""
    if not isinstance(text, str):
        return None
    try:
        with Image.open(io.BytesIO(base64.b64decode(text, validate=True))) as img:
            return np.asarray(img.convert("L")) > 0
    except (binascii.Error, ValueError, OSError, UnidentifiedImageError):
        return None


class _Part:
    """One region of an instance: a polygon (flat xy list) or a mask patch."""

    def __init__(self, polygon: list[float] | None = None, mask: np.ndarray | None = None,
                 origin: tuple[int, int] = (0, 0)):
        self.polygon = polygon
        self.mask = mask
        self.origin = origin  # (x, y) of the patch's top-left pixel


def _shape_part(shape: dict, pts: list[tuple[float, float]], kind: str) -> tuple[_Part | None, str, str]:
    """-> (part, problem kind, message) of one region shape."""
    if kind in ("polygon", "oriented_rectangle"):
        if len(pts) < 3:
            return None, "polygon_too_few_points", f"{kind} with {len(pts)} point(s); a polygon needs at least 3"
        return _Part([v for p in pts for v in p]), "", ""
    if kind == "rectangle":
        if len(pts) != 2:
            return None, "malformed_shape", f"a rectangle has 2 points (opposite corners), this one {len(pts)}"
        (x0, y0), (x1, y1) = pts
        xa, xb, ya, yb = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
        return _Part([xa, ya, xb, ya, xb, yb, xa, yb]), "", ""
    if kind == "circle":
        if len(pts) != 2:
            return None, "malformed_shape", f"a circle has 2 points (centre, a point on it), this one {len(pts)}"
        (cx, cy), (px, py) = pts
        return _Part(circle_polygon(cx, cy, math.hypot(px - cx, py - cy))), "", ""
    # mask: labelme places the patch at points[0] rounded (labelme.utils.shapes_to_label).
    mask = _decode_mask(shape.get("mask"))
    if mask is None:
        return None, "malformed_shape", "a mask shape needs 'mask': a base64 PNG of the region"
    x, y = (int(round(v)) for v in pts[0])
    return _Part(mask=mask, origin=(x, y)), "", ""


def _rasterise(parts: list[_Part], h: int, w: int) -> np.ndarray:
    """The union of an instance's parts: [h, w] uint8."""
    out = np.zeros((h, w), np.uint8)
    for part in parts:
        if part.polygon is not None:
            out |= masklib.decode(masklib.polygon_to_rle([part.polygon], h, w), h, w)
        else:
            x, y = part.origin
            ph, pw = part.mask.shape
            ya, yb, xa, xb = max(y, 0), min(y + ph, h), max(x, 0), min(x + pw, w)
            if ya < yb and xa < xb:
                out[ya:yb, xa:xb] |= part.mask[ya - y: yb - y, xa - x: xb - x].astype(np.uint8)
    return out


def _segmentation(parts: list[_Part], size: tuple[int, int]) -> tuple[Any, list[float]]:
    """An instance's parts -> (COCO segmentation, bbox xywh)."""
    if all(p.polygon is not None for p in parts):
        xs = [v for p in parts for v in p.polygon[0::2]]
        ys = [v for p in parts for v in p.polygon[1::2]]
        return [p.polygon for p in parts], [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
    h, w = size
    counts = masklib.encode(_rasterise(parts, h, w))
    x1, y1, x2, y2 = masklib.tight_box(counts, h, w).tolist()
    return {"size": [h, w], "counts": counts.decode("ascii")}, [x1, y1, x2 - x1, y2 - y1]


def _load(path: Path) -> dict[str, Any] | str:
    """A labelme file, or why it is not one."""
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"not valid JSON ({e})"
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        return "not a labelme file (no 'shapes' list); move other JSON files out of the folder"
    if not isinstance(data.get("imagePath"), str) and not isinstance(data.get("imageData"), str):
        return "names no image: it needs 'imagePath' (relative to the JSON) or 'imageData'"
    return data


def _embedded(path: Path):
    """A loader of the image embedded in a labelme file (read again when needed,
    so that a folder of big embedded images is not held in memory)."""

    def load() -> bytes:
        with open(path, "rb") as f:
            return base64.b64decode(json.load(f)["imageData"])

    return load


def read_labelme(folder: str | os.PathLike, classes: str | os.PathLike | None = None) -> Converted:
    """A labelme folder -> one COCO-style split ("train") for the checker."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise UserError(f"--folder {root}: not a folder; give the folder of labelme .json files")
    files = sorted(root.rglob("*.json"))
    if not files:
        raise UserError(f"--folder {root}: no .json files in it (labelme saves one per image)")
    report = CheckReport()
    loaded: list[tuple[Path, dict]] = []
    for path in files:
        data = _load(path)
        if isinstance(data, str):
            report.add("malformed_label_file", path, data)
            report.skipped_images += 1
        else:
            loaded.append((path, data))
    if classes is not None:
        names = read_classes(classes)
        classes_name = Path(classes).name
    else:
        names = sorted({s["label"] for _, d in loaded for s in d["shapes"]
                        if isinstance(s, dict) and isinstance(s.get("label"), str)})
        classes_name = ""
    category = {n: k + 1 for k, n in enumerate(names)}

    images: list[dict] = []
    anns: list[dict] = []
    image_where: dict[int, tuple[str, str]] = {}
    ann_where: dict[int, tuple[str, str]] = {}
    embedded = {}
    next_ann = 1
    for iid, (path, data) in enumerate(loaded, start=1):
        image_path = PureWindowsPath(data.get("imagePath") or path.with_suffix(".png").name).as_posix()
        file_name = os.path.normpath((path.parent.relative_to(root) / image_path).as_posix())
        im: dict[str, Any] = {"id": iid, "file_name": Path(file_name).as_posix()}
        size = None
        if isinstance(data.get("imageData"), str):
            try:
                raw = base64.b64decode(data["imageData"], validate=True)
            except (binascii.Error, ValueError):
                report.add("malformed_label_file", path, "imageData is not base64; "
                           "re-save the file in labelme or set imageData to null", image_id=iid)
                report.skipped_images += 1
                continue
            embedded[iid] = _embedded(path)
            image_where[iid] = (str(path), "imageData")
            size = imagelib.displayed_size(raw)
        else:
            image_where[iid] = (str(path), f"imagePath {image_path!r}")
            size = imagelib.displayed_size(root / file_name)
        jh, jw = data.get("imageHeight"), data.get("imageWidth")
        if isinstance(jh, int) and isinstance(jw, int) and not isinstance(jh, bool):
            im["height"], im["width"] = jh, jw
            size = (jh, jw) if jh > 0 and jw > 0 else size
        elif size is not None:
            im["height"], im["width"] = size
        images.append(im)

        # Shapes -> instances (label, group_id), in order of first appearance.
        instances: dict[Any, dict] = {}
        for i, shape in enumerate(data["shapes"]):
            at = f"shapes[{i}]"
            if not isinstance(shape, dict) or not isinstance(shape.get("label"), str):
                report.add("malformed_shape", path, "a shape needs a string 'label'", image_id=iid, where=at)
                report.skipped_annotations += 1
                continue
            kind = shape.get("shape_type") or "polygon"
            group = shape.get("group_id")
            key = (shape["label"], group) if group is not None else ("", i)
            inst = instances.setdefault(key, {"label": shape["label"], "group": group, "at": [],
                                              "parts": [], "bad": False})
            inst["at"].append(at)
            pts = _points(shape)
            problem, message, part = "", "", None
            if kind in NOT_REGIONS:
                report.add("shape_not_a_region", path, f"a {kind} shape ({shape['label']!r}) is not a "
                           "region; left out", image_id=iid, where=at)
                inst["at"].pop()
                continue
            if kind not in REGIONS:
                problem, message = "malformed_shape", (f"shape_type {kind!r} is not one of "
                                                       f"{', '.join(REGIONS + NOT_REGIONS)}")
            elif group is not None and not (isinstance(group, int) and not isinstance(group, bool)):
                problem, message = "malformed_shape", f"group_id {group!r} is not an integer"
            elif pts is None or not pts:
                problem, message = "malformed_shape", "points must be a list of [x, y] numbers"
            else:
                part, problem, message = _shape_part(shape, pts, kind)
            if shape["label"] not in category:
                report.add("unknown_category", path, f"label {shape['label']!r} is not in {classes_name}",
                           image_id=iid, where=at)
                inst["bad"] = True
            if problem:
                report.add(problem, path, message, image_id=iid, where=at)
                inst["bad"] = True
            if part is not None:
                inst["parts"].append(part)
        for inst in instances.values():
            if not inst["at"]:
                continue  # only non-region shapes
            if inst["bad"] or size is None:  # no size: the checker reports the image
                report.skipped_annotations += 1
                continue
            segmentation, bbox = _segmentation(inst["parts"], size)
            anns.append({"id": next_ann, "image_id": iid, "category_id": category[inst["label"]],
                         "segmentation": segmentation, "bbox": bbox, "iscrowd": 0})
            at = ", ".join(inst["at"]) + (f" (group_id {inst['group']})" if inst["group"] is not None else "")
            ann_where[next_ann] = (str(path), at)
            next_ann += 1

    categories = [{"id": k, "name": n, "supercategory": ""} for n, k in category.items()]
    split = ConvertedSplit({"images": images, "annotations": anns}, root,
                           Origins(images=image_where, annotations=ann_where, embedded=embedded,
                                   size_from="imageWidth/imageHeight in the JSON"))
    source = {"kind": "labelme", "folder": str(root.resolve()),
              **({"classes": str(Path(classes).expanduser().resolve())} if classes is not None else {})}
    return Converted(categories, {"train": split}, report, source)
