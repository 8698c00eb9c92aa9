"""Feature Pyramid Network (Lin et al. 2017, "Feature Pyramid Networks for Object Detection").

Lateral 1x1 convs bring C2..C5 to `model.fpn.channels` (256, paper §3), the top-down
path adds each coarser map upsampled by nearest neighbour, and a 3x3 conv on
each sum gives P2..P5. P6 subsamples P5 with stride 2 (a max-pool with kernel 1,
as torchvision's and Detectron2's LastLevelMaxPool), for the 512-px anchors
(paper §4.1).

Dimension key: B batch, H/W height/width of P2 (input / 4), C channels, F fpn channels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mrcli.config import FPNConfig
from mrcli.model.layers import Conv, c2_xavier

Array = jax.Array


def upsample_nearest(x: Array, size: tuple[int, int]) -> Array:
    """PyTorch F.interpolate(mode="nearest") to `size`: source index floor(i * in / out).
    [B,h,w,F] -> [B,H,W,F]; an exact 2x is a repeat."""
    _, h, w, _ = x.shape
    oh, ow = size
    if (oh, ow) == (2 * h, 2 * w):
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    rows = (jnp.arange(oh) * h) // oh
    cols = (jnp.arange(ow) * w) // ow
    return x[:, rows][:, :, cols]


class FPN(nnx.Module):
    def __init__(self, cfg: FPNConfig, in_channels: tuple[int, ...], *, dtype=jnp.float32,
                 rngs: nnx.Rngs):  # fmt: skip
        """in_channels: of C2..C5 (backbone.stage_channels)."""
        f = cfg.channels
        kw = dict(init=c2_xavier, dtype=dtype, rngs=rngs)
        self.lateral = nnx.List([Conv(c, f, 1, **kw) for c in in_channels])
        self.output = nnx.List([Conv(f, f, 3, **kw) for _ in range(4)])

    def __call__(self, feats: tuple[Array, ...]) -> tuple[Array, ...]:
        """C2..C5 -> P2..P6, each [B,H/2^l,W/2^l,F] for l = 0..4 relative to P2."""
        inner = self.lateral[3](feats[3])
        outs = [self.output[3](inner)]
        for i in (2, 1, 0):
            lateral = self.lateral[i](feats[i])
            inner = lateral + upsample_nearest(inner, lateral.shape[1:3])
            outs.insert(0, self.output[i](inner))
        outs.append(outs[-1][:, ::2, ::2])  # P6
        return tuple(outs)
