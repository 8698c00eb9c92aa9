"""Inference: the one compiled `Model.detect` that eval, predict, export --verify,
the periodic eval of training and the benchmarks all run through.

    predictor = Predictor(trained.model, trained.state, trained.config)
    for item, dets in predictor.over_images((item, rgb) for ...):   # image files
        ...
    for dets in predictor.over_batches(pipeline.eval_batches(...)):  # a dataset split
        ...
    result = evaluate_split(predictor, dataset, "val", out_dir="eval/")

A Predictor owns the jitted detect (one compiled program per bucket, reused
by every Predictor of the same model and mesh in a process), the mesh it runs
on, fixed-shape batches (a multiple of the devices; padding rows never come
out), and the step from model outputs to `ImageDetections` in original image
pixels with the masks pasted and the keypoints decoded from their heatmaps
(host side, as torchvision's postprocess, paste_masks_in_image and
heatmaps_to_keypoints). While the device runs batch k, the host decodes and
pads batch k+1's images and pastes batch k-1's masks.

Dimension key: B batch, H/W bucket (padded input) size, D detections,
M mask side, K keypoints, S heatmap side, h/w original image size.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import jax
import numpy as np
from PIL import Image

from mrcli import coco, tiling
from mrcli import config as config_lib
from mrcli import parallel
from mrcli.config import Config
from mrcli.data import images as imagelib
from mrcli.data import pipeline
from mrcli.model import Model
from mrcli.ops.keypoints import heatmaps_to_keypoints
from mrcli.ops.masks import paste_masks
from mrcli.progress import Report, silent

# Mask probabilities are thresholded here after pasting (the paper, torchvision).
MASK_THRESHOLD = 0.5

T = TypeVar("T")


@dataclass(frozen=True)
class ImageDetections:
    """One image's valid detections in its original pixels (host side)."""

    image_id: int
    boxes: np.ndarray  # [D,4] float32 xyxy, original image pixels
    scores: np.ndarray  # [D] float32
    classes: np.ndarray  # [D] int32, contiguous 1..K
    masks: np.ndarray | None  # [D,h,w] bool pasted into the original image, or None
    height: int
    width: int
    # [D,K,3] float32: x, y in original pixels and the score (torchvision's: the
    # heatmap's logit there) of each keypoint; None without a keypoint head.
    keypoints: np.ndarray | None = None


def to_original(
    dets: dict[str, np.ndarray],  # one image: boxes [D,4] (input px), scores, classes, valid, masks [D,M,M],
                                  # keypoint_heatmaps [D,K,S,S]
    image_info: np.ndarray,  # [5] (orig_h, orig_w, scale, resized_h, resized_w)
    image_id: int,
    mask_threshold: float = MASK_THRESHOLD,
    keypoint_offset: float = 0.0,  # model.keypoint_head.coordinate_offset
) -> ImageDetections:
    """Model detections of one image -> its original pixels, masks pasted,
    keypoints decoded.

    Boxes scale by orig/resized per axis (torchvision's transform.postprocess);
    masks are pasted at those boxes into the original image and thresholded
    (torchvision's paste_masks_in_image, mrcli.ops.masks.paste_masks);
    keypoints are decoded from the heatmaps over the input-pixel boxes
    (torchvision's heatmaps_to_keypoints, mrcli.ops.keypoints), scaled like the
    boxes (its resize_keypoints), less the model's coordinate offset."""
    orig_h, orig_w, _, resized_h, resized_w = (float(v) for v in image_info)
    keep = np.flatnonzero(np.asarray(dets["valid"], bool))
    ratio = np.array(
        [orig_w / resized_w, orig_h / resized_h, orig_w / resized_w, orig_h / resized_h],
        np.float32,
    )
    input_boxes = np.asarray(dets["boxes"], np.float32)[keep]
    boxes = input_boxes * ratio
    h, w = int(round(orig_h)), int(round(orig_w))
    keypoints = None
    if "keypoint_heatmaps" in dets:
        xy, kp_scores = heatmaps_to_keypoints(np.asarray(dets["keypoint_heatmaps"])[keep], input_boxes)
        xy = xy * ratio[:2] - np.float32(keypoint_offset)
        keypoints = np.concatenate([xy, kp_scores[..., None]], axis=-1)  # [D,K,3]
    masks = None
    if "masks" in dets:
        masks = paste_masks(np.asarray(dets["masks"], np.float32)[keep], boxes, h, w,
                            threshold=mask_threshold)  # fmt: skip
    return ImageDetections(
        image_id=int(image_id),
        boxes=boxes,
        scores=np.asarray(dets["scores"], np.float32)[keep],
        classes=np.asarray(dets["classes"], np.int32)[keep],
        masks=masks,
        height=h,
        width=w,
        keypoints=keypoints,
    )


@functools.lru_cache(maxsize=8)
def _detect(model: Model, mesh: jax.sharding.Mesh):
    """The one jit of Model.detect: parameters replicated, images and their info
    sharded on the batch axis; one per (model, mesh) in a process, so repeated
    runs reuse the compiled buckets."""
    rep, dat = parallel.replicated(mesh), parallel.data_sharded(mesh)
    return jax.jit(model.detect, in_shardings=(rep, dat, dat))


# (model, mesh, bucket, batch) -> the memory need of the detect programs
# compiled in this process (the programs themselves are in the jit's cache).
_COMPILED: dict[tuple[Any, ...], parallel.MemoryNeed] = {}


@dataclass
class _Batch:
    """A dispatched batch: per real (not padding) row its item, image id and
    row index; the inputs' info and the device outputs of every row."""

    items: list[Any]
    ids: list[int]
    rows: list[int]
    info: np.ndarray  # [B, 5]
    outputs: Any  # dict of device arrays, [B, ...]


class Predictor:
    """Model.detect over fixed-shape batches on a device mesh (module docstring)."""

    def __init__(self, model: Model, state: Any, cfg: Config, *, mesh: jax.sharding.Mesh | None = None,
                 batch_size: int | None = None, buckets: Iterable[tuple[int, int]] | None = None,
                 report: Report | None = None):  # fmt: skip
        """`cfg` gives the preprocessing (data.*) and `batch_size` (default
        eval.batch_size, rounded up to the devices); `buckets` replaces
        data.buckets (export --verify runs the export's one bucket); `report`
        hears of each bucket compiled, with its memory."""
        if buckets is not None:
            cfg = config_lib.override(cfg, {"data.buckets": [list(b) for b in buckets]})
        self.cfg = cfg
        self.model = model
        # Each process predicts its own images on its own devices: a mesh over
        # other processes' devices would need their batches in lock-step.
        self.mesh = mesh if mesh is not None else parallel.local_mesh()
        if any(d.process_index != jax.process_index() for d in self.mesh.devices.flat):
            raise ValueError("a Predictor's mesh holds this process's devices only (parallel.local_mesh)")
        self.batch_size = parallel.round_batch(batch_size or cfg.eval.batch_size, self.mesh)
        self.spec = pipeline.Spec.from_config(cfg)
        self.state = jax.device_put(parallel.to_local(state), parallel.replicated(self.mesh))
        self.compile_seconds: dict[tuple[int, int], float] = {}
        self.memory: dict[tuple[int, int], parallel.MemoryNeed] = {}
        self.report = silent(report)
        self._detect = _detect(model, self.mesh)

    @property
    def devices(self) -> int:
        return int(self.mesh.devices.size)

    def bucket_of(self, height: int, width: int) -> int:
        """The bucket an h x w image runs in (the input pipeline's rule)."""
        return int(pipeline.assign_buckets(np.array([height]), np.array([width]),
                                           self.cfg.data.image_size, self.spec.max_size,
                                           self.spec.buckets)[0])  # fmt: skip

    def compile(self, bucket: tuple[int, int]) -> None:
        """Compile detect for `bucket` at this batch size (timed in
        compile_seconds) and refuse (a UserError) a program whose memory the
        devices do not have. The program stays in the jit's cache and its
        memory need in _COMPILED, for every Predictor of the model."""
        H, W = bucket
        B = self.batch_size
        key = (self.model, self.mesh, bucket, B)
        self.compile_seconds[bucket] = 0.0  # compiled before, in this process
        if key not in _COMPILED:
            dat = parallel.data_sharded(self.mesh)
            start = time.perf_counter()
            compiled = self._detect.lower(
                self.state, jax.ShapeDtypeStruct((B, H, W, 3), np.float32, sharding=dat),
                jax.ShapeDtypeStruct((B, 5), np.float32, sharding=dat),
            ).compile()  # fmt: skip
            self.compile_seconds[bucket] = time.perf_counter() - start
            _COMPILED[key] = parallel.memory_need(compiled, self.mesh)
            self.report.say(f"compiled the model for {H}x{W}, batch {B}, in "
                            f"{self.compile_seconds[bucket]:.1f} s; it needs "
                            f"{_COMPILED[key].describe()}", "detail")  # fmt: skip
        need = self.memory[bucket] = _COMPILED[key]
        d = self.cfg.data
        parallel.check_memory(need, f"the model at {H}x{W}, batch {B}",
                              f"the batch size (--batch-size, eval.batch_size={self.cfg.eval.batch_size}) "
                              f"or the image size (data.image_size={d.image_size}, "
                              f"data.max_size={d.max_size})")  # fmt: skip

    def dispatch(self, images: np.ndarray, info: np.ndarray) -> Any:
        """Start detect on a full batch (images [B,H,W,3] float32, info [B,5]);
        returns the device outputs without waiting. A bucket's first batch
        compiles it first (`compile`)."""
        bucket = (int(images.shape[1]), int(images.shape[2]))
        if bucket not in self.compile_seconds:
            self.compile(bucket)
        # Placed first: with jax.distributed, jit takes no host arrays to shard.
        dat = parallel.data_sharded(self.mesh)
        return self._detect(self.state, jax.device_put(images, dat), jax.device_put(info, dat))

    def collect(self, batch: _Batch) -> list[ImageDetections]:
        """The detections of a dispatched batch's real rows, in original pixels."""
        outputs = jax.device_get(batch.outputs)
        offset = self.cfg.model.keypoint_head.coordinate_offset
        return [
            to_original({k: np.asarray(v[i]) for k, v in outputs.items()}, batch.info[i], image_id,
                        keypoint_offset=offset)
            for i, image_id in zip(batch.rows, batch.ids)
        ]

    def _pipelined(self, batches: Iterable[_Batch]) -> Iterator[tuple[Any, ImageDetections]]:
        """Collect batch k-1 only after batch k is dispatched."""
        inflight = None
        for batch in batches:
            if inflight is not None:
                yield from zip(inflight.items, self.collect(inflight))
            inflight = batch
        if inflight is not None:
            yield from zip(inflight.items, self.collect(inflight))

    def over_batches(self, batches: Iterable[dict[str, np.ndarray]]) -> Iterator[ImageDetections]:
        """Input-pipeline batches (pipeline.eval_batches with this predictor's
        batch_size) -> each real image's detections, in order."""

        def dispatched() -> Iterator[_Batch]:
            for batch in batches:
                rows = np.flatnonzero(~np.asarray(batch["is_padding"], bool)).tolist()
                ids = [int(batch["image_id"][i]) for i in rows]
                outputs = self.dispatch(batch["image"], batch["image_info"])
                yield _Batch(ids, ids, rows, batch["image_info"], outputs)

        for _, dets in self._pipelined(dispatched()):
            yield dets

    def over_images(self, items: Iterable[tuple[T, np.ndarray]],
                    image_id: Callable[[T], int] | None = None) -> Iterator[tuple[T, ImageDetections]]:  # fmt: skip
        """(item, [h, w, 3] uint8 RGB) pairs -> (item, detections), in the order
        batches complete: images are grouped by bucket into batches of
        batch_size, and each bucket's last batch is padded. Memory holds at most
        a batch per bucket, whatever the number of images. Image ids are
        `image_id(item)`, default 1, 2, ... in input order."""

        def launch(bucket: int, group: list[tuple[int, T, np.ndarray]]) -> _Batch:
            H, W = self.spec.buckets[bucket]
            x = np.zeros((self.batch_size, H, W, 3), np.float32)  # padding rows stay zero
            info = np.zeros((self.batch_size, 5), np.float32)
            for i, (_, _, rgb) in enumerate(group):
                _, info[i] = pipeline.image_input(Image.fromarray(rgb), (H, W), self.spec,
                                                  self.cfg.data.image_size, out=x[i])  # fmt: skip
            return _Batch([item for _, item, _ in group], [i for i, _, _ in group],
                          list(range(len(group))), info, self.dispatch(x, info))  # fmt: skip

        def dispatched() -> Iterator[_Batch]:
            pending: dict[int, list[tuple[int, T, np.ndarray]]] = {}
            for k, (item, rgb) in enumerate(items, 1):
                b = self.bucket_of(*rgb.shape[:2])
                pending.setdefault(b, []).append((k if image_id is None else image_id(item), item, rgb))
                if len(pending[b]) == self.batch_size:
                    yield launch(b, pending.pop(b))
            for b in sorted(pending):  # each bucket's last, padded batch
                yield launch(b, pending.pop(b))

        yield from self._pipelined(dispatched())


def tile_detector(predictor: "Predictor", tile: int) -> tiling.DetectTiles:
    """The production `detect_tiles` of mrcli.tiling: windows ([h, w, 3] uint8,
    at most tile x tile) through the predictor's compiled model in one
    (tile, tile) bucket, predictor.batch_size windows a batch (the last
    padded), each at scale 1 (normalised as pipeline.image_input does, zero
    padded, never resized) -> per window its Detections in window pixels,
    each mask pasted (as to_original) and kept as a crop."""
    spec = predictor.spec
    mean, std = np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)
    B = predictor.batch_size
    offset = predictor.cfg.model.keypoint_head.coordinate_offset

    def launch(views: list[np.ndarray]) -> tuple[np.ndarray, Any]:
        x = np.zeros((B, tile, tile, 3), np.float32)
        info = np.zeros((B, 5), np.float32)
        for i, v in enumerate(views):
            h, w = v.shape[:2]
            arr = v[..., ::-1] if spec.bgr else v
            x[i, :h, :w] = (arr.astype(np.float32) - mean) / std
            info[i] = (h, w, 1.0, h, w)
        return info, predictor.dispatch(x, info)

    def collect(info: np.ndarray, outputs: Any, n: int) -> list[tiling.Detections]:
        outputs = jax.device_get(outputs)
        dets = []
        for i in range(n):
            row = {k: np.asarray(v[i]) for k, v in outputs.items()}
            probs = row.pop("masks", None)
            d = to_original(row, info[i], 0, keypoint_offset=offset)
            masks = None
            if probs is not None:
                keep = np.flatnonzero(np.asarray(row["valid"], bool))
                regions = []
                side = probs.shape[-1]
                for j, k in enumerate(keep.tolist()):  # one window-sized paste at a time
                    m = paste_masks(np.asarray(probs[k:k + 1], np.float32), d.boxes[j:j + 1], d.height,
                                    d.width, threshold=MASK_THRESHOLD)[0]  # fmt: skip
                    # paste_masks writes only inside the box grown by (M + 2) / M: crop there
                    x0, y0, x1, y1 = (float(v) for v in d.boxes[j])
                    gx, gy = (x1 - x0) / side + 2, (y1 - y0) / side + 2
                    rx0, ry0 = max(int(np.floor(x0 - gx)), 0), max(int(np.floor(y0 - gy)), 0)
                    rx1, ry1 = min(int(np.ceil(x1 + gx)) + 1, d.width), min(int(np.ceil(y1 + gy)) + 1, d.height)
                    regions.append((m[ry0:max(ry1, ry0), rx0:max(rx1, rx0)], rx0, ry0))
                masks = tiling.CroppedMasks.from_regions(regions, d.height, d.width)
            dets.append(tiling.Detections(d.boxes, d.scores, d.classes, masks, d.height, d.width,
                                          d.keypoints))  # fmt: skip
        return dets

    def detect_tiles(views: list[np.ndarray]) -> list[tiling.Detections]:
        out: list[tiling.Detections] = []
        inflight = None
        for s in range(0, len(views), B):
            group = views[s:s + B]
            launched = (*launch(group), len(group))
            if inflight is not None:
                out.extend(collect(*inflight))
            inflight = launched
        if inflight is not None:
            out.extend(collect(*inflight))
        return out

    return detect_tiles


def evaluate_split(
    predictor: Predictor,
    dataset: Any,  # mrcli.data.store.Dataset
    split: str,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    max_images: int | None = None,
    categories: list[dict[str, Any]] | None = None,
    report: Report | None = None,
    tile: int | None = None,
    tile_overlap: int = 128,
) -> coco.DatasetEval:
    """Run the model over `split` in fixed-shape batches, write the COCO results
    file (streaming, dataset category ids), and score it with COCOeval (bbox,
    segm with masks, keypoints (OKS) for a keypoint model on a keypoint
    dataset); with `out_dir` the files go there (detections.json, bbox.json,
    segm.json, keypoints.json), else to a temporary folder.

    `tile` (--tile, --tile-overlap): every image is predicted window by window
    at its own scale and merged (mrcli.tiling, as `mrcli predict --tile`).
    COCOeval scores eval.max_dets detections per image.

    `categories` is the model's category map (a checkpoint's; default the
    dataset's); it must cover the dataset's (coco.check_categories).

    With several processes (jax.distributed) each runs its own part of the
    split (pipeline.eval_batches `part`) on its own devices and writes its
    results to OUT/detections.part-P-of-N.json; after a barrier, process 0
    merges the parts into OUT/detections.json (every image once: the parts
    are disjoint and padding rows never come out), and after another every
    process scores the merged file, so all return the same numbers. OUT must
    then be a folder every process sees (the shared workdir); only process 0
    writes the score files."""
    report = silent(report)
    categories = categories if categories is not None else dataset.categories
    coco.check_categories(categories, dataset.categories, dataset.name)
    dataset_ids = coco.dataset_id_table(categories)
    p, num_parts = jax.process_index(), jax.process_count()
    if num_parts > 1 and out_dir is None:
        raise ValueError("evaluate_split on several processes needs an out_dir that all of them see")
    tiled = np.zeros(0, np.int64)
    if tile is not None:
        tile, tile_overlap = tiling.round_tile(tile, tile_overlap, predictor.cfg.data.size_divisor)
        index = dataset.index(split)
        limit = predictor.cfg.eval.max_images if max_images is None else max_images
        n = len(index["height"]) if not limit else min(limit, len(index["height"]))
        own = np.arange(n)[p::num_parts]
        tiled = own
    batches = pipeline.eval_batches(predictor.cfg, dataset, split=split, part=(p, num_parts),
                                    global_batch=predictor.batch_size, max_images=max_images,
                                    skip=tiled)  # fmt: skip
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="mrcli-eval-"))
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "detections.json"
    mine = part_path(results_path, p, num_parts)
    done = 0
    report.task("eval", total=len(batches.plan.images) + len(tiled))
    with batches, coco.ResultsWriter(mine) as writer:
        if len(tiled):
            detect = tile_detector(predictor, tile)
            source = dataset.source(split)
            for i in tiled.tolist():
                rec = source[int(i)]
                rgb = np.asarray(imagelib.decode_rgb(rec["image"]))
                d = tiling.predict_tiled(rgb, detect, tile, tile_overlap,
                                         align=predictor.cfg.data.size_divisor)  # fmt: skip
                writer.write(tiled_results(d, int(rec["image_id"]), dataset_ids))
                done += 1
                report.advance(done)
        for d in predictor.over_batches(batches):
            writer.write(coco.to_coco_results(d.image_id, d.boxes, d.scores, d.classes,
                                              np.ones(len(d.scores), bool), dataset_ids, d.masks,
                                              d.keypoints))  # fmt: skip
            done += 1
            report.advance(done)
    report.end()
    if num_parts > 1:
        parts = [part_path(results_path, k, num_parts) for k in range(num_parts)]
        merge_results(parts, results_path, barrier=f"eval {split}")
    index = dataset.index(split)
    n = len(batches.plan.bucket_of)  # the split's first max_images, all parts together
    image_ids = [int(i) for i in index["image_id"][:n]]
    names = {int(c["id"]): c["name"] for c in dataset.categories}
    return coco.score(dataset.coco_ground_truth(split), results_path, image_ids,
                      masks=predictor.cfg.model.masks, category_names=names,
                      out_dir=out_dir if p == 0 else None,
                      keypoints=keypoint_eval(predictor.cfg, dataset),
                      max_dets=predictor.cfg.eval.max_dets)  # fmt: skip


def tiled_results(d: tiling.Detections, image_id: int, dataset_ids: list[int]) -> list[dict[str, Any]]:
    """A tiled image's detections as COCO results (coco.to_coco_results), the
    RLEs encoded from the mask crops (no [D, h, w] stack)."""
    named = np.flatnonzero(coco.named_classes(dataset_ids, d.classes))
    keypoints = d.keypoints[named] if d.keypoints is not None else None
    records = coco.to_coco_results(image_id, d.boxes[named], d.scores[named], d.classes[named],
                                   np.ones(len(named), bool), dataset_ids, None, keypoints)  # fmt: skip
    if d.masks is not None:
        for r, rle in zip(records, d.masks.take(named).rles()):
            r["segmentation"] = rle
    return records


def part_path(path: Path, p: int, num_parts: int) -> Path:
    """Where process `p` of `num_parts` writes its part of a results file
    (detections.part-P-of-N.json; the file itself with one process)."""
    return path if num_parts == 1 else path.with_name(f"{path.stem}.part-{p}-of-{num_parts}{path.suffix}")


def merge_results(parts: list[Path], merged: Path, barrier: str) -> None:
    """The COCO results (JSON lists) of every process's part -> `merged`, in
    part order, written by process 0 (the parts removed); returns on every
    process once `merged` is complete. `barrier` names the waits."""
    parallel.barrier(f"{barrier}: parts written")
    if jax.process_index() == 0:
        with coco.ResultsWriter(merged) as writer:
            for part in parts:
                with open(part) as f:
                    writer.write(json.load(f))
        for part in parts:
            part.unlink()
    parallel.barrier(f"{barrier}: merged")


def keypoint_eval(cfg: Config, dataset: Any) -> coco.KeypointEval | None:
    """The OKS eval of a keypoint model on a dataset with keypoints (its sigmas and
    keypoint categories); None when either has none. A model whose keypoint count
    is not the dataset's is refused."""
    kset = dataset.keypoint_set
    if not cfg.model.keypoints or kset is None:
        return None
    dataset.check_num_keypoints(cfg.model.keypoint_head.num_keypoints)
    return coco.KeypointEval(kset.sigmas, kset.category_ids)


def with_score_threshold(model: Model, score: float) -> Model:
    """`model` keeping only detections scoring above `score` (fewer candidates in
    its NMS; the same detections above `score` either way)."""
    inference = dataclasses.replace(model.cfg.inference, score_threshold=float(score))
    return dataclasses.replace(model, cfg=dataclasses.replace(model.cfg, inference=inference))
