"""Mask R-CNN R50-FPN, 3x schedule with multi-scale training on COCO.

    mrcli train --recipe r50_fpn_3x --data coco --workdir runs/r50_3x

Expected: box AP 41.0, mask AP 37.2 on COCO val2017 (Detectron2 MODEL_ZOO.md,
mask_rcnn_R_50_FPN_3x). Not yet reproduced by mrcli. 270k steps at batch 16,
decays at 210k and 250k, short side drawn from 640..800 in training
(Detectron2 configs/common Base-RCNN-FPN + 3x: MIN_SIZE_TRAIN).
"""

from mrcli.config import Config, override

THREE_X = {
    "data.dataset": "coco",
    "data.train_scales": (640, 672, 704, 736, 768, 800),
    "train.steps": 270_000,
    "train.decay_steps": (210_000, 250_000),
}


def config(base: Config) -> Config:
    return override(base, THREE_X)
