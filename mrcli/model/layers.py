"""The few parameter holders the model is built from: conv, linear, transposed convs, norms.

Modules hold parameters only; their `__call__` is plain jax.lax arithmetic on
NHWC activations with HWIO kernels (PyTorch OIHW kernels are transposed on
import, mrcli/weights/importers.py). Padding is explicit and symmetric, as PyTorch's
`padding=k // 2`, so a stride-2 conv sees the same pixels as torchvision's
(XLA's "SAME" pads a stride-2 conv on an even input only at the end).

Variable types say what training does with a value:
  nnx.Param  trainable weight;
  Frozen     weight of a frozen stage (`model.freeze_at`): a parameter of the
             model (counted, checkpointed) that the optimiser never sees;
  Constant   frozen BatchNorm folded to `x * scale + bias` (torchvision's
             FrozenBatchNorm2d buffers, Detectron2's FrozenBatchNorm2d): not a
             parameter.
Train code takes gradients over `nnx.Param` only.

Mixed precision: kernels are stored float32 and cast to the module's compute
`dtype` (float32 or bfloat16) at use; norms compute their statistics, and
frozen BatchNorm its affine, in float32, rounding to `dtype` once at the end.

Dimension key: B batch, H/W height/width, C input channels, O output channels,
R rois.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array


class Frozen(nnx.Variable):
    """A weight of a frozen stage: part of the model, never updated."""


class Constant(nnx.Variable):
    """A constant of the model that is not a parameter (folded frozen BatchNorm)."""


def variable_type(trainable: bool) -> type[nnx.Variable]:
    return nnx.Param if trainable else Frozen


# Initialisers (Detectron2's weight_init, as torchvision's detection heads), as
# (kind, scale): "normal" draws N(0, scale^2) with scale = sqrt(gain / fan),
# "uniform" draws U(-b, b) with b = sqrt(3 * gain / fan); fans count the kernel
# window (HWIO kernels).
#
# Called eagerly they draw on the host with numpy, seeded by the nnx key:
# jax.random compiles one sampler per weight shape, 13 s for R50-FPN on a
# 2-core CPU against 1 s here. Under tracing (jax.eval_shape, jit) they use
# jax.random, so a traced initialisation is still a random one.


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    window = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    return shape[-2] * window, shape[-1] * window


def _initializer(kind: str, gain: float = 1.0, mode: str = "fan_in", std: float | None = None):
    def init(key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
        shape = tuple(int(d) for d in shape)
        fan_in, fan_out = _fans(shape)
        fan = fan_in if mode == "fan_in" else fan_out
        scale = std if std is not None else float(np.sqrt(gain / fan))
        bound = float(np.sqrt(3.0)) * scale
        if isinstance(key, jax.core.Tracer):
            if kind == "normal":
                return scale * jax.random.normal(key, shape, dtype)
            return jax.random.uniform(key, shape, dtype, -bound, bound)
        data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
        rng = np.random.default_rng(np.asarray(data).ravel().tolist())
        if kind == "normal":
            value = rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)
        else:
            value = rng.uniform(-bound, bound, shape).astype(np.float32)
        return jnp.asarray(value, dtype)

    return init


# He et al. 2015 "msra" fill for convs followed by ReLU: normal, std sqrt(2 / fan_out).
he_fan_out = _initializer("normal", gain=2.0, mode="fan_out")
# PyTorch's kaiming_normal_(mode="fan_out") on a ConvTranspose2d weight [C, O, k, k]:
# its "fan_out" counts dim 0, the input channels, so std = sqrt(2 / (C k k)), the
# fan-in of our HWIO kernel (torchvision's and Detectron2's keypoint deconv).
he_fan_in = _initializer("normal", gain=2.0, mode="fan_in")
# Caffe2 "xavier" fill = kaiming_uniform(a=1): uniform, bound sqrt(3 / fan_in)
# (Detectron2 c2_xavier_fill; torchvision's FPN convs).
c2_xavier = _initializer("uniform", gain=1.0, mode="fan_in")


def normal(std: float):
    """N(0, std^2): 0.01 for the RPN and class logits, 0.001 for deltas (Detectron2)."""
    return _initializer("normal", std=std)


class Conv(nnx.Module):
    """k x k convolution, PyTorch padding k // 2, optional bias."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int,
        *,
        stride: int = 1,
        bias: bool = True,
        init=he_fan_out,
        trainable: bool = True,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        var = variable_type(trainable)
        shape = (kernel_size, kernel_size, in_features, out_features)
        self.kernel = var(init(rngs.params(), shape, jnp.float32))
        self.bias = var(jnp.zeros((out_features,), jnp.float32)) if bias else None
        self.stride = stride
        self.padding = kernel_size // 2
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:  # [B,H,W,C] -> [B,H/s,W/s,O]
        p = self.padding
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            self.kernel[...].astype(self.dtype),
            window_strides=(self.stride, self.stride),
            padding=((p, p), (p, p)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class Linear(nnx.Module):
    """x @ W + b with W [C, O]."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        init=c2_xavier,
        trainable: bool = True,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        var = variable_type(trainable)
        self.kernel = var(init(rngs.params(), (in_features, out_features), jnp.float32))
        self.bias = var(jnp.zeros((out_features,), jnp.float32))
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:  # [..., C] -> [..., O]
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        return y + self.bias[...].astype(self.dtype)


class ConvTranspose(nnx.Module):
    """k x k transposed convolution with stride s and PyTorch's `padding` p: output
    side (n - 1) s - 2p + k (Keypoint R-CNN's 4 x 4, stride 2, padding 1: 2n).

    The kernel is PyTorch's ConvTranspose2d weight [C, O, a, b] laid out as
    [a, b, C, O] (no flip; weights import by a transpose). It runs as the
    equivalent convolution: the input dilated by s, padded by k - 1 - p on each
    side, with the kernel flipped in space.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int,
        *,
        stride: int,
        padding: int,
        init=he_fan_in,
        trainable: bool = True,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        var = variable_type(trainable)
        shape = (kernel_size, kernel_size, in_features, out_features)
        self.kernel = var(init(rngs.params(), shape, jnp.float32))
        self.bias = var(jnp.zeros((out_features,), jnp.float32))
        self.stride = stride
        self.padding = padding
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:  # [R,H,W,C] -> [R,(H-1)s-2p+k,(W-1)s-2p+k,O]
        k = self.kernel[...].astype(self.dtype)
        edge = k.shape[0] - 1 - self.padding
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            k[::-1, ::-1],
            window_strides=(1, 1),
            padding=((edge, edge), (edge, edge)),
            lhs_dilation=(self.stride, self.stride),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return y + self.bias[...].astype(self.dtype)


class Deconv2x2(ConvTranspose):
    """2 x 2 transposed convolution with stride 2 (Mask R-CNN's mask upsampling).

    The windows do not overlap, so output pixel (2i + a, 2j + b) is
    x[i, j] @ W[a, b] + bias: an einsum, with PyTorch's ConvTranspose2d kernel
    layout [C, O, a, b] (no spatial flip) mapping to W[a, b, C, O].
    Init: fan_out of a stride-2 2x2 deconv = O * 4, as Caffe2's msra fill counts it.
    """

    def __init__(self, in_features: int, out_features: int, *, init=he_fan_out, trainable: bool = True,
                 dtype=jnp.float32, rngs: nnx.Rngs):  # fmt: skip
        super().__init__(in_features, out_features, 2, stride=2, padding=0, init=init, trainable=trainable,
                         dtype=dtype, rngs=rngs)  # fmt: skip

    def __call__(self, x: Array) -> Array:  # [R,H,W,C] -> [R,2H,2W,O]
        r, h, w, _ = x.shape
        k = self.kernel[...].astype(self.dtype)
        y = jnp.einsum("rhwc,abco->rhawbo", x.astype(self.dtype), k)
        y = y.reshape(r, 2 * h, 2 * w, k.shape[-1])
        return y + self.bias[...].astype(self.dtype)


class MLPConv(nnx.Module):
    """Network In Network's mlpconv layer (Lin, Chen, Yan 2013, §3.1, Fig. 2): a
    k x k convolution then two 1x1 convolutions, each followed by ReLU: a
    three-layer perceptron slid over the image. `norm` (features -> module),
    where given, sits before each ReLU (the paper has none; the CPU backbone
    trains from scratch with GroupNorm, as the ResNet), and the convs then
    have no bias."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int, *, norm=None,
                 trainable: bool = True, dtype=jnp.float32, rngs: nnx.Rngs):  # fmt: skip
        kw = dict(bias=norm is None, trainable=trainable, dtype=dtype, rngs=rngs)
        self.convs = nnx.List([
            Conv(in_features, out_features, kernel_size, **kw),
            Conv(out_features, out_features, 1, **kw),
            Conv(out_features, out_features, 1, **kw),
        ])  # fmt: skip
        self.norms = nnx.List([norm(out_features) for _ in range(3)]) if norm else None

    def __call__(self, x: Array) -> Array:  # [B,H,W,C] -> [B,H,W,O]
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if self.norms is not None:
                x = self.norms[i](x)
            x = jax.nn.relu(x)
        return x


class FrozenBN(nnx.Module):
    """Frozen BatchNorm as constants: y = x * scale + bias, with
    scale = gamma / sqrt(var + eps) and bias = beta - mean * scale folded on import
    (torchvision FrozenBatchNorm2d, eps 1e-5). A fresh model is the identity."""

    def __init__(self, features: int, **_):
        self.scale = Constant(jnp.ones((features,), jnp.float32))
        self.bias = Constant(jnp.zeros((features,), jnp.float32))

    def __call__(self, x: Array) -> Array:  # [B,H,W,C]
        # In float32 whatever x's dtype, as torchvision's FrozenBatchNorm2d under
        # autocast (float32 constants promote it): in bfloat16 the rounded scale
        # and bias add two roundings per layer, which moved the R50-FPN features
        # on the parity photo 1.2x further from float32 than torchvision's
        # autocast (benchmarks/bfloat16.py). Elementwise, so it fuses on GPU.
        y = x.astype(jnp.float32) * self.scale[...] + self.bias[...]
        return y.astype(x.dtype)


def group_norm_groups(features: int) -> int:
    """32 groups (Wu & He 2018, "Group Normalization", §3.1) where the channels allow,
    at least 4 channels per group for the narrow CPU backbones."""
    groups = min(32, max(1, features // 4))
    while features % groups:
        groups -= 1
    return groups


class GroupNorm(nnx.Module):
    """Group normalisation (Wu & He 2018) with a learned affine; statistics in float32.
    Trains from scratch at any batch size, where frozen BatchNorm cannot."""

    def __init__(self, features: int, *, trainable: bool = True, eps: float = 1e-5, **_):
        var = variable_type(trainable)
        self.scale = var(jnp.ones((features,), jnp.float32))
        self.bias = var(jnp.zeros((features,), jnp.float32))
        self.groups = group_norm_groups(features)
        self.eps = eps

    def __call__(self, x: Array) -> Array:  # [B,H,W,C]
        b, h, w, c = x.shape
        g = x.astype(jnp.float32).reshape(b, h, w, self.groups, c // self.groups)
        mean = g.mean(axis=(1, 2, 4), keepdims=True)
        var = jnp.square(g - mean).mean(axis=(1, 2, 4), keepdims=True)
        g = (g - mean) * jax.lax.rsqrt(var + self.eps)
        y = g.reshape(b, h, w, c) * self.scale[...] + self.bias[...]
        return y.astype(x.dtype)
