"""Mask R-CNN R50-FPN, 1x schedule on COCO (the paper's and Detectron2's baseline).

    mrcli prepare coco --manual-dir /data/coco
    mrcli train --recipe r50_fpn_1x --data coco --workdir runs/r50_1x

Expected: box AP 38.6, mask AP 35.2 on COCO val2017 (Detectron2 MODEL_ZOO.md,
mask_rcnn_R_50_FPN_1x; torchvision's maskrcnn_resnet50_fpn: 37.9 / 34.6).
Not yet reproduced by mrcli. 90k steps at batch 16, LR 0.02, decays at 60k and
80k, 1000 warm-up steps: these are the defaults, so the diff is only the dataset.
"""

from mrcli.config import Config, override


def config(base: Config) -> Config:
    return override(base, {"data.dataset": "coco"})
