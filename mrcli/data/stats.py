"""Dataset statistics (`mrcli show DATASET --stats`): what a split holds, and
whether a recipe fits it.

    stats = split_stats(dataset, "train", cfg)
    warnings(stats, cfg)          # lines naming the field to change
    stats.to_json()               # the numbers the pictures draw

Counts come from the prepared records themselves (boxes, classes, crowd flags,
image sizes), so they are the data training sees. An object's size is the
square root of its box's area (sqrt(w * h), the side of the square of the same
area, which is how anchor sizes are defined: FPN paper §4.1), both in the
original image's pixels and at the model's input size (the test-time resize,
data.image_size / data.max_size: mrcli.data.pipeline.resize_scale).

An anchor of size a and a centred square object of size s overlap with IoU
(min(s, a) / max(s, a))², which is >= 0.5 while s is within a factor √2 of a.
Anchor sizes an octave apart therefore reach every size between
min(sizes) / √2 and max(sizes) * √2; an object outside that range is matched
to an anchor only by the RPN's low-quality rule (torchvision's
allow_low_quality_matches), with a poor box to start from.

Dimension key: I images of the split, N instances (crowd regions excluded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mrcli.config import Config
from mrcli.data.pipeline import resize_scale
from mrcli.data.store import Dataset
from mrcli.progress import Report, silent

# More than this fraction of the objects outside the anchors' reach is worth a
# warning; below it (COCO's few objects of a pixel or two) it is noise.
ANCHOR_WARN_FRACTION = 0.01
# Histogram bins of sizes and aspect ratios: quarter octaves.
BINS_PER_OCTAVE = 4
# Aspect ratios (h / w) are drawn between 1/16 and 16; more extreme ones are counted in the end bins.
ASPECT_LIMIT = 16.0


@dataclass(frozen=True)
class SplitStats:
    dataset: str
    split: str
    class_names: list[str]  # contiguous ids 1..K in order
    instances_per_class: np.ndarray  # [K] int, crowd regions excluded
    crowd_per_class: np.ndarray  # [K] int
    instances_per_image: np.ndarray  # [I] int, crowd excluded: what a model has to detect
    annotations_per_image: np.ndarray  # [I] int, crowd included: what data.max_instances has to hold
    image_hw: np.ndarray  # [I, 2] int, (height, width) in pixels
    sizes: np.ndarray  # [N] float, sqrt(box w * h) in original image pixels
    input_sizes: np.ndarray  # [N] float, the same at the model's input size
    aspect_ratios: np.ndarray  # [N] float, box h / w
    image_size: int  # data.image_size and data.max_size the input sizes are for
    max_size: int
    anchor_sizes: tuple[int, ...]
    anchor_aspect_ratios: tuple[float, ...]

    @property
    def anchor_reach(self) -> tuple[float, float]:
        """Object sizes (input pixels) within IoU 0.5 of a centred anchor (module docstring)."""
        return min(self.anchor_sizes) / math.sqrt(2), max(self.anchor_sizes) * math.sqrt(2)

    def outside_anchors(self) -> tuple[int, int]:
        """(smaller, larger): objects outside anchor_reach at the input size."""
        lo, hi = self.anchor_reach
        return int(np.sum(self.input_sizes < lo)), int(np.sum(self.input_sizes > hi))

    def size_edges(self) -> np.ndarray:
        """Quarter-octave bin edges covering the input sizes and the anchors'
        reach, with an octave to spare at each end."""
        lo, hi = self.anchor_reach
        values = self.input_sizes[self.input_sizes > 0]
        a = min(lo, float(values.min())) / 2 if values.size else lo / 2
        b = max(hi, float(values.max())) * 2 if values.size else hi * 2
        first = math.floor(math.log2(a) * BINS_PER_OCTAVE)
        last = math.ceil(math.log2(b) * BINS_PER_OCTAVE)
        if last <= first:
            last = first + 1
        return 2.0 ** (np.arange(first, last + 1) / BINS_PER_OCTAVE)

    def aspect_edges(self) -> np.ndarray:
        octaves = int(math.log2(ASPECT_LIMIT))
        return 2.0 ** (np.arange(-octaves * BINS_PER_OCTAVE, octaves * BINS_PER_OCTAVE + 1) / BINS_PER_OCTAVE)

    def to_json(self) -> dict[str, Any]:
        """Counts and summaries (JSON-able)."""
        small, large = self.outside_anchors()
        per_image = self.instances_per_image
        return {
            "dataset": self.dataset,
            "split": self.split,
            "images": int(len(per_image)),
            "instances": int(self.instances_per_class.sum()),
            "crowd": int(self.crowd_per_class.sum()),
            "empty_images": int(np.sum(self.annotations_per_image == 0)),
            "per_class": dict(zip(self.class_names, self.instances_per_class.tolist())),
            "crowd_per_class": dict(zip(self.class_names, self.crowd_per_class.tolist())),
            "instances_per_image": {"max": int(per_image.max()) if len(per_image) else 0,
                                    "mean": float(per_image.mean()) if len(per_image) else 0.0},
            "annotations_per_image_max": int(self.annotations_per_image.max()) if len(per_image) else 0,
            "input_size": {"data.image_size": self.image_size, "data.max_size": self.max_size},
            "object_size_px": summary(self.sizes),
            "object_size_at_input_px": summary(self.input_sizes),
            "aspect_ratio_h_over_w": summary(self.aspect_ratios),
            "image_height_px": summary(self.image_hw[:, 0]),
            "image_width_px": summary(self.image_hw[:, 1]),
            "anchors": {"sizes": list(self.anchor_sizes), "aspect_ratios": list(self.anchor_aspect_ratios),
                        "reach_px": list(self.anchor_reach), "objects_smaller": small,
                        "objects_larger": large},
        }  # fmt: skip


def summary(values: np.ndarray) -> dict[str, float]:
    v = np.asarray(values, np.float64)
    if not v.size:
        return {"min": 0.0, "median": 0.0, "max": 0.0}
    return {"min": float(v.min()), "median": float(np.median(v)), "max": float(v.max())}


def split_stats(dataset: Dataset, split: str, cfg: Config, report: Report | None = None) -> SplitStats:
    """Read every record of `split` (its annotations; images are not decoded)
    and count. `cfg` gives the input size and the anchors."""
    report = silent(report)
    dataset.check_split(split)
    src = dataset.source(split)
    K = dataset.num_classes
    per_class = np.zeros(K + 1, np.int64)
    crowd_per_class = np.zeros(K + 1, np.int64)
    n = len(src)
    per_image = np.zeros(n, np.int64)
    annotations = np.zeros(n, np.int64)
    hw = np.zeros((n, 2), np.int64)
    sizes, input_sizes, aspects = [], [], []
    report.task("stats", total=n)
    for k in range(n):
        rec = src[k]
        h, w = int(rec["height"]), int(rec["width"])
        hw[k] = h, w
        classes = np.asarray(rec["classes"], np.int64).reshape(-1)
        crowd = np.asarray(rec["crowd"], bool).reshape(-1)
        boxes = np.asarray(rec["boxes"], np.float64).reshape(-1, 4)[~crowd]
        np.add.at(per_class, classes[~crowd], 1)
        np.add.at(crowd_per_class, classes[crowd], 1)
        per_image[k] = int((~crowd).sum())
        annotations[k] = len(classes)
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        size = np.sqrt(bw * bh)
        sizes.append(size)
        input_sizes.append(size * resize_scale(h, w, cfg.data.image_size, cfg.data.max_size))
        aspects.append(bh / bw)
        if k % 256 == 0 or k == n - 1:
            report.advance(k + 1)
    report.end()
    cat = np.concatenate
    return SplitStats(
        dataset=dataset.name, split=split, class_names=dataset.class_names[1:],
        instances_per_class=per_class[1:], crowd_per_class=crowd_per_class[1:],
        instances_per_image=per_image, annotations_per_image=annotations, image_hw=hw,
        sizes=cat(sizes) if sizes else np.zeros(0), input_sizes=cat(input_sizes) if sizes else np.zeros(0),
        aspect_ratios=cat(aspects) if sizes else np.zeros(0),
        image_size=cfg.data.image_size, max_size=cfg.data.max_size,
        anchor_sizes=tuple(cfg.model.anchors.sizes),
        anchor_aspect_ratios=tuple(cfg.model.anchors.aspect_ratios),
    )  # fmt: skip


def warnings(stats: SplitStats, cfg: Config) -> list[str]:
    """Where the config does not fit the data: each line says what is lost and
    the --set that fixes it."""
    lines = []
    where = f"{stats.dataset}/{stats.split}"
    most = int(stats.annotations_per_image.max()) if len(stats.annotations_per_image) else 0
    limit = cfg.data.max_instances
    over = int(np.sum(stats.annotations_per_image > limit))
    if over:
        lines.append(f"{over} image(s) of {where} have more instances than data.max_instances={limit} "
                     f"(up to {most}): mrcli train raises it to hold them (train.instance_limits) "
                     f"unless it is set on the command line, where --set data.max_instances={most} "
                     "keeps them all and a lower value the largest of each")  # fmt: skip
    most = int(stats.instances_per_image.max()) if len(stats.instances_per_image) else 0
    limit = cfg.model.inference.detections_per_image
    over = int(np.sum(stats.instances_per_image > limit))
    if over:
        lines.append(f"{over} image(s) of {where} have more objects than "
                     f"model.inference.detections_per_image={limit} (up to {most}): mrcli train raises "
                     "it (train.instance_limits) unless set on the command line; a trained model "
                     f"keeps its own: --set model.inference.detections_per_image={most} with "
                     f"mrcli eval/predict (and eval --max-dets {max(most, 100)})")  # fmt: skip
    small, large = stats.outside_anchors()
    total = len(stats.input_sizes)
    lo, hi = stats.anchor_reach
    setting = (f"model.anchors.sizes={','.join(str(s) for s in stats.anchor_sizes)} at "
               f"data.image_size={stats.image_size}, data.max_size={stats.max_size}")  # fmt: skip
    if total and small / total > ANCHOR_WARN_FRACTION:
        lines.append(f"{small} of {total} objects ({100 * small / total:.1f}%) of {where} are smaller than "
                     f"the smallest anchor reaches, {lo:.1f} px at the input size ({setting}): add a "
                     "smaller anchor size or raise data.image_size")  # fmt: skip
    if total and large / total > ANCHOR_WARN_FRACTION:
        lines.append(f"{large} of {total} objects ({100 * large / total:.1f}%) of {where} are larger than "
                     f"the largest anchor reaches, {hi:.0f} px at the input size ({setting}): add a "
                     "larger anchor size or lower data.image_size")  # fmt: skip
    return lines
