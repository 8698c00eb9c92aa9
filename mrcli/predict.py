"""`mrcli predict`: image files -> instance label maps, keypoints, overlays, COCO results.

    result = run("photos/", out="pred/", checkpoint="imported/", score=0.5)

INPUT is a folder (searched recursively; hidden files and folders and the
output folder are skipped), one image file, or a glob (`photos/**/*.jpg`);
JPEG, PNG, BMP, WebP and TIFF files are read, anything else is ignored. Images are
decoded upright (EXIF orientation) and converted to 8-bit RGB (grayscale,
palette, RGBA, CMYK, 16-bit: mrcli.data.images.upright_rgb). A file that
cannot be read or decoded is reported (file + reason) and skipped.

OUT mirrors the input tree. REL is an image's path below the input folder (or
the glob's fixed prefix; a single file's name), STEM is REL without its
extension (with it, e.g. `a.jpg`, where two inputs of one folder share a stem):

    OUT/masks/STEM.png      instance label map, the original image's size:
                            0 background, 1..n instances, best score first
                            (uint8; 16-bit PNG when n > 255)
    OUT/masks/STEM.json     side file: {"file_name": REL, "image_id", "height",
                            "width", "label_map": "STEM.png" (its name, or null),
                            "keypoint_names" (keypoint models), "instances":
                            [{"label": 1..n, "class", "class_id" (the
                            dataset's category id), "score", "box_xyxy"
                            (original pixels), "area" (pixels in the label
                            map), "keypoints": [[x, y, score], ...] (original
                            pixels, one per keypoint name; classes with
                            keypoints)}]}
    OUT/overlays/STEM.png   masks in colour, boxes, class names and scores,
                            keypoints joined by their skeleton
    OUT/detections.json     COCO results of all images (RLE masks, keypoints
                            [x1, y1, score1, ...], dataset category ids, bbox
                            xywh), written as it goes
    OUT/images.json         [{"id", "file_name": REL, "height", "width"}]: the
                            image ids of detections.json (an image's id is
                            its position among the input files, 1, 2, ...;
                            an unreadable file's id is left unused)

`formats`: "png" the label maps, "json" the side files and the two run files,
"overlay" the overlays. Nothing is overwritten unless `overwrite`: an
existing output is a UserError naming it, raised before any work. Every file
is written atomically (temp + rename); the run files appear when complete.

With several processes (`distributed`, or a cluster that is detected: see
mrcli.parallel.maybe_initialize_distributed) process p of P predicts inputs
p, p + P, ... on its own devices into the same OUT (a folder every host
sees); each writes its part of the two run files, and process 0 merges them.

Instances are the detections scoring above `score`. Their masks (pasted into
the original image and thresholded at 0.5, as `mrcli eval` does) are made
disjoint for the label map: a pixel covered by several instances belongs to
the best-scoring one. The side file, the overlay and detections.json describe
exactly these disjoint masks, so a label map re-encodes to the RLEs of
detections.json; an instance left without pixels is dropped. (`mrcli eval`
keeps the overlapping masks, as COCO AP expects.)

Batches have a fixed shape: images of a batch share a bucket (the input
pipeline's buckets, resize rule and normalisation: pipeline.image_input), the
last batch of each bucket is padded, each bucket compiles once. While the
device runs batch k, the host writes batch k-1's outputs and decodes the next
images; memory holds at most a batch per bucket, whatever the number of images.

With `tile` (--tile, --tile-overlap), every image is predicted in
overlapping tile x tile windows at its own scale (no resize, as a model
trained on data.train_crop sees it; an image no larger than the tile is one
window; a window smaller than the tile is zero padded), batched
through one (tile, tile) bucket, and the windows' detections merged
(mrcli.tiling: the merge rule); the tile and the overlap are rounded up to
multiples of data.size_divisor so every window's anchor grid is the image's.
The outputs have the same format as without it; a tiled image's
masks stay box crops (no [n, h, w] stack): its COCO RLEs are encoded from the
crops and its overlay drawn from the label map. A tiled image keeps every
merged instance (not capped at the model's detections_per_image).

Dimension key: B batch, H/W bucket (padded input) size, D detections,
M mask side, n instances of one image, h/w original image size, t tile side.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Sequence

import jax
import numpy as np

from mrcli import coco, inference, parallel, tiling
from mrcli.data.inputs import (  # noqa: F401 - MARKER and read_image are part of predict's API
    MARKER, MASKS_DIR, OVERLAYS_DIR, InputImage, UnreadableImage, find_images, read_image,
)  # fmt: skip
from mrcli.data.show import PALETTE, overlay, write_png
from mrcli.errors import UserError
from mrcli.files import write_bytes_atomic
from mrcli.inference import ImageDetections, Predictor
from mrcli.keypoint_sets import KeypointSet
from mrcli.progress import Report, for_process
from mrcli.config import DEFAULT_SCORE
from mrcli.runs import TrainedModel, load_trained, with_sets

FORMATS = ("png", "json", "overlay")
RESULTS_FILE = "detections.json"
IMAGES_FILE = "images.json"


# --- outputs ------------------------------------------------------------------------------


def output_stems(images: Sequence[InputImage]) -> list[PurePosixPath]:
    """REL without its extension per image; with it where two images of a
    folder would share a stem (case-insensitively: `a.jpg` and `A.png`)."""
    def key(p: PurePosixPath) -> str:
        return p.as_posix().lower()

    plain = [i.rel.with_suffix("") for i in images]
    counts: dict[str, int] = {}
    for p in plain:
        counts[key(p)] = counts.get(key(p), 0) + 1
    stems = [p if counts[key(p)] == 1 else i.rel for p, i in zip(plain, images)]
    seen: dict[str, InputImage] = {}
    for stem, image in zip(stems, images):
        other = seen.setdefault(key(stem), image)
        if other is not image:
            raise UserError(f"{other.path} and {image.path} would write the same outputs "
                            f"({stem}.*); rename one of them")  # fmt: skip
    return stems


@dataclass(frozen=True)
class Outputs:
    """Where one image's outputs go (None: not asked for)."""

    label_map: Path | None
    side: Path | None
    overlay: Path | None

    def paths(self) -> list[Path]:
        return [p for p in (self.label_map, self.side, self.overlay) if p is not None]


def output_paths(out: Path, stem: PurePosixPath, formats: Sequence[str]) -> Outputs:
    return Outputs(
        label_map=out / MASKS_DIR / f"{stem}.png" if "png" in formats else None,
        side=out / MASKS_DIR / f"{stem}.json" if "json" in formats else None,
        overlay=out / OVERLAYS_DIR / f"{stem}.png" if "overlay" in formats else None,
    )


def parse_formats(text: str | Sequence[str] | None, masks: bool = True) -> tuple[str, ...]:
    """"png,json,overlay" -> ("png", "json", "overlay"); None: all that the model can make."""
    if text is None:
        return FORMATS if masks else ("json", "overlay")
    items = text.split(",") if isinstance(text, str) else list(text)
    formats = tuple(dict.fromkeys(s.strip().lower() for s in items if s.strip()))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UserError(f"--format {','.join(items)}: unknown format {bad[0] if bad else '(none)'!r}; "
                        f"use a comma-separated list of {', '.join(FORMATS)}")  # fmt: skip
    if "png" in formats and not masks:
        raise UserError("--format png: this model has no mask head (model.masks is false), so "
                        "there are no label maps; use --format json,overlay")  # fmt: skip
    return formats


# --- one image's instances -----------------------------------------------------------------


def label_map(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """masks [D, h, w] bool, best first -> (labels [h, w], kept [n] int).

    A pixel gets the label of the first (best) mask covering it; masks left
    without pixels are dropped and the rest numbered 1..n in order, so that
    labels == k is the mask of detection kept[k - 1]. uint8 where n <= 255,
    else uint16."""
    d, h, w = masks.shape
    if d > 65535:
        raise ValueError(f"label_map: {d} masks do not fit a 16-bit label map")
    owner = np.zeros((h, w), np.uint16 if d > 255 else np.uint8)
    for k in range(d - 1, -1, -1):  # the best mask is painted last, so it wins
        owner[masks[k]] = k + 1
    counts = np.bincount(owner.ravel(), minlength=d + 1)[1:]  # [D] pixels each owns
    kept = np.flatnonzero(counts > 0)
    n = len(kept)
    lut = np.zeros(d + 1, np.uint16 if n > 255 else np.uint8)
    lut[kept + 1] = np.arange(1, n + 1)
    return lut[owner], kept


@dataclass(frozen=True)
class Instances:
    """One image's instances in its original pixels, best first."""

    boxes: np.ndarray  # [n, 4] float32 xyxy
    scores: np.ndarray  # [n] float32
    classes: np.ndarray  # [n] int32, contiguous 1..K
    labels: np.ndarray | None  # [h, w] uint8/uint16 label map (None: a box-only model)
    height: int
    width: int
    keypoints: np.ndarray | None = None  # [n, K, 3] float32 x, y, score (None: no keypoint head)

    def masks(self) -> np.ndarray | None:
        """[n, h, w] bool, the label map's instances (None: a box-only model)."""
        if self.labels is None:
            return None
        ids = np.arange(1, len(self.scores) + 1, dtype=self.labels.dtype)  # [n]
        return self.labels[None] == ids[:, None, None]


def image_instances(d: ImageDetections, categories: "Categories") -> Instances:
    """One image's detections (original pixels, masks pasted) -> its instances:
    classes the category map names, best first, masks made disjoint."""
    named = np.flatnonzero(coco.named_classes(categories.dataset_ids, d.classes))
    order = named[np.argsort(-d.scores[named], kind="stable")]
    keep, labels = order, None
    if d.masks is not None:
        labels, kept = label_map(d.masks[order])
        keep = order[kept]
    keypoints = d.keypoints[keep] if d.keypoints is not None else None
    return Instances(d.boxes[keep], d.scores[keep], d.classes[keep], labels, d.height, d.width, keypoints)


def tiled_instances(d: tiling.Detections, categories: "Categories"
                    ) -> tuple[Instances, tiling.CroppedMasks | None]:  # fmt: skip
    """image_instances for a tiled image (compact masks): its instances and
    their disjoint masks as crops (None: a box-only model)."""
    named = np.flatnonzero(coco.named_classes(categories.dataset_ids, d.classes))
    order = named[np.argsort(-d.scores[named], kind="stable")]
    keep, labels, crops = order, None, None
    if d.masks is not None:
        labels, kept = tiling.label_map(d.masks.take(order))
        keep = order[kept]
        crops = tiling.label_crops(labels, d.masks.boxes[keep])
    keypoints = d.keypoints[keep] if d.keypoints is not None else None
    inst = Instances(d.boxes[keep], d.scores[keep], d.classes[keep], labels, d.height, d.width, keypoints)
    return inst, crops


def side_record(inst: Instances, file_name: str, image_id: int, label_map_name: str | None,
                categories: "Categories") -> dict[str, Any]:
    """The JSON side file of one image (see the module docstring)."""
    areas = (np.bincount(inst.labels.ravel(), minlength=len(inst.scores) + 1)[1:]
             if inst.labels is not None else None)  # fmt: skip
    instances = []
    for k in range(len(inst.scores)):
        c = int(inst.classes[k])
        item = {
            "label": k + 1,
            "class": categories.names[c],
            "class_id": categories.dataset_ids[c],
            "score": round(float(inst.scores[k]), 5),
            "box_xyxy": [round(float(v), 3) for v in inst.boxes[k]],
        }
        if areas is not None:
            item["area"] = int(areas[k])
        if inst.keypoints is not None and c in categories.keypoint_classes:
            item["keypoints"] = [[round(float(v), 3) for v in p] for p in inst.keypoints[k]]
        instances.append(item)
    head = {"file_name": file_name, "image_id": image_id, "height": inst.height, "width": inst.width,
            "label_map": label_map_name}  # fmt: skip
    if inst.keypoints is not None and categories.keypoints is not None:
        head["keypoint_names"] = list(categories.keypoints.names)
    return {**head, "instances": instances}


@dataclass(frozen=True)
class Categories:
    """A checkpoint's category map, indexed by contiguous id (0 = background), and
    its keypoint set (names, skeleton) with the classes that have it."""

    dataset_ids: list[int]
    names: list[str]
    keypoints: KeypointSet | None = None
    keypoint_classes: frozenset[int] = frozenset()  # contiguous ids

    @classmethod
    def from_map(cls, categories: list[dict[str, Any]]) -> Categories:
        ids = coco.dataset_id_table(categories)
        names = ["background"] * len(ids)
        for c in categories:
            names[int(c["contiguous_id"])] = str(c["name"])
        kset = KeypointSet.of(categories)
        with_kp = frozenset(int(c["contiguous_id"]) for c in categories if c.get("keypoints"))
        return cls(ids, names, kset, with_kp)


# --- the run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PredictResult:
    out: Path
    num_inputs: int  # image files found
    num_images: int  # predicted (num_inputs - skipped)
    skipped: list[tuple[str, str]]  # (file, reason) of each unreadable file
    num_instances: int
    formats: tuple[str, ...]
    results_path: Path | None  # OUT/detections.json (with "json")
    images_path: Path | None  # OUT/images.json (with "json")
    seconds: float  # from the first image read to the last output written
    compile_seconds: float  # spent compiling (once per bucket)
    batch_size: int
    buckets: list[tuple[int, int]] = field(default_factory=list)  # compiled buckets

    @property
    def images_per_s(self) -> float:
        return self.num_images / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_images_per_s(self) -> float:
        """Images per second without the compilation time."""
        t = self.seconds - self.compile_seconds
        return self.num_images / t if t > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "out": str(self.out), "num_inputs": self.num_inputs, "num_images": self.num_images,
            "num_skipped": len(self.skipped),
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
            "num_instances": self.num_instances, "formats": list(self.formats),
            "results": str(self.results_path) if self.results_path else None,
            "images": str(self.images_path) if self.images_path else None,
            "seconds": round(self.seconds, 3), "compile_seconds": round(self.compile_seconds, 3),
            "images_per_s": round(self.images_per_s, 3),
            "steady_images_per_s": round(self.steady_images_per_s, 3),
            "batch_size": self.batch_size, "buckets": [list(b) for b in self.buckets],
        }  # fmt: skip


def write_outputs(
    o: Outputs,
    inst: Instances,
    rgb: np.ndarray,  # [h, w, 3] uint8, the image as read
    rel: str,
    image_id: int,
    categories: Categories,
    writers: tuple[Any, Any] | None,  # ResultsWriters of detections.json and images.json
    crops: tiling.CroppedMasks | None = None,  # the instances' masks as crops (tiled images)
) -> None:
    """One image's files (each atomically) and its entries in the run's files.
    With `crops` no [n, h, w] masks are made: the RLEs come from the crops and
    the overlay's masks from the label map (the same pictures and files)."""
    masks = inst.masks() if crops is None else None  # [n, h, w] bool, or None
    for p in o.paths():
        p.parent.mkdir(parents=True, exist_ok=True)
    if o.label_map is not None:
        write_png(o.label_map, inst.labels)
    if o.side is not None:
        name = o.label_map.name if o.label_map is not None else None
        _write_side(o.side, side_record(inst, rel, image_id, name, categories))
    if o.overlay is not None:
        names = [categories.names[int(c)] for c in inst.classes]
        base = rgb if crops is None else _blend_labels(rgb, inst.labels)
        drawn = overlay(base, inst.boxes, masks if masks is not None else [], names,
                        scores=inst.scores, **_drawn_keypoints(inst, categories))  # fmt: skip
        write_png(o.overlay, drawn)
    if writers is not None:
        results, images = writers
        valid = np.ones(len(inst.scores), bool)
        records = coco.to_coco_results(image_id, inst.boxes, inst.scores, inst.classes, valid,
                                       categories.dataset_ids, masks, inst.keypoints)  # fmt: skip
        if crops is not None:  # every instance is named (image_instances), so records align
            assert len(records) == len(crops)
            for r, rle in zip(records, crops.rles()):
                r["segmentation"] = rle
        results.write(records)
        images.write([{"id": image_id, "file_name": rel, "height": inst.height, "width": inst.width}])


def _blend_labels(rgb: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """show.blend of a label map's (disjoint) masks, label k in PALETTE[(k - 1) % 20]:
    the same pixels as blending its masks one by one, without them."""
    out = rgb.copy()
    sel = labels > 0
    colours = PALETTE[(labels[sel].astype(np.int64) - 1) % len(PALETTE)].astype(np.float32)
    mixed = (1 - alpha) * rgb[sel].astype(np.float32) + alpha * colours
    out[sel] = np.clip(np.round(mixed), 0, 255).astype(np.uint8)
    return out


def _drawn_keypoints(inst: Instances, categories: Categories) -> dict[str, Any]:
    """overlay()'s keypoints: every predicted keypoint of the classes with a
    keypoint set (as torchvision's draw_keypoints: no threshold), with its skeleton."""
    if inst.keypoints is None or categories.keypoints is None:
        return {}
    shown = np.isin(inst.classes, list(categories.keypoint_classes))
    kp = inst.keypoints.copy()
    kp[..., 2] = shown[:, None]  # overlay draws points with a third value > 0
    return {"keypoints": kp, "skeleton": categories.keypoints.skeleton}


def _write_side(path: Path, record: dict[str, Any]) -> None:
    """A side file, atomically: its header on the first line, then one line per instance."""
    head = json.dumps({k: v for k, v in record.items() if k != "instances"})[:-1]
    lines = [json.dumps(i) for i in record["instances"]]
    body = "\n  " + ",\n  ".join(lines) + "\n" if lines else ""
    write_bytes_atomic(path, f'{head}, "instances": [{body}]}}\n'.encode())


def run(
    input: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    workdir: str | os.PathLike[str] | None = None,
    checkpoint: str | None = None,
    score: float = DEFAULT_SCORE,
    formats: str | Sequence[str] | None = None,
    batch_size: int = 8,
    overwrite: bool = False,
    weights: str | None = None,
    sets: Sequence[str] = (),
    report: Report | None = None,
    trained: TrainedModel | None = None,
    distributed: bool = False,
    tile: int | None = None,
    tile_overlap: int = 128,
) -> PredictResult:
    """`mrcli predict`: every image of `input` through a trained model (a
    run's checkpoint, a checkpoint directory, or `weights` by name or file)
    into `out` (module docstring). `trained` (a mrcli.runs.TrainedModel)
    replaces workdir/checkpoint/weights. On several processes the counts
    are those of all; `skipped` lists this process's unreadable files.
    `tile`: every image in overlapping windows at its own scale (module
    docstring, mrcli.tiling)."""
    parallel.maybe_initialize_distributed(distributed)
    report = for_process(report, jax.process_index())
    if not 0.0 <= score < 1.0:
        raise UserError(f"--score {score}: must be in [0, 1) (detections scoring above it are kept)")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")
    if formats is not None:
        parse_formats(formats)  # a typo fails before the model loads
    if tile is not None:
        tiling.round_tile(tile, tile_overlap, 1)  # a bad --tile fails before the model loads
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder; choose another --out")
    images = find_images(input, exclude=out)
    if trained is None:
        trained = load_trained(workdir, checkpoint, weights, report=report)
    trained = with_sets(trained, sets)
    if trained.categories is None:
        raise UserError(f"{trained.origin} carries no category map, so its classes have no names; "
                        "predict with a trained or fully imported model")  # fmt: skip
    formats = parse_formats(formats, masks=trained.config.model.masks)
    stems = output_stems(images)
    planned = [output_paths(out, s, formats) for s in stems]
    run_files = [out / RESULTS_FILE, out / IMAGES_FILE] if "json" in formats else []
    if not overwrite:
        existing = [p for p in run_files + [p for o in planned for p in o.paths()] if p.exists()]
        if existing:
            more = f" (and {len(existing) - 1} more of its outputs)" if len(existing) > 1 else ""
            raise UserError(f"{existing[0]} already exists{more}; pass --overwrite to replace "
                            "them, or choose another --out")  # fmt: skip
    # Every process has checked before any writes (else one would find the
    # others' new outputs and refuse them).
    parallel.barrier("predict: outputs checked")
    categories = Categories.from_map(trained.categories)
    # Detections scoring above --score: the model's own threshold, so fewer
    # candidates enter its NMS (the same detections above --score either way).
    model = inference.with_score_threshold(trained.model, score)
    predictor = Predictor(model, trained.state, trained.config, batch_size=batch_size,
                          report=report)  # fmt: skip
    detect_tiles = None
    if tile is not None:
        tile, tile_overlap = tiling.round_tile(tile, tile_overlap, trained.config.data.size_divisor)
        detect_tiles = inference.tile_detector(predictor, tile)

    skipped: list[tuple[str, str]] = []
    counts = {"done": 0, "instances": 0, "images": 0}
    start = time.perf_counter()

    # Several processes (jax.distributed): process p predicts inputs p, p + P,
    # ... on its own devices; ids are input positions, so the same everywhere.
    p, num_parts = jax.process_index(), jax.process_count()
    mine = range(p, len(images), num_parts)
    report.task("predict", total=len(mine))

    def decoded() -> Iterator[tuple[tuple[int, InputImage, Outputs, np.ndarray], np.ndarray]]:
        """((image id, input, outputs, rgb), rgb) per readable image of this
        process, in input order; skips the rest."""
        for k in mine:
            image, outputs = images[k], planned[k]
            try:
                rgb = read_image(image.path)
            except UnreadableImage as e:
                skipped.append((str(image.path), str(e)))
                report.say(f"skipped {image.path}: {e}", "warning")
                counts["done"] += 1
                report.advance(counts["done"])
                continue
            counts["images"] += 1
            if detect_tiles is not None:
                dets = tiling.predict_tiled(rgb, detect_tiles, tile, tile_overlap,
                                            align=trained.config.data.size_divisor, image_id=k + 1)  # fmt: skip
                inst, crops = tiled_instances(dets, categories)
                write_outputs(outputs, inst, rgb, image.rel.as_posix(), k + 1, categories, writers, crops)
                counts["instances"] += len(inst.scores)
                counts["done"] += 1
                report.advance(counts["done"])
                continue
            yield (k + 1, image, outputs, rgb), rgb

    run_parts = [inference.part_path(f, p, num_parts) for f in run_files]
    with ExitStack() as stack:
        out.mkdir(parents=True, exist_ok=True)
        if p == 0:
            (out / MARKER).write_text(json.dumps({"format": "mrcli-predict/1"}) + "\n")
        writers = None
        if "json" in formats:
            writers = tuple(stack.enter_context(coco.ResultsWriter(f)) for f in run_parts)
        for (image_id, image, outputs, rgb), dets in predictor.over_images(decoded(), lambda i: i[0]):
            inst = image_instances(dets, categories)
            write_outputs(outputs, inst, rgb, image.rel.as_posix(), image_id, categories, writers)
            counts["instances"] += len(inst.scores)
            counts["done"] += 1
            report.advance(counts["done"])
    report.end()
    if num_parts > 1:
        for f in run_files:
            inference.merge_results([inference.part_path(f, k, num_parts) for k in range(num_parts)], f,
                                    barrier=f"predict {f.name}")  # fmt: skip
        num_images, num_instances = parallel.gather_ints([counts["images"], counts["instances"]]).sum(0)
        counts.update(images=int(num_images), instances=int(num_instances))
    seconds = time.perf_counter() - start
    return PredictResult(
        out=out, num_inputs=len(images), num_images=counts["images"], skipped=skipped,
        num_instances=counts["instances"], formats=formats,
        results_path=out / RESULTS_FILE if "json" in formats else None,
        images_path=out / IMAGES_FILE if "json" in formats else None,
        seconds=seconds, compile_seconds=sum(predictor.compile_seconds.values()),
        batch_size=predictor.batch_size, buckets=sorted(predictor.compile_seconds),
    )  # fmt: skip
