"""Mask R-CNN R50-FPN on Cityscapes fine instances (8 classes), Detectron2's recipe.

    mrcli prepare cityscapes --manual-dir ~/datasets/cityscapes
    mrcli train --recipe cityscapes_r50_fpn --data cityscapes --workdir runs/cs
    mrcli eval --workdir runs/cs        # COCO AP; + the Cityscapes AP with mrcli[cityscapes]

Expected: mask AP 36.5 on Cityscapes val (the official instance-level AP;
Detectron2 MODEL_ZOO.md, "R50-FPN, Cityscapes", initialised from its COCO
mask_rcnn_R_50_FPN_3x model). Not yet reproduced by mrcli. Detectron2's
configs/Cityscapes/mask_rcnn_R_50_FPN.yaml (the setting of the Mask R-CNN
paper's Appendix A): short side drawn from 800..1024 in steps of 32 in
training, 1024 at test, long side <= 2048; 24k steps at batch 8, LR 0.01,
divided by 10 at 18k; eval every 8k steps.

Like Detectron2 it starts from its COCO Mask R-CNN R50-FPN 3x
(d2-maskrcnn-r50-fpn-3x-coco, fetched by itself; the paper: 36.4 with COCO
pre-training, 31.5 from ImageNet only) in Detectron2's numerics; the COCO
class layers are skipped and trained for the 8 classes.
"""

from mrcli.config import DETECTRON2_NUMERICS, Config, override


def config(base: Config) -> Config:
    return override(
        base,
        {
            "data.dataset": "cityscapes",
            # The 2048 x 1024 images at their full size in test (MIN_SIZE_TEST, MAX_SIZE_*).
            "data.image_size": 1024,
            "data.max_size": 2048,
            # MIN_SIZE_TRAIN, sampling "choice".
            "data.train_scales": (800, 832, 864, 896, 928, 960, 992, 1024),
            "model.num_classes": 8,
            **DETECTRON2_NUMERICS,
            "train.init_from": "d2-maskrcnn-r50-fpn-3x-coco",
            "train.global_batch": 8,
            "train.base_lr": 0.02,  # 0.01 at batch 8 (linear scaling from the reference 16)
            "train.steps": 24_000,
            "train.decay_steps": (18_000,),
            "train.eval_every": 8_000,
        },
    )
