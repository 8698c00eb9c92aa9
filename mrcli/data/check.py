"""Reading and checking COCO-format datasets (docs/design.md §8: bad data is
reported, not silently trained on).

`check_coco(annotations_json, images_dir)` reads one split, inspects every
image file (in a thread pool: PIL decodes and hashlib hash without the GIL),
checks every category, image and annotation, and returns the examples ready
to store with a `CheckReport` of every problem found. Each problem names the
file (the JSON file or the image file), the image and annotation ids, what is
wrong, and its kind; the kinds are in `KINDS`.

Fatal kinds make `mrcli prepare` refuse (`--on-error fail`, the default) or
skip the bad item (`--on-error skip`): an annotation-level problem skips the
annotation, an image-level problem skips the image with its annotations.
Fixable kinds are fixed and reported (EXIF rotation applied, converted to RGB,
a box computed from the mask). Notes are kept as they are and reported.

Boxes may overhang the image by up to `BOX_TOLERANCE` pixels (COCO's own
annotations do, by float rounding); they are clipped silently.

Other formats (YOLO labels, labelme folders, Cityscapes instanceIds PNGs;
mrcli.data.yolo, .labelme, .cityscapes) are read into the same COCO-style dict
and checked here too; their `Origins` say which original file (and line or
shape) each image and annotation came from, so that a problem names that
file and line rather than the dict built from it. What only a format can
get wrong (a YOLO coordinate outside [0, 1], a labelme shape of an unknown
type) its reader reports with the kinds below.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from mrcli.data import images as imagelib
from mrcli.data import masks as masklib
from mrcli import keypoint_sets
from mrcli.data.store import Example
from mrcli.errors import UserError

BOX_TOLERANCE = 1.0

FATAL, FIXED, NOTE = "fatal", "fixed", "note"


@dataclass(frozen=True)
class Kind:
    code: str
    severity: str  # FATAL, FIXED or NOTE
    title: str
    # What `--on-error skip` does (fatal kinds) or what was done (fixed, note).
    action: str


KINDS: dict[str, Kind] = {
    k.code: k
    for k in [
        Kind("malformed_category", FATAL, "category without an integer id or a name", "category skipped"),
        Kind("duplicate_category_id", FATAL, "duplicate category id", "later duplicates skipped"),
        Kind("malformed_image", FATAL, "image entry without an integer id or a file_name", "image skipped"),
        Kind("duplicate_image_id", FATAL, "duplicate image id", "every image with that id skipped, with its annotations"),
        Kind("missing_image_file", FATAL, "image file missing", "image skipped"),
        Kind("unreadable_image", FATAL, "image file unreadable", "image skipped"),
        Kind("truncated_image", FATAL, "image file truncated or corrupt", "image skipped"),
        Kind("image_size_mismatch", FATAL, "width/height in the JSON disagree with the file", "image skipped"),
        Kind("malformed_annotation", FATAL, "annotation without integer id, image_id or category_id", "annotation skipped"),
        Kind("duplicate_annotation_id", FATAL, "duplicate annotation id", "later duplicates skipped"),
        Kind("missing_image_ref", FATAL, "annotation of an image id not in the images", "annotation skipped"),
        Kind("unknown_category", FATAL, "annotation of an unknown category id", "annotation skipped"),
        Kind("box_invalid", FATAL, "bbox is not 4 finite numbers", "annotation skipped"),
        Kind("box_zero_area", FATAL, "box of zero area", "annotation skipped"),
        Kind("box_outside_image", FATAL, "box outside the image", "annotation skipped"),
        Kind("segmentation_missing", FATAL, "no segmentation", "annotation skipped"),
        Kind("polygon_too_few_points", FATAL, "polygon with fewer than 3 points", "annotation skipped"),
        Kind("rle_size_mismatch", FATAL, "RLE size disagrees with the image", "annotation skipped"),
        Kind("rle_invalid", FATAL, "RLE counts malformed", "annotation skipped"),
        Kind("exif_rotated", FIXED, "EXIF-rotated image", "rotation applied (the annotations refer to the displayed image)"),
        Kind("converted_to_rgb", FIXED, "grayscale/palette/CMYK/16-bit/alpha image", "converted to 8-bit RGB"),
        Kind("box_from_mask", FIXED, "annotation without bbox", "box computed from the mask"),
        Kind("polygon_self_intersecting", NOTE, "self-intersecting polygon", "kept as pycocotools rasterises it"),
        Kind("empty_category", NOTE, "category without any instance", "kept (--drop-empty-categories leaves it out)"),
        # Keypoints (COCO's person_keypoints format): the categories' names, skeleton,
        # flip pairs and sigmas, and each annotation's x, y, v triplets.
        Kind("keypoint_set_invalid", FATAL, "category keypoint names, skeleton, flip pairs or sigmas inconsistent", "the category's keypoints left out"),
        Kind("keypoints_invalid", FATAL, "keypoints are not 3 x K finite numbers", "annotation skipped"),
        Kind("keypoint_visibility_invalid", FATAL, "keypoint visibility not 0, 1 or 2", "annotation skipped"),
        Kind("keypoint_outside_image", FATAL, "labelled keypoint outside the image", "annotation skipped"),
        Kind("keypoints_without_names", FATAL, "keypoints of a category without keypoint names", "annotation skipped"),
        Kind("num_keypoints_mismatch", FIXED, "num_keypoints disagrees with the visibilities", "counted from the visibilities"),
        Kind("mask_from_box", FIXED, "keypoint annotation without segmentation", "its box is its mask (train with model.masks=false)"),
        # Found by the readers of other formats (mrcli.data.yolo, .labelme, .cityscapes).
        Kind("malformed_label_file", FATAL, "annotation file unreadable or not in the format", "file skipped"),
        Kind("malformed_shape", FATAL, "label line or shape that cannot be read", "annotation skipped"),
        Kind("coordinates_out_of_range", FATAL, "normalised coordinates outside [0, 1]", "annotation skipped"),
        Kind("label_without_image", FATAL, "label file without an image", "label file skipped"),
        Kind("missing_label_file", FATAL, "image without its annotation file", "image skipped"),
        Kind("shape_not_a_region", NOTE, "line or point shape (not a region)", "left out"),
    ]
}


# The kinds only the readers of other formats report (the COCO checker never does).
READER_KINDS = frozenset({"malformed_label_file", "malformed_shape", "coordinates_out_of_range",
                          "label_without_image", "missing_label_file", "shape_not_a_region"})


@dataclass(frozen=True)
class Problem:
    kind: str
    file: str  # the file the problem is in (JSON or image file)
    message: str  # what is wrong, with the ids
    image_id: int | None = None
    ann_id: int | None = None
    # Where in `file` (e.g. "line 3", "shapes[2]") for formats that are not
    # COCO JSON; then it replaces the ids (mrcli's own) in the one-line form.
    where: str = ""

    @property
    def severity(self) -> str:
        return KINDS[self.kind].severity

    def __str__(self) -> str:
        where = [self.where] if self.where else []
        if self.ann_id is not None and not self.where:
            where.append(f"annotation {self.ann_id}")
        if self.image_id is not None and not self.where:
            where.append(f"image {self.image_id}")
        loc = f" ({', '.join(where)})" if where else ""
        return f"{self.file}{loc}: {self.message} [{self.kind}]"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "severity": self.severity, "file": self.file, "where": self.where,
            "image_id": self.image_id, "ann_id": self.ann_id, "message": self.message,
        }


@dataclass
class CheckReport:
    problems: list[Problem] = field(default_factory=list)
    # Filled by check_coco: items dropped because of fatal problems.
    skipped_images: int = 0
    skipped_annotations: int = 0
    # The likely cause of many problems at once (e.g. a wrong --images), said
    # in place of suggesting --on-error skip, which would drop everything.
    hints: list[str] = field(default_factory=list)

    def add(self, kind: str, file: str, message: str, image_id=None, ann_id=None, where: str = "") -> None:
        assert kind in KINDS, kind
        self.problems.append(Problem(kind, str(file), message, image_id, ann_id, where))

    def extend(self, other: CheckReport) -> None:
        self.problems.extend(other.problems)
        self.skipped_images += other.skipped_images
        self.skipped_annotations += other.skipped_annotations
        self.hints.extend(other.hints)

    @property
    def fatal(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == FATAL]

    def counts(self) -> dict[str, int]:
        c = Counter(p.kind for p in self.problems)
        return {k: c[k] for k in KINDS if c[k]}

    def to_json(self) -> dict[str, Any]:
        return {
            "counts": self.counts(),
            "skipped_images": self.skipped_images,
            "skipped_annotations": self.skipped_annotations,
            "problems": [p.to_json() for p in self.problems],
        }


# --- categories ----------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def read_categories(raw: Any, json_name: str, report: CheckReport) -> list[dict[str, Any]]:
    """COCO categories -> the category map: dataset id, contiguous id (1..K in
    order of dataset id), name, supercategory; for keypoint categories also
    their keypoint names, skeleton, flip pairs and OKS sigmas
    (`_keypoint_fields`)."""
    if not isinstance(raw, list):
        raise UserError(f"{json_name}: 'categories' must be a list of {{id, name}} objects")
    seen: dict[int, dict] = {}
    for i, cat in enumerate(raw):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")) or not isinstance(cat.get("name"), str):
            report.add("malformed_category", json_name,
                       f"categories[{i}] = {_short(cat)} needs an integer 'id' and a string 'name'")
            continue
        if cat["id"] in seen:
            report.add("duplicate_category_id", json_name,
                       f"category id {cat['id']} ({cat['name']!r}) is defined again "
                       f"(first as {seen[cat['id']]['name']!r})")
            continue
        seen[cat["id"]] = cat
    cats = []
    shared: tuple[str, ...] | None = None
    for k, cid in enumerate(sorted(seen), start=1):
        c = seen[cid]
        cat = {"id": cid, "contiguous_id": k, "name": c["name"],
               "supercategory": str(c.get("supercategory", ""))}
        if c.get("keypoints"):  # an empty list, as some exports write for every category: none
            fields = _keypoint_fields(c, json_name, report)
            if fields is not None and shared is not None and tuple(fields["keypoints"]) != shared:
                report.add("keypoint_set_invalid", json_name,
                           f"category {cid} ({c['name']!r}) names other keypoints than the "
                           f"categories before it ({_short(list(shared), 60)}); one model predicts "
                           "one keypoint set: give every keypoint category the same names")  # fmt: skip
                fields = None
            if fields is not None:
                shared = tuple(fields["keypoints"])
                cat.update(fields)
        cats.append(cat)
    return cats


def _keypoint_fields(cat: dict[str, Any], json_name: str, report: CheckReport) -> dict[str, Any] | None:
    """A COCO category's keypoint fields, checked: `keypoints` (unique names),
    `skeleton` (1-based pairs), and mrcli's optional `flip_pairs` (1-based
    pairs; default from the names) and `keypoint_sigmas` (K positive numbers;
    default keypoint_sets.sigmas_rule). None (and a problem) where they are
    inconsistent."""
    where = f"category {cat['id']} ({cat['name']!r})"
    names = cat.get("keypoints")

    def bad(message: str) -> None:
        report.add("keypoint_set_invalid", json_name, f"{where}: {message}")

    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        bad(f"'keypoints' {_short(names)} is not a list of keypoint names")
        return None
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        bad(f"keypoint names repeat: {', '.join(dupes)}")
        return None
    k = len(names)

    def pairs(field_name: str) -> list[list[int]] | None | bool:
        """The 1-based pairs of a field (None: absent; False: bad, reported)."""
        value = cat.get(field_name)
        if value is None:
            return None
        if not isinstance(value, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(_is_int(v) and 1 <= v <= k for v in p) and p[0] != p[1]
            for p in value
        ):
            bad(f"'{field_name}' {_short(value)} must be pairs [i, j] of two different keypoints "
                f"numbered 1..{k} (COCO's skeleton numbering)")  # fmt: skip
            return False
        return [list(p) for p in value]

    skeleton, flip_pairs = pairs("skeleton"), pairs("flip_pairs")
    if skeleton is False or flip_pairs is False:
        return None
    if flip_pairs:
        used = [v for p in flip_pairs for v in p]
        if len(set(used)) != len(used):
            bad(f"'flip_pairs' {_short(flip_pairs)} uses a keypoint twice; each keypoint has at most one mirror")
            return None
    sigmas = cat.get("keypoint_sigmas")
    if sigmas is not None and (
        not isinstance(sigmas, list) or len(sigmas) != k
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                   for v in sigmas)
    ):  # fmt: skip
        bad(f"'keypoint_sigmas' {_short(sigmas)} must be {k} positive numbers, one per keypoint")
        return None
    completed, rule = keypoint_sets.complete(
        {"keypoints": list(names), "skeleton": skeleton or []},
        [float(v) for v in sigmas] if sigmas is not None else None, flip_pairs,
    )
    return {**completed, "keypoint_sigmas_from": rule}


def check_keypoints(raw: Any, k: int, h: int, w: int) -> tuple[list[tuple[str, str]], np.ndarray | None]:
    """One annotation's `keypoints` [x1, y1, v1, ...] for a set of k -> (problems
    [(kind, message)], [k, 3] float32 or None). Unlabelled points (v = 0) become
    (0, 0, 0); labelled ones must lie in the image (BOX_TOLERANCE)."""
    if (not isinstance(raw, list) or len(raw) != 3 * k
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in raw)):
        got = f"{len(raw)} numbers" if isinstance(raw, list) else _short(raw)
        return [("keypoints_invalid", f"keypoints must be {3 * k} finite numbers (x, y, v for each of "
                 f"the category's {k} keypoints), got {got}")], None  # fmt: skip
    kp = np.asarray(raw, np.float64).reshape(k, 3)
    bad_v = [i for i in range(k) if kp[i, 2] not in (0, 1, 2)]
    if bad_v:
        i = bad_v[0]
        return [("keypoint_visibility_invalid", f"keypoint {i + 1} has visibility {kp[i, 2]:g}; COCO's are "
                 "0 (not labelled), 1 (labelled, hidden) and 2 (visible)")], None  # fmt: skip
    t = BOX_TOLERANCE
    labelled = kp[:, 2] > 0
    outside = labelled & ((kp[:, 0] < -t) | (kp[:, 1] < -t) | (kp[:, 0] > w + t) | (kp[:, 1] > h + t))
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        return [("keypoint_outside_image", f"keypoint {i + 1} at ({kp[i, 0]:g}, {kp[i, 1]:g}) is outside "
                 f"the {w}x{h} image")], None  # fmt: skip
    kp[~labelled] = 0.0
    kp[:, 0] = np.clip(kp[:, 0], 0, w)
    kp[:, 1] = np.clip(kp[:, 1], 0, h)
    return [], kp.astype(np.float32)


def _short(v: Any, n: int = 80) -> str:
    s = json.dumps(v) if not isinstance(v, str) else repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


# --- geometry -------------------------------------------------------------------------


def polygon_self_intersects(coords: list[float]) -> bool:
    """True when two non-adjacent edges of the closed polygon cross properly."""
    pts = np.asarray(coords, np.float64).reshape(-1, 2)
    n = len(pts)
    if n < 4:
        return False
    a = pts
    b = np.roll(pts, -1, axis=0)

    def orient(p, q, r):  # sign of the cross product (q - p) x (r - p), broadcast
        return np.sign(
            (q[..., 0] - p[..., 0]) * (r[..., 1] - p[..., 1])
            - (q[..., 1] - p[..., 1]) * (r[..., 0] - p[..., 0])
        )

    A, B = a[:, None, :], b[:, None, :]
    C, D = a[None, :, :], b[None, :, :]
    o1, o2 = orient(A, B, C), orient(A, B, D)
    o3, o4 = orient(C, D, A), orient(C, D, B)
    cross = (o1 * o2 < 0) & (o3 * o4 < 0)
    i, j = np.triu_indices(n, k=2)
    keep = ~((i == 0) & (j == n - 1))  # first and last edges share a vertex
    return bool(cross[i[keep], j[keep]].any())


def _check_box(bbox: Any, h: int, w: int) -> tuple[str, str, np.ndarray | None]:
    """-> (problem kind or "", message, xyxy clipped box)."""
    if (
        not isinstance(bbox, (list, tuple))
        or len(bbox) != 4
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
    ):
        return "box_invalid", f"bbox {_short(bbox)} is not [x, y, width, height]", None
    x, y, bw, bh = (float(v) for v in bbox)
    if bw <= 0 or bh <= 0:
        return "box_zero_area", f"bbox {_short(bbox)} has zero area (width {bw:g}, height {bh:g})", None
    x2, y2 = x + bw, y + bh
    t = BOX_TOLERANCE
    if x < -t or y < -t or x2 > w + t or y2 > h + t:
        return (
            "box_outside_image",
            f"bbox {_short(bbox)} (xyxy [{x:g}, {y:g}, {x2:g}, {y2:g}]) extends outside the "
            f"{w}x{h} image",
            None,
        )
    box = np.array([min(max(x, 0), w), min(max(y, 0), h), min(max(x2, 0), w), min(max(y2, 0), h)],
                   np.float32)
    if box[2] <= box[0] or box[3] <= box[1]:
        return "box_zero_area", f"bbox {_short(bbox)} has zero area inside the {w}x{h} image", None
    return "", "", box


def _segmentation_to_rle(seg: Any, h: int, w: int) -> tuple[list[tuple[str, str]], bytes | None, bool]:
    """-> (problems [(kind, message)], compressed counts or None, self_intersecting)."""
    if seg is None or (isinstance(seg, (list, dict)) and len(seg) == 0):
        return [("segmentation_missing", "no segmentation (need polygons or RLE)")], None, False
    if isinstance(seg, list):
        problems = []
        polys = []
        for k, poly in enumerate(seg):
            part = f"polygon {k}" if len(seg) > 1 else "the polygon"
            if not isinstance(poly, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in poly
            ):
                problems.append(("polygon_too_few_points",
                                 f"{part} is not a list of numbers: {_short(poly)}"))
            elif len(poly) % 2 == 1:
                problems.append(("polygon_too_few_points",
                                 f"{part} has an odd number of coordinates ({len(poly)})"))
            elif len(poly) < 6:
                problems.append(("polygon_too_few_points",
                                 f"{part} has {len(poly) // 2} point(s); a polygon needs at least 3"))
            else:
                polys.append(poly)
        if problems:
            return problems, None, False
        intersecting = any(polygon_self_intersects(p) for p in polys)
        return [], masklib.polygon_to_rle(polys, h, w), intersecting
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if (not isinstance(size, (list, tuple)) or len(size) != 2
                or not all(_is_int(v) for v in size)):
            return [("rle_invalid", f"RLE 'size' {_short(size)} is not [height, width]")], None, False
        if list(size) != [h, w]:
            return [("rle_size_mismatch",
                     f"RLE size {list(size)} (height, width) disagrees with the image's [{h}, {w}]")], None, False
        if isinstance(counts, list):
            if not all(_is_int(v) and v >= 0 for v in counts):
                return [("rle_invalid", "uncompressed RLE counts must be non-negative integers")], None, False
            total = sum(counts)
            if total != h * w:
                return [("rle_invalid",
                         f"uncompressed RLE counts sum to {total}, not height*width = {h * w}")], None, False
            return [], masklib.uncompressed_to_rle(counts, h, w), False
        if isinstance(counts, (str, bytes)):
            try:
                runs = masklib.rle_counts_from_string(counts)
            except (ValueError, UnicodeEncodeError) as e:
                return [("rle_invalid", f"compressed RLE counts cannot be parsed ({e})")], None, False
            total = sum(runs)
            if any(r < 0 for r in runs) or total != h * w:
                return [("rle_invalid",
                         f"compressed RLE counts cover {total} pixels, not height*width = {h * w}")], None, False
            return [], counts.encode("ascii") if isinstance(counts, str) else bytes(counts), False
        return [("rle_invalid", f"RLE 'counts' {_short(counts)} is neither a list nor a string")], None, False
    return [("segmentation_missing", f"segmentation {_short(seg)} is neither polygons nor RLE")], None, False


# --- the split ------------------------------------------------------------------------


@dataclass(frozen=True)
class Origins:
    """Where the images and annotations of a COCO-style dict built from another
    format came from, so that problems name the original files."""

    # image id -> (file, where in it): the image file, or the annotation file
    # that names it ("a.json", "imagePath 'a.jpg'").
    images: Mapping[int, tuple[str, str]] = field(default_factory=dict)
    # annotation id -> (file, where in it): ("labels/a.txt", "line 3").
    annotations: Mapping[int, tuple[str, str]] = field(default_factory=dict)
    # image id -> the image's bytes, for images carried inside an annotation
    # file (labelme's imageData) rather than at images_dir / file_name.
    embedded: Mapping[int, Callable[[], bytes]] = field(default_factory=dict)
    # What gave the images' width/height, for a size that disagrees with the file.
    size_from: str = "the JSON"


@dataclass
class ConvertedSplit:
    """One split of another format read into a COCO-style dict (images,
    annotations; categories in `Converted`) for `check_coco`."""

    data: dict[str, Any]
    images_dir: Path  # file names in `data` are relative to it
    origins: Origins


@dataclass
class Converted:
    """A dataset in another format (YOLO, labelme, Cityscapes) as its reader
    gives it to `mrcli prepare`: COCO-style splits, the categories, and what
    the reader itself found wrong (with the images and annotations it left out)."""

    categories: list[dict[str, Any]]  # COCO categories: id, name, supercategory
    splits: dict[str, ConvertedSplit]
    report: CheckReport
    source: dict[str, Any]  # the dataset record's "source"


@dataclass
class CheckedSplit:
    examples: list[Example]  # the images kept (all of them when nothing is fatal)
    categories: list[dict[str, Any]]
    report: CheckReport
    num_images: int  # images in the JSON
    num_annotations: int


def load_json(path: Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: annotation file not found; check --annotations") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e}); is it a COCO annotation file?") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise UserError(
            f"{path}: not a COCO annotation file: expected a JSON object with an 'images' list "
            "(and 'annotations', 'categories')"
        )
    return data


def _missing_images_hint(images_dir: Path, missing: list[dict], total: int) -> str:
    """Why most image files are not found, where that can be told: file names
    that already start with the --images folder's own name, or a wrong folder."""
    example = missing[0]["file_name"]
    first = Path(example).parts[0] if Path(example).parts else ""
    if first == images_dir.name and (images_dir.parent / example).is_file():
        return (f"{len(missing)} of {total} image files are not found because the file names "
                f"already start with '{first}/' (e.g. {example}): pass --images {images_dir.parent}")
    return (f"{len(missing)} of {total} image files are not found under {images_dir} (e.g. "
            f"{images_dir / example}): check --images; the file names are relative to it")


def check_coco(
    annotations: Path | dict[str, Any],
    images_dir: Path,
    *,
    categories: list[dict[str, Any]] | None = None,
    json_name: str | None = None,
    workers: int | None = None,
    on_image: Callable[[], None] | None = None,
    origins: Origins | None = None,
) -> CheckedSplit:
    """Read and check one COCO-format split.

    `categories`: the category map to use (another split's); default: this
    file's. `on_image` is called once per image file inspected (progress).
    `origins`: for a dict built from another format, where each image and
    annotation came from (problems name those files) and the embedded images.
    Problems are all collected; the returned examples exclude every item with
    a fatal problem, so they are what `--on-error skip` writes.
    """
    images_dir = Path(images_dir)
    if isinstance(annotations, dict):
        data = annotations
        json_name = json_name or "annotations.json"
    else:
        data = load_json(Path(annotations))
        json_name = json_name or str(annotations)
    if not images_dir.is_dir():
        raise UserError(f"{images_dir}: images directory not found; check --images")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise UserError(
                f"{json_name}: no {key!r} list; a COCO file has 'images', 'annotations' and "
                "'categories'" + (" (write \"annotations\": [] for images without any)"
                                   if key == "annotations" else "")
            )
    report = CheckReport()
    own_cats = read_categories(data.get("categories", []), json_name, report)
    cats = categories if categories is not None else own_cats
    cat_to_contiguous = {c["id"]: c["contiguous_id"] for c in cats}
    kset = keypoint_sets.KeypointSet.of(cats)
    num_kp = kset.num_keypoints if kset is not None else 0
    kp_categories = set(kset.category_ids) if kset is not None else set()

    # Images: ids, file names, duplicates.
    raw_images = data["images"]
    id_counts = Counter(im.get("id") for im in raw_images if isinstance(im, dict) and _is_int(im.get("id")))
    images: list[dict[str, Any]] = []
    dup_reported = set()
    for i, im in enumerate(raw_images):
        if not isinstance(im, dict) or not _is_int(im.get("id")) or not isinstance(im.get("file_name"), str):
            report.add("malformed_image", json_name,
                       f"images[{i}] = {_short(im)} needs an integer 'id' and a string 'file_name'")
            continue
        if id_counts[im["id"]] > 1:
            if im["id"] not in dup_reported:
                names = [x.get("file_name") for x in raw_images
                         if isinstance(x, dict) and x.get("id") == im["id"]]
                report.add("duplicate_image_id", json_name,
                           f"image id {im['id']} is used by {id_counts[im['id']]} images: "
                           f"{', '.join(map(str, names))}", image_id=im["id"])
                dup_reported.add(im["id"])
            continue
        images.append(im)

    embedded = origins.embedded if origins is not None else {}

    def image_problem(kind: str, im: dict, message: str) -> None:
        if origins is not None and im["id"] in origins.images:
            file, where = origins.images[im["id"]]
            report.add(kind, file, message, image_id=im["id"], where=where)
        else:
            report.add(kind, str(images_dir / im["file_name"]), message, image_id=im["id"])

    def ann_problem(kind: str, message: str, im: dict, aid: int) -> None:
        if origins is not None and aid in origins.annotations:
            file, where = origins.annotations[aid]
            report.add(kind, file, message, im["id"], aid, where=where)
        else:
            report.add(kind, json_name, f"{message} in {images_dir / im['file_name']}", im["id"], aid)

    # Image files, in parallel.
    def inspect(im):
        if im["id"] in embedded:
            facts = imagelib.inspect_image_bytes(embedded[im["id"]]())
        else:
            facts = imagelib.inspect_image(images_dir / im["file_name"])
        if on_image is not None:
            on_image()
        return facts

    nworkers = workers or min(8, os.cpu_count() or 1)
    if nworkers > 1 and len(images) > 1:
        with ThreadPoolExecutor(nworkers) as pool:
            facts_list = list(pool.map(inspect, images))
    else:
        facts_list = [inspect(im) for im in images]

    good: dict[int, tuple[dict, imagelib.ImageFacts]] = {}
    # Images skipped for their file whose JSON gives a size: their annotations
    # are still checked (against that size), so that one run lists everything.
    json_sized: dict[int, tuple[int, int, dict]] = {}
    size_from = origins.size_from if origins is not None else "the JSON"
    missing = [im for im, facts in zip(images, facts_list)
               if facts.error_kind == "missing_image_file" and im["id"] not in embedded]  # fmt: skip
    if images and 2 * len(missing) > len(images):  # most of them: a folder mistake, not bad files
        report.hints.append(_missing_images_hint(images_dir, missing, len(images)))
    for im, facts in zip(images, facts_list):
        iid = im["id"]
        jh, jw = im.get("height"), im.get("width")
        if not facts.ok:
            image_problem(facts.error_kind, im, facts.error)
            if _is_int(jh) and _is_int(jw) and jh > 0 and jw > 0:
                json_sized[iid] = (jh, jw, im)
            continue
        if (jh is not None or jw is not None) and (jh, jw) != (facts.height, facts.width):
            msg = (f"{size_from} says {jw}x{jh} (width x height) but the file shows "
                   f"{facts.width}x{facts.height}")
            if facts.orientation in (5, 6, 7, 8) and (jh, jw) == (facts.stored_height, facts.stored_width):
                msg += (f" after its EXIF rotation; {size_from} has the stored (un-rotated) size, "
                        "but the annotations must refer to the displayed image")
            image_problem("image_size_mismatch", im, msg)
            continue
        if facts.orientation not in (0, 1):
            image_problem("exif_rotated", im,
                          f"EXIF orientation {facts.orientation}: stored {facts.stored_width}x"
                          f"{facts.stored_height}, displayed {facts.width}x{facts.height}; rotation applied")
        if facts.mode != "RGB":
            image_problem("converted_to_rgb", im, f"{facts.format} image in mode {facts.mode}; "
                          "converted to 8-bit RGB")
        good[iid] = (im, facts)
    num_bad_images = len(raw_images) - len(good)

    # Annotations.
    raw_anns = data.get("annotations", [])
    if not isinstance(raw_anns, list):
        raise UserError(f"{json_name}: 'annotations' must be a list")
    valid_ids = {c["id"] for c in cats}
    all_image_ids = {im.get("id") for im in raw_images if isinstance(im, dict)}
    per_image: dict[int, list[tuple]] = {iid: [] for iid in good}
    seen_ann: set[int] = set()
    skipped_anns = 0
    for i, ann in enumerate(raw_anns):
        if (not isinstance(ann, dict) or not _is_int(ann.get("id")) or not _is_int(ann.get("image_id"))
                or not _is_int(ann.get("category_id"))):
            report.add("malformed_annotation", json_name,
                       f"annotations[{i}] = {_short(ann)} needs integer 'id', 'image_id' and 'category_id'")
            skipped_anns += 1
            continue
        aid, iid = ann["id"], ann["image_id"]
        if aid in seen_ann:
            report.add("duplicate_annotation_id", json_name,
                       f"annotation id {aid} is used again (annotations[{i}])", iid, aid)
            skipped_anns += 1
            continue
        seen_ann.add(aid)
        if iid not in all_image_ids:
            report.add("missing_image_ref", json_name,
                       f"image_id {iid} is not among the images", iid, aid)
            skipped_anns += 1
            continue
        if iid in good:
            im, facts = good[iid]
            h, w = facts.height, facts.width
        elif iid in json_sized:  # the image is skipped; still check the annotation
            h, w, im = json_sized[iid]
        else:  # the image is skipped and its size unknown (reported above)
            skipped_anns += 1
            continue
        fatal = iid not in good
        if ann["category_id"] not in valid_ids:
            ann_problem("unknown_category", f"category_id {ann['category_id']} is not among the "
                        f"categories ({_short(sorted(valid_ids), 60)})", im, aid)
            fatal = True
        problems, counts, intersecting = _segmentation_to_rle(ann.get("segmentation"), h, w)
        if ([k for k, _ in problems] == ["segmentation_missing"] and ann["category_id"] in kp_categories
                and "bbox" in ann and not _check_box(ann.get("bbox"), h, w)[0]):
            # Keypoint files often come without masks (pose annotation tools): the
            # instance is its box, for box + keypoint models.
            x1, y1, x2, y2 = _check_box(ann["bbox"], h, w)[2].tolist()
            problems, counts = [], masklib.polygon_to_rle([[x1, y1, x2, y1, x2, y2, x1, y2]], h, w)
            ann_problem("mask_from_box", "no segmentation; its box is its mask (train keypoint models "
                        "with model.masks=false)", im, aid)  # fmt: skip
        for kind, msg in problems:
            ann_problem(kind, msg, im, aid)
            fatal = True
        if "bbox" not in ann and counts is not None:
            box = masklib.tight_box(counts, h, w)
            if box[2] <= box[0] or box[3] <= box[1]:
                ann_problem("box_zero_area", "no bbox and an empty mask", im, aid)
                fatal = True
            else:
                ann_problem("box_from_mask", f"no bbox; computed {box.tolist()} from the mask", im, aid)
        elif "bbox" in ann:
            kind, msg, box = _check_box(ann.get("bbox"), h, w)
            if kind:
                ann_problem(kind, msg, im, aid)
                fatal = True
        else:
            box = None
        keypoints = np.zeros((num_kp, 3), np.float32)
        if ann.get("keypoints") and ann["category_id"] in valid_ids:  # [] is no keypoints
            if ann["category_id"] not in kp_categories:
                ann_problem("keypoints_without_names", f"keypoints given, but category "
                            f"{ann['category_id']} names no keypoints (its 'keypoints' list)", im, aid)  # fmt: skip
                fatal = True
            else:
                kp_problems, kp = check_keypoints(ann["keypoints"], num_kp, h, w)
                for kind, msg in kp_problems:
                    ann_problem(kind, msg, im, aid)
                    fatal = True
                if kp is not None:
                    keypoints = kp
                    labelled = int((kp[:, 2] > 0).sum())
                    n_given = ann.get("num_keypoints")
                    if n_given is not None and n_given != labelled and not fatal:
                        ann_problem("num_keypoints_mismatch", f"num_keypoints is {_short(n_given)} but "
                                    f"{labelled} keypoints are labelled (v > 0); using {labelled}", im, aid)  # fmt: skip
        if fatal:
            skipped_anns += 1
            continue
        if intersecting:
            ann_problem("polygon_self_intersecting",
                        "a polygon crosses itself; kept as rasterised by pycocotools", im, aid)
        area = ann.get("area")
        if not isinstance(area, (int, float)) or isinstance(area, bool) or not math.isfinite(area):
            area = masklib.area(counts, h, w)
        crowd = bool(ann.get("iscrowd", 0))
        per_image[iid].append((aid, box, cat_to_contiguous[ann["category_id"]], crowd, float(area), counts,
                               keypoints))  # fmt: skip
    report.skipped_annotations = skipped_anns
    report.skipped_images = num_bad_images

    examples = []
    for iid, (im, facts) in good.items():
        anns = per_image[iid]
        path = images_dir / im["file_name"]
        load = _Loader(embedded[iid], facts) if iid in embedded else _Loader(path, facts)
        examples.append(
            Example(
                image_id=iid,
                file_name=im["file_name"],
                height=facts.height,
                width=facts.width,
                load=load,
                ann_ids=np.array([a[0] for a in anns], np.int64),
                boxes=np.array([a[1] for a in anns], np.float32).reshape(-1, 4),
                classes=np.array([a[2] for a in anns], np.int32),
                crowd=np.array([a[3] for a in anns], bool),
                areas=np.array([a[4] for a in anns], np.float32),
                rles=[a[5] for a in anns],
                keypoints=(np.array([a[6] for a in anns], np.float32).reshape(-1, num_kp, 3)
                           if kset is not None else None),
                image_sha256=facts.sha256,
            )
        )
    return CheckedSplit(examples, cats, report, len(raw_images), len(raw_anns))


class _Loader:
    """Reads an image file (or an embedded image) and gives the bytes to store
    (converted if needed)."""

    def __init__(self, source: Path | Callable[[], bytes], facts: imagelib.ImageFacts):
        self.source = source
        self.facts = facts

    def __call__(self) -> bytes:
        data = self.source.read_bytes() if isinstance(self.source, Path) else self.source()
        return imagelib.to_stored_bytes(data, self.facts)
