"""Model structure without compiling: jax.eval_shape of both entry points at the
800 x 1344 bucket for R50-FPN and R101-FPN, and parameter counts that match
torchvision's (44.4 M for maskrcnn_resnet50_fpn with 91 classes)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import torchvision_ref
from mrcli import model
from mrcli.config import Config, ModelConfig, load_recipe, override
from mrcli.model.layers import Constant, Frozen

# torchvision's maskrcnn_resnet50_fpn (91 outputs incl. background): 44,401,393
# parameters (its docs: 44.4 M), FrozenBatchNorm2d buffers not counted. R101-FPN
# (resnet_fpn_backbone("resnet101") in MaskRCNN) adds ResNet-101's 17 extra res4 blocks.
R50_FPN_PARAMS = 44_401_393
R101_FPN_PARAMS = 63_341_297

H, W = 800, 1344


def _model(fields: dict) -> ModelConfig:
    """The default model config with `fields` (keys below `model.`) set."""
    return override(Config(), {f"model.{k}": v for k, v in fields.items()}).model


def _batch_spec(cfg: ModelConfig, b: int, n: int = 100, g: int = 112) -> dict:
    s = jax.ShapeDtypeStruct
    return {
        "image": s((b, H, W, 3), jnp.float32),
        "image_info": s((b, 5), jnp.float32),
        "gt_boxes": s((b, n, 4), jnp.float32),
        "gt_classes": s((b, n), jnp.int32),
        "gt_masks": s((b, n, g, g), jnp.uint8),
        "gt_valid": s((b, n), jnp.bool_),
        "gt_crowd": s((b, n), jnp.bool_),
    }


@pytest.mark.parametrize("depth,count", [(50, R50_FPN_PARAMS), (101, R101_FPN_PARAMS)])
def test_parameter_count(depth, count):
    _, state = model.abstract(_model({"num_classes": 90, "backbone.depth": depth}))
    assert model.count_parameters(state) == count


def test_parameter_count_matches_torchvision():
    tv = torchvision_ref.load()
    if tv is None:
        pytest.skip("torchvision not installed")
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops import FrozenBatchNorm2d

    for depth, count in ((50, R50_FPN_PARAMS), (101, R101_FPN_PARAMS)):
        backbone = resnet_fpn_backbone(
            backbone_name=f"resnet{depth}", weights=None, norm_layer=FrozenBatchNorm2d, trainable_layers=5
        )
        tvm = MaskRCNN(backbone, num_classes=91)
        assert sum(p.numel() for p in tvm.parameters()) == count, depth


@pytest.mark.parametrize("depth", [50, 101])
def test_eval_shape_entry_points(depth):
    cfg = _model({"num_classes": 80, "backbone.depth": depth})
    m, state = model.abstract(cfg)
    d = cfg.inference.detections_per_image
    dets = jax.eval_shape(
        m.detect, state, jax.ShapeDtypeStruct((2, H, W, 3), jnp.float32),
        jax.ShapeDtypeStruct((2, 5), jnp.float32),
    )
    assert {k: (v.shape, v.dtype) for k, v in dets.items()} == {
        "boxes": ((2, d, 4), jnp.float32),
        "scores": ((2, d), jnp.float32),
        "classes": ((2, d), jnp.int32),
        "masks": ((2, d, 28, 28), jnp.float32),
        "valid": ((2, d), jnp.bool_),
    }
    loss, metrics = jax.eval_shape(m.loss, state, _batch_spec(cfg, 2), jax.random.key(0))
    assert loss.shape == () and loss.dtype == jnp.float32
    assert {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask",
            "rpn_fg_fraction", "roi_fg_fraction", "accuracy"} <= set(metrics)
    assert all(v.shape == () for v in metrics.values())


def test_frozen_stages_and_constants():
    """freeze_at=2: stem and res2 hold Frozen weights, res3.. trainable; frozen BN is
    Constant; the trainable split holds only nnx.Param."""
    _, state = model.abstract(_model({"backbone.freeze_at": 2}))
    params, rest = model.split_params(state)
    flat = {tuple(map(str, p)): type(v) for p, v in nnx.to_flat_state(state)}
    assert flat[("backbone", "stem", "kernel")] is Frozen
    assert flat[("backbone", "res2", "0", "conv1", "kernel")] is Frozen
    assert flat[("backbone", "res3", "0", "conv1", "kernel")] is nnx.Param
    assert flat[("backbone", "res3", "0", "norm1", "scale")] is Constant
    assert all(t is nnx.Param for p, t in flat.items() if p[0] != "backbone")
    n_params = sum(x.size for x in jax.tree.leaves(params))
    n_frozen = sum(x.size for x in jax.tree.leaves(nnx.filter_state(rest, Frozen)))
    assert n_params + n_frozen == model.count_parameters(state)
    # stem 7x7x3x64 + res2 (3 blocks) weights
    assert n_frozen == 9408 + 212992


def test_variants_build():
    tiny = load_recipe("tiny").config

    def variant(**fields):
        return override(tiny, {f"model.{k}": v for k, v in fields.items()}).model

    for cfg in (
        tiny.model,
        variant(**{"mask_head.kind": "unet"}),
        variant(masks=False),
        variant(**{"backbone.depth": 26, "dtype": "bfloat16"}),
        variant(**{"backbone.stride_in_1x1": True, "backbone.norm": "frozen_bn"}),
        load_recipe("tiny_nin").config.model,
        variant(**{"backbone.kind": "nin", "box_head.kind": "nin", "dtype": "bfloat16"}),
    ):
        m, state = model.abstract(cfg)
        dets = jax.eval_shape(
            m.detect, state, jax.ShapeDtypeStruct((1, 128, 128, 3), jnp.float32),
            jax.ShapeDtypeStruct((1, 5), jnp.float32),
        )
        d = cfg.inference.detections_per_image
        assert dets["boxes"].shape == (1, d, 4)
        assert ("masks" in dets) == cfg.masks
        if cfg.masks:
            assert dets["masks"].shape == (1, d, 28, 28)
        assert dets["scores"].dtype == jnp.float32  # float32 outputs under bfloat16 too
