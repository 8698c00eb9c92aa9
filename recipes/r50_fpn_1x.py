"""Mask R-CNN R50-FPN, 1x schedule on COCO (the paper's and Detectron2's baseline).

    mrcli prepare coco --manual-dir /data/coco
    mrcli train --recipe r50_fpn_1x --data coco --workdir runs/r50_1x

Expected: box AP 38.6, mask AP 35.2 on COCO val2017 (Detectron2 MODEL_ZOO.md,
mask_rcnn_R_50_FPN_1x; torchvision's maskrcnn_resnet50_fpn: 37.9 / 34.6).
Not yet reproduced by mrcli. Detectron2's setup: MSRA's ImageNet ResNet-50
(d2-msra-r50-imagenet, which the run fetches itself) with Detectron2's
numerics (config.DETECTRON2_NUMERICS: BGR input, stride in the 1x1, aligned
RoIAlign, L1 box losses, exact anchors), short side drawn from 640..800 in
training (Base-RCNN-FPN.yaml); 90k steps at batch 16, LR 0.02, decays at 60k
and 80k, 1000 warm-up steps: the defaults.
"""

from mrcli.config import DETECTRON2_NUMERICS, Config, override

# Detectron2 Base-RCNN-FPN.yaml INPUT.MIN_SIZE_TRAIN.
MULTI_SCALE = (640, 672, 704, 736, 768, 800)


def config(base: Config) -> Config:
    return override(base, {
        "data.dataset": "coco",
        "data.train_scales": MULTI_SCALE,
        **DETECTRON2_NUMERICS,
        "train.init_from": "d2-msra-r50-imagenet",
    })  # fmt: skip
