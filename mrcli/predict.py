"""`mrcli predict`: image files -> instance label maps, overlays, COCO results.

    result = run("photos/", out="pred/", checkpoint="imported/", score=0.5)

INPUT is a folder (searched recursively; hidden files and folders and the
output folder are skipped), one image file, or a glob (`photos/**/*.jpg`);
JPEG, PNG, BMP and WebP files are read, anything else is ignored. Images are
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
                            "instances": [{"label": 1..n, "class", "class_id"
                            (the dataset's category id), "score", "box_xyxy"
                            (original pixels), "area" (pixels in the label map)}]}
    OUT/overlays/STEM.png   masks in colour, boxes, class names and scores
    OUT/detections.json     COCO results of all images (RLE masks, dataset
                            category ids, bbox xywh), written as it goes
    OUT/images.json         [{"id", "file_name": REL, "height", "width"}]: the
                            image ids of detections.json (ids 1, 2, ... in
                            input order, unreadable files not counted)

`formats`: "png" the label maps, "json" the side files and the two run files,
"overlay" the overlays. Nothing is overwritten unless `overwrite`: an
existing output is a UserError naming it, raised before any work. Every file
is written atomically (temp + rename); the run files appear when complete.

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

Dimension key: B batch, H/W bucket (padded input) size, D detections,
M mask side, n instances of one image, h/w original image size.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from mrcli.errors import UserError
from mrcli.files import write_bytes_atomic

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
FORMATS = ("png", "json", "overlay")
RESULTS_FILE = "detections.json"
IMAGES_FILE = "images.json"
MASKS_DIR = "masks"
OVERLAYS_DIR = "overlays"
# Marks a predict output folder, so that a later run over a tree holding it skips it.
MARKER = ".mrcli-predict"

# report(kind, data): "start" {total, batch_size, devices}, "skipped" {path, reason},
# "compiled" {bucket, seconds}, "progress" {done} (inputs handled, skipped ones included).
Report = Callable[[str, dict[str, Any]], None]


# --- inputs and outputs -----------------------------------------------------------------


@dataclass(frozen=True)
class InputImage:
    path: Path  # the file as found
    rel: PurePosixPath  # its path below the input root, mirrored under OUT


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _skipped_dir(d: Path, out: Path | None) -> bool:
    """Hidden folders, the output folder and (earlier) predict outputs are not
    searched; with OUT = INPUT, that is OUT/masks and OUT/overlays."""
    if _hidden(d.name) or (d / MARKER).is_file() or (out is not None and d.resolve() == out):
        return True
    return d.name in (MASKS_DIR, OVERLAYS_DIR) and (
        (d.parent / MARKER).is_file() or (out is not None and d.parent.resolve() == out)
    )


def find_images(input: str | os.PathLike[str],
                exclude: str | os.PathLike[str] | None = None) -> list[InputImage]:
    """The image files of a folder (recursive), a file, or a glob, sorted by
    REL. Non-image and hidden files are ignored; hidden folders, `exclude`
    (the output folder) and folders holding a predict output (MARKER) are not
    searched. A name that finds no image is a UserError."""
    import glob as globlib

    text = os.fspath(input)
    path = Path(text).expanduser()
    skip = Path(exclude).expanduser().resolve() if exclude is not None else None
    if path.is_dir():
        found = []
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not _skipped_dir(Path(root) / d, skip))
            for name in files:
                p = Path(root) / name
                if not _hidden(name) and _is_image(p):
                    found.append(InputImage(p, PurePosixPath(p.relative_to(path).as_posix())))
        if not found:
            raise UserError(f"{text}: no image files in this folder or below "
                            f"(looked for {', '.join(IMAGE_SUFFIXES)})")  # fmt: skip
        return sorted(found, key=lambda i: i.rel.as_posix())
    if path.is_file():
        if not _is_image(path):
            raise UserError(f"{text}: not an image file by its name (expected one of "
                            f"{', '.join(IMAGE_SUFFIXES)})")  # fmt: skip
        return [InputImage(path, PurePosixPath(path.name))]
    if globlib.has_magic(text):
        parts = Path(text).expanduser().parts
        fixed = [p for p in parts[: next(i for i, p in enumerate(parts) if globlib.has_magic(p))]]
        base = Path(*fixed) if fixed else Path(".")
        found = []
        for name in globlib.glob(os.path.expanduser(text), recursive=True):
            p = Path(name)
            if p.is_file() and _is_image(p) and not _hidden(p.name) and not any(
                _skipped_dir(d, skip) for d in p.parents[: len(p.parents) - len(base.parents) - 1]
            ):
                found.append(InputImage(p, PurePosixPath(p.relative_to(base).as_posix())))
        if not found:
            raise UserError(f"{text}: the pattern matches no image files (quote it so that the "
                            "shell does not expand it; ** matches folders recursively)")  # fmt: skip
        return sorted(found, key=lambda i: i.rel.as_posix())
    raise UserError(f"{text}: no such file or folder (INPUT is an image, a folder or a glob)")


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


class UnreadableImage(Exception):
    """An input file that is not a readable image; the message says why."""


def read_image(path: Path) -> np.ndarray:
    """An image file -> [h, w, 3] uint8, upright RGB. Raises UnreadableImage."""
    from PIL import UnidentifiedImageError

    from mrcli.data import images as imagelib

    try:
        data = path.read_bytes()
    except OSError as e:
        raise UnreadableImage(f"cannot read the file ({e.strerror or e})") from None
    try:
        rgb = imagelib.upright_rgb(data)
    except UnidentifiedImageError:
        raise UnreadableImage("not an image PIL can read (unknown format)") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure of an untrusted file
        facts = imagelib.inspect_image_bytes(data)
        raise UnreadableImage(facts.error or f"cannot decode the image ({e})") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise UnreadableImage(f"decodes to an array of shape {rgb.shape}, not an RGB image")
    return rgb


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

    def masks(self) -> np.ndarray | None:
        """[n, h, w] bool, the label map's instances (None: a box-only model)."""
        if self.labels is None:
            return None
        ids = np.arange(1, len(self.scores) + 1, dtype=self.labels.dtype)  # [n]
        return self.labels[None] == ids[:, None, None]


def image_instances(
    # One image: boxes [D, 4] (input px), scores [D], classes [D], valid [D], masks [D, M, M].
    dets: dict[str, np.ndarray],
    image_info: np.ndarray,  # [5] (orig_h, orig_w, scale, resized_h, resized_w)
    score: float,
) -> Instances:
    """Model detections of one image -> its instances: score > `score`, best
    first, masks pasted (mrcli.evaluate.image_detections) and made disjoint."""
    from mrcli.evaluate import image_detections

    dets = dict(dets, valid=np.asarray(dets["valid"], bool) & (np.asarray(dets["scores"]) > score))
    d = image_detections(dets, image_info, image_id=0)
    order = np.argsort(-d.scores, kind="stable")
    keep, labels = order, None
    if d.masks is not None:
        labels, kept = label_map(d.masks[order])
        keep = order[kept]
    return Instances(d.boxes[keep], d.scores[keep], d.classes[keep], labels, d.height, d.width)


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
        instances.append(item)
    return {"file_name": file_name, "image_id": image_id, "height": inst.height, "width": inst.width,
            "label_map": label_map_name, "instances": instances}  # fmt: skip


@dataclass(frozen=True)
class Categories:
    """A checkpoint's category map, indexed by contiguous id (0 = background)."""

    dataset_ids: list[int]
    names: list[str]

    @classmethod
    def from_map(cls, categories: list[dict[str, Any]]) -> Categories:
        from mrcli.evaluate import dataset_id_table

        ids = dataset_id_table(categories)
        names = ["background"] * len(ids)
        for c in categories:
            names[int(c["contiguous_id"])] = str(c["name"])
        return cls(ids, names)


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
) -> None:
    """One image's files (each atomically) and its entries in the run's files."""
    from mrcli.data.show import overlay, write_png
    from mrcli.evaluate import to_coco_results

    masks = inst.masks()  # [n, h, w] bool, or None
    for p in o.paths():
        p.parent.mkdir(parents=True, exist_ok=True)
    if o.label_map is not None:
        write_png(o.label_map, inst.labels)
    if o.side is not None:
        name = o.label_map.name if o.label_map is not None else None
        _write_side(o.side, side_record(inst, rel, image_id, name, categories))
    if o.overlay is not None:
        names = [categories.names[int(c)] for c in inst.classes]
        drawn = overlay(rgb, inst.boxes, masks if masks is not None else [], names,
                        scores=inst.scores)  # fmt: skip
        write_png(o.overlay, drawn)
    if writers is not None:
        results, images = writers
        valid = np.ones(len(inst.scores), bool)
        results.write(to_coco_results(image_id, inst.boxes, inst.scores, inst.classes, valid,
                                      categories.dataset_ids, masks))  # fmt: skip
        images.write([{"id": image_id, "file_name": rel, "height": inst.height, "width": inst.width}])


@dataclass
class _Item:
    image_id: int
    input: InputImage
    outputs: Outputs
    rgb: np.ndarray  # [h, w, 3] uint8


def _write_side(path: Path, record: dict[str, Any]) -> None:
    """A side file, atomically: its header on the first line, then one line per instance."""
    head = json.dumps({k: v for k, v in record.items() if k != "instances"})[:-1]
    lines = [json.dumps(i) for i in record["instances"]]
    body = "\n  " + ",\n  ".join(lines) + "\n" if lines else ""
    write_bytes_atomic(path, f'{head}, "instances": [{body}]}}\n'.encode())


@functools.lru_cache(maxsize=8)
def _detect_fn(model: Any, mesh: Any) -> Callable:
    """model.detect jitted over `mesh` (images sharded on the batch axis); one
    per (model, mesh) in a process, so repeated runs reuse the compiled buckets."""
    import jax

    from mrcli.train import data_sharded, replicated

    return jax.jit(model.detect, in_shardings=(replicated(mesh), data_sharded(mesh), data_sharded(mesh)))


def run(
    input: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    workdir: str | os.PathLike[str] | None = None,
    checkpoint: str | None = None,
    score: float = 0.5,
    formats: str | Sequence[str] | None = None,
    batch_size: int = 8,
    overwrite: bool = False,
    report: Report | None = None,
    trained: Any = None,
) -> PredictResult:
    """`mrcli predict`: every image of `input` through a trained model (a
    run's checkpoint, or a checkpoint directory) into `out` (module docstring).
    `trained` (a mrcli.train.TrainedModel) replaces workdir/checkpoint."""
    import jax

    from mrcli.data import pipeline
    from mrcli.evaluate import ResultsWriter, named_classes
    from mrcli.train import load_trained, make_mesh, replicated

    report = report or (lambda kind, data: None)
    if not 0.0 <= score < 1.0:
        raise UserError(f"--score {score}: must be in [0, 1) (detections scoring above it are kept)")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")
    if formats is not None:
        parse_formats(formats)  # a typo fails before the model loads
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder; choose another --out")
    images = find_images(input, exclude=out)
    if trained is None:
        trained = load_trained(workdir, checkpoint)
    if trained.categories is None:
        raise UserError(f"{trained.origin} carries no category map, so its classes have no names; "
                        "predict with a trained or fully imported model")  # fmt: skip
    cfg = trained.config
    formats = parse_formats(formats, masks=cfg.model.masks)
    stems = output_stems(images)
    planned = [output_paths(out, s, formats) for s in stems]
    run_files = [out / RESULTS_FILE, out / IMAGES_FILE] if "json" in formats else []
    if not overwrite:
        existing = [p for p in run_files + [p for o in planned for p in o.paths()] if p.exists()]
        if existing:
            more = f" (and {len(existing) - 1} more of its outputs)" if len(existing) > 1 else ""
            raise UserError(f"{existing[0]} already exists{more}; pass --overwrite to replace "
                            "them, or choose another --out")  # fmt: skip
    categories = Categories.from_map(trained.categories)

    # The model, with its score threshold at --score (fewer candidates in its NMS;
    # the same detections above --score either way).
    model_cfg = dataclasses.replace(cfg.model, score_threshold=float(score))
    model = dataclasses.replace(trained.model, cfg=model_cfg)
    mesh = make_mesh(jax.local_devices())
    n_dev = mesh.devices.size
    batch = -(-batch_size // n_dev) * n_dev  # a multiple of the devices; padding never written
    detect = _detect_fn(model, mesh)
    state = jax.device_put(trained.state, replicated(mesh))
    spec = pipeline.Spec.from_config(cfg)
    short = cfg.data.image_size

    skipped: list[tuple[str, str]] = []
    compiled: dict[tuple[int, int], float] = {}
    counts = {"done": 0, "instances": 0, "images": 0}
    report("start", {"total": len(images), "batch_size": batch, "devices": n_dev})
    start = time.perf_counter()

    def decoded() -> Iterator[tuple[_Item, int]]:
        """(item, bucket index) per readable image, in input order; skips the rest."""
        for image, outputs in zip(images, planned):
            try:
                rgb = read_image(image.path)
            except UnreadableImage as e:
                skipped.append((str(image.path), str(e)))
                report("skipped", {"path": str(image.path), "reason": str(e)})
                counts["done"] += 1
                report("progress", {"done": counts["done"]})
                continue
            counts["images"] += 1
            h, w = rgb.shape[:2]
            b = int(pipeline.assign_buckets(np.array([h]), np.array([w]), short, spec.max_size,
                                            spec.buckets)[0])  # fmt: skip
            yield _Item(counts["images"], image, outputs, rgb), b

    def launch(b: int, items: list[_Item]):
        """Fill a fixed-shape batch of bucket b and dispatch it (asynchronously)."""
        from PIL import Image

        H, W = spec.buckets[b]
        x = np.zeros((batch, H, W, 3), np.float32)  # [B, H, W, 3]; padding rows stay zero
        info = np.zeros((batch, 5), np.float32)  # [B, 5]
        for i, item in enumerate(items):
            _, info[i] = pipeline.image_input(Image.fromarray(item.rgb), (H, W), spec, short, out=x[i])
        t = time.perf_counter()
        dets = detect(state, x, info)
        if (H, W) not in compiled:
            compiled[(H, W)] = time.perf_counter() - t
            report("compiled", {"bucket": (H, W), "seconds": compiled[(H, W)]})
        return items, info, dets

    def finish(launched, writers) -> None:
        """Write the outputs of a dispatched batch."""
        items, info, dets = launched
        dets = jax.device_get(dets)
        for i, item in enumerate(items):
            one = {k: np.asarray(v[i]) for k, v in dets.items()}
            one["valid"] = one["valid"] & named_classes(categories.dataset_ids, one["classes"])
            inst = image_instances(one, info[i], score)
            write_outputs(item.outputs, inst, item.rgb, item.input.rel.as_posix(), item.image_id,
                          categories, writers)  # fmt: skip
            counts["instances"] += len(inst.scores)
            counts["done"] += 1
            report("progress", {"done": counts["done"]})

    with ExitStack() as stack:
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).write_text(json.dumps({"format": "mrcli-predict/1"}) + "\n")
        writers = None
        if "json" in formats:
            writers = (stack.enter_context(ResultsWriter(out / RESULTS_FILE)),
                       stack.enter_context(ResultsWriter(out / IMAGES_FILE)))  # fmt: skip
        pending: dict[int, list[_Item]] = {}
        inflight = None
        for item, b in decoded():
            pending.setdefault(b, []).append(item)
            if len(pending[b]) == batch:
                launched = launch(b, pending.pop(b))
                if inflight is not None:
                    finish(inflight, writers)
                inflight = launched
        for b in sorted(pending):  # each bucket's last, padded batch
            launched = launch(b, pending.pop(b))
            if inflight is not None:
                finish(inflight, writers)
            inflight = launched
        if inflight is not None:
            finish(inflight, writers)
    seconds = time.perf_counter() - start
    return PredictResult(
        out=out, num_inputs=len(images), num_images=counts["images"], skipped=skipped,
        num_instances=counts["instances"], formats=formats,
        results_path=out / RESULTS_FILE if "json" in formats else None,
        images_path=out / IMAGES_FILE if "json" in formats else None,
        seconds=seconds, compile_seconds=sum(compiled.values()), batch_size=batch,
        buckets=sorted(compiled),
    )  # fmt: skip
