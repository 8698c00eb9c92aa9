"""Network heads: RPN head, box head, mask heads (conv and U-Net).

Only the layers live here; what their outputs mean (decoding, sampling,
losses, post-processing) is in rpn.py, roi_heads.py and losses.py.

Dimension key: B batch, H/W feature height/width, A anchors per location,
R rois, P RoI pool side (7 box, 14 mask), K foreground classes (K + 1 with
background), M mask side (28), F fpn channels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mrcli.config import BoxHeadConfig, MaskHeadConfig
from mrcli.model.layers import Conv, Deconv2x2, Linear, normal

Array = jax.Array


class RPNHead(nnx.Module):
    """Shared over levels: 3x3 conv F + ReLU, then 1x1 objectness (A) and 1x1 deltas (4A)
    (Ren et al. 2015 §3.1; init normal(0.01), zero bias, as torchvision/Detectron2)."""

    def __init__(self, in_channels: int, num_anchors: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        """num_anchors: A, anchors per location (the aspect ratios)."""
        f, a = in_channels, num_anchors
        kw = dict(init=normal(0.01), dtype=dtype, rngs=rngs)
        self.conv = Conv(f, f, 3, **kw)
        self.objectness = Conv(f, a, 1, **kw)
        self.deltas = Conv(f, 4 * a, 1, **kw)

    def __call__(self, feats: tuple[Array, ...]) -> tuple[Array, Array]:
        """P2..P6 -> objectness logits [B, sum_l H_l W_l A] and deltas [B, sum_l H_l W_l A, 4],
        level-major then (y, x, anchor) as the anchor grid (float32)."""
        logits, deltas = [], []
        for p in feats:
            t = jax.nn.relu(self.conv(p))
            b = p.shape[0]
            logits.append(self.objectness(t).astype(jnp.float32).reshape(b, -1))
            deltas.append(self.deltas(t).astype(jnp.float32).reshape(b, -1, 4))
        return jnp.concatenate(logits, axis=1), jnp.concatenate(deltas, axis=1)


class BoxHead(nnx.Module):
    """Two fc layers (Lin et al. 2017 §4.2: 2 x fc 1024) on the flattened 7x7 RoI
    features, then class logits (K + 1) and class-specific deltas (4 (K + 1)).
    Init: Caffe2 xavier fc, normal(0.01) logits, normal(0.001) deltas (Detectron2)."""

    def __init__(self, cfg: BoxHeadConfig, in_channels: int, num_classes: int, *,
                 dtype=jnp.float32, rngs: nnx.Rngs):  # fmt: skip
        f, p, d, k1 = in_channels, cfg.pool_size, cfg.dim, num_classes + 1
        self.fc6 = Linear(f * p * p, d, dtype=dtype, rngs=rngs)
        self.fc7 = Linear(d, d, dtype=dtype, rngs=rngs)
        self.cls = Linear(d, k1, init=normal(0.01), dtype=dtype, rngs=rngs)
        self.deltas = Linear(d, 4 * k1, init=normal(0.001), dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> tuple[Array, Array]:
        """[R,P,P,F] -> logits [R,K+1], deltas [R,K+1,4] (float32).
        Flattened (y, x, channel); torchvision's (channel, y, x) fc6 is permuted on import."""
        r = x.shape[0]
        x = jax.nn.relu(self.fc6(x.reshape(r, -1)))
        x = jax.nn.relu(self.fc7(x))
        logits = self.cls(x).astype(jnp.float32)
        deltas = self.deltas(x).astype(jnp.float32).reshape(r, -1, 4)
        return logits, deltas


class MaskHead(nnx.Module):
    """Mask R-CNN's FPN mask head (He et al. 2017, Fig. 4 right): `mask_head.convs` x
    (3x3 conv + ReLU) -> 2x2 deconv stride 2 + ReLU -> 1x1 conv to one mask logit per
    class (K + 1 channels, channel 0 unused, as torchvision's predictor)."""

    def __init__(self, cfg: MaskHeadConfig, in_channels: int, num_classes: int, *,
                 dtype=jnp.float32, rngs: nnx.Rngs):  # fmt: skip
        f, d, k1 = in_channels, cfg.dim, num_classes + 1
        self.convs = nnx.List(
            [Conv(f if i == 0 else d, d, 3, dtype=dtype, rngs=rngs) for i in range(cfg.convs)]
        )
        self.deconv = Deconv2x2(d, d, dtype=dtype, rngs=rngs)
        self.predictor = Conv(d, k1, 1, init=normal(0.001), dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        """[R,P,P,F] -> mask logits [R,2P,2P,K+1] (float32)."""
        for conv in self.convs:
            x = jax.nn.relu(conv(x))
        x = jax.nn.relu(self.deconv(x))
        return self.predictor(x).astype(jnp.float32)


def max_pool_2x2(x: Array) -> Array:  # [R,H,W,C] -> [R,H/2,W/2,C]
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


class UNetMaskHead(nnx.Module):
    """U-Net mask head (Ronneberger et al. 2015 in miniature; the variant presented for
    the iMaterialist Fashion data): 14x14 RoI features -> two 3x3 convs (the skip) ->
    max-pool to 7x7 -> two 3x3 bottleneck convs at twice the width -> 2x2 deconv to
    14x14 + concat skip -> two 3x3 convs -> 2x2 deconv to 28x28 -> 1x1 conv to K + 1
    mask logits (per-class sigmoid, as the conv head)."""

    def __init__(self, cfg: MaskHeadConfig, in_channels: int, num_classes: int, *,
                 dtype=jnp.float32, rngs: nnx.Rngs):  # fmt: skip
        f, d, k1 = in_channels, cfg.dim, num_classes + 1
        kw = dict(dtype=dtype, rngs=rngs)
        self.down1 = Conv(f, d, 3, **kw)
        self.down2 = Conv(d, d, 3, **kw)
        self.mid1 = Conv(d, 2 * d, 3, **kw)
        self.mid2 = Conv(2 * d, 2 * d, 3, **kw)
        self.up1 = Deconv2x2(2 * d, d, **kw)
        self.dec1 = Conv(2 * d, d, 3, **kw)
        self.dec2 = Conv(d, d, 3, **kw)
        self.up2 = Deconv2x2(d, d, **kw)
        self.predictor = Conv(d, k1, 1, init=normal(0.001), dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        """[R,P,P,F] -> mask logits [R,2P,2P,K+1] (float32); P even."""
        skip = jax.nn.relu(self.down2(jax.nn.relu(self.down1(x))))  # [R,P,P,d]
        y = max_pool_2x2(skip)  # [R,P/2,P/2,d]
        y = jax.nn.relu(self.mid2(jax.nn.relu(self.mid1(y))))  # [R,P/2,P/2,2d]
        y = jax.nn.relu(self.up1(y))  # [R,P,P,d]
        y = jnp.concatenate([y, skip], axis=-1)  # [R,P,P,2d]
        y = jax.nn.relu(self.dec2(jax.nn.relu(self.dec1(y))))
        y = jax.nn.relu(self.up2(y))  # [R,2P,2P,d]
        return self.predictor(y).astype(jnp.float32)


__all__ = ["BoxHead", "MaskHead", "RPNHead", "UNetMaskHead"]
