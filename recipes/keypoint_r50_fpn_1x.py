"""Keypoint R-CNN R50-FPN, 1x schedule on COCO person keypoints (Detectron2's baseline).

    mrcli prepare coco --keypoints --manual-dir /data/coco
    mrcli train --recipe keypoint_r50_fpn_1x --data coco_person --workdir runs/kp

Expected: box AP 53.6, keypoint AP 64.0 on COCO val2017 person keypoints
(Detectron2 MODEL_ZOO.md, keypoint_rcnn_R_50_FPN_1x; its 3x: 55.4 / 65.5;
torchvision's keypointrcnn_resnet50_fpn, 26 epochs: 54.6 / 65.0). Not yet
reproduced by mrcli. Detectron2's setup (configs/COCO-Keypoints/
Base-Keypoint-RCNN-FPN.yaml on Base-RCNN-FPN.yaml): MSRA's ImageNet ResNet-50
(d2-msra-r50-imagenet) in Detectron2's numerics, one class (person), no
masks, the keypoint head of the paper (8 x conv 512, 56 x 56 heatmaps, loss
normalised by the visible keypoints), smooth-L1 beta 0.5 for the RoI boxes
("keypoint AP degrades when using plain L1"), 1500 proposals per image in
training, images with at least one labelled keypoint, short side 640..800;
90k steps at batch 16, LR 0.02, decays at 60k and 80k: the defaults.
"""

from mrcli.config import DETECTRON2_NUMERICS, Config, override

# Detectron2 Base-RCNN-FPN.yaml INPUT.MIN_SIZE_TRAIN.
MULTI_SCALE = (640, 672, 704, 736, 768, 800)


def config(base: Config) -> Config:
    return override(base, {
        "data.dataset": "coco_person",
        "data.train_scales": MULTI_SCALE,
        **DETECTRON2_NUMERICS,
        "model.num_classes": 1,
        "model.masks": False,
        "model.keypoints": True,
        "model.box_head.smooth_l1_beta": 0.5,
        "model.rpn.post_nms_topk.train": 1500,
        "train.init_from": "d2-msra-r50-imagenet",
        "train.best_metric": "keypoints_AP",
    })  # fmt: skip
