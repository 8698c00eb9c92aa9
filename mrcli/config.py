"""Configuration: frozen, typed dataclasses, recipes, and `--set` overrides.

The defaults are Mask R-CNN R50-FPN with the paper's / Detectron2's 1x COCO
schedule (He et al. 2017, "Mask R-CNN"; Detectron2 MODEL_ZOO.md,
mask_rcnn_R_50_FPN_1x) with torchvision's numerics (docs/design.md §6), so that a
checkpoint imported from torchvision runs on the default model config.

A recipe (recipes/NAME.py) is a short diff against these defaults: a module
with a docstring (the command that runs it and the result it reaches) and a
function `config(base: Config) -> Config`, usually `return override(base, {...})`.

The model's settings are grouped by component (model.backbone, model.rpn,
model.box_head, ...; docs/design.md §3), and each model function takes only
its group. Overrides are dotted keys down to a field
(`model.rpn.pre_nms_topk.train`) with typed values; `--set` on the command
line goes through the same function, so a recipe and a user's override are
checked alike: an unknown key or a wrong type is a UserError naming the key
and the expected type. Configs recorded by mrcli 0.1 (a flat model section)
are migrated when read (`from_dict`, RENAMED).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mrcli.errors import UserError


def _ceil_to(x: int, multiple: int) -> int:
    return int(math.ceil(x / multiple) * multiple)


@dataclass(frozen=True)
class DataConfig:
    # Name of a dataset prepared by `mrcli prepare` in the data directory
    # (--data-dir / $MRCLI_DATA); e.g. "coco", "shapes", or a custom name.
    dataset: str = "coco"
    # Split to train on and split to evaluate on.
    train_split: str = "train"
    eval_split: str = "val"
    # Short side of the resized image at test time (torchvision/Detectron2: 800).
    image_size: int = 800
    # Long side limit after resizing (torchvision/Detectron2: 1333).
    max_size: int = 1333
    # Short sides drawn uniformly per training image (multi-scale training);
    # empty = (image_size,). Detectron2's 3x schedules use (640, 672, ..., 800).
    train_scales: tuple[int, ...] = ()
    # Padded input shapes (H, W), each a compiled program; an image goes to the
    # smallest bucket that holds it. Empty = landscape and portrait buckets
    # derived from image_size / max_size rounded up to size_divisor.
    buckets: tuple[tuple[int, int], ...] = ()
    # Padded sizes are multiples of this (the FPN's coarsest stride, 32).
    size_divisor: int = 32
    # Ground truth per image is padded (or truncated, with a warning) to this.
    max_instances: int = 100
    # Probability of a horizontal flip in training (0 disables).
    hflip_prob: float = 0.5
    # Input-pipeline worker processes (0 = in the main process).
    num_workers: int = 4
    # Side of the gt mask targets the pipeline gives: each instance mask cropped
    # to its gt box and resampled to this square (TPU Mask R-CNN gt_mask_size:
    # 112); the model crops its 28x28 RoI targets from these.
    mask_crop_size: int = 112
    # Repeat-factor sampling for rare classes (Gupta et al. 2019, LVIS, §4.2;
    # Detectron2's RepeatFactorTrainingSampler): an image is repeated in an
    # epoch max(1, sqrt(t / f)) times, f the fraction of training images holding
    # its rarest class (stochastic rounding per epoch); t = 0 turns it off, LVIS
    # uses 0.001.
    repeat_factor_threshold: float = 0.0
    # Keypoint models (model.keypoints) train only on images with at least this
    # many labelled keypoints (Detectron2's MIN_KEYPOINTS_PER_IMAGE: 1); 0 keeps all.
    min_keypoints_per_image: int = 1
    # Train on random crops at native scale (dense scenes, large images): the
    # window (H, W) in model-input pixels, one number for a square
    # (--set data.train_crop=512, or =512,768 for H,W); empty = off (whole images
    # resized as above). Each training image is scaled by a short side drawn
    # from train_scales (no max_size limit) or, with train_scales empty, kept at
    # its own size (scale 1), then a window of this size is cut at a random
    # place (a function of seed, epoch and image, as the flip); an image smaller
    # than the window in a dimension is taken whole there and zero padded. All
    # training batches are one bucket: the window rounded up to size_divisor.
    # Evaluation is unchanged. See crop_min_visible for the cut instances.
    train_crop: tuple[int, ...] = ()
    # With train_crop: an instance cut by the window that keeps less than this
    # fraction of its mask area (visible pixels / all its pixels) becomes an
    # ignore region (gt_crowd, not gt_valid); one with no visible pixel is
    # dropped; the rest are targets with the tight box of their visible part
    # (as Detectron2's RandomCrop + filtering of cropped-away instances, with
    # the partly visible ones ignored rather than trained on).
    crop_min_visible: float = 0.5

    def resolved_buckets(self) -> tuple[tuple[int, int], ...]:
        """The buckets, derived from the image sizes where not given."""
        if self.buckets:
            return self.buckets
        short = _ceil_to(self.image_size, self.size_divisor)
        long = _ceil_to(self.max_size, self.size_divisor)
        return ((short, long), (long, short)) if short != long else ((short, long),)

    def resolved_train_scales(self) -> tuple[int, ...]:
        return self.train_scales or (self.image_size,)


@dataclass(frozen=True)
class TrainTest:
    """A number with one value in training and another at test time; the
    model picks with `pick(training)` (rpn.proposal_counts), nowhere else."""

    train: int
    test: int

    def pick(self, training: bool) -> int:
        return self.train if training else self.test


@dataclass(frozen=True)
class InputConfig:
    # Pixel profile: input channel order and normalisation, in 0..255 units.
    # torchvision: RGB, ImageNet mean/std; Detectron2: BGR, mean only.
    pixel_order: Literal["rgb", "bgr"] = "rgb"
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    # How images are resized: "pil" resizes the uint8 image with PIL's bilinear
    # filter (antialiased) to the rounded size, as Detectron2's
    # ResizeShortestEdge; "torchvision" normalises first, then interpolates
    # bilinearly without antialiasing to the truncated size, as torchvision's
    # GeneralizedRCNNTransform, so a torchvision model sees its own input.
    resize: Literal["pil", "torchvision"] = "pil"


@dataclass(frozen=True)
class BackboneConfig:
    # "resnet": the ResNet below; "nin": a small Network-In-Network backbone
    # (Lin et al. 2013: mlpconv blocks, max-pooling between them) for CPU
    # recipes, with ResNet's output strides and channels (C2..C5 at 4..32,
    # 4 x width x 2^i), so the FPN is the same. It uses width, norm and
    # freeze_at; depth and stride_in_1x1 are ResNet's.
    kind: Literal["resnet", "nin"] = "resnet"
    # ResNet depth with bottleneck blocks: 50 (3,4,6,3) or 101 (3,4,23,3)
    # (He et al. 2016); 14 (1,1,1,1) and 26 (2,2,2,2) are small variants for CPU.
    depth: Literal[14, 26, 50, 101] = 50
    # Channels of the stem and of res2's bottleneck (64 in ResNet); stages
    # double it. Smaller values make the narrow CPU backbones.
    width: int = 64
    # Stages up to and including this one are frozen: 0 none, 1 stem, 2 stem +
    # res2 (Detectron2's FREEZE_AT=2 and torchvision's trainable_layers=3).
    freeze_at: int = 2
    # Norm layers: frozen BatchNorm constants (ImageNet-pretrained backbones, as
    # torchvision and Detectron2) or GroupNorm with 32 groups (Wu & He 2018),
    # which trains from scratch at small batches where frozen BN can't.
    norm: Literal["frozen_bn", "group_norm"] = "frozen_bn"
    # Put a bottleneck's stride on its first 1x1 conv (the original MSRA ResNet,
    # used by Detectron2's model-zoo checkpoints) instead of the 3x3 (torchvision).
    stride_in_1x1: bool = False


@dataclass(frozen=True)
class FPNConfig:
    # Channels of P2..P6 (Lin et al. 2017 §3: 256).
    channels: int = 256


@dataclass(frozen=True)
class AnchorConfig:
    # One anchor size per level P2..P6 (FPN paper §4.1: 32..512).
    sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    # Anchor aspect ratios h/w at every level.
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    # torchvision's anchor grid (cell anchors rounded to integers, strides
    # image_size // grid_size) or Detectron2's (exact cell anchors, nominal strides).
    torchvision_grid: bool = True


@dataclass(frozen=True)
class RPNConfig:
    # Top-k per level before NMS, and best k over all levels after, per image
    # (torchvision: 2000/2000 train, 1000/1000 test).
    pre_nms_topk: TrainTest = TrainTest(train=2000, test=1000)
    post_nms_topk: TrainTest = TrainTest(train=2000, test=1000)
    nms_threshold: float = 0.7
    # NMS algorithm of the per-level proposals, all exactly the greedy result
    # (mrcli/ops/nms.py): "greedy" (a loop of post_nms_topk dependent steps,
    # fastest on a CPU), "blocked" (tiles of 512 boxes, each resolved in a few
    # fixed-point iterations: 14 / 22 dependent steps at test / train instead
    # of 1000 / 2000 for R50-FPN on a photo, benchmarks/cost.py; for GPUs and
    # TPUs, where each step costs kernel launches), or "auto": greedy when
    # compiled for a CPU, blocked for a GPU/TPU.
    nms: Literal["auto", "greedy", "blocked"] = "auto"
    # Proposals with a side shorter than this (pixels) are never kept.
    min_size: float = 1e-3
    # Matching and sampling of anchors (Faster R-CNN §3.1.2).
    fg_iou: float = 0.7
    bg_iou: float = 0.3
    batch_per_image: int = 256
    positive_fraction: float = 0.5
    # Smooth-L1 beta of the anchor box loss (torchvision: 1/9; Detectron2: 0, i.e. L1).
    smooth_l1_beta: float = 1.0 / 9.0


@dataclass(frozen=True)
class RoIAlignConfig:
    # Bilinear samples per bin side (He et al. 2017 §3: 2 x 2 per bin works well).
    sampling_ratio: int = 2
    # Half-pixel shift: True for own training (Detectron2's ROIAlignV2), False
    # to match torchvision weights.
    aligned: bool = False


@dataclass(frozen=True)
class RoIHeadsConfig:
    # Matching and sampling of RoIs for the box and mask heads (Fast R-CNN:
    # IoU >= 0.5 foreground, 512 RoIs per image, 25% foreground).
    fg_iou: float = 0.5
    bg_iou: float = 0.5
    batch_per_image: int = 512
    positive_fraction: float = 0.25


@dataclass(frozen=True)
class BoxHeadConfig:
    # "fc": two fc layers (Lin et al. 2017 §4.2; 13.9M parameters in R50-FPN);
    # "nin": Network In Network (Lin, Chen, Yan 2013): mlpconv blocks on the
    # RoI features, then global average pooling (1.6M parameters in R50-FPN).
    kind: Literal["fc", "nin"] = "fc"
    # RoIAlign output side for the box head.
    pool_size: int = 7
    # Width of its two fc layers (Lin et al. 2017 §4.2: 1024); "fc" only.
    dim: int = 1024
    # Number and width of the "nin" head's mlpconv blocks (3x3 conv then two
    # 1x1 convs, each + ReLU; NIN's CIFAR model: three blocks of 192).
    mlpconv_blocks: int = 2
    mlpconv_dim: int = 256
    # Box-coder weights of the RoI deltas (Fast R-CNN: 10, 10, 5, 5).
    coder_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    # Smooth-L1 beta of the RoI box loss (torchvision: 1/9; Detectron2: 0, i.e. L1).
    smooth_l1_beta: float = 1.0 / 9.0


@dataclass(frozen=True)
class MaskHeadConfig:
    # The 4-conv FPN head of the paper, or a small U-Net.
    kind: Literal["conv", "unet"] = "conv"
    # RoIAlign output side for the mask head (28 x 28 masks come out).
    pool_size: int = 14
    # Width and number of 3x3 convs before the deconv (paper: 256, 4).
    dim: int = 256
    convs: int = 4
    # Foreground RoIs per image the head trains on (a static shape).
    fg_slots: int = 128


# The score above which `mrcli predict` and `mrcli.serving` keep detections by
# default (Detectron2's demo and torchvision's examples show detections above
# 0.5); model.inference.score_threshold (0.05) is the lower bar of COCO eval.
DEFAULT_SCORE = 0.5


@dataclass(frozen=True)
class KeypointHeadConfig:
    # K keypoints per instance (COCO person: 17); training takes it from the dataset.
    num_keypoints: int = 17
    # RoIAlign output side (He et al. 2017 §5; torchvision and Detectron2: 14).
    pool_size: int = 14
    # Number and width of the 3x3 convs + ReLU before the 4x4 stride-2 deconv
    # (paper §5: 8 x 512, as torchvision and Detectron2). The heatmaps are
    # 4 * pool_size on a side (deconv 2x, then bilinear 2x: 56), `heatmap_size`.
    convs: int = 8
    dim: int = 512
    # Foreground RoIs per image the head trains on (a static shape): the positives
    # of roi_heads.batch_per_image (512 x 25% = 128 at most).
    fg_slots: int = 128
    # Normalisation of the softmax cross-entropy over the heatmap positions:
    # "visible" divides by the visible keypoints inside their RoIs in the batch
    # (torchvision; Detectron2's NORMALIZE_LOSS_BY_VISIBLE_KEYPOINTS), "constant"
    # by images x batch_per_image x positive_fraction x K (Detectron2's other choice).
    loss_normalization: Literal["visible", "constant"] = "visible"
    # Weight of the keypoint loss (Detectron2 LOSS_WEIGHT: 1 with "visible", 4
    # recommended with "constant").
    loss_weight: float = 1.0
    # Added to a dataset's keypoint coordinates (COCO's are pixel indices) as they
    # are read, taken off predictions as they are written: 0 (torchvision) or 0.5
    # (Detectron2: the pixel's centre, Heckbert 1990).
    coordinate_offset: float = 0.0

    @property
    def heatmap_size(self) -> int:
        """Side of the heatmaps: the 2x deconv and the 2x bilinear upsampling of the pool."""
        return 4 * self.pool_size


@dataclass(frozen=True)
class InferenceConfig:
    # Detections: score threshold, per-class NMS IoU, detections per image.
    score_threshold: float = 0.05
    nms_threshold: float = 0.5
    detections_per_image: int = 100
    # Per-class NMS algorithm of the detections, as model.rpn.nms ("auto":
    # greedy, a loop of detections_per_image steps, when compiled for a CPU;
    # blocked, a loop over the pre_nms_topk candidates' tiles, for a GPU/TPU;
    # all exactly the greedy result).
    nms: Literal["auto", "greedy", "blocked"] = "auto"
    # (RoI, class) candidates above score_threshold, best first, that enter the
    # per-class NMS (static shape). torchvision keeps all of them; the result is
    # the same whenever detections_per_image survive NMS among these (greedy NMS
    # decides each box from higher-scored ones only).
    pre_nms_topk: int = 5000


@dataclass(frozen=True)
class ModelConfig:
    # Number of foreground classes K; class 0 is background, so the box
    # classifier has K + 1 outputs (COCO: 80).
    num_classes: int = 80
    # The mask branch (off = box-only Faster R-CNN).
    masks: bool = True
    # The keypoint branch (Keypoint R-CNN, He et al. 2017 §5), independent of
    # masks: boxes + keypoints, or boxes + masks + keypoints (Detectron2's
    # MASK_ON / KEYPOINT_ON).
    keypoints: bool = False
    # Dtype of convs and matmuls; parameters, box arithmetic, losses and NMS
    # stay float32. bfloat16 on GPU/TPU, float32 on CPU.
    dtype: Literal["float32", "bfloat16"] = "float32"
    # Each component's settings; the model's functions take only their part.
    input: InputConfig = InputConfig()
    backbone: BackboneConfig = BackboneConfig()
    fpn: FPNConfig = FPNConfig()
    anchors: AnchorConfig = AnchorConfig()
    rpn: RPNConfig = RPNConfig()
    roi_align: RoIAlignConfig = RoIAlignConfig()
    roi_heads: RoIHeadsConfig = RoIHeadsConfig()
    box_head: BoxHeadConfig = BoxHeadConfig()
    mask_head: MaskHeadConfig = MaskHeadConfig()
    keypoint_head: KeypointHeadConfig = KeypointHeadConfig()
    inference: InferenceConfig = InferenceConfig()


@dataclass(frozen=True)
class TrainConfig:
    # Images per step over all devices and hosts.
    global_batch: int = 16
    # SGD with momentum (the paper, Detectron2, torchvision), or AdamW
    # (Loshchilov & Hutter 2019), which trains the from-scratch CPU recipe in
    # far fewer steps; weight decay is then decoupled, still on kernels only.
    optimizer: Literal["sgd", "adamw"] = "sgd"
    # Learning rate at `lr_reference_batch`; scaled linearly with global_batch
    # (Goyal et al. 2017). Detectron2: 0.02 at 16.
    base_lr: float = 0.02
    lr_reference_batch: int = 16
    momentum: float = 0.9
    # Not applied to norms and biases.
    weight_decay: float = 1e-4
    # Linear warm-up from warmup_factor * lr over warmup_steps (Detectron2: 1000, 0.001).
    warmup_steps: int = 1000
    warmup_factor: float = 0.001
    # The LR is multiplied by decay_factor at each of these steps (1x: 60k, 80k).
    decay_steps: tuple[int, ...] = (60_000, 80_000)
    decay_factor: float = 0.1
    # Total optimiser steps (1x = 90k at batch 16, about 12 COCO epochs).
    steps: int = 90_000
    # Clip gradients to this global norm; 0 disables.
    grad_clip_norm: float = 0.0
    checkpoint_every: int = 5000
    # Keep this many recent checkpoints (plus the best by mask AP).
    keep_checkpoints: int = 3
    # Evaluate on data.eval_split every this many steps and at the last; 0 disables.
    eval_every: int = 10_000
    # Write a metrics line every this many steps.
    log_every: int = 20
    seed: int = 0
    # Initial weights: a catalogue name (`mrcli weights list`), a .pth/.pkl
    # file, a `mrcli weights import` directory or another run's workdir; ""
    # starts from random weights. `mrcli train --init-from` sets it.
    init_from: str = ""
    # "fixed": the fields above; "by_dataset_size": steps, LR warm-up, decays,
    # eval and checkpoint periods chosen from the training split's size
    # (mrcli.train.schedule_for_dataset; the finetune recipe).
    schedule: Literal["fixed", "by_dataset_size"] = "fixed"
    # Stop after this many periodic evals without a better train.best_metric
    # (the best checkpoint is kept); 0 never stops early.
    patience: int = 0
    # What "best" means for the kept checkpoint and for patience.
    best_metric: Literal["segm_AP", "bbox_AP", "keypoints_AP"] = "segm_AP"


@dataclass(frozen=True)
class EvalConfig:
    # Images per inference batch (global; the last batch is padded).
    batch_size: int = 8
    # Evaluate at most this many images of the split; 0 = all.
    max_images: int = 0
    # Detections per image COCOeval scores (its maxDets: AP and AR at this
    # many; COCO's own 100). Training raises it with the detections per image
    # it takes from a dense dataset (mrcli.train.instance_limits).
    max_dets: int = 100


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


SECTIONS = tuple(f.name for f in dataclasses.fields(Config))


# --- typed values -----------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return "a list of " + ", ".join(_type_name(a) for a in args)
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting JSON-ish forms
    (lists -> tuples, int -> float). Raises UserError naming `key`."""

    def bad() -> UserError:
        return UserError(f"{key}: expected {_type_name(tp)}, got {value!r}")

    origin = typing.get_origin(tp)
    if origin is Literal:
        options = typing.get_args(tp)
        for option in options:
            if value == option and type(value) is type(option):
                return option
        raise bad()
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad()
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise bad()
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad()
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad()
    raise TypeError(f"unsupported config type {tp!r} for {key}")


def _parse_text(text: str, tp: Any) -> Any:
    """A command-line value as the annotation expects it: JSON where it parses
    (numbers, true/false, [lists]), a bare word as a string, and a bare
    comma-separated list for tuples (e.g. 640,672,704)."""
    text = text.strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
        lowered = text.lower()
        if tp is bool and lowered in ("yes", "no", "on", "off"):
            value = lowered in ("yes", "on")
        elif typing.get_origin(tp) is tuple and "," in text:
            parts = [p for p in text.strip("()").split(",") if p.strip()]
            value = [_parse_text(p, typing.get_args(tp)[0]) for p in parts]
    if typing.get_origin(tp) is tuple and not isinstance(value, (list, tuple)):
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            value = [value]  # a single element is a one-element list
    return value


# --- profiles -----------------------------------------------------------------------

# Detectron2's numerics (configs/Base-RCNN-FPN.yaml and config/defaults.py): the
# MSRA ResNet (stride in the first 1x1, BGR input with the mean subtracted only),
# exact anchors, RoIAlignV2 (aligned), L1 box losses (smooth-L1 beta 0), 1000
# proposals per image in training. Detectron2 checkpoints (mrcli.weights) and
# recipes that start from MSRA ImageNet weights use them.
DETECTRON2_NUMERICS: dict[str, Any] = {
    "model.input.pixel_order": "bgr",
    "model.input.pixel_mean": (103.53, 116.28, 123.675),
    "model.input.pixel_std": (1.0, 1.0, 1.0),
    "model.backbone.stride_in_1x1": True,
    "model.anchors.torchvision_grid": False,
    "model.roi_align.aligned": True,
    "model.rpn.smooth_l1_beta": 0.0,
    "model.box_head.smooth_l1_beta": 0.0,
    "model.rpn.post_nms_topk.train": 1000,
    "model.keypoint_head.coordinate_offset": 0.5,
}


# --- keys: dotted paths through the nested dataclasses -------------------------------

# The flat model fields of mrcli 0.1 (records written before the model config
# was scoped by component) -> their keys now. A record in the old form is
# migrated when read (`from_dict`); `--set` with an old key names the new one.
RENAMED: dict[str, tuple[str, ...]] = {
    "model.depth": ("model.backbone.depth",),
    "model.width": ("model.backbone.width",),
    "model.freeze_at": ("model.backbone.freeze_at",),
    "model.norm": ("model.backbone.norm",),
    "model.stride_in_1x1": ("model.backbone.stride_in_1x1",),
    "model.fpn_channels": ("model.fpn.channels",),
    "model.anchor_sizes": ("model.anchors.sizes",),
    "model.aspect_ratios": ("model.anchors.aspect_ratios",),
    "model.torchvision_anchors": ("model.anchors.torchvision_grid",),
    "model.rpn_pre_nms_topk_train": ("model.rpn.pre_nms_topk.train",),
    "model.rpn_pre_nms_topk_test": ("model.rpn.pre_nms_topk.test",),
    "model.rpn_post_nms_topk_train": ("model.rpn.post_nms_topk.train",),
    "model.rpn_post_nms_topk_test": ("model.rpn.post_nms_topk.test",),
    "model.rpn_nms_threshold": ("model.rpn.nms_threshold",),
    "model.rpn_min_size": ("model.rpn.min_size",),
    "model.rpn_fg_iou": ("model.rpn.fg_iou",),
    "model.rpn_bg_iou": ("model.rpn.bg_iou",),
    "model.rpn_batch_per_image": ("model.rpn.batch_per_image",),
    "model.rpn_positive_fraction": ("model.rpn.positive_fraction",),
    "model.roi_fg_iou": ("model.roi_heads.fg_iou",),
    "model.roi_bg_iou": ("model.roi_heads.bg_iou",),
    "model.roi_batch_per_image": ("model.roi_heads.batch_per_image",),
    "model.roi_positive_fraction": ("model.roi_heads.positive_fraction",),
    "model.mask_fg_slots": ("model.mask_head.fg_slots",),
    "model.box_pool_size": ("model.box_head.pool_size",),
    "model.mask_pool_size": ("model.mask_head.pool_size",),
    "model.roi_sampling_ratio": ("model.roi_align.sampling_ratio",),
    "model.aligned": ("model.roi_align.aligned",),
    "model.box_head_dim": ("model.box_head.dim",),
    "model.box_coder_weights": ("model.box_head.coder_weights",),
    # One beta served both box losses; now each has its own, as in Detectron2.
    "model.smooth_l1_beta": ("model.rpn.smooth_l1_beta", "model.box_head.smooth_l1_beta"),
    "model.mask_head": ("model.mask_head.kind",),
    "model.mask_head_dim": ("model.mask_head.dim",),
    "model.mask_head_convs": ("model.mask_head.convs",),
    "model.score_threshold": ("model.inference.score_threshold",),
    "model.nms_threshold": ("model.inference.nms_threshold",),
    "model.detections_per_image": ("model.inference.detections_per_image",),
    "model.detection_pre_nms_topk": ("model.inference.pre_nms_topk",),
    "model.pixel_order": ("model.input.pixel_order",),
    "model.pixel_mean": ("model.input.pixel_mean",),
    "model.pixel_std": ("model.input.pixel_std",),
}


def _fields_of(cls: Any) -> dict[str, Any]:
    """A config dataclass's field names -> their resolved annotations."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_group(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp) and isinstance(tp, type)


def leaf_keys(cls: Any = None, prefix: str = "") -> list[str]:
    """Every settable dotted key under `cls` (default: the whole Config), in order."""
    cls = Config if cls is None else cls
    out = []
    for name, tp in _fields_of(cls).items():
        key = f"{prefix}{name}"
        out.extend(leaf_keys(tp, key + ".") if _is_group(tp) else [key])
    return out


def _check_key(key: str) -> Any:
    """The annotation of the settable field `key` (e.g. model.rpn.nms_threshold).
    Unknown keys, renamed keys and groups of fields are UserErrors naming the fix."""
    if key in RENAMED:
        new = " and ".join(RENAMED[key])
        raise UserError(f"config key {key!r} was renamed: use {new} (the model config is grouped "
                        "by component since mrcli 0.2; see `mrcli recipes show NAME`)")
    cls, parts = Config, key.split(".")
    for i, part in enumerate(parts):
        fields = _fields_of(cls)
        where = ".".join(parts[:i])
        if part not in fields:
            if i == 0:
                raise UserError(
                    f"unknown config key {key!r}: keys are section.field with section one of "
                    f"{', '.join(SECTIONS)} (see `mrcli recipes show NAME` for all keys)"
                )
            raise UserError(f"unknown config key {key!r}: {where} has no field {part!r}; "
                            f"its fields are {', '.join(fields)}")
        tp = fields[part]
        if i == len(parts) - 1:
            if _is_group(tp):
                first = ", ".join(f"{key}.{k}" for k in _fields_of(tp))
                raise UserError(f"config key {key!r} is a group of fields; set one of them: {first}")
            return tp
        if not _is_group(tp):
            raise UserError(f"unknown config key {key!r}: {'.'.join(parts[: i + 1])} is a value, "
                            "not a group of fields")
        cls = tp
    raise UserError(f"unknown config key {key!r}")


def _replace_path(obj: Any, parts: list[str], value: Any) -> Any:
    if len(parts) == 1:
        return dataclasses.replace(obj, **{parts[0]: value})
    child = _replace_path(getattr(obj, parts[0]), parts[1:], value)
    return dataclasses.replace(obj, **{parts[0]: child})


def override(cfg: Config, updates: dict[str, Any]) -> Config:
    """`cfg` with dotted keys (`model.rpn.nms_threshold`) replaced by typed values.

    Values are checked against the field's annotation (lists become tuples)."""
    for key, value in updates.items():
        value = _coerce(value, _check_key(key), key)
        cfg = _replace_path(cfg, key.split("."), value)
    return cfg


def parse_sets(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`["model.backbone.depth=101", "train.decay_steps=210000,250000"]` -> typed updates."""
    updates: dict[str, Any] = {}
    for pair in pairs:
        key, eq, text = pair.partition("=")
        if not eq:
            raise UserError(
                f"--set {pair!r}: expected key=value, e.g. --set train.global_batch=32"
            )
        key = key.strip()
        updates[key] = _parse_text(text, _check_key(key))
    return updates


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as JSON-able nested dicts (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> dotted keys: {"model": {"rpn": {"nms_threshold": 0.7}}} ->
    {"model.rpn.nms_threshold": 0.7}."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def migrate(flat: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys of a recorded config with the renamed keys of mrcli 0.1
    replaced by their keys now (RENAMED). Records are migrated as they are
    read; nothing on disk is rewritten."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        for new in RENAMED.get(key, (key,)):
            out[new] = value
    return out


def from_dict(data: dict[str, Any]) -> Config:
    """Inverse of `to_dict`, type-checked; keys missing from `data` keep defaults.
    Records of mrcli 0.1 (flat model fields) are migrated."""
    for section, values in data.items():
        if not isinstance(values, dict):
            raise UserError(f"config section {section!r} must be a mapping")
    return override(Config(), migrate(flatten(data)))


def diff(cfg: Config, base: Config | None = None) -> dict[str, Any]:
    """Dotted keys whose values differ from `base` (the defaults)."""
    a, b = flatten(to_dict(cfg)), flatten(to_dict(base or Config()))
    return {k: v for k, v in a.items() if v != b[k]}


# --- recipes ----------------------------------------------------------------------


def recipes_dir() -> Path:
    """Where the recipes are: inside the installed package (wheel), or at the
    top of the repository (editable install / source checkout)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "recipes", here.parent / "recipes"):
        if candidate.is_dir() and any(candidate.glob("*.py")):
            return candidate
    raise FileNotFoundError(
        f"no recipes found in {here / 'recipes'} or {here.parent / 'recipes'}; reinstall mrcli"
    )


def recipe_names() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.py") if not p.stem.startswith("_"))


@dataclass(frozen=True)
class Recipe:
    name: str
    doc: str  # the module docstring: what it is, the command, the result
    config: Config

    @property
    def summary(self) -> str:
        return self.doc.strip().splitlines()[0] if self.doc.strip() else ""


def _load_module(name: str) -> types.ModuleType:
    path = recipes_dir() / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"mrcli_recipes.{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_recipe(name: str) -> Recipe:
    """The recipe `name` applied to the defaults. Unknown names are a UserError
    that lists the known ones."""
    names = recipe_names()
    if name not in names:
        raise UserError(f"unknown recipe {name!r}; known recipes: {', '.join(names)}")
    module = _load_module(name)
    cfg = module.config(Config())
    if not isinstance(cfg, Config):
        raise TypeError(f"recipes/{name}.py: config() must return a Config")
    return Recipe(name=name, doc=module.__doc__ or "", config=cfg)


def resolve(recipe: str | None, sets: list[str] | tuple[str, ...] = ()) -> Config:
    """The config a command runs with: a recipe (or the defaults), then --set overrides."""
    cfg = load_recipe(recipe).config if recipe else Config()
    return override(cfg, parse_sets(sets))
