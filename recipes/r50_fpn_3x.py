"""Mask R-CNN R50-FPN, 3x schedule with multi-scale training on COCO.

    mrcli train --recipe r50_fpn_3x --data coco --workdir runs/r50_3x

Expected: box AP 41.0, mask AP 37.2 on COCO val2017 (Detectron2 MODEL_ZOO.md,
mask_rcnn_R_50_FPN_3x). Not yet reproduced by mrcli. The 1x recipe (MSRA's
ImageNet ResNet-50, Detectron2's numerics, short side 640..800 in training)
for 270k steps at batch 16, decays at 210k and 250k (Detectron2's 3x).
"""

from mrcli.config import Config, load_recipe, override

THREE_X = {
    "train.steps": 270_000,
    "train.decay_steps": (210_000, 250_000),
}


def config(base: Config) -> Config:
    del base  # the 1x recipe is itself applied to the defaults
    return override(load_recipe("r50_fpn_1x").config, THREE_X)
