"""Raw uint8 images -> model input on the device: the jnp twin of pipeline.image_input.

An exported model (mrcli.export) takes raw pixels and does its own resizing,
normalisation and padding inside the compiled function, so that a server
needs no mrcli code. That must give exactly the model input the input
pipeline gives for the same pixels (`pipeline.image_input`, evaluation
processing: no flip), or the exported model is another model. Bit for bit:

- sizes: `pipeline.fit_size` in float64 (the same IEEE divisions, minimum,
  product and rounding as the Python floats there; the product is kept
  apart from the + 0.5 so no compiler fuses them into one rounding);
- pixels: PIL's bilinear resize (mrcli.ops.resize: PIL's fixed-point
  algorithm, with the pass order of the Pillow version given); with
  model.input.resize "torchvision", the normalised image interpolated as
  torchvision does (mrcli.ops.resize.resize_bilinear_float);
- normalisation: float32 (pixel - mean) * float32(1 / std) in the model's
  channel order, then zeros outside the resized image (the normalised image
  is zero padded, docs/design.md §6).

tests/test_export.py checks the equality against `pipeline.image_input` over
many image sizes. Dimension key: B batch, Hc/Wc input capacity (the largest
raw image), H/W bucket (padded model input).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import Array

from mrcli.ops.resize import resize_bilinear_float, resize_bilinear_uint8


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """Everything static about turning raw images into model input (hashable)."""

    capacity: tuple[int, int]  # (Hc, Wc): the largest raw image
    bucket: tuple[int, int]  # (H, W): the padded model input
    short: int  # data.image_size: short side after resizing
    max_size: int  # data.max_size: long side limit
    bgr: bool  # model.input.pixel_order == "bgr"
    mean: tuple[float, float, float]  # model.input.pixel_mean, 0..255 units, model channel order
    std: tuple[float, float, float]
    vertical_first_rule: bool = True  # Pillow >= 13's resize pass order
    resize: str = "pil"  # model.input.resize: "pil" or "torchvision"

    @property
    def max_factor(self) -> float:
        """The largest shrink factor (input / output pixels) of either axis over
        every raw size up to the capacity (it sets the resize taps). Every scale
        is >= 1 / F (F below, at the capacity); with F <= 1 nothing shrinks,
        else a side shrinks by at most 1.5 / scale (the resized side is rounded
        and at least 1 pixel) and by at most its own length."""
        hc, wc = self.capacity
        h, w = self.bucket
        f = max(min(hc, wc) / self.short, max(hc, wc) / self.max_size, hc / h, wc / w)
        return 1.0 if f <= 1.0 else min(1.5 * f, float(max(hc, wc)))


def fit_size(
    hw: Array,  # [B,2] int32 raw (h, w)
    spec: InputSpec,
) -> tuple[Array, Array]:  # scale [B] float32, resized (rh, rw) [B,2] int32
    """pipeline.fit_size for a batch: scale = min(short / min(h, w), max_size /
    max(h, w), H / h, W / w), resized = max(1, int(side * scale + 0.5)) capped at
    the bucket, computed in float64 like Python's floats; with spec.resize
    "torchvision" pipeline.fit_size_torchvision (sides truncated, the bucket's
    limit applied only where the image would not fit)."""
    H, W = spec.bucket
    with jax.enable_x64(True):
        h = hw[:, 0].astype(jnp.float64)
        w = hw[:, 1].astype(jnp.float64)
        scale = jnp.minimum(spec.short / jnp.minimum(h, w), spec.max_size / jnp.maximum(h, w))

        def side(length, s, offset):
            product = jax.lax.optimization_barrier(length * s)
            return jnp.floor(product + offset)

        if spec.resize == "torchvision":
            fits = (side(h, scale, 0.0) <= H) & (side(w, scale, 0.0) <= W)
            scale = jnp.where(fits, scale, jnp.minimum(jnp.minimum(scale, H / h), W / w))
            offset = 0.0
        else:
            scale = jnp.minimum(jnp.minimum(scale, H / h), W / w)
            offset = 0.5
        resized = jnp.stack([jnp.minimum(jnp.maximum(side(h, scale, offset), 1.0), H),
                             jnp.minimum(jnp.maximum(side(w, scale, offset), 1.0), W)],
                            axis=1).astype(jnp.int32)  # fmt: skip
        return scale.astype(jnp.float32), resized


def model_input(
    images: Array,  # [B,Hc,Wc,3] uint8 RGB, each image top-left, anything elsewhere
    hw: Array,  # [B,2] int32 (h, w) of each image, 1..Hc x 1..Wc
    spec: InputSpec,
) -> tuple[Array, Array]:  # image [B,H,W,3] float32, image_info [B,5] float32
    """The batch contract's `image` and `image_info` (pipeline.image_input, no flip)."""
    H, W = spec.bucket
    hw = hw.astype(jnp.int32)
    scale, resized = fit_size(hw, spec)
    mean = jnp.asarray(spec.mean, jnp.float32)
    if spec.resize == "torchvision":  # normalise, then interpolate (pipeline.image_input)
        x = images.astype(jnp.float32)
        if spec.bgr:
            x = x[..., ::-1]
        x = (x - mean) / jnp.asarray(spec.std, jnp.float32)
        x = jax.vmap(lambda im, a, b: resize_bilinear_float(im, a, b, spec.bucket))(x, hw, resized)
    else:
        pixels = jax.vmap(
            lambda im, a, b: resize_bilinear_uint8(
                im, a, b, spec.bucket, spec.max_factor, spec.vertical_first_rule
            )
        )(images, hw, resized)  # [B,H,W,3] uint8
        x = pixels.astype(jnp.float32)
        if spec.bgr:
            x = x[..., ::-1]
        x = (x - mean) * jnp.asarray([1.0 / s for s in spec.std], jnp.float32)
    inside = (jnp.arange(H)[None, :, None] < resized[:, 0, None, None]) & (
        jnp.arange(W)[None, None, :] < resized[:, 1, None, None]
    )  # [B,H,W]
    x = jnp.where(inside[..., None], x, 0.0)
    info = jnp.stack(
        [hw[:, 0].astype(jnp.float32), hw[:, 1].astype(jnp.float32), scale,
         resized[:, 0].astype(jnp.float32), resized[:, 1].astype(jnp.float32)],
        axis=1,
    )  # fmt: skip
    return x, info
