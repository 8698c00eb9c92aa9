"""`mrcli show`: overlay PNGs of a prepared dataset (masks in colour, boxes,
class names, keypoints and their skeleton), raw or as the training pipeline
gives them to the model, so a person can see that the data is right before
training; and with --stats the dataset's statistics as pictures
(mrcli.data.stats counts, mrcli.plots draws):

    OUT/classes.png               instances per class
    OUT/instances_per_image.png   with data.max_instances and detections per image
    OUT/object_sizes.png          sqrt(box area) at the input size, with the anchor sizes
    OUT/aspect_ratios.png         box h / w, with the anchors' aspect ratios
    OUT/image_sizes.png           image width against height
    (each with a .json of its numbers beside it)"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mrcli import config as config_lib
from mrcli import plots
from mrcli.config import Config
from mrcli.data import images as imagelib
from mrcli.data import masks as masklib
from mrcli.data import pipeline
from mrcli.data import stats as statslib
from mrcli.data.store import Dataset, find_dataset
from mrcli.errors import UserError
from mrcli.files import write_bytes_atomic
from mrcli.progress import Report

# Distinct colours (Glasbey-like), one per instance in an image.
PALETTE = np.array(
    [
        (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
        (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
        (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
        (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
    ],
    np.uint8,
)


CROWD_GREY = (160, 160, 160)


def blend(rgb: np.ndarray, masks: Iterable[np.ndarray], colours: Sequence[Sequence[int]],
          alpha: float = 0.45) -> np.ndarray:
    """Full-image masks [H, W] blended into an RGB image [H, W, 3] uint8, mask i
    in colours[i] (RGB 0..255) at opacity `alpha`."""
    out = rgb.astype(np.float32).copy()
    for m, c in zip(masks, colours):
        sel = m.astype(bool)
        out[sel] = (1 - alpha) * out[sel] + alpha * np.asarray(c, np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def overlay(rgb: np.ndarray, boxes: np.ndarray, masks: Iterable[np.ndarray], labels: list[str],
            crowd: np.ndarray | None = None, alpha: float = 0.45,
            scores: Sequence[float] | None = None, keypoints: np.ndarray | None = None,
            skeleton: Sequence[Sequence[int]] = ()) -> np.ndarray:
    """Draw full-image masks [H, W], xyxy boxes and labels (with `scores`,
    as "label 0.93") on an RGB image [H, W, 3]. Instance i has colour
    PALETTE[i % 20]. Crowd regions are drawn in grey with a 'crowd' label.
    `keypoints` [n, K, 3] (x, y, v: drawn where v > 0) are dots joined by the
    `skeleton`'s lines (1-based pairs, COCO's numbering) in the instance's colour."""
    n = len(boxes)
    crowd = np.zeros(n, bool) if crowd is None else np.asarray(crowd, bool)
    colours = [np.array(CROWD_GREY, np.uint8) if crowd[i] else PALETTE[i % len(PALETTE)] for i in range(n)]
    img = Image.fromarray(blend(rgb, masks, colours, alpha))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    for i in range(n):
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        c = tuple(int(v) for v in colours[i])
        # (a box under a pixel wide still gets drawn: PIL refuses x2 < x1)
        draw.rectangle((x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)), outline=c,
                       width=1 if crowd[i] else 2)
        text = ("crowd: " if crowd[i] else "") + labels[i]
        if scores is not None:
            text += f" {float(scores[i]):.2f}"
        if keypoints is not None:
            _draw_skeleton(draw, np.asarray(keypoints[i], np.float32), skeleton, c)
        tx, ty = x1 + 1, max(0.0, y1 - 11)
        bbox = draw.textbbox((tx, ty), text, font=font)
        draw.rectangle(bbox, fill=(0, 0, 0))
        draw.text((tx, ty), text, fill=c, font=font)
    return np.asarray(img)


def _draw_skeleton(draw: ImageDraw.ImageDraw, kp: np.ndarray, skeleton: Sequence[Sequence[int]],
                   colour: tuple[int, ...]) -> None:
    """One instance's keypoints [K, 3]: lines of the skeleton between shown points,
    then a dot with a dark rim at each (the rim keeps it visible on its own colour)."""
    shown = kp[:, 2] > 0
    for a, b in skeleton:
        if 1 <= a <= len(kp) and 1 <= b <= len(kp) and shown[a - 1] and shown[b - 1]:
            draw.line((*kp[a - 1, :2].tolist(), *kp[b - 1, :2].tolist()), fill=colour, width=2)
    for x, y in kp[shown, :2].tolist():
        draw.ellipse((x - 2.5, y - 2.5, x + 2.5, y + 2.5), fill=colour, outline=(0, 0, 0))


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Write an image array (RGB [H, W, 3] uint8, or [H, W] uint8 / uint16) as a PNG, atomically."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue())


def raw_overlay(dataset: Dataset, split: str, index: int) -> tuple[int, np.ndarray]:
    """(image id, overlay) of stored record `index` as prepared."""
    rec = dataset.source(split)[index]
    h, w = int(rec["height"]), int(rec["width"])
    rgb = np.asarray(imagelib.decode_rgb(rec["image"]))
    masks = [masklib.decode(r, h, w) for r in rec["rles"]]
    names = dataset.class_names
    labels = [names[int(c)] for c in rec["classes"]]
    kset = dataset.keypoint_set
    return int(rec["image_id"]), overlay(rgb, np.asarray(rec["boxes"]), masks, labels, rec["crowd"],
                                         keypoints=rec["keypoints"] if kset is not None else None,
                                         skeleton=kset.skeleton if kset is not None else ())  # fmt: skip


def augmented_overlay(dataset: Dataset, split: str, index: int, cfg: Config,
                      seed: int = 0) -> tuple[int, np.ndarray]:
    """(image id, overlay) of record `index` as the training pipeline gives it
    (epoch 0 augmentation for `seed`): the whole padded model input, gt boxes,
    the S x S mask crops pasted back into their boxes."""
    b = pipeline.example_batch(cfg, dataset, split, [index], train=True, seed=seed)
    rgb = pipeline.denormalize(b["image"][0], cfg)
    H, W = rgb.shape[:2]
    valid = b["gt_valid"][0] | b["gt_crowd"][0]
    boxes = b["gt_boxes"][0][valid]
    masks = [masklib.paste(m, box, H, W) for m, box in zip(b["gt_masks"][0][valid], boxes)]
    names = dataset.class_names
    labels = [names[int(c)] for c in b["gt_classes"][0][valid]]
    info = b["image_info"][0]
    # Mark the padding border so the resized image's extent is visible.
    rgb = rgb.copy()
    rh, rw = int(info[3]), int(info[4])
    if rw < W:
        rgb[:, rw:] = rgb[:, rw:] // 2
    if rh < H:
        rgb[rh:, :] = rgb[rh:, :] // 2
    kset = dataset.keypoint_set
    kp = b["gt_keypoints"][0][valid] if b["gt_keypoints"].shape[2] else None
    return int(b["image_id"][0]), overlay(rgb, boxes, masks, labels, b["gt_crowd"][0][valid], keypoints=kp,
                                          skeleton=kset.skeleton if kset is not None else ())  # fmt: skip


def show(dataset: Dataset, *, split: str, out: str | os.PathLike, num: int = 8,
         augmented: bool = False, cfg: Config | None = None, seed: int = 0) -> list[Path]:
    """Write overlay PNGs of the first `num` images of `split` to `out`;
    returns their paths, named after the photos' file names, folders joined
    by _: photos/IMG_1.jpg -> photos_IMG_1.png (_aug.png with `augmented`;
    _IMAGEID added where two names collide)."""
    dataset.check_split(split)
    if num < 1:
        raise UserError("--num must be at least 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = min(num, dataset.num_examples(split))
    paths, used = [], set()
    for k in range(n):
        if augmented:
            image_id, rgb = augmented_overlay(dataset, split, k, cfg or Config(), seed)
        else:
            image_id, rgb = raw_overlay(dataset, split, k)
        name = PurePosixPath(dataset.file_name(split, k).replace("\\", "/"))
        stem = "_".join((*name.parent.parts, name.stem)).strip("_") or f"{split}_{image_id}"
        if stem in used:
            stem = f"{stem}_{image_id}"
        used.add(stem)
        path = out / (f"{stem}_aug.png" if augmented else f"{stem}.png")
        write_png(path, rgb)
        paths.append(path)
    return paths


def show_dataset(name: str, *, data_dir: str | os.PathLike | None = None, split: str = "train",
                 out: str | os.PathLike, num: int = 8, augmented: bool = False,
                 recipe: str | None = None, sets: Sequence[str] = (), seed: int = 0) -> list[Path]:  # fmt: skip
    """`mrcli show`: `show` on the prepared dataset `name`, with the input sizes of
    `recipe` and `sets` (the defaults where neither is given) for `augmented`."""
    cfg = config_lib.resolve(recipe, list(sets)) if (recipe or sets) else None
    return show(find_dataset(name, data_dir), split=split, out=out, num=num, augmented=augmented,
                cfg=cfg, seed=seed)  # fmt: skip


@dataclass(frozen=True)
class StatsResult:
    stats: statslib.SplitStats
    warnings: list[str]  # where the config does not fit the data (statslib.warnings)
    paths: list[Path]  # the PNGs written (a .json beside each)


def write_stats(dataset: Dataset, *, split: str, out: str | os.PathLike, cfg: Config,
                report: Report | None = None) -> StatsResult:  # fmt: skip
    """The statistics of `split` as PNGs (+ JSON) in `out`, for the input size,
    anchors and limits of `cfg` (module docstring)."""
    s = statslib.split_stats(dataset, split, cfg, report)
    out = Path(out)
    name = f"{dataset.name}/{split}"
    d, inference = cfg.data, cfg.model.inference
    paths = [plots.bar_counts(
        out / "classes.png", names=s.class_names, counts=s.instances_per_class,
        title=f"{name}: instances per class ({int(s.instances_per_class.sum())} in {len(s.image_hw)} images)",
        xlabel="instances (crowd regions not counted)", ylabel="class",
        extra={"crowd": s.crowd_per_class.tolist()},
    )]  # fmt: skip
    per_image = s.instances_per_image
    top = int(per_image.max()) if len(per_image) else 0
    paths.append(plots.histogram(
        out / "instances_per_image.png", edges=np.arange(top + 2) - 0.5,
        counts=np.bincount(per_image, minlength=top + 1),
        title=f"{name}: instances per image (mean {per_image.mean() if len(per_image) else 0:.1f}, max {top})",
        xlabel="instances in the image (crowd regions not counted)", ylabel="images",
        lines=[(d.max_instances + 0.5, f"data.max_instances = {d.max_instances}"),
               (inference.detections_per_image + 0.5,
                f"model.inference.detections_per_image = {inference.detections_per_image}")],
    ))  # fmt: skip
    lo, hi = s.anchor_reach
    small, large = s.outside_anchors()
    edges = s.size_edges()
    paths.append(plots.histogram(
        out / "object_sizes.png", edges=edges, counts=np.histogram(s.input_sizes, edges)[0],
        title=f"{name}: object sizes at the input size, "
              + (f"all {len(s.input_sizes)} within the anchors' reach" if not small + large else
                 f"{small} below and {large} above the anchors' reach, of {len(s.input_sizes)}"),
        xlabel=f"object size sqrt(box width x height), pixels at the model input "
               f"(data.image_size={d.image_size}, data.max_size={d.max_size})",
        ylabel="objects", log_x=True,
        lines=[(a, "anchor sizes (model.anchors.sizes)") for a in s.anchor_sizes],
        band=(lo, hi, f"not reached by an anchor at IoU >= 0.5 (outside {lo:.1f}-{hi:.0f} px)"),
        extra={"objects_smaller": small, "objects_larger": large, "reach_px": [lo, hi],
               "original_px": statslib.summary(s.sizes)},
    ))  # fmt: skip
    edges = s.aspect_edges()
    ratios = np.clip(s.aspect_ratios, edges[0], edges[-1])
    paths.append(plots.histogram(
        out / "aspect_ratios.png", edges=edges, counts=np.histogram(ratios, edges)[0],
        title=f"{name}: box aspect ratios", ylabel="objects", log_x=True,
        xlabel=f"box height / width (clipped to 1/{statslib.ASPECT_LIMIT:g}..{statslib.ASPECT_LIMIT:g})",
        lines=[(r, "anchor aspect ratios (model.anchors.aspect_ratios)") for r in s.anchor_aspect_ratios],
    ))  # fmt: skip
    paths.append(plots.scatter(
        out / "image_sizes.png", x=s.image_hw[:, 1], y=s.image_hw[:, 0],
        title=f"{name}: image sizes ({len(np.unique(s.image_hw, axis=0))} distinct)",
        xlabel="width (pixels)", ylabel="height (pixels)",
    ))  # fmt: skip
    return StatsResult(s, statslib.warnings(s, cfg), paths)


def stats_dataset(name: str, *, data_dir: str | os.PathLike | None = None, split: str = "train",
                  out: str | os.PathLike, recipe: str | None = None, sets: Sequence[str] = (),
                  report: Report | None = None) -> StatsResult:  # fmt: skip
    """`mrcli show --stats`: `write_stats` on the prepared dataset `name`, for
    the config of `recipe` and `sets` (the defaults where neither is given)."""
    cfg = config_lib.resolve(recipe, list(sets))
    return write_stats(find_dataset(name, data_dir), split=split, out=out, cfg=cfg, report=report)
