"""Mask R-CNN (He et al. 2017): the module tree and the two pure entry points.

    model, state = create(cfg, seed)          # Model (static), nnx.State (arrays)
    loss, metrics = model.loss(state, batch, rng)
    dets = model.detect(state, images, image_info)

`MaskRCNN` (an NNX module) only holds the layers. Everything else (anchors,
proposals, matching, sampling, RoIAlign, losses, post-processing) is a pure
function of one image, vmapped over the batch, with shapes fixed by the
config and the input size (docs/design.md §2).

`Model` is the static half (config + graphdef, hashable) and `state` the
array half (nnx.State of Param / Frozen / Constant variables, see layers.py).
Training differentiates only the `nnx.Param` part: `split_params(state)` gives
(params, constants) and `model.loss(merge_params(params, constants), batch, rng)`
is the loss over the params (mrcli.train.model_loss).

Batch (a dict of arrays; docs/design.md §4):
  image [B,H,W,3] float32, normalised, zero-padded to the bucket
  image_info [B,5] float32 (orig_h, orig_w, scale, resized_h, resized_w)
  gt_boxes [B,N,4] float32 xyxy input pixels; gt_classes [B,N] int32 1..K
  gt_masks [B,N,G,G] uint8, each gt's mask cropped to its box, G x G
  gt_valid [B,N] bool; gt_crowd [B,N] bool (optional: ignore regions)
  gt_keypoints [B,N,K,3] float32 x, y input pixels, visibility 0/1/2 (keypoint models)
  is_padding [B] bool (optional: contributes nothing)
Detections: boxes [B,D,4] (input pixels), scores [B,D], classes [B,D] int32
(1..K), masks [B,D,M,M] float32 probabilities of the detected class's mask in
the box (M = 28), keypoint_heatmaps [B,D,K,S,S] float32 logits over the box
(keypoint models; S = 56, decoded on the host: mrcli.ops.keypoints), valid [B,D].

Dimension key: B batch, H/W padded input size, N gt, G gt mask crop side,
A anchors, P proposals, S sampled RoIs (heatmap side in keypoint outputs),
F mask or keypoint slots, D detections, K foreground classes (keypoints in
gt_keypoints and keypoint_heatmaps), M mask side, C channels.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mrcli.config import ModelConfig, RoIAlignConfig
from mrcli.errors import UserError
from mrcli.model import losses, roi_heads, rpn
from mrcli.model.backbone import compute_dtype, make_backbone, stage_channels
from mrcli.model.fpn import FPN
from mrcli.model.heads import BoxHead, KeypointHead, MaskHead, NINBoxHead, RPNHead, UNetMaskHead
from mrcli.model.layers import Frozen
from mrcli.ops import anchors as anchor_ops
from mrcli.ops.roi_align import multilevel_roi_align

Array = jax.Array


class MaskRCNN(nnx.Module):
    """The layers: backbone, FPN, RPN head, box head, and a mask head and a keypoint
    head where the config switches them on (model.masks, model.keypoints)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        kw = dict(dtype=compute_dtype(cfg.dtype), rngs=rngs)
        f, k = cfg.fpn.channels, cfg.num_classes
        self.backbone = make_backbone(cfg.backbone, **kw)
        self.fpn = FPN(cfg.fpn, stage_channels(cfg.backbone), **kw)
        self.rpn = RPNHead(f, len(cfg.anchors.aspect_ratios), **kw)
        self.box_head = (NINBoxHead if cfg.box_head.kind == "nin" else BoxHead)(cfg.box_head, f, k, **kw)
        if not cfg.masks:
            self.mask_head = None
        elif cfg.mask_head.kind == "unet":
            self.mask_head = UNetMaskHead(cfg.mask_head, f, k, **kw)
        else:
            self.mask_head = MaskHead(cfg.mask_head, f, k, **kw)
        self.keypoint_head = KeypointHead(cfg.keypoint_head, f, **kw) if cfg.keypoints else None

    def __call__(self, images: Array) -> tuple[Array, ...]:
        """[B,H,W,3] -> P2..P6, [B,H/4,W/4,C] .. [B,H/64,W/64,C]."""
        return self.fpn(self.backbone(images))


def split_params(state: nnx.State) -> tuple[nnx.State, nnx.State]:
    """(trainable nnx.Param, everything else: frozen weights and constants)."""
    return nnx.split_state(state, nnx.Param, ...)


def merge_params(params: nnx.State, constants: nnx.State) -> nnx.State:
    return nnx.merge_state(params, constants)


def _pool(cfg: RoIAlignConfig, feats, boxes: Array, size: int) -> Array:
    """Per image multilevel RoIAlign on P2..P5: boxes [B,R,4] -> [B,R,size,size,C]."""
    return jax.vmap(
        lambda f, b: multilevel_roi_align(
            f, b, size, sampling_ratio=cfg.sampling_ratio, aligned=cfg.aligned
        )
    )(list(feats[:4]), boxes)


def _heads_batched(fn, x: Array):
    """Run a per-RoI head on [B,R,...] as one [B*R,...] batch."""
    b, r = x.shape[:2]
    out = fn(x.reshape(b * r, *x.shape[2:]))
    return jax.tree.map(lambda y: y.reshape(b, r, *y.shape[1:]), out)


def _class_masks(mask_logits: Array, classes: Array) -> Array:
    """[B,R,M,M,K+1] logits, [B,R] class -> [B,R,M,M] logits of that class."""
    idx = classes[:, :, None, None, None].astype(jnp.int32)
    return jnp.take_along_axis(mask_logits, idx, axis=-1)[..., 0]


@dataclasses.dataclass(frozen=True)
class Model:
    """The static half of a model: its config and NNX graph definition.
    Methods are pure functions of the state; jit them (Model is hashable)."""

    cfg: ModelConfig
    graphdef: Any

    def module(self, state: nnx.State) -> MaskRCNN:
        return nnx.merge(self.graphdef, state)

    # --- inference ------------------------------------------------------------------

    def detect(
        self, state: nnx.State, images: Array, image_info: Array, extras: bool = False
    ) -> dict[str, Array]:
        """images [B,H,W,3], image_info [B,5] -> detections (see the module docstring).
        With `extras` (static) also features (P2..P6) and the RPN proposals."""
        cfg = self.cfg
        net = self.module(state)
        b, h, w, _ = images.shape
        feats = net(images)
        obj, deltas = net.rpn(feats)
        anchors, layout = rpn.anchors_for(cfg.anchors, (h, w))
        image_hw = image_info[:, 3:5].astype(jnp.float32)
        props, pscores, pvalid = jax.vmap(
            lambda o, d, hw: rpn.proposals(cfg.rpn, o, d, anchors, layout, hw, training=False)
        )(obj, deltas, image_hw)  # [B,P,4], [B,P], [B,P]
        cls_logits, box_deltas = _heads_batched(
            net.box_head, _pool(cfg.roi_align, feats, props, cfg.box_head.pool_size)
        )
        coder = cfg.box_head.coder_weights
        dets = jax.vmap(lambda *a: roi_heads.detections(cfg.inference, coder, *a))(
            props, pvalid, cls_logits, box_deltas, image_hw
        )
        if net.mask_head is not None:
            mask_logits = _heads_batched(
                net.mask_head, _pool(cfg.roi_align, feats, dets["boxes"], cfg.mask_head.pool_size)
            )  # [B,D,M,M,K+1]
            dets["masks"] = jax.nn.sigmoid(_class_masks(mask_logits, dets["classes"]))
        if net.keypoint_head is not None:
            heatmaps = _heads_batched(
                net.keypoint_head, _pool(cfg.roi_align, feats, dets["boxes"], cfg.keypoint_head.pool_size)
            )  # [B,D,S,S,K]
            dets["keypoint_heatmaps"] = jnp.moveaxis(heatmaps, -1, 2)  # [B,D,K,S,S]
        if extras:
            dets["features"] = tuple(f.astype(jnp.float32) for f in feats)
            dets["proposals"] = props
            dets["proposal_scores"] = pscores
            dets["proposal_valid"] = pvalid
        return dets

    # --- training -------------------------------------------------------------------

    def loss(
        self, state: nnx.State, batch: dict[str, Array], rng: Array
    ) -> tuple[Array, dict[str, Array]]:
        """Training loss of a batch and its metrics (each loss term, fg fractions,
        RoI classification accuracy), all float32 scalars."""
        cfg = self.cfg
        net = self.module(state)
        images = batch["image"]
        b, h, w, _ = images.shape
        gt_boxes = batch["gt_boxes"].astype(jnp.float32)
        gt_valid = batch["gt_valid"].astype(bool)
        crowd = batch.get("gt_crowd")
        crowd = jnp.zeros_like(gt_valid) if crowd is None else crowd.astype(bool) & gt_valid
        gt_target = gt_valid & ~crowd
        gt_classes = batch["gt_classes"].astype(jnp.int32)
        image_hw = batch["image_info"][:, 3:5].astype(jnp.float32)
        keys = jax.random.split(rng, (b, 2))

        feats = net(images)
        obj, deltas = net.rpn(feats)  # [B,A], [B,A,4]
        anchors, layout = rpn.anchors_for(cfg.anchors, (h, w))
        coder = cfg.box_head.coder_weights

        def per_image(o, d, hw, boxes, classes, target, crowd_i, key):
            t = rpn.targets(cfg.rpn, anchors, boxes, target, crowd_i, key[0])
            rpn_sums = losses.rpn_terms(
                o[t["index"]], d[t["index"]], t["label"], t["valid"], t["box_target"],
                cfg.rpn.smooth_l1_beta,
            )
            props, _, pvalid = rpn.proposals(cfg.rpn, o, d, anchors, layout, hw, training=True)
            s = roi_heads.sample_rois(cfg.roi_heads, coder, props, pvalid, boxes, classes, target,
                                      crowd_i, key[1])  # fmt: skip
            return rpn_sums, s

        terms, samples = jax.vmap(per_image)(
            obj, deltas, image_hw, gt_boxes, gt_classes, gt_target, crowd, keys
        )
        cls_logits, box_deltas = _heads_batched(
            net.box_head, _pool(cfg.roi_align, feats, samples["rois"], cfg.box_head.pool_size)
        )
        terms.update(
            jax.vmap(
                lambda *a: losses.box_terms(*a, beta=cfg.box_head.smooth_l1_beta)
            )(cls_logits, box_deltas, samples["cls_target"], samples["valid"], samples["box_target"])
        )
        if net.mask_head is not None:
            f = min(cfg.mask_head.fg_slots, cfg.roi_heads.batch_per_image)
            rois = samples["rois"][:, :f]  # positives come first
            mvalid = samples["fg"][:, :f]
            mask_logits = _heads_batched(
                net.mask_head, _pool(cfg.roi_align, feats, rois, cfg.mask_head.pool_size)
            )
            mask_logits = _class_masks(mask_logits, samples["cls_target"][:, :f])
            m = mask_logits.shape[-1]
            ratio = cfg.roi_align.sampling_ratio
            targets = jax.vmap(
                lambda gm, gb, mg, r: roi_heads.mask_targets(gm, gb, mg, r, m, ratio)
            )(batch["gt_masks"], gt_boxes, samples["matched_gt"][:, :f], rois)
            terms.update(jax.vmap(losses.mask_terms)(mask_logits, targets, mvalid))
        if net.keypoint_head is not None:
            terms.update(self._keypoint_terms(net, feats, samples, batch["gt_keypoints"]))
        if "is_padding" in batch:
            keep = 1.0 - batch["is_padding"].astype(jnp.float32)
            terms = {k: v * keep for k, v in terms.items()}
        kh = cfg.keypoint_head
        return losses.combine(terms, masks=net.mask_head is not None,
                              keypoint_weight=kh.loss_weight if net.keypoint_head is not None else None)

    def _keypoint_terms(self, net: MaskRCNN, feats, samples: dict[str, Array],
                        gt_keypoints: Array) -> dict[str, Array]:  # fmt: skip
        """Per image keypoint loss sums [B] over the first keypoint_head.fg_slots
        sampled RoIs (the positives), and each image's normaliser.
        gt_keypoints [B,N,K,3] float32: x, y in input pixels, visibility."""
        cfg, kh = self.cfg, self.cfg.keypoint_head
        f = min(kh.fg_slots, cfg.roi_heads.batch_per_image)
        rois = samples["rois"][:, :f]  # positives come first
        heatmaps = _heads_batched(net.keypoint_head, _pool(cfg.roi_align, feats, rois, kh.pool_size))
        b, _, s, _, k = heatmaps.shape  # [B,F,S,S,K]
        logits = jnp.moveaxis(heatmaps, -1, 2).reshape(b, f, k, s * s)
        targets, valid = jax.vmap(lambda g, m, r: roi_heads.keypoint_targets(g, m, r, s))(
            gt_keypoints.astype(jnp.float32), samples["matched_gt"][:, :f], rois
        )  # [B,F,K] each
        valid = valid & samples["fg"][:, :f, None]
        terms = jax.vmap(losses.keypoint_terms)(logits, targets, valid)
        if kh.loss_normalization == "visible":
            terms["keypoint_norm"] = terms["keypoint_count"]
        else:  # Detectron2: images x batch_per_image x positive_fraction x K
            per_image = cfg.roi_heads.batch_per_image * cfg.roi_heads.positive_fraction * k
            terms["keypoint_norm"] = jnp.full((b,), per_image, jnp.float32)
        return terms


def check_config(cfg: ModelConfig) -> None:
    """A UserError for settings the model can be built with but would compute
    wrongly with (one anchor size per FPN level, fractions and IoU thresholds
    in range, ...), naming the field and what it must be."""
    levels = len(anchor_ops.STRIDES)
    problems = []
    if len(cfg.anchors.sizes) != levels or min(cfg.anchors.sizes, default=0) <= 0:
        problems.append(f"model.anchors.sizes={','.join(map(str, cfg.anchors.sizes))}: give one positive "
                        f"size per FPN level P2..P6 ({levels} sizes, e.g. 32,64,128,256,512)")  # fmt: skip
    if not cfg.anchors.aspect_ratios or min(cfg.anchors.aspect_ratios) <= 0:
        problems.append("model.anchors.aspect_ratios: give at least one positive ratio (e.g. 0.5,1,2)")
    if cfg.num_classes < 1:
        problems.append(f"model.num_classes={cfg.num_classes}: at least 1")
    for name, sec in (("rpn", cfg.rpn), ("roi_heads", cfg.roi_heads)):
        if not 0 <= sec.bg_iou <= sec.fg_iou <= 1:
            problems.append(f"model.{name}.bg_iou={sec.bg_iou} and fg_iou={sec.fg_iou}: need "
                            "0 <= bg_iou <= fg_iou <= 1")  # fmt: skip
        if not 0 < sec.positive_fraction <= 1 or sec.batch_per_image < 1:
            problems.append(f"model.{name}.positive_fraction must be in (0, 1] and batch_per_image >= 1")
    if cfg.masks and cfg.mask_head.kind == "unet" and cfg.mask_head.pool_size % 2:
        problems.append(f"model.mask_head.pool_size={cfg.mask_head.pool_size}: the U-Net head needs "
                        "an even size")  # fmt: skip
    if min(cfg.input.pixel_std) <= 0:
        problems.append("model.input.pixel_std: every channel's std must be positive")
    if problems:
        raise UserError("; ".join(problems))


def create(cfg: ModelConfig, seed: int = 0) -> tuple[Model, nnx.State]:
    """A freshly initialised model: (Model, state)."""
    check_config(cfg)
    graphdef, state = nnx.split(MaskRCNN(cfg, rngs=nnx.Rngs(seed)))
    return Model(cfg, graphdef), state


def abstract(cfg: ModelConfig) -> tuple[Model, nnx.State]:
    """(Model, state of jax.ShapeDtypeStruct), without allocating or computing anything."""
    check_config(cfg)
    module = nnx.eval_shape(lambda: MaskRCNN(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(module)
    return Model(cfg, graphdef), state


def count_parameters(state: nnx.State) -> int:
    """Number of weights (trainable and frozen), not counting frozen-BN constants,
    as torchvision counts `parameters()` (its FrozenBatchNorm2d holds buffers)."""
    params = nnx.filter_state(state, nnx.Param, Frozen)  # not the Constant BN values
    return sum(int(x.size) for x in jax.tree.leaves(params))
