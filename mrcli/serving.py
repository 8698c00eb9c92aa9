"""Serve a model exported by `mrcli export` (StableHLO) with jax and numpy only.

    from mrcli import serving

    model = serving.load("exported/")
    det = model(rgb)                  # rgb: [h, w, 3] uint8 numpy, any size
    det["boxes"], det["scores"], det["names"], det["masks"]   # masks: [n, h, w] bool
    dets = model.predict([rgb1, rgb2, ...], score_threshold=0.3)   # any number

This module imports jax, numpy and the standard library (plus
mrcli.ops.masks and mrcli.ops.keypoints for pasting masks and decoding
keypoint heatmaps, themselves jax + numpy, and Pillow for shrinking
oversized images): no flax, optax, orbax, TensorFlow or the rest of mrcli.
The exported function does the resizing, normalisation and padding itself;
what is left here is fitting images into the fixed input shape and pasting
the 28 x 28 masks into the original images (the same paste as `mrcli eval`
and `mrcli predict`).

Any image size is taken. An image larger than the export's input capacity
(export.json "max_input_size", `mrcli export --max-input-size`) is first
shrunk on the host to fit it, keeping its aspect ratio, with Pillow's
bilinear filter (antialiased when reducing: the resampling the exported
function itself uses); boxes and masks still come back in the original
image's pixels. Detections scoring below `score_threshold` (default 0.5, as
`mrcli predict --score`) are left out.

Per image, `model(rgb)` returns a dict (n = the image's detections, best first):

    boxes         [n, 4]    float32  x1, y1, x2, y2 in the image's pixels
    scores        [n]       float32
    classes       [n]       int32    contiguous class 1..K
    category_ids  [n]       int64    the dataset's category ids
    names         list[str]          category names
    masks         [n, h, w] bool     pasted and thresholded at 0.5 (paste=False: None)
    mask_probs    [n, M, M] float32  the model's masks over the boxes (M = 28)
    keypoints     [n, K, 3] float32  x, y in the image's pixels and a score per keypoint
    keypoint_names list[str]         the K keypoints' names
    height, width int

(no masks / mask_probs keys for a box-only model, no keypoint keys without a
keypoint head). `model.run(images,
image_sizes)` calls the exported function itself (export.json's signature).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np

from mrcli.config import DEFAULT_SCORE
from mrcli.ops.keypoints import heatmaps_to_keypoints
from mrcli.ops.masks import paste_masks

# The artifact's format and record file; mrcli.export writes what these name.
FORMAT = "mrcli-export/1"
RECORD = "export.json"

__all__ = ["Model", "load", "read_record", "fit", "pack", "image_detections", "run_batches",
           "decode_keypoints", "DEFAULT_SCORE"]


def read_record(directory: str | Path) -> dict[str, Any]:
    """export.json of an exported model directory (ValueError if it is not one)."""
    path = Path(directory).expanduser() / RECORD
    if not path.is_file():
        raise ValueError(f"{Path(directory)} is not an exported mrcli model (no {RECORD}); "
                         "write one with `mrcli export --out DIR`")  # fmt: skip
    record = json.loads(path.read_text())
    if record.get("format") != FORMAT:
        raise ValueError(f"{path}: format {record.get('format')!r}, this reader takes {FORMAT!r}")
    return record


def pack(
    images: Sequence[np.ndarray],  # up to B images, each [h, w, 3] uint8
    batch_size: int,
    capacity: tuple[int, int],  # (Hc, Wc)
) -> tuple[np.ndarray, np.ndarray]:  # images [B, Hc, Wc, 3] uint8, image_sizes [B, 2] int32
    """The exported function's inputs: each image top-left in a zero buffer; empty
    slots (fewer images than the batch) are 1 x 1 black images."""
    Hc, Wc = capacity
    if len(images) > batch_size:
        raise ValueError(f"{len(images)} images for a batch of {batch_size}")
    buf = np.zeros((batch_size, Hc, Wc, 3), np.uint8)
    sizes = np.ones((batch_size, 2), np.int32)
    for i, rgb in enumerate(images):
        rgb = np.asarray(rgb)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"image {i}: expected an [h, w, 3] uint8 RGB array, got "
                             f"{rgb.dtype} {rgb.shape}")  # fmt: skip
        h, w = rgb.shape[:2]
        if not (1 <= h <= Hc and 1 <= w <= Wc):
            raise ValueError(f"image {i} is {h}x{w}, larger than this export's input capacity "
                             f"{Hc}x{Wc}; shrink it, or re-export with "
                             f"`mrcli export --max-input-size {max(h, Hc)}x{max(w, Wc)}`")  # fmt: skip
        buf[i, :h, :w] = rgb
        sizes[i] = (h, w)
    return buf, sizes


def _is_rgb(rgb: np.ndarray) -> bool:
    return rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and min(rgb.shape[:2]) >= 1


def fit(rgb: np.ndarray, capacity: tuple[int, int]) -> np.ndarray:
    """`rgb` ([h, w, 3] uint8) if it fits `capacity` (Hc, Wc), else shrunk to
    fit it with its aspect ratio kept (Pillow bilinear, antialiased)."""
    h, w = rgb.shape[:2]
    Hc, Wc = capacity
    if h <= Hc and w <= Wc:
        return rgb
    from PIL import Image

    scale = min(Hc / h, Wc / w)
    size = (min(Wc, max(1, round(w * scale))), min(Hc, max(1, round(h * scale))))  # PIL: (w, h)
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize(size, Image.BILINEAR))


def image_detections(
    outputs: dict[str, np.ndarray],  # the exported function's outputs (batched)
    i: int,
    record: dict[str, Any],
    paste: bool = True,
    original: tuple[int, int] | None = None,  # (h, w) the image had before `fit`
    score_threshold: float = 0.0,
) -> dict[str, Any]:
    """Image i of a batch's outputs as the per-image dict of the module
    docstring: detections scoring at least `score_threshold`, boxes scaled
    from the fitted image to `original` pixels (default: as given)."""
    h, w = (int(v) for v in outputs["_image_sizes"][i])
    H, W = original or (h, w)
    scores = np.asarray(outputs["scores"][i, :int(outputs["num_detections"][i])], np.float32)
    n = int(np.sum(scores >= score_threshold))  # best first: a prefix
    ids = {int(c["contiguous_id"]): (int(c["id"]), str(c["name"])) for c in record["categories"]}
    classes = np.asarray(outputs["classes"][i, :n], np.int32)
    boxes = np.asarray(outputs["boxes"][i, :n], np.float32)
    if (H, W) != (h, w):
        boxes = boxes * np.array([W / w, H / h, W / w, H / h], np.float32)
    det: dict[str, Any] = {
        "boxes": boxes,
        "scores": scores[:n],
        "classes": classes,
        "category_ids": np.array([ids.get(int(c), (-1, ""))[0] for c in classes], np.int64),
        "names": [ids.get(int(c), (-1, "?"))[1] for c in classes],
        "height": H,
        "width": W,
    }
    if "masks" in outputs:
        probs = np.asarray(outputs["masks"][i, :n], np.float32)
        det["mask_probs"] = probs
        det["masks"] = None
        if paste:
            det["masks"] = paste_masks(probs, det["boxes"], H, W,
                                       threshold=float(record.get("mask_threshold", 0.5)))  # fmt: skip
    if "keypoint_heatmaps" in outputs:
        kps = decode_keypoints(outputs, i, n, float(record.get("keypoint_offset", 0.0)))
        if (H, W) != (h, w):  # like the boxes: from the fitted image to the original's pixels
            kps[..., :2] *= np.array([W / w, H / h], np.float32)
        det["keypoints"] = kps
        det["keypoint_names"] = list(record.get("keypoint_names", []))
    return det


def decode_keypoints(outputs: dict[str, np.ndarray], i: int, n: int, offset: float) -> np.ndarray:
    """[n, K, 3] keypoints (x, y in original pixels, score) of image i's n detections,
    from the exported keypoint outputs (export.json's keypoint_decode)."""
    xy, scores = heatmaps_to_keypoints(np.asarray(outputs["keypoint_heatmaps"][i, :n], np.float32),
                                       np.asarray(outputs["keypoint_boxes"][i, :n], np.float32))  # fmt: skip
    xy = xy * np.asarray(outputs["keypoint_scale"][i], np.float32) - np.float32(offset)
    return np.concatenate([xy, scores[..., None]], axis=-1)


def run_batches(
    run: Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]],  # (images, image_sizes) -> outputs
    record: dict[str, Any],
    images: Sequence[np.ndarray],
    paste: bool = True,
    score_threshold: float = DEFAULT_SCORE,
) -> list[dict[str, Any]]:
    """Any number of images of any size through an exported function of a
    fixed batch size and input capacity (module docstring)."""
    B = int(record["batch_size"])
    capacity = tuple(record["max_input_size"])
    out = []
    for start in range(0, len(images), B):
        chunk = [np.asarray(rgb) for rgb in images[start: start + B]]
        fitted = [fit(rgb, capacity) if _is_rgb(rgb) else rgb for rgb in chunk]  # pack names the rest
        buf, sizes = pack(fitted, B, capacity)
        outputs = dict(run(buf, sizes))
        outputs["_image_sizes"] = sizes
        out.extend(image_detections(outputs, i, record, paste, original=rgb.shape[:2],
                                    score_threshold=score_threshold)
                   for i, rgb in enumerate(chunk))  # fmt: skip
    return out


class Model:
    """An exported model, loaded: call it on an image, or `predict` a list."""

    def __init__(self, directory: str | Path):
        directory = Path(directory).expanduser()
        self.record = read_record(directory)
        if self.record.get("artifact") != "stablehlo":
            raise ValueError(f"{directory} holds a {self.record.get('artifact')} export; load it "
                             "with TensorFlow (tf.saved_model.load), or export --format stablehlo")  # fmt: skip
        files = self.record["files"]
        self.exported = jax.export.deserialize(bytearray((directory / files["module"]).read_bytes()))
        backend = jax.export.default_export_platform()  # "cpu", "cuda", "rocm", "tpu"
        if backend not in self.exported.platforms:
            raise ValueError(f"{directory} was exported for {', '.join(self.exported.platforms)}, "
                             f"not for this machine's {backend}; re-export with "
                             f"`mrcli export --platforms {backend}`")  # fmt: skip
        with np.load(directory / files["weights"], allow_pickle=False) as z:
            weights = {k: z[k] for k in z.files}
        expected = jax.tree_util.tree_unflatten(self.exported.in_tree, self.exported.in_avals)[0][0]
        if set(weights) != set(expected) or any(
            tuple(weights[k].shape) != tuple(a.shape) or weights[k].dtype != a.dtype
            for k, a in expected.items()
        ):
            raise ValueError(f"{directory / files['weights']} does not fit "
                             f"{directory / files['module']} (not written together?)")  # fmt: skip
        self.weights = jax.device_put(weights)
        self._call = jax.jit(self.exported.call)

    @property
    def batch_size(self) -> int:
        return int(self.record["batch_size"])

    @property
    def max_input_size(self) -> tuple[int, int]:
        return tuple(self.record["max_input_size"])

    @property
    def categories(self) -> list[dict[str, Any]]:
        return self.record["categories"]

    def run(self, images: np.ndarray, image_sizes: np.ndarray) -> dict[str, np.ndarray]:
        """The exported function: images [B, Hc, Wc, 3] uint8, image_sizes [B, 2] int32
        -> boxes, scores, classes, masks, num_detections (numpy)."""
        return jax.device_get(self._call(self.weights, images, image_sizes))

    def predict(self, images: Sequence[np.ndarray], paste: bool = True,
                score_threshold: float = DEFAULT_SCORE) -> list[dict[str, Any]]:  # fmt: skip
        """Detections scoring at least `score_threshold` of each image ([h, w, 3]
        uint8 RGB, any size), in order."""
        return run_batches(self.run, self.record, images, paste, score_threshold)

    def __call__(self, image: np.ndarray, paste: bool = True,
                 score_threshold: float = DEFAULT_SCORE) -> dict[str, Any]:  # fmt: skip
        return self.predict([image], paste, score_threshold)[0]


def load(directory: str | Path) -> Model:
    """Load a StableHLO export (`mrcli export --out DIRECTORY`)."""
    return Model(directory)
