"""`mrcli export`: a trained model as a serving artifact that carries everything.

    result = export_model(trained, "exported/")                 # StableHLO (jax.export)
    result = export_model(trained, "exported_tf/", format="savedmodel")
    report = verify("exported/", trained, images)               # artifact vs the native model

THE FUNCTION
============

One pure function is exported, with the model's weights as its first argument
(so they live in a file beside the program, and a SavedModel keeps them as
variables)::

    serve(weights, images, image_sizes) -> {boxes, scores, classes, masks, keypoint_heatmaps,
                                           keypoint_boxes, keypoint_scale, num_detections}

    images          [B, Hc, Wc, 3] uint8   RGB, each image at the top-left; pixels
                                           outside its size are ignored
    image_sizes     [B, 2]         int32   (height, width) of each image, 1..Hc x 1..Wc
    boxes           [B, D, 4]      float32 xyxy in the ORIGINAL image's pixels
    scores          [B, D]         float32 best first; 0 in empty slots
    classes         [B, D]         int32   contiguous 1..K (export.json maps them to
                                           the dataset's category ids and names); 0 empty
    masks           [B, D, M, M]   float32 probability of the detected class's mask over
                                           its box (M = 28); absent for box-only models
    keypoint_heatmaps [B, D, K, S, S] float32 keypoint models: logits over each
                                           detection's keypoint_boxes (S = 56)
    keypoint_boxes  [B, D, 4]      float32 those boxes in the model's input (resized) pixels
    keypoint_scale  [B, 2]         float32 (x, y) from input pixels to original pixels
    num_detections  [B]            int32   slots [0, n) are detections, the rest zeros

Inside: the input pipeline's evaluation preprocessing, bit for bit
(mrcli.data.device_input: resize with short side data.image_size and long
side <= data.max_size, shrunk further to fit the bucket, PIL's bilinear
resampling, the pixel profile's channel order and normalisation, zero
padding of the normalised image into the bucket), `Model.detect`, and the
boxes mapped back to original pixels by resized / original size per axis
(torchvision's postprocess, mrcli.inference.to_original). Pasting the
28 x 28 masks into full-size images happens on the host (mrcli.serving,
with the same paste as `mrcli eval`): full-size masks of every slot would
be [B, D, Hc, Wc] outputs. Keypoints likewise: their decode resizes each
heatmap to its box's size (torchvision's heatmaps_to_keypoints), not a static
shape, so the function gives the heatmaps and the boxes they span, and
export.json's `keypoint_decode` says what mrcli.serving (and `mrcli eval`) do
with them.

THE ARTIFACT
============

    OUT/export.json      format, signature (inputs, outputs), category map,
                         pixel profile, bucket and input capacity, resize rule,
                         thresholds, platforms, versions, source
    OUT/model.stablehlo  stablehlo: `jax.export` serialisation (for `platforms`)
    OUT/weights.npz      stablehlo: the weights, {"path/of/variable": array}
    OUT/savedmodel/      savedmodel: `tf.saved_model` over `jax2tf.convert` of the same
                         function, weights as variables, signature "serving_default"
                         (images, image_sizes) -> the outputs above

Everything is written into a temporary sibling directory and renamed into
place (docs/design.md §7). `mrcli.serving.load(OUT)` runs a stablehlo artifact with
jax and numpy only.

Dimension key: B batch, Hc/Wc input capacity, H/W bucket, D detections,
M mask side, K classes, h/w one original image.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import PIL

from mrcli import __version__, checkpoints, serving
from mrcli import model as model_lib
from mrcli.checkpoints import replace_dir
from mrcli.data import images as imagelib
from mrcli.data.device_input import InputSpec, model_input
from mrcli.data.inputs import UnreadableImage, find_images, read_image
from mrcli.data.store import find_dataset
from mrcli.errors import UserError
from mrcli.inference import MASK_THRESHOLD, ImageDetections, Predictor
from mrcli.keypoint_sets import KeypointSet
from mrcli.progress import Report, silent
from mrcli.runs import TrainedModel, load_trained, with_sets
from mrcli.serving import FORMAT, RECORD

MODULE = "model.stablehlo"
WEIGHTS = "weights.npz"
SAVEDMODEL = "savedmodel"
FORMATS = ("stablehlo", "savedmodel")
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
# --verify's bar (issue 7): boxes within 0.5 px, mask IoU > 0.99, same classes;
# keypoints within 1 px (the keypoint parity bar, issue 14).
BOX_TOLERANCE = 0.5
MIN_MASK_IOU = 0.99
KEYPOINT_TOLERANCE = 1.0
TF_INSTALL = 'pip install "mrcli[tf]"'


# --- options -------------------------------------------------------------------------------


def parse_size(text: str | None, flag: str) -> tuple[int, int] | None:
    """'800x1344' -> (800, 1344); None stays None; anything else is a UserError."""
    if text is None:
        return None
    parts = text.lower().replace(" ", "").split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected HEIGHTxWIDTH in pixels, e.g. {flag} 800x1344") from None
    if h < 1 or w < 1:
        raise UserError(f"{flag} {text!r}: height and width must be positive")
    return h, w


def parse_platforms(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """'cpu,cuda' -> ('cpu', 'cuda'); unknown names are a UserError."""
    if text is None:
        return ("cpu", "cuda")
    names = [p.strip().lower() for p in (text.split(",") if isinstance(text, str) else text)]
    names = [p for p in names if p]
    bad = [p for p in names if p not in PLATFORMS]
    if bad or not names:
        raise UserError(f"--platforms {','.join(names) or text!r}: name some of {', '.join(PLATFORMS)} "
                        "(comma-separated, e.g. --platforms cpu,cuda)")  # fmt: skip
    return tuple(dict.fromkeys(names))


def _pillow_vertical_first() -> bool:
    """Whether the installed Pillow (which the input pipeline resizes with) runs the
    vertical pass first for strongly shrunk heights: Pillow >= 13 does."""
    return int(PIL.__version__.split(".")[0]) >= 13


def input_spec(cfg: Any, bucket: tuple[int, int], capacity: tuple[int, int]) -> InputSpec:
    """The static preprocessing of a model config (mrcli.data.device_input.InputSpec)."""
    pixels = cfg.model.input
    return InputSpec(
        capacity=tuple(capacity), bucket=tuple(bucket), short=int(cfg.data.image_size),
        max_size=int(cfg.data.max_size), bgr=pixels.pixel_order == "bgr",
        mean=tuple(float(v) for v in pixels.pixel_mean),
        std=tuple(float(v) for v in pixels.pixel_std),
        vertical_first_rule=_pillow_vertical_first(), resize=pixels.resize,
    )  # fmt: skip


def _check_bucket(cfg: Any, bucket: tuple[int, int]) -> None:
    div = int(cfg.data.size_divisor)
    if bucket[0] % div or bucket[1] % div:
        raise UserError(
            f"--image-size {bucket[0]}x{bucket[1]}: both sides must be multiples of "
            f"data.size_divisor={div} (the FPN's coarsest stride), e.g. "
            f"{-(-bucket[0] // div) * div}x{-(-bucket[1] // div) * div}"
        )


# --- the function --------------------------------------------------------------------------


def flat_weights(state: Any) -> dict[str, np.ndarray]:
    """The model state as {"backbone/res2/0/conv1/kernel": array} (host numpy)."""
    pure = state.to_pure_dict() if hasattr(state, "to_pure_dict") else state
    flat = checkpoints.flatten(pure)
    out = {}
    for path, value in flat.items():
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf" or arr.dtype.itemsize > 8 or arr.dtype.name == "bfloat16":
            arr = arr.astype(np.float32)  # npz holds numpy dtypes; restore casts back
        out["/".join(path)] = arr
    return out


def serving_function(model: model_lib.Model, spec: InputSpec) -> Callable:
    """`serve(weights, images, image_sizes) -> outputs` (module docstring) for `model`
    with preprocessing `spec`."""
    _, abstract = model_lib.abstract(model.cfg)

    def serve(weights: dict[str, jax.Array], images: jax.Array, image_sizes: jax.Array):
        pure = checkpoints.unflatten({tuple(k.split("/")): v for k, v in weights.items()})
        full = checkpoints.restore(abstract, pure, origin="the exported weights")
        x, info = model_input(images, image_sizes, spec)  # [B,H,W,3], [B,5]
        dets = model.detect(full, x, info)
        # Original pixels: resized / original per axis, as inference.to_original.
        with jax.enable_x64(True):
            hw = image_sizes.astype(jnp.float64)
            resized = info[:, 3:5].astype(jnp.float64)
            ry, rx = (hw / resized).astype(jnp.float32).T  # [B] each
        ratio = jnp.stack([rx, ry, rx, ry], axis=1)[:, None, :]  # [B,1,4]
        valid = dets["valid"]
        out = {
            "boxes": jnp.where(valid[..., None], dets["boxes"] * ratio, 0.0),
            "scores": jnp.where(valid, dets["scores"], 0.0),
            "classes": jnp.where(valid, dets["classes"], 0).astype(jnp.int32),
            "num_detections": jnp.sum(valid, axis=1).astype(jnp.int32),
        }
        if "masks" in dets:
            out["masks"] = jnp.where(valid[..., None, None], dets["masks"], 0.0).astype(jnp.float32)
        if "keypoint_heatmaps" in dets:
            out["keypoint_heatmaps"] = jnp.where(valid[..., None, None, None], dets["keypoint_heatmaps"],
                                                 0.0).astype(jnp.float32)  # fmt: skip
            out["keypoint_boxes"] = jnp.where(valid[..., None], dets["boxes"], 0.0)
            out["keypoint_scale"] = jnp.stack([rx, ry], axis=1)
        return out

    return serve


_DOCS = {
    "images": "RGB pixels, each image at the top-left; the rest is ignored",
    "image_sizes": "(height, width) of each image, 1..Hc x 1..Wc",
    "boxes": "x1, y1, x2, y2 in original image pixels; zeros in empty slots",
    "scores": "best first; 0 in empty slots",
    "classes": "contiguous class 1..K (see categories); 0 in empty slots",
    "masks": "mask probability of the detected class over its box (paste at the box, "
             "threshold 0.5)",
    "num_detections": "slots [0, n) hold detections",
    "keypoint_heatmaps": "per detection and keypoint, logits over the detection's keypoint_boxes "
                         "(decode: see keypoint_decode)",
    "keypoint_boxes": "the boxes in the model's input (resized image) pixels, which the heatmaps span",
    "keypoint_scale": "(x, y) factors from the model's input pixels to the original image's",
}  # fmt: skip
_OUTPUT_ORDER = ("boxes", "scores", "classes", "masks", "keypoint_heatmaps", "keypoint_boxes",
                 "keypoint_scale", "num_detections")  # fmt: skip
# How to turn the keypoint outputs into keypoints (export.json; mrcli.serving does
# it with mrcli.ops.keypoints.heatmaps_to_keypoints, as `mrcli eval` and predict).
KEYPOINT_DECODE = (
    "torchvision's heatmaps_to_keypoints: per detection, with its keypoint_box (x1, y1, x2, y2), "
    "w = max(x2 - x1, 1), h = max(y2 - y1, 1): resize each S x S heatmap bicubically "
    "(align_corners=False, A = -0.75) to ceil(h) x ceil(w), take its argmax (i, j) (row, column; "
    "the first on ties); x = x1 + (j + 0.5) * w / ceil(w), y = y1 + (i + 0.5) * h / ceil(h); "
    "the score is the resized map's value there. Then x *= keypoint_scale[0], y *= "
    "keypoint_scale[1], and subtract keypoint_offset from both."
)


def signature(serve: Callable, args: tuple) -> dict[str, list[dict[str, Any]]]:
    """The inputs and outputs of the exported function (shapes and dtypes from
    tracing it), for export.json."""
    outs = jax.eval_shape(serve, *args)

    def entry(name: str, aval: Any) -> dict[str, Any]:
        return {"name": name, "dtype": str(aval.dtype), "shape": list(aval.shape), "doc": _DOCS[name]}

    return {
        "inputs": [entry("images", args[1]), entry("image_sizes", args[2])],
        "outputs": [entry(k, outs[k]) for k in _OUTPUT_ORDER if k in outs],
    }


# --- writing -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ExportResult:
    path: Path
    record: dict[str, Any]
    seconds: float


def _prepare_target(out: str | os.PathLike[str], overwrite: bool) -> Path:
    """The export's directory: new, empty, or (with `overwrite`) an earlier
    export, replaced as a whole once the new one is written (the rule of
    `mrcli predict`: nothing is replaced without --overwrite)."""
    target = Path(out).expanduser().resolve()
    if target.exists():
        if target.is_file():
            raise UserError(f"--out {out}: is a file; name a directory for the exported model")
        if any(target.iterdir()) and not (target / RECORD).is_file():
            raise UserError(f"--out {out}: exists and is not an mrcli export (no {RECORD}); "
                            "choose another --out or empty it")  # fmt: skip
        if (target / RECORD).is_file() and not overwrite:
            raise UserError(f"--out {out}: holds an exported model already; pass --overwrite to "
                            "replace it, or choose another --out")  # fmt: skip
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


# The default input capacity covers the model's dataset's largest image, up to
# this many times data.max_size a side (a panorama should not make every
# request's buffer huge; larger images are shrunk on the host by mrcli.serving).
CAPACITY_CAP = 4


def default_capacity(cfg: Any, bucket: tuple[int, int],
                     data_dir: str | os.PathLike[str] | None = None) -> tuple[tuple[int, int], str]:  # fmt: skip
    """(Hc, Wc) and why: the largest height and width of the images of the
    model's dataset (every split, as prepared) and the bucket, each at most
    CAPACITY_CAP x data.max_size; the bucket where the dataset is not here."""
    try:
        ds = find_dataset(cfg.data.dataset, data_dir)
    except UserError:
        return bucket, (f"input capacity {bucket[0]}x{bucket[1]}, the bucket (dataset "
                        f"{cfg.data.dataset!r} is not prepared here to size it from)")  # fmt: skip
    sizes = [v.get("max_size", [0, 0]) for v in ds.record["splits"].values()]
    cap = CAPACITY_CAP * int(cfg.data.max_size)
    hc = min(cap, max([bucket[0], *(int(h) for h, _ in sizes)]))
    wc = min(cap, max([bucket[1], *(int(w) for _, w in sizes)]))
    return (hc, wc), (f"input capacity {hc}x{wc}: the largest image of dataset {ds.name!r}"
                      + (f" (at most {cap} a side)" if cap in (hc, wc) else ""))



def export_model(
    trained: TrainedModel,
    out: str | os.PathLike[str],
    *,
    format: str = "stablehlo",
    batch_size: int = 1,
    image_size: tuple[int, int] | None = None,
    max_input_size: tuple[int, int] | None = None,
    platforms: Sequence[str] = ("cpu", "cuda"),
    overwrite: bool = False,
    data_dir: str | os.PathLike[str] | None = None,
    report: Report | None = None,
) -> ExportResult:
    """Write the serving artifact of `trained` to `out` (module docstring);
    an earlier export there is replaced only with `overwrite`.

    image_size: the bucket (H, W) the model runs at (default: the config's
    first bucket); max_input_size: the largest raw image taken as it is
    (default: default_capacity, the model's dataset's largest image; larger
    ones are shrunk by mrcli.serving)."""
    t0 = time.perf_counter()
    report = silent(report)
    _check_options(format, batch_size)
    if trained.categories is None:
        raise UserError(f"{trained.origin} carries no category map; an exported model needs "
                        "one (export a trained model or an imported detector)")  # fmt: skip
    cfg = trained.config
    bucket = tuple(image_size) if image_size else tuple(cfg.data.resolved_buckets()[0])
    _check_bucket(cfg, bucket)
    platforms = parse_platforms(platforms)
    if format == "savedmodel":
        _require_tensorflow()
    target = _prepare_target(out, overwrite)
    if max_input_size:
        capacity = tuple(max_input_size)
    else:
        capacity, why = default_capacity(cfg, bucket, data_dir)
        report.say(f"{why}; larger images are shrunk to it by mrcli.serving (--max-input-size "
                   "to change)", "detail")  # fmt: skip
    spec = input_spec(cfg, bucket, capacity)
    weights = flat_weights(trained.state)
    serve = serving_function(trained.model, spec)
    B, (Hc, Wc) = batch_size, capacity
    args = (
        {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in weights.items()},
        jax.ShapeDtypeStruct((B, Hc, Wc, 3), jnp.uint8),
        jax.ShapeDtypeStruct((B, 2), jnp.int32),
    )
    sig = signature(serve, args)
    masks_out = [o for o in sig["outputs"] if o["name"] == "masks"]
    kset = KeypointSet.of(trained.categories)
    record = {
        "format": FORMAT,
        "artifact": format,
        **sig,
        "batch_size": B,
        "max_input_size": [Hc, Wc],
        "bucket": list(bucket),
        "resize": {
            "short_side": int(cfg.data.image_size), "max_size": int(cfg.data.max_size),
            "method": ("PIL bilinear (antialiased), computed inside the function" if spec.resize == "pil"
                       else "torchvision's: the normalised image interpolated bilinearly without "
                       "antialiasing to the truncated size, computed inside the function"),
            "pillow_pass_order": "13+" if spec.vertical_first_rule else "<=12",
        },
        "pixel_profile": {"order": cfg.model.input.pixel_order, "mean": list(spec.mean),
                          "std": list(spec.std), "units": "0..255"},
        "categories": trained.categories,
        "num_classes": int(cfg.model.num_classes),
        "mask_size": masks_out[0]["shape"][-1] if masks_out else None,
        "mask_threshold": MASK_THRESHOLD,
        **({"keypoint_names": list(kset.names), "skeleton": [list(p) for p in kset.skeleton],
            "keypoint_offset": float(cfg.model.keypoint_head.coordinate_offset),
            "keypoint_decode": KEYPOINT_DECODE} if cfg.model.keypoints and kset is not None else {}),
        "score_threshold": float(cfg.model.inference.score_threshold),
        "detections_per_image": int(cfg.model.inference.detections_per_image),
        "platforms": list(platforms),
        "versions": {"mrcli": __version__, "jax": jax.__version__},
        "source": {"origin": str(trained.origin), "step": trained.step},
        "files": {},
    }  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        if format == "stablehlo":
            report.say(f"tracing and lowering for {', '.join(platforms)}", "detail")
            exported = jax.export.export(jax.jit(serve), platforms=platforms)(*args)
            (tmp / MODULE).write_bytes(exported.serialize())
            with open(tmp / WEIGHTS, "wb") as f:
                np.savez(f, **weights)
            record["files"] = {"module": MODULE, "weights": WEIGHTS}
            record["calling_convention_version"] = exported.calling_convention_version
        else:
            report.say(f"converting with jax2tf for {', '.join(platforms)}", "detail")
            _write_savedmodel(tmp / SAVEDMODEL, serve, weights, B, capacity, platforms)
            import tensorflow as tf

            record["files"] = {"savedmodel": SAVEDMODEL}
            record["versions"]["tensorflow"] = tf.__version__
            record["signature_name"] = "serving_default"
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        replace_dir(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(target, record, time.perf_counter() - t0)


def _check_options(format: str, batch_size: int) -> None:
    if format not in FORMATS:
        raise UserError(f"--format {format!r}: choose one of {', '.join(FORMATS)}")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")


def _require_tensorflow() -> None:
    try:
        import tensorflow  # noqa: F401
        from jax.experimental import jax2tf  # noqa: F401
    except ImportError as e:
        raise UserError(f"--format savedmodel needs TensorFlow ({e}); install it with "
                        f"{TF_INSTALL}, or export --format stablehlo") from None  # fmt: skip


def _write_savedmodel(path: Path, serve: Callable, weights: dict[str, np.ndarray], batch: int,
                      capacity: tuple[int, int], platforms: Sequence[str]) -> None:
    """tf.saved_model of jax2tf.convert(serve): weights as (non-trainable) variables,
    signature serving_default(images, image_sizes)."""
    import tensorflow as tf
    from jax.experimental import jax2tf

    tf_serve = jax2tf.convert(serve, with_gradient=False,
                              native_serialization_platforms=tuple(platforms))  # fmt: skip
    module = tf.Module()
    module.weights = {k: tf.Variable(v, trainable=False) for k, v in weights.items()}

    @tf.function(
        autograph=False,
        input_signature=[
            tf.TensorSpec((batch, *capacity, 3), tf.uint8, name="images"),
            tf.TensorSpec((batch, 2), tf.int32, name="image_sizes"),
        ],
    )
    def serving_default(images, image_sizes):
        return tf_serve(module.weights, images, image_sizes)

    module.serving_default = serving_default
    with _stablehlo_for_tensorflow():
        tf.saved_model.save(module, str(path), signatures={"serving_default": serving_default})


@contextlib.contextmanager
def _stablehlo_for_tensorflow():
    """Serialise the StableHLO inside the SavedModel at a version TensorFlow reads.

    jax.export writes StableHLO at a version about 4 weeks old (for jax 0.10:
    1.15), where CHLO ops such as top_k travel as `vhlo.composite_v2`; a
    TensorFlow built against an older StableHLO (2.21: 1.13.7) cannot read that
    ("failed to deserialize portable artifact"). StableHLO's serializer can
    target any older version it supports, so while jax2tf traces, target the
    smaller of jax's choice and TensorFlow's own version. This reaches into
    jax's private `_module_to_bytecode` (the only place the target is chosen);
    where that is missing the module is left as jax writes it, and `--verify`
    shows whether TensorFlow runs it."""
    from jax._src import xla_bridge
    from jax._src.export import _export as export_internal
    from jax._src.lib import _jax
    from jax._src.lib.mlir.dialects import hlo
    from tensorflow.compiler.mlir.stablehlo import stablehlo as tf_stablehlo

    original = getattr(export_internal, "_module_to_bytecode", None)
    if original is None:  # pragma: no cover - another jax
        yield
        return
    jax_target = hlo.get_version_from_compatibility_requirement(
        hlo.StablehloCompatibilityRequirement.WEEK_4)  # fmt: skip
    target = tf_stablehlo.get_smaller_version(jax_target, tf_stablehlo.get_current_version())

    def to_bytecode(module):
        return _jax.mlir.serialize_portable_artifact(
            module, target, xla_bridge.get_backend().serialize_with_sdy
        )

    export_internal._module_to_bytecode = to_bytecode
    try:
        yield
    finally:
        export_internal._module_to_bytecode = original


# --- verification --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VerifyRow:
    name: str
    height: int
    width: int
    native: int  # detections of the native model
    exported: int  # detections of the artifact
    same_classes: bool
    max_box_diff: float  # px, original image; nan when the counts differ or none
    min_mask_iou: float  # nan without masks or detections
    max_score_diff: float
    max_keypoint_diff: float = float("nan")  # px, original image; nan without keypoints

    @property
    def ok(self) -> bool:
        if self.native != self.exported or not self.same_classes:
            return False
        if self.native == 0:
            return True
        if not self.max_box_diff <= BOX_TOLERANCE:
            return False
        if not (np.isnan(self.max_keypoint_diff) or self.max_keypoint_diff <= KEYPOINT_TOLERANCE):
            return False
        return bool(np.isnan(self.min_mask_iou) or self.min_mask_iou > MIN_MASK_IOU)


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    artifact: str
    rows: list[VerifyRow]

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.ok for r in self.rows)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "artifact": self.artifact,
                "criteria": {"box_px": BOX_TOLERANCE, "mask_iou": MIN_MASK_IOU,
                             "keypoint_px": KEYPOINT_TOLERANCE, "classes": "equal"},
                "images": [{**dataclasses.asdict(r), "ok": r.ok} for r in self.rows]}  # fmt: skip


def _mask_ious(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[n,h,w] bool x2 -> [n] IoU (1 where both are empty)."""
    inter = np.logical_and(a, b).reshape(len(a), -1).sum(1)
    union = np.logical_or(a, b).reshape(len(a), -1).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def compare(name: str, native: ImageDetections, exported: dict[str, Any]) -> VerifyRow:
    """One image: native ImageDetections vs the artifact's detections (serving's form)."""
    n, m = len(native.scores), len(exported["scores"])
    same = n == m and np.array_equal(native.classes, exported["classes"])
    box = score = iou = kp = float("nan")
    if n == m and n:
        box = float(np.abs(native.boxes - exported["boxes"]).max())
        score = float(np.abs(native.scores - exported["scores"]).max())
        if native.masks is not None and exported.get("masks") is not None:
            iou = float(_mask_ious(native.masks, exported["masks"]).min())
        if native.keypoints is not None and exported.get("keypoints") is not None:
            kp = float(np.abs(native.keypoints[..., :2] - exported["keypoints"][..., :2]).max())
    return VerifyRow(name, native.height, native.width, n, m, bool(same), box, iou, score, kp)


def native_detections(trained: TrainedModel, bucket: tuple[int, int],
                      images: Sequence[np.ndarray]) -> list[ImageDetections]:  # fmt: skip
    """The model as `mrcli eval` / `mrcli predict` run it (mrcli.inference.Predictor:
    the input pipeline's preprocessing, the jitted Model.detect, original pixels,
    pasted masks), at the export's one `bucket`."""
    predictor = Predictor(trained.model, trained.state, trained.config, batch_size=1,
                          buckets=[bucket])  # fmt: skip
    found = dict(predictor.over_images(enumerate(images)))
    return [found[i] for i in range(len(images))]


def exported_detections(directory: str | os.PathLike[str], images: Sequence[np.ndarray]) -> list[dict[str, Any]]:
    """The artifact at `directory` (either format) on `images`, host paste included."""
    record = serving.read_record(directory)
    if record["artifact"] == "savedmodel":
        run = _savedmodel_runner(Path(directory), record)
        return serving.run_batches(run, record, images, score_threshold=0.0)
    return serving.load(directory).predict(images, score_threshold=0.0)


def _savedmodel_runner(directory: Path, record: dict[str, Any]) -> Callable:
    _require_tensorflow()
    import tensorflow as tf

    loaded = tf.saved_model.load(str(directory / record["files"]["savedmodel"]))
    fn = loaded.signatures[record.get("signature_name", "serving_default")]

    def run(images: np.ndarray, image_sizes: np.ndarray) -> dict[str, np.ndarray]:
        outputs = fn(images=tf.constant(images), image_sizes=tf.constant(image_sizes))
        return {k: v.numpy() for k, v in outputs.items()}

    return run


def verify(directory: str | os.PathLike[str], trained: TrainedModel,
           images: Sequence[tuple[str, np.ndarray]]) -> VerifyReport:
    """Run the artifact and the native model on `images` ((name, [h,w,3] uint8);
    those beyond the input capacity shrunk by mrcli.serving.fit for both) and
    compare each image's detections (VerifyRow.ok: same count and classes,
    boxes within BOX_TOLERANCE px, mask IoU > MIN_MASK_IOU)."""
    record = serving.read_record(directory)
    # An image beyond the input capacity is shrunk as mrcli.serving shrinks it,
    # for both: what is compared is the exported function.
    capacity = tuple(record["max_input_size"])
    pixels = [serving.fit(rgb, capacity) for _, rgb in images]
    native = native_detections(trained, tuple(record["bucket"]), pixels)
    exported = exported_detections(directory, pixels)
    rows = [compare(name, a, b) for (name, _), a, b in zip(images, native, exported)]
    return VerifyReport(str(Path(directory)), rows)


def verify_images(trained: TrainedModel, source: str | None, *, data_dir: str | None = None,
                  max_images: int = 8) -> list[tuple[str, np.ndarray]]:
    """--verify's images: the image files of `source` (a folder, file or glob, as
    `mrcli predict` reads them), or without one the first `max_images` images of
    the model's dataset's eval split (the built-in shapes val split for `tiny`)."""
    if source:
        found = find_images(source)[:max_images] if max_images else find_images(source)
        out = []
        for item in found:
            try:
                out.append((item.rel.as_posix(), read_image(item.path)))
            except UnreadableImage as e:
                raise UserError(f"--verify: {item.path}: {e}") from None
        return out
    cfg = trained.config
    ds = find_dataset(cfg.data.dataset, data_dir)
    split = ds.check_split(cfg.data.eval_split)
    src = ds.source(split)
    n = min(len(src), max_images) if max_images else len(src)
    out = []
    for k in range(n):
        rec = src[k]
        rgb = np.asarray(imagelib.decode_rgb(rec["image"]))
        out.append((f"{ds.name}/{split}/{int(rec['image_id'])}", rgb))
    return out


# --- the command ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunResult:
    export: ExportResult | None
    verify: VerifyReport | None


def run(
    out: str,
    *,
    workdir: str | None = None,
    checkpoint: str | None = None,
    format: str = "stablehlo",
    batch_size: int = 1,
    image_size: str | None = None,
    max_input_size: str | None = None,
    platforms: str | None = None,
    verify_source: str | None = None,
    do_verify: bool = False,
    verify_only: bool = False,
    max_verify_images: int = 8,
    data_dir: str | None = None,
    weights: str | None = None,
    sets: Sequence[str] = (),
    overwrite: bool = False,
    report: Report | None = None,
) -> RunResult:
    """`mrcli export`: load the model, export it (unless `verify_only`), and verify
    the artifact at `out` against the model when asked."""
    report = silent(report)
    bucket = parse_size(image_size, "--image-size")
    capacity = parse_size(max_input_size, "--max-input-size")
    platform_names = parse_platforms(platforms)
    _check_options(format, batch_size)
    if format == "savedmodel" and not verify_only:
        _require_tensorflow()
    if verify_only and not Path(out, RECORD).expanduser().is_file():
        raise UserError(f"--verify-only: {out} holds no exported model ({RECORD} missing); "
                        "export first (drop --verify-only)")  # fmt: skip
    trained = with_sets(load_trained(workdir, checkpoint, weights, report=report), sets)
    result = None
    if not verify_only:
        result = export_model(trained, out, format=format, batch_size=batch_size, image_size=bucket,
                              max_input_size=capacity, platforms=platform_names,
                              overwrite=overwrite, data_dir=data_dir, report=report)  # fmt: skip
        report.say(f"exported {result.path} ({format}) in {result.seconds:.1f} s", "detail")
    report_ = None
    if do_verify or verify_source or verify_only:
        images = verify_images(trained, verify_source, data_dir=data_dir, max_images=max_verify_images)
        if not images:
            raise UserError("--verify: no images to verify on")
        report.say(f"verifying on {len(images)} image(s)", "detail")
        report_ = verify(out, trained, images)
    return RunResult(result, report_)
