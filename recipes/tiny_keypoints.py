"""Tiny keypoints: a narrow Keypoint R-CNN for the built-in figures data, trained on a CPU.

    mrcli prepare figures
    mrcli train --recipe tiny_keypoints --data figures --workdir runs/tiny_kp

Expected: keypoint AP (OKS, COCO AP@[.5:.95]) >= 0.5 on the figures val split.
Measured: see CHANGELOG / README "Keypoints" (filled in below once run).
The tiny recipe's network (ResNet-14, 16 channels wide, GroupNorm, 64-channel
FPN, trained from scratch with AdamW) with boxes and keypoints, no masks: a
keypoint head of 4 convs 64 wide (the paper's is 8 x 512) on 14 x 14 RoIs,
56 x 56 heatmaps for the figures' 7 keypoints.
"""

from mrcli.config import Config, load_recipe, override


def config(base: Config) -> Config:
    del base  # the tiny recipe is itself applied to the defaults
    return override(load_recipe("tiny").config, {
        "data.dataset": "figures",
        "data.max_instances": 8,
        "model.num_classes": 1,
        "model.masks": False,
        "model.keypoints": True,
        "model.keypoint_head.num_keypoints": 7,
        # The paper's head is 8 x 512; a few narrow convs learn the figures.
        "model.keypoint_head.convs": 4,
        "model.keypoint_head.dim": 64,
        "model.keypoint_head.fg_slots": 16,
        "train.best_metric": "keypoints_AP",
    })  # fmt: skip
