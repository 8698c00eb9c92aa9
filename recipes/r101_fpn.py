"""Mask R-CNN R101-FPN, 3x schedule with multi-scale training on COCO.

    mrcli train --recipe r101_fpn --data coco --workdir runs/r101

Expected: box AP 42.9, mask AP 38.6 on COCO val2017 (Detectron2 MODEL_ZOO.md,
mask_rcnn_R_101_FPN_3x). Not yet reproduced by mrcli. The r50_fpn_3x recipe
with a ResNet-101 backbone (He et al. 2016: 3, 4, 23, 3 bottleneck blocks)
from MSRA's ImageNet ResNet-101 (d2-msra-r101-imagenet); Detectron2's R101
3x config changes nothing else.
"""

from mrcli.config import Config, load_recipe, override


def config(base: Config) -> Config:
    del base  # the 3x recipe is itself applied to the defaults
    return override(load_recipe("r50_fpn_3x").config, {
        "model.backbone.depth": 101,
        "train.init_from": "d2-msra-r101-imagenet",
    })  # fmt: skip
