"""Import PyTorch checkpoints (torchvision, Detectron2) into mrcli checkpoints, safely.

    mrcli weights import torchvision maskrcnn_resnet50_fpn_coco.pth --out ckpt/
    mrcli weights import torchvision resnet50-0676ba61.pth --out r50/   # backbone only
    mrcli weights import detectron2 model_final_f10217.pkl --out ckpt/

Loading never executes code from the file (docs/design.md §8). A PyTorch zip file
goes through `torch.load(weights_only=True)` where torch is installed and
otherwise through our restricted unpickler, which reads the zip's storages
itself; a plain pickle (Detectron2's model-zoo `.pkl`) always goes through the
restricted unpickler. Either way only tensors, numpy arrays, dicts, lists and
numbers can come out; a pickle that names anything else (os.system, eval,
any class) is refused with UnsafeCheckpoint, before anything is called.

Mapping: PyTorch OIHW conv kernels become HWIO, Linear [out, in] becomes
[in, out], frozen BatchNorm (weight, bias, running mean/var, eps 1e-5) is
folded to (scale, bias) constants, the box head's fc6 is permuted from
PyTorch's (channel, y, x) flattening to our (y, x, channel), and Detectron2's
class layout (background last, no background box/mask outputs) becomes ours
(background 0). The source's COCO category map travels with the checkpoint
(for a person keypoint model: person with COCO's 17 keypoints). A Keypoint
R-CNN's transposed conv [C, K, 4, 4] becomes [4, 4, C, K] (layers.ConvTranspose).
"""

from __future__ import annotations

import collections
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mrcli import checkpoints, keypoint_sets
from mrcli.config import DETECTRON2_NUMERICS, Config, ModelConfig, flatten, override, to_dict
from mrcli.errors import UserError
from mrcli.model import abstract
from mrcli.model.backbone import BLOCKS

Source = Literal["torchvision", "detectron2", "auto"]
BN_EPS = 1e-5  # torchvision and Detectron2 FrozenBatchNorm2d

# COCO 2017 categories (id, name, supercategory), as in instances_*.json.
COCO_CATEGORIES: tuple[tuple[int, str, str], ...] = (
    (1, "person", "person"), (2, "bicycle", "vehicle"), (3, "car", "vehicle"),
    (4, "motorcycle", "vehicle"), (5, "airplane", "vehicle"), (6, "bus", "vehicle"),
    (7, "train", "vehicle"), (8, "truck", "vehicle"), (9, "boat", "vehicle"),
    (10, "traffic light", "outdoor"), (11, "fire hydrant", "outdoor"), (13, "stop sign", "outdoor"),
    (14, "parking meter", "outdoor"), (15, "bench", "outdoor"), (16, "bird", "animal"),
    (17, "cat", "animal"), (18, "dog", "animal"), (19, "horse", "animal"), (20, "sheep", "animal"),
    (21, "cow", "animal"), (22, "elephant", "animal"), (23, "bear", "animal"), (24, "zebra", "animal"),
    (25, "giraffe", "animal"), (27, "backpack", "accessory"), (28, "umbrella", "accessory"),
    (31, "handbag", "accessory"), (32, "tie", "accessory"), (33, "suitcase", "accessory"),
    (34, "frisbee", "sports"), (35, "skis", "sports"), (36, "snowboard", "sports"),
    (37, "sports ball", "sports"), (38, "kite", "sports"), (39, "baseball bat", "sports"),
    (40, "baseball glove", "sports"), (41, "skateboard", "sports"), (42, "surfboard", "sports"),
    (43, "tennis racket", "sports"), (44, "bottle", "kitchen"), (46, "wine glass", "kitchen"),
    (47, "cup", "kitchen"), (48, "fork", "kitchen"), (49, "knife", "kitchen"), (50, "spoon", "kitchen"),
    (51, "bowl", "kitchen"), (52, "banana", "food"), (53, "apple", "food"), (54, "sandwich", "food"),
    (55, "orange", "food"), (56, "broccoli", "food"), (57, "carrot", "food"), (58, "hot dog", "food"),
    (59, "pizza", "food"), (60, "donut", "food"), (61, "cake", "food"), (62, "chair", "furniture"),
    (63, "couch", "furniture"), (64, "potted plant", "furniture"), (65, "bed", "furniture"),
    (67, "dining table", "furniture"), (70, "toilet", "furniture"), (72, "tv", "electronic"),
    (73, "laptop", "electronic"), (74, "mouse", "electronic"), (75, "remote", "electronic"),
    (76, "keyboard", "electronic"), (77, "cell phone", "electronic"), (78, "microwave", "appliance"),
    (79, "oven", "appliance"), (80, "toaster", "appliance"), (81, "sink", "appliance"),
    (82, "refrigerator", "appliance"), (84, "book", "indoor"), (85, "clock", "indoor"),
    (86, "vase", "indoor"), (87, "scissors", "indoor"), (88, "teddy bear", "indoor"),
    (89, "hair drier", "indoor"), (90, "toothbrush", "indoor"),
)


def coco_categories(contiguous: Literal["coco_id", "rank"]) -> list[dict[str, Any]]:
    """The category map of a COCO model. torchvision's models have 91 outputs indexed
    by the COCO id itself ("coco_id": ids 12, 26, ... are unused outputs); Detectron2's
    number the 80 categories 1..80 in id order ("rank")."""
    return [
        {"id": cid, "contiguous_id": cid if contiguous == "coco_id" else i + 1,
         "name": name, "supercategory": sup}
        for i, (cid, name, sup) in enumerate(COCO_CATEGORIES)
    ]


# --- safe loading ---------------------------------------------------------------------


class UnsafeCheckpoint(UserError):
    """The file asks the unpickler for something other than tensors and arrays."""


def _refuse(path: Path, what: str) -> UnsafeCheckpoint:
    return UnsafeCheckpoint(
        f"refusing to load {path}: it is not a plain weights file; unpickling it would use "
        f"{what}, which could run code. mrcli only rebuilds tensors and arrays from a "
        "checkpoint; re-save the weights alone (torch.save(model.state_dict(), FILE)) from a "
        "source you trust"
    )


_TORCH_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str):
        if name == "BFloat16Storage":
            import ml_dtypes

            self.dtype = np.dtype(ml_dtypes.bfloat16)
        else:
            self.dtype = np.dtype(_TORCH_DTYPES[name])


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    item = storage.dtype.itemsize
    if not size:
        return storage[offset:offset + 1].reshape(()).copy()
    return np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * item for s in stride)
    ).copy()


def _rebuild_parameter(data, requires_grad=False, hooks=None, *_):
    return data


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """What numpy's own pickles of arrays and scalars name (numpy 1 and 2 module paths)."""
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore
    allowed = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = _reconstruct
        allowed[(mod, "scalar")] = scalar
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds only containers, numbers, numpy arrays and (with a
    zip archive) torch tensors as numpy arrays. Anything else is refused."""

    def __init__(self, file, path: Path, archive: zipfile.ZipFile | None = None, prefix: str = ""):
        super().__init__(file, encoding="latin1")
        self._path = path
        self._archive = archive
        self._prefix = prefix
        self._storages: dict[str, np.ndarray] = {}
        self._allowed = {
            ("collections", "OrderedDict"): collections.OrderedDict,
            # bytes in protocol-2 pickles written by Python 3 (numpy array data)
            ("_codecs", "encode"): _codecs_encode,
            **_numpy_globals(),
        }
        if archive is not None:
            self._allowed[("torch._utils", "_rebuild_tensor_v2")] = _rebuild_tensor
            self._allowed[("torch._utils", "_rebuild_parameter")] = _rebuild_parameter
            for name in (*_TORCH_DTYPES, "BFloat16Storage"):
                self._allowed[("torch", name)] = _StorageType(name)

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise _refuse(self._path, f"{module}.{name}") from None

    def persistent_load(self, pid):
        if self._archive is None or not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise _refuse(self._path, f"a persistent object {pid!r}")
        _, storage_type, key, _location, _numel = pid
        if not isinstance(storage_type, _StorageType):
            raise _refuse(self._path, f"storage type {storage_type!r}")
        if key not in self._storages:
            raw = self._archive.read(f"{self._prefix}data/{key}")
            self._storages[key] = np.frombuffer(raw, dtype=storage_type.dtype)
        return self._storages[key]


def _codecs_encode(obj, encoding="utf-8"):
    if not isinstance(obj, str):
        raise pickle.UnpicklingError("_codecs.encode of a non-string")
    return obj.encode(encoding)


def _load_torch_zip_restricted(path: Path) -> Any:
    """A torch.save zip file read without torch: data.pkl through the restricted
    unpickler, storages from the archive (little-endian)."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pkl = [n for n in names if n.endswith("data.pkl")]
        if not pkl:
            raise UserError(f"{path}: a zip file without data.pkl is not a PyTorch checkpoint")
        prefix = pkl[0][: -len("data.pkl")]
        if f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder").strip() != b"little":
            raise UserError(f"{path}: big-endian PyTorch files are not supported")
        with archive.open(pkl[0]) as f:
            return _RestrictedUnpickler(f, path, archive, prefix).load()


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _torch_load(path: Path) -> Any:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = re.search(r"GLOBAL ([\w.]+ ?[\w.]*)", str(e))
        raise _refuse(path, m.group(1).replace(" ", ".") if m else "a forbidden object") from None


def _to_numpy(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_numpy(v) for k, v in obj.items()}
    if type(obj).__module__.startswith("torch"):
        import torch

        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu()
            if t.dtype == torch.bfloat16:
                t = t.float()
            return t.numpy()
    return obj


def load_file(path: str | Path, *, use_torch: bool | None = None) -> dict[str, Any]:
    """The object in a checkpoint file, tensors as numpy arrays, without running code.

    `use_torch`: None = torch.load(weights_only=True) for zip files where torch is
    installed; False forces the restricted unpickler (what runs without torch)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if use_torch is None:
        use_torch = _torch_available()
    if zipfile.is_zipfile(path):
        obj = _torch_load(path) if use_torch else _load_torch_zip_restricted(path)
    else:
        with open(path, "rb") as f:
            try:
                obj = _RestrictedUnpickler(f, path).load()
            except UnsafeCheckpoint:
                raise
            except Exception as e:  # truncated file, not a pickle, ...
                raise UserError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
        if isinstance(obj, int) and not isinstance(obj, bool):
            # The legacy (pre-1.6) torch.save format starts with a magic number.
            if not use_torch:
                raise UserError(
                    f"{path}: legacy PyTorch file format; install torch to import it, or "
                    "re-save it with a recent PyTorch"
                )
            obj = _torch_load(path)
    return _to_numpy(obj)


def _state_dict(obj: Any, path: Path) -> dict[str, np.ndarray]:
    # Detectron2's model zoo: {"model": ...}; torchvision training scripts:
    # {"state_dict": ...} or {"model": ...}; Caffe2/Detectron1 detection models:
    # {"blobs": ...} (ImageNet models are the plain dict).
    for key in ("model", "state_dict", "blobs"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise UserError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        # Caffe2 files also hold the optimiser's momentum blobs.
        if isinstance(v, np.ndarray) and not str(k).endswith("_momentum"):
            out[str(k)] = v
    return out


# --- name mapping ---------------------------------------------------------------------


def _conv(w: np.ndarray) -> np.ndarray:  # OIHW -> HWIO
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0), dtype=np.float32)


def _linear(w: np.ndarray) -> np.ndarray:  # [O, I] -> [I, O]
    return np.ascontiguousarray(w.T, dtype=np.float32)


def _fold_bn(sd, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Frozen BN -> (scale, bias): scale = w / sqrt(var + eps), bias = b - mean * scale,
    in float32 as torchvision's FrozenBatchNorm2d computes them."""
    w = sd[prefix + "weight"].astype(np.float32)
    b = sd[prefix + "bias"].astype(np.float32)
    mean = sd[prefix + "running_mean"].astype(np.float32)
    var = sd[prefix + "running_var"].astype(np.float32)
    scale = w * (1.0 / np.sqrt(var + np.float32(BN_EPS))).astype(np.float32)
    return scale.astype(np.float32), (b - mean * scale).astype(np.float32)


class _Mapper:
    """Collects {our path tuple: array} and remembers which source names were used."""

    def __init__(self, sd: dict[str, np.ndarray], path: Path):
        self.sd, self.path = sd, path
        self.out: dict[tuple[str, ...], np.ndarray] = {}
        self.used: set[str] = set()

    def get(self, name: str) -> np.ndarray:
        if name not in self.sd:
            raise UserError(f"{self.path}: missing {name!r}; is this the right kind of checkpoint?")
        self.used.add(name)
        return self.sd[name]

    def has(self, name: str) -> bool:
        return name in self.sd

    def put(self, path: str, value: np.ndarray) -> None:
        self.out[tuple(path.split("."))] = np.asarray(value, np.float32)

    def conv(self, dst: str, src: str, bias: bool) -> None:
        self.put(dst + ".kernel", _conv(self.get(src + "weight")))
        if bias:
            self.put(dst + ".bias", self.get(src + "bias"))

    def linear(self, dst: str, src: str) -> None:
        self.put(dst + ".kernel", _linear(self.get(src + "weight")))
        self.put(dst + ".bias", self.get(src + "bias"))

    def bn(self, dst: str, src: str) -> None:
        for k in ("weight", "bias", "running_mean", "running_var"):
            self.get(src + k)
        scale, bias = _fold_bn(self.sd, src)
        self.put(dst + ".scale", scale)
        self.put(dst + ".bias", bias)
        self.used.add(src + "num_batches_tracked")


def _blocks_per_stage(sd: dict[str, np.ndarray], stage_prefix, sep: str = ".") -> list[int]:
    """Blocks in each of the 4 stages; stage_prefix(s) is the name prefix of stage s
    (0 = res2), followed by the block index and `sep`."""
    counts = []
    for s in range(4):
        rx = re.compile(re.escape(stage_prefix(s)) + r"(\d+)" + re.escape(sep))
        counts.append(len({int(m.group(1)) for k in sd for m in [rx.match(k)] if m}))
    return counts


def _depth(counts: list[int], path: Path) -> int:
    for depth, blocks in BLOCKS.items():
        if tuple(counts) == blocks:
            return depth
    raise UserError(f"{path}: a ResNet with {counts} blocks per stage is not one of {sorted(BLOCKS)}")


def _map_torchvision_resnet(m: _Mapper, prefix: str) -> None:
    m.conv("backbone.stem", prefix + "conv1.", bias=False)
    m.bn("backbone.stem_norm", prefix + "bn1.")
    counts = _blocks_per_stage(m.sd, lambda s: f"{prefix}layer{s + 1}.")
    for s in range(4):
        for j in range(counts[s]):
            src, dst = f"{prefix}layer{s + 1}.{j}.", f"backbone.res{s + 2}.{j}"
            for i in (1, 2, 3):
                m.conv(f"{dst}.conv{i}", f"{src}conv{i}.", bias=False)
                m.bn(f"{dst}.norm{i}", f"{src}bn{i}.")
            if m.has(src + "downsample.0.weight"):
                m.conv(f"{dst}.shortcut", src + "downsample.0.", bias=False)
                m.bn(f"{dst}.shortcut_norm", src + "downsample.1.")


def _upgrade_torchvision_names(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Names of older torchvision releases (the published COCO weights) -> current
    (torchvision's own _load_from_state_dict upgrades)."""
    rules = [
        (r"^backbone\.fpn\.(inner|layer)_blocks\.(\d+)\.(weight|bias)$", r"backbone.fpn.\1_blocks.\2.0.\3"),
        (r"^rpn\.head\.conv\.(weight|bias)$", r"rpn.head.conv.0.0.\1"),
    ]
    out = {}
    for k, v in sd.items():
        for rx, rep in rules:
            k = re.sub(rx, rep, k)
        m = re.match(r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)$", k)
        if m:
            k = f"roi_heads.mask_head.{int(m.group(1)) - 1}.0.{m.group(2)}"
        out[k] = v
    return out


def _fc6(w: np.ndarray, channels: int) -> np.ndarray:
    """fc6 [1024, C*P*P] over PyTorch's (C, y, x) flattening -> ours [P*P*C, 1024], (y, x, C)."""
    d, n = w.shape
    p = int(round((n // channels) ** 0.5))
    return np.ascontiguousarray(
        w.reshape(d, channels, p, p).transpose(0, 2, 3, 1).reshape(d, n).T, dtype=np.float32
    )


def _torchvision_detector(sd, path) -> tuple[dict, ModelConfig]:
    sd = _upgrade_torchvision_names(sd)
    m = _Mapper(sd, path)
    prefix = "backbone.body."
    depth = _depth(_blocks_per_stage(sd, lambda s: f"{prefix}layer{s + 1}."), path)
    _map_torchvision_resnet(m, prefix)
    for i in range(4):
        m.conv(f"fpn.lateral.{i}", f"backbone.fpn.inner_blocks.{i}.0.", bias=True)
        m.conv(f"fpn.output.{i}", f"backbone.fpn.layer_blocks.{i}.0.", bias=True)
    m.conv("rpn.conv", "rpn.head.conv.0.0.", bias=True)
    m.conv("rpn.objectness", "rpn.head.cls_logits.", bias=True)
    m.conv("rpn.deltas", "rpn.head.bbox_pred.", bias=True)
    fpn_channels = sd["backbone.fpn.inner_blocks.0.0.weight"].shape[0]
    m.put("box_head.fc6.kernel", _fc6(m.get("roi_heads.box_head.fc6.weight"), fpn_channels))
    m.put("box_head.fc6.bias", m.get("roi_heads.box_head.fc6.bias"))
    m.linear("box_head.fc7", "roi_heads.box_head.fc7.")
    m.linear("box_head.cls", "roi_heads.box_predictor.cls_score.")
    m.linear("box_head.deltas", "roi_heads.box_predictor.bbox_pred.")
    num_classes = sd["roi_heads.box_predictor.cls_score.weight"].shape[0] - 1
    masks = m.has("roi_heads.mask_predictor.mask_fcn_logits.weight")
    n_convs = 0
    if masks:
        while m.has(f"roi_heads.mask_head.{n_convs}.0.weight"):
            m.conv(f"mask_head.convs.{n_convs}", f"roi_heads.mask_head.{n_convs}.0.", bias=True)
            n_convs += 1
        w = m.get("roi_heads.mask_predictor.conv5_mask.weight")  # [C, O, 2, 2]
        m.put("mask_head.deconv.kernel", w.transpose(2, 3, 0, 1))
        m.put("mask_head.deconv.bias", m.get("roi_heads.mask_predictor.conv5_mask.bias"))
        m.conv("mask_head.predictor", "roi_heads.mask_predictor.mask_fcn_logits.", bias=True)
    keypoints = _keypoint_head(m, lambda i: f"roi_heads.keypoint_head.{2 * i}.",
                               "roi_heads.keypoint_predictor.kps_score_lowres.")  # fmt: skip
    cfg = _model_config({
        "num_classes": num_classes,
        "backbone.depth": depth,
        "backbone.width": sd["backbone.body.conv1.weight"].shape[0],
        "fpn.channels": fpn_channels,
        "box_head.dim": sd["roi_heads.box_head.fc7.weight"].shape[0],
        "masks": masks,
        **({"mask_head.convs": n_convs,
            "mask_head.dim": sd["roi_heads.mask_head.0.0.weight"].shape[0]} if masks else {}),
        **keypoints,
        # The input torchvision gave the model (GeneralizedRCNNTransform).
        "input.resize": "torchvision",
    })
    return m, cfg


def _keypoint_head(m: _Mapper, conv_prefix, deconv: str) -> dict[str, Any]:
    """A Keypoint R-CNN head's weights (torchvision's KeypointRCNNHeads +
    KeypointRCNNPredictor, Detectron2's KRCNNConvDeconvUpsampleHead: the same
    layers under other names), and the model config fields they fix; {} where
    the file has none. `conv_prefix(i)` names conv i (0-based)."""
    if not m.has(deconv + "weight"):
        return {}
    n = 0
    while m.has(conv_prefix(n) + "weight"):
        m.conv(f"keypoint_head.convs.{n}", conv_prefix(n), bias=True)
        n += 1
    w = m.get(deconv + "weight")  # ConvTranspose2d [C, K, 4, 4]
    m.put("keypoint_head.deconv.kernel", w.transpose(2, 3, 0, 1))
    m.put("keypoint_head.deconv.bias", m.get(deconv + "bias"))
    return {"keypoints": True, "keypoint_head.convs": n, "keypoint_head.num_keypoints": w.shape[1],
            "keypoint_head.dim": w.shape[0], "keypoint_head.pool_size": 14}  # fmt: skip


def person_keypoint_categories() -> list[dict[str, Any]]:
    """The category map of a COCO person keypoint model (torchvision's and
    Detectron2's: one class, person, COCO id 1, with COCO's 17 keypoints)."""
    cat = {"id": 1, "contiguous_id": 1, "name": "person", "supercategory": "person",
           "keypoints": list(keypoint_sets.COCO_PERSON_KEYPOINTS),
           "skeleton": [list(p) for p in keypoint_sets.COCO_PERSON_SKELETON]}  # fmt: skip
    completed, rule = keypoint_sets.complete(cat, None, None)
    return [{**completed, "keypoint_sigmas_from": rule}]


def _torchvision_backbone(sd, path) -> tuple[_Mapper, ModelConfig]:
    m = _Mapper(sd, path)
    depth = _depth(_blocks_per_stage(sd, lambda s: f"layer{s + 1}."), path)
    _map_torchvision_resnet(m, "")
    m.used.update(k for k in sd if k.startswith("fc."))  # the ImageNet classifier
    # torchvision's ResNet: RGB input normalised by the ImageNet mean and std
    # (the defaults), the stride on the 3x3 conv.
    return m, _model_config({"backbone.depth": depth, "backbone.width": sd["conv1.weight"].shape[0]})


def _msra_backbone(sd, path) -> tuple[_Mapper, ModelConfig]:
    """MSRA's original ResNet in Caffe2 names (Detectron2's ImageNetPretrained/MSRA
    R-50.pkl, R-101.pkl): conv1_w, res_conv1_bn_{s,b}, resS_J_branch2{a,b,c}_w,
    resS_J_branch1_w (the projection), each with _bn_{s,b}: the BatchNorm
    already folded to scale and bias (Detectron2's c2_model_loading names)."""
    m = _Mapper(sd, path)
    counts = _blocks_per_stage(sd, lambda s: f"res{s + 2}_", sep="_")
    depth = _depth(counts, path)

    def affine(dst: str, src: str) -> None:
        m.put(dst + ".scale", m.get(src + "_bn_s"))
        m.put(dst + ".bias", m.get(src + "_bn_b"))

    m.put("backbone.stem.kernel", _conv(m.get("conv1_w")))
    affine("backbone.stem_norm", "res_conv1")
    for s in range(4):
        for j in range(counts[s]):
            src, dst = f"res{s + 2}_{j}_", f"backbone.res{s + 2}.{j}"
            for i, branch in ((1, "branch2a"), (2, "branch2b"), (3, "branch2c")):
                m.put(f"{dst}.conv{i}.kernel", _conv(m.get(src + branch + "_w")))
                affine(f"{dst}.norm{i}", src + branch)
            if m.has(src + "branch1_w"):
                m.put(f"{dst}.shortcut.kernel", _conv(m.get(src + "branch1_w")))
                affine(f"{dst}.shortcut_norm", src + "branch1")
    m.used.update(k for k in sd if k.startswith("fc1000_"))  # the ImageNet classifier
    profile = {k.removeprefix("model."): v for k, v in DETECTRON2_NUMERICS.items()
               if k.startswith(("model.input.", "model.backbone."))}  # fmt: skip
    return m, _model_config({"backbone.depth": depth, "backbone.width": sd["conv1_w"].shape[0], **profile})


def _detectron2_detector(sd, path) -> tuple[_Mapper, ModelConfig]:
    m = _Mapper(sd, path)
    bu = "backbone.bottom_up."
    counts = _blocks_per_stage(sd, lambda s: f"{bu}res{s + 2}.")
    depth = _depth(counts, path)
    m.conv("backbone.stem", bu + "stem.conv1.", bias=False)
    m.bn("backbone.stem_norm", bu + "stem.conv1.norm.")
    for s in range(4):
        for j in range(counts[s]):
            src, dst = f"{bu}res{s + 2}.{j}.", f"backbone.res{s + 2}.{j}"
            for i in (1, 2, 3):
                m.conv(f"{dst}.conv{i}", f"{src}conv{i}.", bias=False)
                m.bn(f"{dst}.norm{i}", f"{src}conv{i}.norm.")
            if m.has(src + "shortcut.weight"):
                m.conv(f"{dst}.shortcut", src + "shortcut.", bias=False)
                m.bn(f"{dst}.shortcut_norm", src + "shortcut.norm.")
    for i in range(4):
        m.conv(f"fpn.lateral.{i}", f"backbone.fpn_lateral{i + 2}.", bias=True)
        m.conv(f"fpn.output.{i}", f"backbone.fpn_output{i + 2}.", bias=True)
    rh = "proposal_generator.rpn_head."
    m.conv("rpn.conv", rh + "conv.", bias=True)
    m.conv("rpn.objectness", rh + "objectness_logits.", bias=True)
    m.conv("rpn.deltas", rh + "anchor_deltas.", bias=True)
    fpn_channels = sd["backbone.fpn_lateral2.weight"].shape[0]
    m.put("box_head.fc6.kernel", _fc6(m.get("roi_heads.box_head.fc1.weight"), fpn_channels))
    m.put("box_head.fc6.bias", m.get("roi_heads.box_head.fc1.bias"))
    m.linear("box_head.fc7", "roi_heads.box_head.fc2.")
    # Detectron2: cls_score [K + 1] with background LAST; bbox_pred 4K without background.
    cls_w = m.get("roi_heads.box_predictor.cls_score.weight")
    cls_b = m.get("roi_heads.box_predictor.cls_score.bias")
    k = cls_w.shape[0] - 1
    order = np.concatenate([[k], np.arange(k)])
    m.put("box_head.cls.kernel", _linear(cls_w[order]))
    m.put("box_head.cls.bias", cls_b[order])
    box_w = m.get("roi_heads.box_predictor.bbox_pred.weight")
    box_b = m.get("roi_heads.box_predictor.bbox_pred.bias")
    if box_w.shape[0] == 4:  # class-agnostic regression: the same deltas for every class
        box_w, box_b = np.tile(box_w, (k, 1)), np.tile(box_b, k)
    m.put("box_head.deltas.kernel", _linear(np.concatenate([np.zeros_like(box_w[:4]), box_w])))
    m.put("box_head.deltas.bias", np.concatenate([np.zeros_like(box_b[:4]), box_b]))
    masks = m.has("roi_heads.mask_head.predictor.weight")
    n_convs = 0
    if masks:
        while m.has(f"roi_heads.mask_head.mask_fcn{n_convs + 1}.weight"):
            m.conv(f"mask_head.convs.{n_convs}", f"roi_heads.mask_head.mask_fcn{n_convs + 1}.", bias=True)
            n_convs += 1
        w = m.get("roi_heads.mask_head.deconv.weight")
        m.put("mask_head.deconv.kernel", w.transpose(2, 3, 0, 1))
        m.put("mask_head.deconv.bias", m.get("roi_heads.mask_head.deconv.bias"))
        pw = m.get("roi_heads.mask_head.predictor.weight")  # [K, C, 1, 1], no background
        pb = m.get("roi_heads.mask_head.predictor.bias")
        if pw.shape[0] == 1:  # class-agnostic mask
            pw, pb = np.tile(pw, (k, 1, 1, 1)), np.tile(pb, k)
        m.put("mask_head.predictor.kernel", _conv(np.concatenate([np.zeros_like(pw[:1]), pw])))
        m.put("mask_head.predictor.bias", np.concatenate([np.zeros_like(pb[:1]), pb]))
    keypoints = _keypoint_head(m, lambda i: f"roi_heads.keypoint_head.conv_fcn{i + 1}.",
                               "roi_heads.keypoint_head.score_lowres.")  # fmt: skip
    # Older checkpoints also hold the model's buffers: the pixel profile (used
    # below) and the cell anchors (recomputed from the config).
    m.used.update(k for k in sd if k.startswith("proposal_generator.anchor_generator."))
    profile = {k.removeprefix("model."): v for k, v in DETECTRON2_NUMERICS.items()}
    if m.has("pixel_mean") and m.has("pixel_std"):
        profile["input.pixel_mean"] = tuple(float(v) for v in m.get("pixel_mean").reshape(-1))
        profile["input.pixel_std"] = tuple(float(v) for v in m.get("pixel_std").reshape(-1))
    # Detectron2's numerics (config.DETECTRON2_NUMERICS), the pixel profile
    # read from the file where it has one.
    cfg = _model_config({
        "num_classes": k,
        "backbone.depth": depth,
        "backbone.width": sd[bu + "stem.conv1.weight"].shape[0],
        "fpn.channels": fpn_channels,
        "box_head.dim": sd["roi_heads.box_head.fc2.weight"].shape[0],
        "masks": masks,
        **({"mask_head.convs": n_convs,
            "mask_head.dim": sd["roi_heads.mask_head.mask_fcn1.weight"].shape[0]} if masks else {}),
        **keypoints,
        **profile,
    })
    return m, cfg


# What a backbone's weights fix about the model besides its shapes: arrays of the
# same shapes mean another network under another stride convention, norm or
# pixel profile (`mrcli train --init-from` checks these, with model.input.*).
BACKBONE_PROFILE = ("model.backbone.kind", "model.backbone.depth", "model.backbone.width",
                    "model.backbone.stride_in_1x1", "model.backbone.norm")  # fmt: skip


def _model_config(fields: dict[str, Any]) -> ModelConfig:
    """The default ModelConfig with `fields` (keys below `model.`) set."""
    return override(Config(), {f"model.{k}": v for k, v in fields.items()}).model


# --- import -----------------------------------------------------------------------------


def _detector_categories(cfg: ModelConfig, contiguous: Literal["coco_id", "rank"]) -> list[dict[str, Any]] | None:
    """The category map of an imported COCO detector: COCO's 80 categories, or
    person with COCO's keypoints for a one-class model with a 17-keypoint head;
    None for other datasets' models (their classes have no names here)."""
    if cfg.num_classes == (90 if contiguous == "coco_id" else 80):
        return coco_categories(contiguous)
    if cfg.num_classes == 1 and cfg.keypoints and cfg.keypoint_head.num_keypoints == 17:
        return person_keypoint_categories()
    return None


def detect_source(sd: dict[str, np.ndarray]) -> Source | None:
    """Which importer reads a state dict, from its names (None: neither)."""
    if any(k.startswith("backbone.bottom_up.") for k in sd) or "conv1_w" in sd:
        return "detectron2"
    if any(k.startswith(("roi_heads.", "backbone.body.")) for k in sd) or "layer1.0.conv1.weight" in sd:
        return "torchvision"
    return None


def convert(source: Source, path: str | Path, *, use_torch: bool | None = None):
    """(pure state dict, ModelConfig, categories, partial) of a checkpoint file;
    `source` "auto" recognises the format from the names in the file."""
    path = Path(path).expanduser()
    sd = _state_dict(load_file(path, use_torch=use_torch), path)
    if source == "auto":
        source = detect_source(sd) or "unknown"
        if source == "unknown":
            raise UserError(f"{path}: not a torchvision or Detectron2 Mask/Faster R-CNN or ResNet "
                            "checkpoint (none of their parameter names)")  # fmt: skip
    if source == "torchvision":
        if any(k.startswith("roi_heads.") for k in sd):
            m, cfg = _torchvision_detector(sd, path)
            categories = _detector_categories(cfg, "coco_id")
            partial = False
        elif "layer1.0.conv1.weight" in sd:
            m, cfg = _torchvision_backbone(sd, path)
            categories, partial = None, True
        else:
            raise UserError(
                f"{path}: neither a torchvision detection model (roi_heads.*) nor a "
                "torchvision ResNet (layer1.0.conv1.weight)"
            )
    elif source == "detectron2":
        if any(k.startswith("backbone.bottom_up.") for k in sd):
            m, cfg = _detectron2_detector(sd, path)
            categories = _detector_categories(cfg, "rank")
            partial = False
        elif "conv1_w" in sd and "res2_0_branch2a_w" in sd:
            m, cfg = _msra_backbone(sd, path)
            categories, partial = None, True
        else:
            raise UserError(f"{path}: not a Detectron2 checkpoint: neither an R-CNN (backbone.bottom_up.*) "
                            "nor an MSRA ImageNet ResNet in Caffe2 names (conv1_w, res2_0_branch2a_w)")  # fmt: skip
    else:
        raise UserError(f"unknown weights source {source!r}: use torchvision or detectron2")
    leftover = sorted(k for k in sd if k not in m.used)
    if leftover:
        raise UserError(
            f"{path}: {len(leftover)} weights have no place in the model, e.g. {leftover[0]!r}; "
            "only Mask/Faster/Keypoint R-CNN with a ResNet-FPN backbone (and plain ResNets) are supported"
        )
    return checkpoints.unflatten(m.out), cfg, categories, partial


def import_weights(
    source: Source,
    path: str | Path,
    out: str | Path,
    *,
    base: Config | None = None,
    use_torch: bool | None = None,
) -> dict[str, Any]:
    """Convert `path` and write an mrcli checkpoint directory at `out`.

    The model config comes from the file (depth, classes, heads, the source's
    numerics) on top of `base` (default: the defaults). Returns a summary."""
    state, mcfg, categories, partial = convert(source, path, use_torch=use_torch)
    base = base or Config()
    fields = flatten({"model": to_dict(mcfg)})
    if partial:  # a backbone: its depth, stride convention and pixel profile
        fields = {k: v for k, v in fields.items() if k in BACKBONE_PROFILE or k.startswith("model.input.")}
    cfg = override(base, fields)
    _check_fits(state, cfg.model, partial, Path(path))
    written = checkpoints.save(
        out, state, cfg, categories, partial=partial,
        source={"kind": source, "file": Path(path).name},
    )
    n = sum(int(np.size(v)) for v in checkpoints.flatten(state).values())
    return {
        "out": str(written),
        "source": source,
        "depth": cfg.model.backbone.depth,
        "num_classes": cfg.model.num_classes,
        "masks": cfg.model.masks,
        "keypoints": cfg.model.keypoints,
        "partial": partial,
        "arrays": n,
        "categories": len(categories) if categories else 0,
    }


def _check_fits(state: dict, cfg: ModelConfig, partial: bool, path: Path) -> None:
    _, shapes = abstract(cfg)
    checkpoints.check(shapes, state, partial=partial, origin=str(path))


__all__ = [
    "COCO_CATEGORIES",
    "UnsafeCheckpoint",
    "convert",
    "coco_categories",
    "import_weights",
    "load_file",
]
