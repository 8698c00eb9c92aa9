"""YOLO segmentation datasets as Ultralytics lays them out, read for `mrcli prepare yolo`.

    data.yaml     path: DIR (default: the YAML's folder), train: images/train,
                  val: images/val (optional), test: ... (optional),
                  names: [a, b, ...] or {0: a, 1: b, ...}
    DIR/images/train/x.jpg  <->  DIR/labels/train/x.txt

A split is a folder of images (searched recursively), a .txt file listing
image paths (relative ones relative to that file's folder), or a list of
either. An image's label file is its path with the last `images` folder
replaced by `labels` and the suffix by `.txt` (Ultralytics' img2label_paths);
each line is `class x1 y1 x2 y2 ...`, the polygon in coordinates normalised
by the image's width and height. A split path that does not exist and starts
with `../` is tried without it, as Ultralytics does for Roboflow exports.

The lines become pixel polygons (x * width, y * height: the coordinates of
COCO's polygons, so a COCO dataset converted to YOLO and back is the same)
in a COCO-style dict that `check_coco` checks like any COCO file, with every
problem named by its label file and line. This reader reports what only the
format can get wrong: a line that is not numbers, a class outside `names`, a
coordinate outside [0, 1], a label file without an image. An image without a
label file is an image without instances (Ultralytics' background images).
Category ids are the class index + 1 (COCO keeps 0 for "no class").
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import yaml

from mrcli.data import images as imagelib
from mrcli.data.check import CheckReport, Converted, ConvertedSplit, Origins
from mrcli.errors import UserError

# The image files PIL reads among Ultralytics' IMG_FORMATS.
IMAGE_SUFFIXES = {".bmp", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp"}
SPLITS = ("train", "val", "test")
# A class list some exporters (labelImg, Label Studio) put beside the labels.
CLASSES_FILE = "classes.txt"


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: not found; --data names the dataset's data.yaml") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: expected a mapping with train, val and names (Ultralytics data.yaml)")
    return cfg


def class_names(cfg: dict[str, Any], yaml_path: Path) -> list[str]:
    """`names` as a list (index = class id), from either form."""
    names = cfg.get("names")
    if isinstance(names, dict):
        try:
            by_id = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise UserError(f"{yaml_path}: names: the keys must be class ids 0, 1, ...") from None
        if sorted(by_id) != list(range(len(by_id))):
            raise UserError(f"{yaml_path}: names: the class ids must be 0..{len(by_id) - 1}, "
                            f"got {sorted(by_id)}")
        names = [by_id[k] for k in range(len(by_id))]
    elif isinstance(names, list):
        names = [str(v) for v in names]
    else:
        raise UserError(f"{yaml_path}: names: expected a list of class names or a mapping "
                        "{0: name, 1: name, ...}")
    if not names:
        raise UserError(f"{yaml_path}: names is empty; list the class names")
    if "nc" in cfg and cfg["nc"] != len(names):
        raise UserError(f"{yaml_path}: nc is {cfg['nc']} but names has {len(names)} classes; "
                        "make them agree (or drop nc)")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"{yaml_path}: names lists {', '.join(map(repr, twice))} more than once; "
                        "every class needs its own name")
    return names


def label_path(image: Path) -> Path:
    """Ultralytics' img2label_paths: the last /images/ -> /labels/, suffix -> .txt."""
    s = str(image)
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    if sa in s:
        s = sb.join(s.rsplit(sa, 1))
    return Path(s).with_suffix(".txt")


def _resolve(root: Path, entry: str) -> Path:
    path = Path(entry).expanduser()
    if not path.is_absolute():
        path = root / path
        if not path.exists() and entry.startswith("../"):
            path = root / entry[3:]
    return path


def _split_images(root: Path, entry: Any, yaml_path: Path, split: str) -> tuple[list[Path], list[Path]]:
    """-> (image files, image folders) of one split entry."""
    entries = entry if isinstance(entry, list) else [entry]
    images: list[Path] = []
    folders: list[Path] = []
    for e in entries:
        if not isinstance(e, str):
            raise UserError(f"{yaml_path}: {split}: expected a folder or .txt file, got {e!r}")
        path = _resolve(root, e)
        if path.is_dir():
            folders.append(path)
            images += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file() and path.suffix == ".txt":
            for line in path.read_text().splitlines():
                line = line.strip()
                if line:
                    p = Path(line).expanduser()
                    images.append(p if p.is_absolute() else path.parent / p)
        else:
            raise UserError(
                f"{yaml_path}: {split}: {e} not found (looked for {path}); paths are relative to "
                f"'path' ({root}), which defaults to the YAML's folder"
            )
    return images, folders


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _read_labels(label_file: Path, image_size: tuple[int, int] | None, names: list[str],
                 yaml_name: str, iid: int, next_ann: int, report: CheckReport,
                 anns: list[dict], where: dict[int, tuple[str, str]]) -> tuple[int, bool]:
    """One label file -> annotations (appended to `anns`). Returns (next free
    annotation id, whether the file could be read)."""
    try:
        text = label_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        report.add("malformed_label_file", label_file,
                   f"cannot read the label file ({e}); its image is left out", image_id=iid)
        return next_ann, False
    for n, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        at = f"line {n}"
        values = [_number(t) for t in tokens]
        if any(v is None for v in values):
            bad = tokens[values.index(None)]
            report.add("malformed_shape", label_file, f"{bad!r} is not a number; a line is "
                       "'class x1 y1 x2 y2 ...'", image_id=iid, where=at)
            report.skipped_annotations += 1
            continue
        cls, coords = values[0], values[1:]
        problem = False
        if not float(cls).is_integer():
            report.add("malformed_shape", label_file, f"class {tokens[0]} is not an integer",
                       image_id=iid, where=at)
            problem = True
        elif not 0 <= int(cls) < len(names):
            report.add("unknown_category", label_file, f"class {int(cls)} is not in {yaml_name} names "
                       f"(0..{len(names) - 1})", image_id=iid, where=at)
            problem = True
        if len(coords) == 4:
            report.add("polygon_too_few_points", label_file, "4 numbers after the class: a detection "
                       "box (x_center y_center width height), not a polygon; segmentation labels "
                       "list 3 or more points x1 y1 x2 y2 x3 y3 ...", image_id=iid, where=at)
            problem = True
        outside = [(k, v) for k, v in enumerate(coords) if not (math.isfinite(v) and 0 <= v <= 1)]
        if outside:
            k, v = outside[0]
            more = f" (and {len(outside) - 1} more)" if len(outside) > 1 else ""
            report.add("coordinates_out_of_range", label_file,
                       f"{'xy'[k % 2]} = {tokens[k + 1]} (point {k // 2 + 1}) is outside [0, 1]{more}; "
                       "YOLO coordinates are divided by the image's width and height",
                       image_id=iid, where=at)
            problem = True
        if problem or image_size is None:  # no size: the checker reports the image
            report.skipped_annotations += 1
            continue
        h, w = image_size
        poly = [v * (w if k % 2 == 0 else h) for k, v in enumerate(coords)]
        ann: dict[str, Any] = {"id": next_ann, "image_id": iid, "category_id": int(cls) + 1,
                               "segmentation": [poly], "iscrowd": 0}
        if len(poly) >= 6 and len(poly) % 2 == 0:  # else the checker names the polygon's fault
            xs, ys = poly[0::2], poly[1::2]
            ann["bbox"] = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        anns.append(ann)
        where[next_ann] = (str(label_file), at)
        next_ann += 1
    return next_ann, True


def read_yolo(data_yaml: str | os.PathLike) -> Converted:
    """An Ultralytics segmentation dataset -> COCO-style splits for the checker."""
    yaml_path = Path(data_yaml).expanduser()
    cfg = _load_yaml(yaml_path)
    names = class_names(cfg, yaml_path)
    root = Path(str(cfg.get("path") or ".")).expanduser()
    if not root.is_absolute():
        root = yaml_path.parent / root
    if not root.is_dir():
        raise UserError(f"{yaml_path}: path: {root} is not a folder; 'path' is the dataset root, "
                        "relative to the YAML's folder")
    if not cfg.get("train"):
        raise UserError(f"{yaml_path}: no train split; set train: (a folder of images or a .txt list)")
    report = CheckReport()
    categories = [{"id": k + 1, "name": n, "supercategory": ""} for k, n in enumerate(names)]
    splits: dict[str, ConvertedSplit] = {}
    expected_labels: set[Path] = set()
    label_folders: set[Path] = set()
    iid, next_ann = 1, 1
    for split in SPLITS:
        if not cfg.get(split):
            continue
        files, folders = _split_images(root, cfg[split], yaml_path, split)
        if not files:
            raise UserError(f"{yaml_path}: {split}: no images found ({', '.join(sorted(IMAGE_SUFFIXES))})")
        label_folders.update(label_path(f / "x.jpg").parent for f in folders)
        images: list[dict] = []
        anns: list[dict] = []
        image_where: dict[int, tuple[str, str]] = {}
        ann_where: dict[int, tuple[str, str]] = {}
        for path in files:
            size = imagelib.displayed_size(path)
            lbl = label_path(path)
            expected_labels.add(lbl)
            ok = True
            if lbl.is_file():
                next_ann, ok = _read_labels(lbl, size, names, yaml_path.name, iid, next_ann, report,
                                            anns, ann_where)
            if not ok:
                report.skipped_images += 1
            else:
                im: dict[str, Any] = {"id": iid, "file_name": _relative(path, root)}
                if size is not None:
                    im["height"], im["width"] = size
                images.append(im)
                image_where[iid] = (str(path), "")
            iid += 1
        splits[split] = ConvertedSplit(
            {"images": images, "annotations": anns}, root,
            Origins(images=image_where, annotations=ann_where, size_from="the image header"),
        )
    for folder in sorted(label_folders):
        if not folder.is_dir():
            continue
        for lbl in sorted(folder.rglob("*.txt")):
            if lbl not in expected_labels and not (lbl.parent == folder and lbl.name == CLASSES_FILE):
                report.add("label_without_image", lbl, "no image of this name in the split's images "
                           f"folder ({', '.join(sorted(IMAGE_SUFFIXES))}); its labels are left out")
                report.skipped_annotations += sum(1 for line in _lines(lbl) if line.strip())
    source = {"kind": "yolo", "data": str(yaml_path.resolve()), "path": str(root.resolve())}
    return Converted(categories, splits, report, source)


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
