"""ResNet backbones with bottleneck blocks (He et al. 2016, "Deep Residual Learning").

The stride sits on the 3x3 conv ("ResNet v1.5", torchvision) or, with
`model.backbone.stride_in_1x1`, on the first 1x1 conv (the original MSRA/Caffe2 ResNet
that Detectron2's model-zoo checkpoints use). Norm layers are frozen BatchNorm
(constants) or GroupNorm (`model.backbone.norm`). Stages up to `model.backbone.freeze_at`
(1 stem, 2 stem + res2, ...) hold Frozen weights.

Depths: 50 (3, 4, 6, 3) and 101 (3, 4, 23, 3) blocks per stage (paper Table 1);
14 (1, 1, 1, 1) and 26 (2, 2, 2, 2) are narrow CPU variants of the same design.

`NIN` (model.backbone.kind = "nin") is a small Network-In-Network backbone
(Lin, Chen, Yan 2013) with the same outputs: mlpconv blocks with max-pooling
between them, for the CPU recipes.

Dimension key: B batch, H/W input height/width, C channels.
Outputs C2..C5 at strides 4, 8, 16, 32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mrcli.config import BackboneConfig
from mrcli.model.layers import Conv, FrozenBN, GroupNorm, MLPConv

Array = jax.Array

BLOCKS = {14: (1, 1, 1, 1), 26: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
EXPANSION = 4  # bottleneck output = 4 x its inner width (He et al. 2016, Fig. 5)


def compute_dtype(name: str):
    """model.dtype -> the dtype convs and matmuls compute in."""
    return jnp.bfloat16 if name == "bfloat16" else jnp.float32


def make_norm(cfg: BackboneConfig, features: int, trainable: bool):
    if cfg.norm == "group_norm":
        return GroupNorm(features, trainable=trainable)
    return FrozenBN(features)


def stage_channels(cfg: BackboneConfig) -> tuple[int, int, int, int]:
    """Output channels of res2..res5 (ResNet-50: 256, 512, 1024, 2048)."""
    return tuple(cfg.width * EXPANSION * 2**i for i in range(4))


class Bottleneck(nnx.Module):
    """1x1 -> 3x3 -> 1x1 (x4 channels), projection shortcut on the first block of a stage."""

    def __init__(self, cfg: BackboneConfig, cin: int, width: int, stride: int, trainable: bool,
                 dtype, rngs):  # fmt: skip
        cout = width * EXPANSION
        s1, s3 = (stride, 1) if cfg.stride_in_1x1 else (1, stride)
        kw = dict(bias=False, trainable=trainable, dtype=dtype, rngs=rngs)
        self.conv1 = Conv(cin, width, 1, stride=s1, **kw)
        self.norm1 = make_norm(cfg, width, trainable)
        self.conv2 = Conv(width, width, 3, stride=s3, **kw)
        self.norm2 = make_norm(cfg, width, trainable)
        self.conv3 = Conv(width, cout, 1, **kw)
        self.norm3 = make_norm(cfg, cout, trainable)
        if stride != 1 or cin != cout:
            self.shortcut = Conv(cin, cout, 1, stride=stride, **kw)
            self.shortcut_norm = make_norm(cfg, cout, trainable)
        else:
            self.shortcut = None
            self.shortcut_norm = None

    def __call__(self, x: Array) -> Array:  # [B,H,W,C] -> [B,H/s,W/s,4*width]
        y = jax.nn.relu(self.norm1(self.conv1(x)))
        y = jax.nn.relu(self.norm2(self.conv2(y)))
        y = self.norm3(self.conv3(y))
        if self.shortcut is not None:
            x = self.shortcut_norm(self.shortcut(x))
        return jax.nn.relu(y + x)


def max_pool_3x3_s2(x: Array) -> Array:  # [B,H,W,C] -> [B,H/2,W/2,C]
    """PyTorch MaxPool2d(3, stride 2, padding 1): the padding never wins the max."""
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
    )


class ResNet(nnx.Module):
    def __init__(self, cfg: BackboneConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        if cfg.depth not in BLOCKS:
            raise ValueError(f"model.backbone.depth must be one of {sorted(BLOCKS)}, got {cfg.depth}")
        stem_trainable = cfg.freeze_at < 1
        self.stem = Conv(
            3, cfg.width, 7, stride=2, bias=False, trainable=stem_trainable, dtype=dtype, rngs=rngs
        )
        self.stem_norm = make_norm(cfg, cfg.width, stem_trainable)
        cin = cfg.width
        stages = []
        for i, n in enumerate(BLOCKS[cfg.depth]):
            trainable = cfg.freeze_at < i + 2  # res2 is stage 2
            width = cfg.width * 2**i
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(Bottleneck(cfg, cin, width, stride, trainable, dtype, rngs))
                cin = width * EXPANSION
            stages.append(nnx.List(blocks))
        self.res2, self.res3, self.res4, self.res5 = stages

    def __call__(self, x: Array) -> tuple[Array, Array, Array, Array]:
        """[B,H,W,3] -> C2..C5: [B,H/4,W/4,4w], [B,H/8,W/8,8w], [B,H/16,W/16,16w], [B,H/32,W/32,32w]."""
        x = jax.nn.relu(self.stem_norm(self.stem(x)))
        x = max_pool_3x3_s2(x)
        outs = []
        for stage in (self.res2, self.res3, self.res4, self.res5):
            for block in stage:
                x = block(x)
            outs.append(x)
        return tuple(outs)


class NIN(nnx.Module):
    """Network In Network's layout (Lin et al. 2013, §4: mlpconv, max-pool, ...)
    with the strides and channels FPN takes from ResNet: a 5x5 stride-2 stem conv
    (width channels), then per stage a 3x3 stride-2 max-pool and an mlpconv block
    (3x3 conv then two 1x1 convs) to stage_channels: C2..C5 at strides 4..32.
    No residuals; each conv is normalised (model.backbone.norm) before its ReLU,
    as the ResNet, so it trains from scratch with GroupNorm. Frozen stages follow
    model.backbone.freeze_at (1 stem, 2 stem + C2, ...)."""

    def __init__(self, cfg: BackboneConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        stem_trainable = cfg.freeze_at < 1
        self.stem = Conv(3, cfg.width, 5, stride=2, bias=False, trainable=stem_trainable, dtype=dtype, rngs=rngs)
        self.stem_norm = make_norm(cfg, cfg.width, stem_trainable)
        cin, stages = cfg.width, []
        for i, cout in enumerate(stage_channels(cfg)):
            trainable = cfg.freeze_at < i + 2

            def norm(features, trainable=trainable):
                return make_norm(cfg, features, trainable)

            stages.append(MLPConv(cin, cout, 3, norm=norm, trainable=trainable, dtype=dtype, rngs=rngs))
            cin = cout
        self.stages = nnx.List(stages)

    def __call__(self, x: Array) -> tuple[Array, Array, Array, Array]:
        """[B,H,W,3] -> C2..C5 as ResNet's: [B,H/4,W/4,4w] .. [B,H/32,W/32,32w]."""
        x = jax.nn.relu(self.stem_norm(self.stem(x)))
        outs = []
        for stage in self.stages:
            x = stage(max_pool_3x3_s2(x))
            outs.append(x)
        return tuple(outs)


def make_backbone(cfg: BackboneConfig, *, dtype=jnp.float32, rngs: nnx.Rngs) -> ResNet | NIN:
    """The backbone model.backbone.kind names."""
    return NIN(cfg, dtype=dtype, rngs=rngs) if cfg.kind == "nin" else ResNet(cfg, dtype=dtype, rngs=rngs)
