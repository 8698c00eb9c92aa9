"""The input pipeline: prepared dataset -> fixed-shape numpy batches.

grain over `tfds` ArrayRecord data sources (random access), with worker
processes (`data.num_workers`, grain's `mp_prefetch`), deterministic for a
seed, sharded by JAX process, resumable from a small JSON state.

THE BATCH CONTRACT
==================

A batch is a dict of numpy arrays. Per process, with B = global batch /
jax.process_count(), N = data.max_instances, S = data.mask_crop_size and
(H, W) one of data.resolved_buckets() (all images of a batch share a bucket;
every key is present in training and in eval batches)::

    image       [B, H, W, 3] float32  resized, flipped (train), in the model's pixel
                                      order (model.input.pixel_order), normalised as
                                      (pixel - pixel_mean) / pixel_std of model.input
                                      (0..255 units), then zero padded right/bottom
    image_info  [B, 5]       float32  (orig_h, orig_w, scale, resized_h, resized_w):
                                      resized = round(orig * scale), before padding.
                                      Exact per-axis factors: resized_h / orig_h and
                                      resized_w / orig_w (what gt boxes use; map
                                      predictions back with these, as torchvision does)
    image_id    [B]          int64    the dataset's own image id (-1 in padding)
    gt_boxes    [B, N, 4]    float32  xyxy in model-input pixels, clipped to
                                      [0, resized_w] x [0, resized_h]
    gt_classes  [B, N]       int32    contiguous 1..K; 0 in padding slots
    gt_masks    [B, N, S, S] uint8    {0, 1}: each instance's mask cropped to its gt
                                      box and resampled to S x S (bilinear at the
                                      centres of an S x S grid over the box,
                                      threshold 0.5), flipped with the image
    gt_valid    [B, N]       bool     real, non-crowd targets
    gt_crowd    [B, N]       bool     iscrowd regions: ignore regions, not targets
    gt_keypoints [B, N, K, 3] float32 x, y in model-input pixels ((annotated +
                                      model.keypoint_head.coordinate_offset) * the
                                      resize factor, mirrored with the image), and
                                      the visibility 0/1/2 (unlabelled: all 0); a
                                      flip also swaps left and right keypoints (the
                                      dataset's flip pairs). K = model.keypoint_head.
                                      num_keypoints for a keypoint model, else 0
    is_padding  [B]          bool     eval: filler images of the last batch(es)

Training crops (data.train_crop = (Hc, Wc), off by default): every training
image is scaled by s = S_short / min(h, w), S_short drawn from
data.train_scales as above but without the max_size limit, or s = 1 (the
image's own pixels) where train_scales is empty, to (sh, sw) = round((h, w) *
s); a window of min(Hc, sh) x min(Wc, sw) is cut from it at a uniformly random
position (a function of (seed, epoch, image index), as the flip; an image
smaller than the window in a dimension is taken whole there) and flipped.
All training batches then have the one bucket (Hc, Wc) rounded up to
data.size_divisor (crop_bucket; train_buckets lists what training compiles);
eval batches are as without crops. For a cropped example the keys above
read with the window in place of the image: image_info is (window_h /
(sh / h), window_w / (sw / w), s, window_h, window_w), i.e. the window's
extent in source pixels, so resized / orig is still the exact per-axis
factor (the window's offset is not in the batch). Instances (rules in this
order; the stored boxes skip the instances that miss the window, and only
the window's part of a mask is resampled):
  - an instance with no mask pixel in the window is dropped;
  - a crowd region stays a crowd region;
  - an instance keeping less than data.crop_min_visible of its mask area
    (pixels in the window / all its pixels) becomes an ignore region:
    gt_crowd True, gt_valid False (the model ignores anchors and RoIs on it);
  - the others are targets; for all kept, gt_boxes is the tight box of the
    visible pixels (clipped to the window, not the clipped stored box) and
    gt_masks the visible part cropped to that box;
  - keypoints outside the window ([0, window] inclusive, as Detectron2's
    transform_keypoint_annotations) become unlabelled (0, 0, 0);
  - more than N kept instances: the N with most visible pixels, in stored order.

Slots beyond an image's instances are zero (False). An image with more than N
instances (crowd regions included) keeps the N largest by area, in their
stored order, and the pipeline warns once per process. Padding examples are
all zeros with image_id -1. Anchor labelling and the 28x28 RoI mask targets
stay on the device.

Resizing (torchvision's GeneralizedRCNNTransform and Detectron2's
ResizeShortestEdge): scale = min(S_short / min(h, w), max_size / max(h, w)),
with S_short drawn per image from data.train_scales in training and
data.image_size in eval; an image that would not fit its bucket is scaled down
to fit. Resampling is PIL's bilinear (antialiased when shrinking; JPEGs
shrunk by 2x or more are first decoded at a reduced DCT scale).

Buckets and order: an image's bucket is the smallest (by area) that holds it
at its largest scale (otherwise the one it fits best). Training: each epoch
is a seeded permutation of the split; images are grouped into global batches
of one bucket in order of completion (as Detectron2's aspect-ratio grouping,
but as pure index arithmetic); a bucket's incomplete last group is dropped
in that epoch; a keypoint model trains only on the images with at least
data.min_keypoints_per_image labelled keypoints (Detectron2's filter). The
random scale and flip of an image (and its crop window, data.train_crop) are
functions of (seed, epoch, image index). Process p of P takes rows [p*B, (p+1)*B) of each
global batch, so processes see disjoint shards and all processes use the
same bucket at every step. Eval: every image exactly once, in storage order
within each bucket; each bucket's last global batch is padded (is_padding).

Batch k is a pure function of (dataset, config, seed, k, process), so the
iterator state is just {"step": k} (plus the seed, batch size and split
size it belongs to, checked on restore): store `it.get_state()` in the
checkpoint's JSON record and call `set_state()` on a new iterator to get the
exact next batch, with any number of workers.

Usage::

    ds = find_dataset(cfg.data.dataset, data_dir)       # mrcli.data.store
    ds.check_num_classes(cfg.model.num_classes)
    with train_batches(cfg, ds) as it:                  # endless; it.set_state(saved)
        batch = next(it)
    for batch in eval_batches(cfg, ds):                 # finite; len() = batches left
        ...
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import math
import os
import signal
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
from PIL import Image

from mrcli.config import Config
from mrcli.data import images as imagelib
from mrcli.data import masks as masklib
from mrcli.data.store import Dataset
from mrcli.errors import UserError

log = logging.getLogger("mrcli.data")

KEYS = (
    "image", "image_info", "image_id", "gt_boxes", "gt_classes", "gt_masks",
    "gt_valid", "gt_crowd", "gt_keypoints", "is_padding",
)
# Effectively unbounded training stream (steps).
_FOREVER = 1 << 40


@dataclass(frozen=True)
class Spec:
    """What turns one stored example into model input (picklable, for workers)."""

    buckets: tuple[tuple[int, int], ...]
    max_size: int
    max_instances: int
    mask_size: int
    bgr: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "pil"  # model.input.resize
    # The dataset's horizontal-flip permutation of its K keypoints (keypoint models;
    # empty: no keypoints in the batches) and model.keypoint_head.coordinate_offset.
    keypoint_flip: tuple[int, ...] = ()
    keypoint_offset: float = 0.0
    # data.train_crop as (H, W) (empty: off) and data.crop_min_visible; used
    # only for slots that carry a crop position (training with train_crop).
    crop: tuple[int, ...] = ()
    crop_min_visible: float = 0.5

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoint_flip)

    @classmethod
    def from_config(cls, cfg: Config, dataset: Dataset | None = None, *, train: bool = False) -> Spec:
        """The spec of `cfg`; with `dataset`, a keypoint model's batches carry its keypoints.
        `train` with data.train_crop: the crop bucket is appended to the buckets
        (the one every training batch uses; Plan numbers it len(resolved_buckets()))."""
        d, m = cfg.data, cfg.model.input
        kset = dataset.keypoint_set if dataset is not None and cfg.model.keypoints else None
        buckets = tuple(tuple(int(v) for v in b) for b in d.resolved_buckets())
        crop = train_crop_size(cfg)
        if train and crop:
            buckets = buckets + (crop_bucket(cfg),)
        return cls(
            keypoint_flip=kset.flip if kset is not None else (),
            keypoint_offset=float(cfg.model.keypoint_head.coordinate_offset),
            crop=crop,
            crop_min_visible=float(d.crop_min_visible),
            buckets=buckets,
            max_size=d.max_size,
            max_instances=d.max_instances,
            mask_size=d.mask_crop_size,
            bgr=m.pixel_order == "bgr",
            mean=tuple(float(v) for v in m.pixel_mean),
            std=tuple(float(v) for v in m.pixel_std),
            resize=m.resize,
        )


def batch_shapes(cfg: Config, batch_size: int, bucket: tuple[int, int]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The contract's shapes and dtypes for one bucket: key -> (shape, dtype)."""
    H, W = bucket
    N, S, B = cfg.data.max_instances, cfg.data.mask_crop_size, batch_size
    K = cfg.model.keypoint_head.num_keypoints if cfg.model.keypoints else 0
    return {
        "image": ((B, H, W, 3), np.dtype(np.float32)),
        "image_info": ((B, 5), np.dtype(np.float32)),
        "image_id": ((B,), np.dtype(np.int64)),
        "gt_boxes": ((B, N, 4), np.dtype(np.float32)),
        "gt_classes": ((B, N), np.dtype(np.int32)),
        "gt_masks": ((B, N, S, S), np.dtype(np.uint8)),
        "gt_valid": ((B, N), np.dtype(bool)),
        "gt_crowd": ((B, N), np.dtype(bool)),
        "gt_keypoints": ((B, N, K, 3), np.dtype(np.float32)),
        "is_padding": ((B,), np.dtype(bool)),
    }


def empty_batch(cfg: Config, batch_size: int, bucket: tuple[int, int]) -> dict[str, np.ndarray]:
    """An all-padding batch (zeros, image_id -1, is_padding True): for compiling ahead."""
    out = {k: np.zeros(s, d) for k, (s, d) in batch_shapes(cfg, batch_size, bucket).items()}
    out["image_id"][:] = -1
    out["is_padding"][:] = True
    return out


# --- sizes and buckets ---------------------------------------------------------------


def train_crop_size(cfg: Config) -> tuple[int, ...]:
    """data.train_crop as (H, W) ((S,) is the square S x S); () when off."""
    crop = tuple(int(v) for v in cfg.data.train_crop)
    if not crop:
        return ()
    if len(crop) > 2 or min(crop) <= 0:
        raise UserError(f"data.train_crop: expected one positive size (a square) or two (H, W), "
                        f"got {list(crop)}; e.g. --set data.train_crop=512 or =512,768")  # fmt: skip
    if not 0.0 <= cfg.data.crop_min_visible <= 1.0:
        raise UserError(f"data.crop_min_visible: expected a fraction in [0, 1], got {cfg.data.crop_min_visible}")
    return crop * 2 if len(crop) == 1 else crop


def crop_bucket(cfg: Config) -> tuple[int, int]:
    """The one bucket of training batches with data.train_crop: the window
    rounded up to data.size_divisor."""
    h, w = train_crop_size(cfg)
    m = cfg.data.size_divisor
    return -(-h // m) * m, -(-w // m) * m


def train_buckets(cfg: Config) -> tuple[tuple[int, int], ...]:
    """The buckets training batches use (what to compile the train step for):
    the crop bucket alone with data.train_crop, else data.resolved_buckets()."""
    return (crop_bucket(cfg),) if train_crop_size(cfg) else tuple(cfg.data.resolved_buckets())


def resize_scale(h: int, w: int, short: int, max_size: int) -> float:
    return min(short / min(h, w), max_size / max(h, w))


def resized_size(h: int, w: int, scale: float) -> tuple[int, int]:
    return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))


def assign_buckets(heights: np.ndarray, widths: np.ndarray, short: int, max_size: int,
                   buckets: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Per image: the smallest-area bucket holding it at short side `short`,
    else the bucket where it needs the least extra shrinking."""
    h = np.asarray(heights, np.float64)
    w = np.asarray(widths, np.float64)
    scale = np.minimum(short / np.minimum(h, w), max_size / np.maximum(h, w))
    rh = np.floor(h * scale + 0.5)
    rw = np.floor(w * scale + 0.5)
    bh = np.array([b[0] for b in buckets], np.float64)
    bw = np.array([b[1] for b in buckets], np.float64)
    fits = (rh[:, None] <= bh[None]) & (rw[:, None] <= bw[None])
    area = np.where(fits, bh[None] * bw[None], np.inf)
    best_fit = np.argmin(area, axis=1)
    shrink = np.minimum(bh[None] / rh[:, None], bw[None] / rw[:, None])
    best_shrink = np.argmax(shrink, axis=1)
    return np.where(fits.any(axis=1), best_fit, best_shrink).astype(np.int32)


# --- the plan: which images form batch k -----------------------------------------------


@dataclass(frozen=True)
class Slot:
    index: int  # record index in the split; -1 = padding
    short: int  # short side to resize to (0 with a crop: the image's own size)
    flip: bool
    # data.train_crop: the window's position, (u_y, u_x) uniform in [0, 1)
    # (_crop_geometry); None: the whole image.
    crop: tuple[float, float] | None = None


class Plan:
    """Batch k -> (bucket, this process's slots). Pure index arithmetic."""

    def __init__(self, heights, widths, *, cfg: Config, train: bool, seed: int,
                 global_batch: int, process_index: int, process_count: int,
                 repeat: np.ndarray | None = None, images: np.ndarray | None = None):  # fmt: skip
        """`repeat` [N] float >= 1: repeat factors (repeat_factors) of a
        training split; None: every image once per epoch. `images`: the record
        indices a training epoch draws from, or an evaluation runs over (default
        all)."""
        d = cfg.data
        self.train = train
        self.seed = int(seed)
        self.global_batch = int(global_batch)
        self.process_index = int(process_index)
        self.process_count = int(process_count)
        if self.global_batch % self.process_count:
            raise UserError(
                f"the global batch {global_batch} must be a multiple of the number of "
                f"processes {process_count}"
            )
        self.local_batch = self.global_batch // self.process_count
        self.crop = train_crop_size(cfg) if train else ()
        self.scales = tuple(d.resolved_train_scales()) if train else (d.image_size,)
        self.hflip_prob = float(d.hflip_prob) if train else 0.0
        self.n = len(heights)
        self.images = np.arange(self.n) if images is None else np.asarray(images, np.int64)
        nbuckets = len(d.resolved_buckets())
        if self.crop:
            # One bucket, Spec.from_config(train=True)'s last; short side 0 =
            # the image's own size where no train_scales are given.
            self.scales = tuple(d.train_scales) or (0,)
            self.bucket_of = np.full(self.n, nbuckets, np.int32)
            nbuckets += 1
        else:
            self.bucket_of = assign_buckets(heights, widths, max(self.scales), d.max_size,
                                            tuple(d.resolved_buckets()))
        counts = np.bincount(self.bucket_of[self.images], minlength=nbuckets)
        self.repeat = None if repeat is None else np.asarray(repeat, np.float64)
        if train and self.repeat is not None:
            # An epoch holds T = ceil(sum r) images (epoch_indices); however they
            # fall into buckets, at least this many complete batches come out.
            self.repeat_total = int(math.ceil(self.repeat[self.images].sum()))
            nb = int(np.count_nonzero(counts))
            self.batches_per_epoch = max(0, (self.repeat_total - nb * (self.global_batch - 1))
                                         // self.global_batch)  # fmt: skip
            if self.batches_per_epoch == 0:
                raise UserError(f"the split's {self.repeat_total} repeated images per epoch make no "
                                f"complete global batch of {self.global_batch} in every bucket; "
                                "lower train.global_batch or add images")  # fmt: skip
            self._epochs = OrderedDict()
        elif train:
            self.batches_per_epoch = int(sum(c // self.global_batch for c in counts))
            if self.batches_per_epoch == 0:
                raise UserError(
                    f"the split has {len(self.images)} training images ({', '.join(map(str, counts.tolist()))} per "
                    f"bucket), fewer than one global batch of {self.global_batch} in every bucket; "
                    "lower train.global_batch or add images"
                )
            self._epochs: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        else:
            groups = []
            for k in range(len(counts)):
                idx = self.images[self.bucket_of[self.images] == k]
                for j in range(0, len(idx), self.global_batch):
                    chunk = np.full(self.global_batch, -1, np.int64)
                    part = idx[j: j + self.global_batch]
                    chunk[: len(part)] = part
                    groups.append((int(part[0]), k, chunk))
            groups.sort(key=lambda g: g[0])
            self._eval_groups = [(k, chunk) for _, k, chunk in groups]

    def __len__(self) -> int:
        return _FOREVER if self.train else len(self._eval_groups)

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(buckets [batches], indices [batches, global_batch]) of one epoch."""
        if epoch in self._epochs:
            self._epochs.move_to_end(epoch)
            return self._epochs[epoch]
        rng = np.random.default_rng([self.seed, epoch, 0x5EED])
        perm = self.images[rng.permutation(len(self.images))]
        if self.repeat is not None:
            perm = self.epoch_indices(epoch, perm)
        b = self.bucket_of[perm]
        groups = []
        G = self.global_batch
        for k in np.unique(b):
            pos = np.nonzero(b == k)[0]
            m = len(pos) // G
            if m:
                chunks = pos[: m * G].reshape(m, G)
                for c in chunks:
                    groups.append((int(c[-1]), int(k), perm[c]))
        groups.sort(key=lambda g: g[0])
        out = (np.array([g[1] for g in groups], np.int32), np.stack([g[2] for g in groups]))
        self._epochs[epoch] = out
        while len(self._epochs) > 2:
            self._epochs.popitem(last=False)
        return out

    def epoch_indices(self, epoch: int, order: np.ndarray) -> np.ndarray:
        """One epoch's images with repeat factors: image i ceil or floor of its
        factor times (expectation r_i, Detectron2's stochastic rounding) by
        systematic sampling over `order`, so an epoch holds exactly
        repeat_total images; then shuffled."""
        rng = np.random.default_rng([self.seed, epoch, 0xEFA])
        r = self.repeat[order] * (self.repeat_total / self.repeat[self.images].sum())
        edges = np.floor(np.concatenate([[0.0], np.cumsum(r)]) + rng.random()).astype(np.int64)
        seq = np.repeat(order, np.diff(edges))
        return seq[rng.permutation(len(seq))]

    def _augment(self, epoch: int, index: int) -> Slot:
        rng = np.random.default_rng([self.seed, epoch, int(index), 0xA06])
        short = int(self.scales[rng.integers(len(self.scales))]) if len(self.scales) > 1 else int(self.scales[0])
        flip = bool(rng.random() < self.hflip_prob)
        if self.crop:
            return Slot(int(index), short, flip, (float(rng.random()), float(rng.random())))
        return Slot(int(index), short, flip)

    def __getitem__(self, step: int) -> tuple[int, list[Slot]]:
        step = int(step)
        lo = self.process_index * self.local_batch
        hi = lo + self.local_batch
        if self.train:
            epoch, k = divmod(step, self.batches_per_epoch)
            buckets, indices = self._epoch(epoch)
            return int(buckets[k]), [self._augment(epoch, i) for i in indices[k, lo:hi]]
        bucket, chunk = self._eval_groups[step]
        return bucket, [Slot(int(i), self.scales[0], False) for i in chunk[lo:hi]]

    def epoch_of(self, step: int) -> int:
        return step // self.batches_per_epoch if self.train else 0


# --- one example --------------------------------------------------------------------------

_warned = {"max_instances": False}


def fit_size(h: int, w: int, short: int, max_size: int,
             bucket: tuple[int, int]) -> tuple[float, int, int]:
    """(scale, resized_h, resized_w) of an h x w image: short side `short`,
    long side <= max_size, shrunk further where it would not fit `bucket` (H, W)."""
    H, W = bucket
    scale = min(resize_scale(h, w, short, max_size), H / h, W / w)
    rh, rw = resized_size(h, w, scale)
    return scale, min(rh, H), min(rw, W)


def fit_size_torchvision(h: int, w: int, short: int, max_size: int,
                         bucket: tuple[int, int]) -> tuple[float, int, int]:  # fmt: skip
    """fit_size as torchvision's GeneralizedRCNNTransform sizes an image (eager
    mode): scale = min(short / min(h, w), max_size / max(h, w)) in Python
    floats, each side int(side * scale), truncated (F.interpolate with
    recompute_scale_factor); an image that would not fit `bucket` is shrunk to
    fit (torchvision pads to any size, a compiled bucket cannot)."""
    scale = min(short / min(h, w), max_size / max(h, w))
    H, W = bucket
    if int(h * scale) > H or int(w * scale) > W:
        scale = min(scale, H / h, W / w)
    return scale, min(max(1, int(h * scale)), H), min(max(1, int(w * scale)), W)


def _taps(n_in: int, n_out: int):
    """resize_normalized's source pixels and weights along one axis."""
    ratio = np.float32(n_in) / np.float32(n_out)
    src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * ratio - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    low = src.astype(np.int64)
    high = np.minimum(low + 1, n_in - 1)
    frac = np.clip(src - low.astype(np.float32), 0.0, 1.0).astype(np.float32)
    return low, high, np.float32(1.0) - frac, frac


def resize_normalized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[h, w, C] float32 -> [rh, rw, C] float32 by bilinear interpolation without
    antialiasing, half-pixel centres (PyTorch's F.interpolate(mode="bilinear",
    align_corners=False) with the size given): source = (dst + 0.5) * in / out
    - 0.5 in float32, clamped at 0, the upper neighbour clamped at the edge."""

    y0, y1, wy0, wy1 = _taps(image.shape[0], size[0])
    x0, x1, wx0, wx1 = _taps(image.shape[1], size[1])
    rows = image[y0] * wy0[:, None, None] + image[y1] * wy1[:, None, None]  # [rh, w, C]
    return rows[:, x0] * wx0[None, :, None] + rows[:, x1] * wx1[None, :, None]


def image_input(
    source: bytes | Image.Image,  # stored image bytes, or a decoded upright image
    bucket: tuple[int, int],
    spec: Spec,
    short: int,
    *,
    hw: tuple[int, int] | None = None,  # (h, w) of `source` where already known
    flip: bool = False,
    out: np.ndarray | None = None,  # [H, W, 3] float32 zeros to write into (a batch row)
) -> tuple[np.ndarray, np.ndarray]:
    """One upright image -> its model input (the batch contract's `image` row,
    [H, W, 3] float32: resized, flipped, in the model's pixel order, normalised,
    zero padded into `bucket`) and its `image_info` row [5] float32.

    The one place an image becomes model input: the input pipeline (stored
    bytes) and `mrcli predict` (decoded files) both go through it. With
    spec.resize "torchvision" the image is sized and resampled as torchvision
    does (fit_size_torchvision, resize_normalized) instead of with PIL."""
    H, W = bucket
    if hw is None:
        w, h = source.size if isinstance(source, Image.Image) else Image.open(io.BytesIO(source)).size
    else:
        h, w = hw
    if out is None:
        out = np.zeros((H, W, 3), np.float32)
    if spec.resize == "torchvision":
        scale, rh, rw = fit_size_torchvision(h, w, short, spec.max_size, bucket)
        # torchvision's order: normalise the full image, then interpolate it.
        arr = np.asarray(imagelib.decode_rgb(source), np.float32)
        if flip:
            arr = arr[:, ::-1]
        if spec.bgr:
            arr = arr[..., ::-1]
        arr = (arr - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
        out[:rh, :rw] = resize_normalized(arr, (rh, rw))
        return out, np.array((h, w, scale, rh, rw), np.float32)
    scale, rh, rw = fit_size(h, w, short, spec.max_size, bucket)
    img = imagelib.decode_rgb(source, (rh, rw))
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    arr = np.asarray(img)
    if spec.bgr:
        arr = arr[..., ::-1]
    _normalize_into(arr, out, spec)
    return out, np.array((h, w, scale, rh, rw), np.float32)


def _normalize_into(arr: np.ndarray, out: np.ndarray, spec: Spec) -> None:
    """uint8 [rh, rw, 3] (model pixel order) -> normalised into out[:rh, :rw]."""
    rh, rw = arr.shape[:2]
    # Normalise straight into the zero-padded row. Viewing rows as [rw*3]
    # vectors (mean/std tiled to match) keeps numpy's inner loops long: 10x
    # faster than broadcasting over a trailing axis of 3.
    dst = out[:rh, :rw].reshape(rh, rw * 3)
    assert np.may_share_memory(dst, out), "out must be C-contiguous in its last two axes"
    np.subtract(np.ascontiguousarray(arr).reshape(rh, rw * 3), np.tile(np.asarray(spec.mean, np.float32), rw),
                out=dst, dtype=np.float32)
    dst *= np.tile(np.asarray([1.0 / s for s in spec.std], np.float32), rw)


def _largest(sizes: np.ndarray, limit: int, rec: dict[str, Any], where: str) -> np.ndarray:
    """Indices of the `limit` largest of `sizes` [n] in their stored order (all when
    n <= limit); warns once per process when some are left out."""
    n = len(sizes)
    if n <= limit:
        return np.arange(n)
    if not _warned["max_instances"]:
        log.warning(
            "image %s has %d instances%s, more than data.max_instances=%d: keeping the %d "
            "largest (warned once per process; raise data.max_instances to keep all)",
            int(rec["image_id"]), n, where, limit, limit,
        )
        _warned["max_instances"] = True
    return np.sort(np.argsort(-sizes, kind="stable")[:limit])


def _fill_example(out: dict[str, np.ndarray], i: int, rec: dict[str, Any], slot: Slot,
                  bucket: tuple[int, int], spec: Spec) -> None:
    """Write example `rec` into row i of the preallocated batch `out`."""
    if slot.crop is not None:
        _fill_cropped(out, i, rec, slot, bucket, spec)
        return
    h, w = int(rec["height"]), int(rec["width"])
    _, info = image_input(rec["image"], bucket, spec, slot.short, hw=(h, w), flip=slot.flip,
                          out=out["image"][i])  # fmt: skip
    rh, rw = int(info[3]), int(info[4])
    out["image_info"][i] = info
    out["image_id"][i] = int(rec["image_id"])

    boxes = np.asarray(rec["boxes"], np.float32).reshape(-1, 4)
    keep = _largest(np.asarray(rec["areas"], np.float32), spec.max_instances, rec, "")
    m = len(keep)
    if m == 0:
        return
    sx, sy = rw / w, rh / h
    b = boxes[keep] * np.array([sx, sy, sx, sy], np.float32)
    np.clip(b[:, 0::2], 0, rw, out=b[:, 0::2])
    np.clip(b[:, 1::2], 0, rh, out=b[:, 1::2])
    if slot.flip:
        b = np.stack([rw - b[:, 2], b[:, 1], rw - b[:, 0], b[:, 3]], axis=1)
    crowd = np.asarray(rec["crowd"], bool)[keep]
    out["gt_boxes"][i, :m] = b
    out["gt_classes"][i, :m] = np.asarray(rec["classes"], np.int32)[keep]
    out["gt_crowd"][i, :m] = crowd
    out["gt_valid"][i, :m] = ~crowd
    if spec.num_keypoints:
        out["gt_keypoints"][i, :m] = _keypoints_input(np.asarray(rec["keypoints"], np.float32)[keep],
                                                      sx, sy, rw, slot.flip, spec)  # fmt: skip
    rles = rec["rles"]
    for j, k in enumerate(keep):
        mask = masklib.decode(rles[k], h, w)
        crop = masklib.crop_and_resize(mask, boxes[k], spec.mask_size)
        out["gt_masks"][i, j] = crop[:, ::-1] if slot.flip else crop


# --- training crops (data.train_crop) ------------------------------------------------------


def _crop_geometry(h: int, w: int, slot: Slot, crop: tuple[int, ...]) -> tuple[float, int, int, int, int, int, int]:
    """(scale, sh, sw, y0, x0, wh, ww) of a cropped training example: the h x w
    image scaled to sh x sw = round((h, w) * scale), scale = short / min(h, w)
    (no max_size limit) or 1 for slot.short 0, and the window [y0, y0 + wh) x
    [x0, x0 + ww) of it, wh = min(crop H, sh), ww = min(crop W, sw), its corner
    uniform over the positions (from the slot's (u_y, u_x))."""
    scale = slot.short / min(h, w) if slot.short > 0 else 1.0
    sh, sw = resized_size(h, w, scale)
    wh, ww = min(int(crop[0]), sh), min(int(crop[1]), sw)
    uy, ux = slot.crop
    y0 = min(int(uy * (sh - wh + 1)), sh - wh)
    x0 = min(int(ux * (sw - ww + 1)), sw - ww)
    return scale, sh, sw, y0, x0, wh, ww


def _crop_image(data: bytes, hw: tuple[int, int], scaled: tuple[int, int], window: tuple[int, int, int, int],
                flip: bool, spec: Spec, out: np.ndarray) -> None:
    """The window (y0, x0, wh, ww) of the image scaled to `scaled` (sh, sw),
    flipped, normalised into out[:wh, :ww]: the same pixels as scaling the
    whole image (image_input's resampling) and cutting the window, computed
    for the window only."""
    (h, w), (sh, sw), (y0, x0, wh, ww) = hw, scaled, window
    if spec.resize == "torchvision":
        # resize_normalized's taps for the whole image, only the window's rows
        # and columns (only the source pixels they read are normalised).
        ly, hy, ay, by = (t[y0: y0 + wh] for t in _taps(h, sh))
        lx, hx, ax, bx = (t[x0: x0 + ww] for t in _taps(w, sw))
        r0, r1, c0, c1 = int(ly.min()), int(hy.max()) + 1, int(lx.min()), int(hx.max()) + 1
        arr = np.asarray(imagelib.decode_rgb(data), np.float32)[r0:r1, c0:c1]
        if spec.bgr:
            arr = arr[..., ::-1]
        arr = (arr - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
        rows = arr[ly - r0] * ay[:, None, None] + arr[hy - r0] * by[:, None, None]
        res = rows[:, lx - c0] * ax[None, :, None] + rows[:, hx - c0] * bx[None, :, None]
        out[:wh, :ww] = res[:, ::-1] if flip else res
        return
    img = imagelib.decode_rgb(data)
    if (sh, sw) == (h, w):
        img = img.crop((x0, y0, x0 + ww, y0 + wh))
    else:
        # PIL resamples the box of the source that maps onto the window (its
        # filter reads the pixels around the box too): the window of the
        # whole resized image.
        fy, fx = sh / h, sw / w
        img = img.resize((ww, wh), Image.Resampling.BILINEAR,
                         box=(x0 / fx, y0 / fy, (x0 + ww) / fx, (y0 + wh) / fy))
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    arr = np.asarray(img)
    if spec.bgr:
        arr = arr[..., ::-1]
    _normalize_into(arr, out, spec)


def _fill_cropped(out: dict[str, np.ndarray], i: int, rec: dict[str, Any], slot: Slot,
                  bucket: tuple[int, int], spec: Spec) -> None:
    """_fill_example for a training crop (data.train_crop; module docstring)."""
    h, w = int(rec["height"]), int(rec["width"])
    scale, sh, sw, y0, x0, wh, ww = _crop_geometry(h, w, slot, spec.crop)
    assert wh <= bucket[0] and ww <= bucket[1], (wh, ww, bucket)
    fy, fx = sh / h, sw / w  # exact per-axis factors, as resized_h / orig_h
    _crop_image(rec["image"], (h, w), (sh, sw), (y0, x0, wh, ww), slot.flip, spec, out["image"][i])
    # The window in source pixels (fractional where scaled).
    oy0, oy1, ox0, ox1 = y0 / fy, (y0 + wh) / fy, x0 / fx, (x0 + ww) / fx
    out["image_info"][i] = (oy1 - oy0, ox1 - ox0, scale, wh, ww)
    out["image_id"][i] = int(rec["image_id"])

    boxes = np.asarray(rec["boxes"], np.float32).reshape(-1, 4)
    # Source pixels whose centres lie in the window: rows [r0, r1), columns [c0, c1).
    r0, r1 = max(0, math.ceil(oy0 - 0.5)), min(h, math.ceil(oy1 - 0.5))
    c0, c1 = max(0, math.ceil(ox0 - 0.5)), min(w, math.ceil(ox1 - 0.5))
    # The stored boxes (with a pixel to spare) skip instances that miss the
    # window without decoding their masks.
    near = np.flatnonzero((boxes[:, 0] < c1 + 1) & (boxes[:, 2] > c0 - 1)
                          & (boxes[:, 1] < r1 + 1) & (boxes[:, 3] > r0 - 1))  # fmt: skip
    stored_crowd = np.asarray(rec["crowd"], bool)
    rles = rec["rles"]
    kept, cut_boxes, crowd, visible, cuts = [], [], [], [], []
    for k in near:
        cut = masklib.decode(rles[k], h, w)[r0:r1, c0:c1]
        ys = np.flatnonzero(cut.any(axis=1))
        if not len(ys):
            continue  # nothing of it in the window: dropped
        xs = np.flatnonzero(cut.any(axis=0))
        seen = int(cut.sum())
        total = masklib.area(rles[k], h, w)
        # Tight box of the visible pixels (source pixels), clipped to the window.
        cut_boxes.append((max(c0 + xs[0], ox0), max(r0 + ys[0], oy0),
                          min(c0 + xs[-1] + 1, ox1), min(r0 + ys[-1] + 1, oy1)))  # fmt: skip
        crowd.append(bool(stored_crowd[k]) or seen < spec.crop_min_visible * total)
        visible.append(seen)
        cuts.append(cut)
        kept.append(int(k))
    order = _largest(np.asarray(visible, np.float64), spec.max_instances, rec, " in its training crop")
    m = len(order)
    if m == 0:
        return
    keep = np.asarray(kept, np.int64)[order]
    src = np.asarray(cut_boxes, np.float64)[order]
    b = (src * np.array([fx, fy, fx, fy]) - np.array([x0, y0, x0, y0])).astype(np.float32)
    np.clip(b[:, 0::2], 0, ww, out=b[:, 0::2])
    np.clip(b[:, 1::2], 0, wh, out=b[:, 1::2])
    if slot.flip:
        b = np.stack([ww - b[:, 2], b[:, 1], ww - b[:, 0], b[:, 3]], axis=1)
    is_crowd = np.asarray(crowd, bool)[order]
    out["gt_boxes"][i, :m] = b
    out["gt_classes"][i, :m] = np.asarray(rec["classes"], np.int32)[keep]
    out["gt_crowd"][i, :m] = is_crowd
    out["gt_valid"][i, :m] = ~is_crowd
    if spec.num_keypoints:
        kp = np.asarray(rec["keypoints"], np.float32)[keep].copy()
        kx = (kp[..., 0] + np.float32(spec.keypoint_offset)) * np.float32(fx) - np.float32(x0)
        ky = (kp[..., 1] + np.float32(spec.keypoint_offset)) * np.float32(fy) - np.float32(y0)
        kp[..., 0], kp[..., 1] = kx, ky
        # Outside the window (Detectron2's transform_keypoint_annotations: 0..size inclusive): unlabelled.
        kp[(kx < 0) | (kx > ww) | (ky < 0) | (ky > wh), 2] = 0
        if slot.flip:
            kp[..., 0] = ww - kp[..., 0]
            kp = kp[:, list(spec.keypoint_flip)]
        kp[kp[..., 2] <= 0] = 0.0
        out["gt_keypoints"][i, :m] = kp
    for j, t in enumerate(order):
        box = src[j] - np.array([c0, r0, c0, r0])  # in the cut's pixels
        crop = masklib.crop_and_resize(cuts[t], box, spec.mask_size)
        out["gt_masks"][i, j] = crop[:, ::-1] if slot.flip else crop


def _keypoints_input(kp: np.ndarray, sx: float, sy: float, rw: int, flip: bool, spec: Spec) -> np.ndarray:
    """Stored keypoints [n, K, 3] (image pixels) -> model-input pixels: offset,
    scaled as the boxes, mirrored with the image and left/right swapped by the
    dataset's flip permutation; unlabelled points stay (0, 0, 0)."""
    out = kp.copy()
    out[..., 0] = (kp[..., 0] + spec.keypoint_offset) * np.float32(sx)
    out[..., 1] = (kp[..., 1] + spec.keypoint_offset) * np.float32(sy)
    if flip:
        out[..., 0] = rw - out[..., 0]
        out = out[:, list(spec.keypoint_flip)]  # keypoint j is now what keypoint flip[j] was
    out[out[..., 2] <= 0] = 0.0
    return out


class MakeBatch:
    """grain map: step -> batch (runs in the worker processes)."""

    def __init__(self, source, plan: Plan, spec: Spec):
        self.source = source
        self.plan = plan
        self.spec = spec

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        bucket_id, slots = self.plan[step]
        bucket = self.spec.buckets[bucket_id]
        H, W = bucket
        B, N, S = len(slots), self.spec.max_instances, self.spec.mask_size
        out = {
            "image": np.zeros((B, H, W, 3), np.float32),
            "image_info": np.zeros((B, 5), np.float32),
            "image_id": np.full((B,), -1, np.int64),
            "gt_boxes": np.zeros((B, N, 4), np.float32),
            "gt_classes": np.zeros((B, N), np.int32),
            "gt_masks": np.zeros((B, N, S, S), np.uint8),
            "gt_valid": np.zeros((B, N), bool),
            "gt_crowd": np.zeros((B, N), bool),
            "gt_keypoints": np.zeros((B, N, self.spec.num_keypoints, 3), np.float32),
            "is_padding": np.array([s.index < 0 for s in slots], bool),
        }
        real = [s.index for s in slots if s.index >= 0]
        records = self.source.__getitems__(real) if real else []
        r = 0
        for i, slot in enumerate(slots):
            if slot.index < 0:
                continue
            _fill_example(out, i, records[r], slot, bucket, self.spec)
            r += 1
        return out


# --- worker processes ----------------------------------------------------------------------

# How often a worker checks that its parent is alive (seconds).
PARENT_CHECK_S = 0.25


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(PARENT_CHECK_S)
        if os.getppid() != parent_pid:
            # The parent is gone (killed, out of memory, timed out): nobody reads
            # what this worker makes, and it holds the parent's stderr open.
            os._exit(1)


def start_worker(parent_pid: int, worker_index: int, worker_count: int) -> None:
    """Run in each worker process before it makes batches (grain's worker_init_fn).

    A worker ends when its parent ends, however it ends: a thread watches the
    parent's pid (portable, and unlike Linux's PR_SET_PDEATHSIG not tied to the
    parent *thread* that started the worker, which grain may start from a
    thread pool). Its stdout is /dev/null: workers print nothing a user reads
    there, and an inherited stdout would keep a caller's capture of mrcli's
    output open; stderr stays, for their warnings. Ctrl-C reaches the whole
    process group; a worker ignores it (a KeyboardInterrupt traceback per
    worker otherwise) and is stopped by its parent, which saves and exits."""
    del worker_index, worker_count
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.getppid() != parent_pid:  # the parent died while this one started
        os._exit(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True,
                     name="mrcli-watch-parent").start()  # fmt: skip


def _own_copy(value: Any) -> np.ndarray:
    """A worker's array as a plain array of this process, its shared memory
    released now.

    grain hands batches over as SharedMemoryArrays and unlinks them when they
    are garbage collected; but it keeps the last ones referenced inside its
    iterator until the interpreter shuts down, when their `__del__` can no
    longer run (grain 0.2.18), and the resource tracker then reports leaked
    shared memory. The copy is taken here anyway (callers keep batches), so
    the shared memory is unlinked here, once."""
    out = np.array(value)
    shm = getattr(value, "shm", None)
    if shm is not None and getattr(value, "_unlink_on_del", False):
        value._unlink_on_del = False  # this process unlinks it, not grain's __del__
        shm.close()
        shm.unlink()
    return out


# --- iterators -----------------------------------------------------------------------------


class BatchIterator(Iterator[dict[str, np.ndarray]]):
    """Batches from step `step` on; `get_state()` / `set_state()` resume exactly.

    Close it (or use it as a context manager) to stop the worker processes."""

    def __init__(self, source, plan: Plan, spec: Spec, *, num_workers: int, stop: int,
                 step: int = 0, threads: int = 1):
        self._source, self._plan, self._spec = source, plan, spec
        self._workers = int(num_workers)
        self._threads = int(threads)
        self._stop = int(stop)
        self.step = int(step)
        self._it = None

    @property
    def plan(self) -> Plan:
        return self._plan

    def __len__(self) -> int:
        """Batches left."""
        return max(0, self._stop - self.step)

    def _start(self) -> None:
        import grain

        ds = grain.MapDataset.range(self.step, self._stop).map(
            MakeBatch(self._source, self._plan, self._spec)
        )
        it_ds = ds.to_iter_dataset(
            grain.ReadOptions(num_threads=self._threads, prefetch_buffer_size=max(1, self._threads))
        )
        if self._workers > 0:
            # grain reads absl flags when it starts workers; outside absl.app
            # nobody parsed them, so take the defaults.
            from absl import flags

            if not flags.FLAGS.is_parsed():
                flags.FLAGS.mark_as_parsed()
            it_ds = it_ds.mp_prefetch(
                grain.MultiprocessingOptions(num_workers=self._workers, per_worker_buffer_size=1),
                worker_init_fn=functools.partial(start_worker, os.getpid()),
            )
        self._it = iter(it_ds)

    def __next__(self) -> dict[str, np.ndarray]:
        if self.step >= self._stop:
            raise StopIteration
        if self._it is None:
            self._start()
        batch = next(self._it)
        if self._workers > 0:
            # Worker batches arrive as grain SharedMemoryArrays: plain copies,
            # the shared memory freed at once (and kept out of callers' hands).
            batch = {k: _own_copy(v) for k, v in batch.items()}
        self.step += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        """JSON-able: the next step, and what it is a step of."""
        return {"step": self.step, "seed": self._plan.seed, "global_batch": self._plan.global_batch,
                "num_examples": self._plan.n, "train": self._plan.train}

    def set_state(self, state: dict[str, Any]) -> None:
        for key in ("seed", "global_batch", "num_examples", "train"):
            if key in state and state[key] != self.get_state()[key]:
                raise UserError(
                    f"cannot resume the data iterator: its saved {key} is {state[key]!r} but this "
                    f"run has {self.get_state()[key]!r} (same dataset, seed and batch size needed)"
                )
        self.close()
        self.step = int(state["step"])

    def close(self) -> None:
        it, self._it = self._it, None
        if it is not None and hasattr(it, "close"):
            it.close()

    def __enter__(self) -> BatchIterator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def repeat_factors(image_classes: list[np.ndarray], threshold: float) -> np.ndarray:
    """[N] repeat factor of each image (Gupta et al. 2019, LVIS, eq. 1; Detectron2's
    RepeatFactorTrainingSampler): for each class c, f_c the fraction of images
    holding it and r_c = max(1, sqrt(threshold / f_c)); an image's factor is
    its rarest class's r_c, 1 for an image without instances."""
    n = max(1, len(image_classes))
    present: dict[int, int] = {}
    for classes in image_classes:
        for c in np.unique(classes):
            present[int(c)] = present.get(int(c), 0) + 1
    r_class = {c: max(1.0, math.sqrt(threshold / (k / n))) for c, k in present.items()}
    return np.array([max((r_class[int(c)] for c in classes), default=1.0) for classes in image_classes],
                    np.float64)


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    return process_index, process_count


def training_images(cfg: Config, dataset: Dataset, split: str) -> np.ndarray | None:
    """The records a training epoch draws from: for a keypoint model those with at
    least data.min_keypoints_per_image labelled keypoints (Detectron2's
    filter_images_with_few_keypoints), else all (None)."""
    least = cfg.data.min_keypoints_per_image
    if not cfg.model.keypoints or least <= 0:
        return None
    keep = np.flatnonzero(dataset.keypoint_counts(split) >= least)
    if not len(keep):
        raise UserError(f"no image of {dataset.name!r} {split} has {least} labelled keypoint(s) "
                        f"(data.min_keypoints_per_image={least}); label keypoints, or lower it")  # fmt: skip
    return keep


def train_batches(
    cfg: Config,
    dataset: Dataset,
    *,
    split: str | None = None,
    global_batch: int | None = None,
    seed: int | None = None,
    start_step: int = 0,
    num_steps: int | None = None,
    num_workers: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> BatchIterator:
    """Endless (or `num_steps`) augmented training batches from `start_step`.

    Defaults: split data.train_split, global batch train.global_batch, seed
    train.seed, workers data.num_workers, process from jax."""
    split = dataset.check_split(split or cfg.data.train_split)
    pi, pc = _process(process_index, process_count)
    index = dataset.index(split)
    threshold = cfg.data.repeat_factor_threshold
    repeat = repeat_factors(dataset.image_classes(split), threshold) if threshold > 0 else None
    plan = Plan(index["height"], index["width"], cfg=cfg, train=True,
                seed=cfg.train.seed if seed is None else seed,
                global_batch=global_batch or cfg.train.global_batch,
                process_index=pi, process_count=pc, repeat=repeat,
                images=training_images(cfg, dataset, split))  # fmt: skip
    stop = _FOREVER if num_steps is None else start_step + int(num_steps)
    return BatchIterator(dataset.source(split), plan, Spec.from_config(cfg, dataset, train=True),
                         num_workers=cfg.data.num_workers if num_workers is None else num_workers,
                         stop=stop, step=start_step)


def eval_batches(
    cfg: Config,
    dataset: Dataset,
    *,
    split: str | None = None,
    global_batch: int | None = None,
    max_images: int | None = None,
    num_workers: int | None = None,
    part: tuple[int, int] = (0, 1),
    skip: np.ndarray | None = None,
) -> BatchIterator:
    """Every image of the split exactly once (the first `max_images` if > 0),
    no augmentation, the last batch of each bucket padded with is_padding.

    `part` (p, P): only images p, p + P, p + 2P, ... of those, in batches of
    `global_batch` of their own: what process p of P evaluates on its own
    devices (inference.evaluate_split); the P parts hold every image once.
    `skip`: record indices left out (those evaluated tile by tile)."""
    split = dataset.check_split(split or cfg.data.eval_split)
    p, num_parts = part
    if not 0 <= p < num_parts:
        raise ValueError(f"part {p} not in [0, {num_parts})")
    index = dataset.index(split)
    limit = cfg.eval.max_images if max_images is None else max_images
    n = len(index["height"]) if not limit else min(limit, len(index["height"]))
    plan = Plan(index["height"][:n], index["width"][:n], cfg=cfg, train=False, seed=0,
                global_batch=global_batch or cfg.eval.batch_size,
                process_index=0, process_count=1,
                images=np.setdiff1d(np.arange(n)[p::num_parts],
                                    np.zeros(0, np.int64) if skip is None else np.asarray(skip, np.int64)))
    return BatchIterator(dataset.source(split), plan, Spec.from_config(cfg, dataset),
                         num_workers=cfg.data.num_workers if num_workers is None else num_workers,
                         stop=len(plan), step=0)


def example_batch(cfg: Config, dataset: Dataset, split: str, indices: list[int], *,
                  train: bool = False, seed: int = 0, flip: bool | None = None) -> dict[str, np.ndarray]:
    """One batch of the given records (in the main process; for tests and
    `mrcli show`): eval processing, or training augmentation as at epoch 0.
    `flip` forces the flip on or off. All images must share a bucket."""
    index = dataset.index(split)
    plan = Plan(index["height"], index["width"], cfg=cfg, train=train, seed=seed,
                global_batch=1, process_index=0, process_count=1) if train else None
    spec = Spec.from_config(cfg, dataset, train=train)
    d = cfg.data
    scales = d.resolved_train_scales() if train else (d.image_size,)
    if plan is not None and plan.crop:
        buckets = plan.bucket_of[np.asarray(indices, np.int64)]
    else:
        buckets = assign_buckets(index["height"][indices], index["width"][indices], max(scales),
                                 d.max_size, spec.buckets)
    if len(set(buckets.tolist())) > 1:
        raise ValueError(f"records {indices} fall into different buckets {buckets.tolist()}")
    slots = []
    for i in indices:
        s = plan._augment(0, i) if plan is not None else Slot(int(i), d.image_size, False)
        if flip is not None:
            s = dataclasses.replace(s, flip=flip)
        slots.append(s)

    class _One:
        def __getitem__(self, step):
            return int(buckets[0]), slots

    return MakeBatch(dataset.source(split), _One(), spec)(0)  # type: ignore[arg-type]


def denormalize(image: np.ndarray, cfg: Config) -> np.ndarray:
    """A normalised [..., H, W, 3] image back to RGB uint8 (for display)."""
    m = cfg.model.input
    x = image * np.asarray(m.pixel_std, np.float32) + np.asarray(m.pixel_mean, np.float32)
    if m.pixel_order == "bgr":
        x = x[..., ::-1]
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


__all__ = [
    "KEYS", "Spec", "Plan", "Slot", "BatchIterator", "MakeBatch", "batch_shapes", "empty_batch",
    "train_batches", "eval_batches", "example_batch", "denormalize", "assign_buckets",
    "resize_scale", "resized_size", "fit_size", "image_input", "training_images",
    "train_crop_size", "crop_bucket", "train_buckets",
]
