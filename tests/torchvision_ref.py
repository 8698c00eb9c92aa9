"""Import torchvision as an independent reference, on a CPU-only torch.

The torchvision wheel on PyPI is built for CUDA torch; beside the CPU torch its
compiled library (`torchvision._C`) does not load, and importing torchvision
fails because its meta registrations expect `torchvision::nms` to exist
(docs/design.md §6). We define the two NMS operator schemas and give `nms` a plain
torch implementation (textbook greedy NMS, ties broken by a stable sort as the
compiled kernel's `sort(descending)` does on distinct scores), and let
`torchvision.ops.boxes` call it. RoIAlign then uses torchvision's pure-Python
fallback, which equals the compiled kernels except for sample points beyond the
feature map's border (kernels: zero, fallback: clamp) — tests compare with it
only away from that border and use our numpy port of the kernel elsewhere.

`load()` returns the torchvision module, or None where torch or torchvision is
not installed (tests then skip). `calibrated_maskrcnn` builds the model with
real detections from random weights that the parity test and the bfloat16
benchmark run on a photo.
"""

from __future__ import annotations

import functools


def _greedy_nms(dets, scores, iou_threshold: float):
    import torch

    if dets.numel() == 0:
        return torch.empty((0,), dtype=torch.int64)
    x1, y1, x2, y2 = dets.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    order = torch.sort(scores, descending=True, stable=True).indices
    suppressed = torch.zeros(dets.shape[0], dtype=torch.bool)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        w = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0)
        h = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)).clamp(min=0)
        inter = w * h
        iou = inter / (areas[i] + areas - inter)
        suppressed |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.int64)


@functools.cache
def load():
    """torchvision, importable on a CPU torch; None where it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    try:
        import torchvision  # noqa: F401  (a build whose kernels load needs no shim)

        return torchvision
    except ImportError:
        return None
    except RuntimeError:
        pass
    import sys

    for name in [m for m in sys.modules if m.startswith("torchvision")]:
        del sys.modules[name]
    lib = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("nms", _greedy_nms, "CPU")
    load._lib = lib  # keep the registration alive
    import torchvision
    import torchvision.ops.boxes

    torchvision.ops.boxes._assert_has_ops = lambda: None
    return torchvision


def calibrate_batchnorm(tvm, x):
    """Give a torchvision detector built with random weights (torch seeded) non-trivial
    frozen BatchNorm: random affine parameters and running statistics set to those of
    image `x` ([3, H, W] float in 0..1) by one train-mode forward of the backbone body
    with momentum 1. Returns the transformed ImageList; the model is left in eval mode."""
    import torch

    for m in tvm.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.normal_(m.bias, 0.0, 0.2)
    tvm.train()
    with torch.no_grad():
        images, _ = tvm.transform([x])
        tvm.backbone.body(images.tensors)  # running stats := this image's statistics
    tvm.eval()
    return images


def calibrated_maskrcnn(x, min_size: int, max_size: int):
    """torchvision's maskrcnn_resnet50_fpn made to produce real detections on the
    image `x` ([3, H, W] float tensor in 0..1) from random weights (seed 0):
    BatchNorm calibrated on the image (calibrate_batchnorm), the RPN objectness
    weights scaled so that scores spread, the class logits scaled so that scores
    pass 0.05, and the mask logits scaled so that masks are not all near 0.5. In
    eval mode."""
    import torch

    tv = load()
    torch.manual_seed(0)
    tvm = tv.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=min_size, max_size=max_size
    )
    calibrate_batchnorm(tvm, x)
    with torch.no_grad():
        tvm.rpn.head.cls_logits.weight.mul_(8.0)
        tvm.roi_heads.box_predictor.cls_score.weight.mul_(3.0)
        tvm.roi_heads.mask_predictor.mask_fcn_logits.weight.mul_(2.0)
    return tvm
