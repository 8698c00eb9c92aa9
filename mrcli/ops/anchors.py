"""FPN anchors: a numpy constant of the (padded) input size, computed on the host.

Dimension key (mrcli/ops/__init__.py): A anchors, L levels, H/W height/width.

Convention (torchvision's `AnchorGenerator`, the default of `fasterrcnn_*_fpn` /
`maskrcnn_resnet50_fpn`, so that its weights see the same anchors):

- one level per stride (4, 8, 16, 32, 64) = P2..P6, one anchor size per level
  (32, 64, 128, 256, 512; FPN paper, Lin et al. 2017, §4.1) and three aspect
  ratios r = h / w in (0.5, 1, 2);
- base (cell) anchors centred on 0: h_ratio = sqrt(r), w_ratio = 1 / h_ratio,
  w = w_ratio * size, h = h_ratio * size, box (-w/2, -h/2, w/2, h/2) **rounded to
  the nearest integer** (half to even, as `torch.round`), in float32, in the
  order of `aspect_ratios`. E.g. size 32: (-23,-11,23,11), (-16,-16,16,16),
  (-11,-23,11,23);
- the feature map of a level has (ceil(H / stride), ceil(W / stride)) cells (what
  stride-2 convs with "same" padding and P6 = max-pool(P5, kernel 1, stride 2)
  give, for any H, W; for a multiple of 32 it is H / stride up to P5);
- anchors are placed at the top-left corner of each cell, (x, y) = (j * sx, i * sy)
  (no half-cell offset), where torchvision takes the effective stride as
  `image_size // grid_size` per axis. That equals the nominal stride except
  where ceil rounding changed the grid: P6 of an input whose side / 32 is odd,
  e.g. H = 800 -> 13 rows at sy = 800 // 13 = 61, not 64. We keep this quirk
  (the weights were trained with it); `torchvision_compat=False` gives
  Detectron2's convention instead (nominal strides, unrounded base anchors,
  same zero offset and order);
- order: level-major (all of P2, then P3, ...); within a level row-major over
  the feature map (i, then j), and at each location all aspect ratios in order.
  So anchor index a = offset[l] + (i * W_l + j) * num_ratios + r, which is also
  the order of an RPN head output [H_l, W_l, num_ratios] flattened per level.

Everything is a function of static config values, so the result is cached and
returned read-only; pass it to jitted code as a constant.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import numpy as np

# FPN levels P2..P6 (Lin et al. 2017 §4.1; P6 = max-pool of P5, stride 2 more).
STRIDES = (4, 8, 16, 32, 64)
# One anchor size (sqrt of area, pixels) per level (Lin et al. 2017 §4.1).
SIZES = (32, 64, 128, 256, 512)
# Aspect ratios h / w (Ren et al. 2015 §3.1; FPN §4.1).
ASPECT_RATIOS = (0.5, 1.0, 2.0)

__all__ = [
    "ASPECT_RATIOS",
    "SIZES",
    "STRIDES",
    "AnchorLayout",
    "anchor_grid",
    "anchor_layout",
    "cell_anchors",
]


@dataclasses.dataclass(frozen=True)
class AnchorLayout:
    """Where each level's anchors lie in the stacked [A, 4] array.

    feature_sizes: per level (H_l, W_l), the feature map the RPN head sees.
    strides: per level (sy, sx), the spacing actually used to place anchors.
    anchors_per_location: number of aspect ratios (x sizes per level).
    counts: per level H_l * W_l * anchors_per_location.
    offsets: per level, the index of its first anchor (cumulative counts).
    total: A, the sum of counts.
    """

    feature_sizes: tuple[tuple[int, int], ...]
    strides: tuple[tuple[int, int], ...]
    anchors_per_location: int
    counts: tuple[int, ...]
    offsets: tuple[int, ...]
    total: int

    def level_slice(self, level: int) -> slice:
        """The slice of the [A, ...] anchor axis holding level `level` (0 = P2)."""
        return slice(self.offsets[level], self.offsets[level] + self.counts[level])


def _check_size(image_size: Sequence[int]) -> tuple[int, int]:
    h, w = (int(v) for v in image_size)
    if h <= 0 or w <= 0:
        raise ValueError(f"image_size must be positive (height, width), got {tuple(image_size)}")
    return h, w


def anchor_layout(
    image_size: Sequence[int],
    strides: Sequence[int] = STRIDES,
    anchors_per_location: int = len(ASPECT_RATIOS),
    torchvision_compat: bool = True,
) -> AnchorLayout:
    """Per-level feature sizes, placement strides, counts and offsets.

    image_size: (H, W) of the padded model input (static Python ints).
    """
    h, w = _check_size(image_size)
    feats, steps, counts, offsets = [], [], [], []
    total = 0
    for s in strides:
        fh, fw = math.ceil(h / s), math.ceil(w / s)
        feats.append((fh, fw))
        # torchvision AnchorGenerator.forward: stride = image_size // grid_size.
        steps.append((h // fh, w // fw) if torchvision_compat else (s, s))
        n = fh * fw * anchors_per_location
        offsets.append(total)
        counts.append(n)
        total += n
    return AnchorLayout(
        feature_sizes=tuple(feats),
        strides=tuple(steps),
        anchors_per_location=anchors_per_location,
        counts=tuple(counts),
        offsets=tuple(offsets),
        total=total,
    )


def cell_anchors(
    size: float,
    aspect_ratios: Sequence[float] = ASPECT_RATIOS,
    torchvision_compat: bool = True,
) -> np.ndarray:
    """Zero-centred base anchors of one level: [len(aspect_ratios), 4] float32 xyxy.

    As torchvision's `AnchorGenerator.generate_anchors` (float32, rounded);
    with torchvision_compat=False as Detectron2's `generate_cell_anchors`
    (w = sqrt(size^2 / r), h = r * w, not rounded).
    """
    ratios = np.asarray(aspect_ratios, dtype=np.float32)
    if torchvision_compat:
        h_ratios = np.sqrt(ratios)
        w_ratios = np.float32(1) / h_ratios
        ws = w_ratios * np.float32(size)
        hs = h_ratios * np.float32(size)
        base = np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2)
        return np.round(base).astype(np.float32)  # half to even, as torch.round
    ws = np.sqrt(np.float64(size) ** 2 / ratios.astype(np.float64))
    hs = ratios.astype(np.float64) * ws
    return (np.stack([-ws, -hs, ws, hs], axis=1) / 2).astype(np.float32)


@functools.cache
def _anchor_grid(image_size, strides, sizes, aspect_ratios, torchvision_compat) -> np.ndarray:
    layout = anchor_layout(image_size, strides, len(aspect_ratios), torchvision_compat)
    levels = []
    for (fh, fw), (sy, sx), size in zip(layout.feature_sizes, layout.strides, sizes, strict=True):
        base = cell_anchors(size, aspect_ratios, torchvision_compat)  # [R, 4]
        shift_y, shift_x = np.meshgrid(
            np.arange(fh, dtype=np.int64) * sy, np.arange(fw, dtype=np.int64) * sx, indexing="ij"
        )
        shifts = np.stack([shift_x, shift_y, shift_x, shift_y], axis=-1).reshape(-1, 1, 4)
        # [H_l * W_l, R, 4]: every location, all aspect ratios, float32 as torchvision.
        levels.append((shifts.astype(np.float32) + base[None]).reshape(-1, 4))
    out = np.concatenate(levels, axis=0).astype(np.float32)
    out.flags.writeable = False
    return out


def anchor_grid(
    image_size: Sequence[int],
    strides: Sequence[int] = STRIDES,
    sizes: Sequence[float] = SIZES,
    aspect_ratios: Sequence[float] = ASPECT_RATIOS,
    torchvision_compat: bool = True,
) -> np.ndarray:
    """All anchors of a padded input of size (H, W): [A, 4] float32 xyxy, read-only.

    image_size: (H, W) static Python ints. Level-major, row-major, aspect ratios
    innermost (see the module docstring); `anchor_layout` with the same
    arguments gives the per-level counts and offsets. One size per level:
    `sizes` and `strides` have the same length L.
    """
    if len(sizes) != len(strides):
        raise ValueError(f"one anchor size per level: {len(sizes)} sizes for {len(strides)} strides")
    return _anchor_grid(
        _check_size(image_size),
        tuple(int(s) for s in strides),
        tuple(float(s) for s in sizes),
        tuple(float(r) for r in aspect_ratios),
        bool(torchvision_compat),
    )
