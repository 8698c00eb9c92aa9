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

from mrcli.config import Config, override


def config(base: Config) -> Config:
    return override(
        base,
        {
            "data.dataset": "figures",
            "data.image_size": 128,
            "data.max_size": 128,
            "data.max_instances": 8,
            "data.num_workers": 2,
            "model.num_classes": 1,
            "model.masks": False,
            "model.keypoints": True,
            "model.keypoint_head.num_keypoints": 7,
            "model.keypoint_head.convs": 4,
            "model.keypoint_head.dim": 64,
            "model.keypoint_head.fg_slots": 16,
            "model.backbone.depth": 14,
            "model.backbone.width": 16,
            "model.backbone.freeze_at": 0,
            "model.backbone.norm": "group_norm",
            "model.fpn.channels": 64,
            "model.anchors.sizes": (8, 16, 32, 64, 128),
            "model.rpn.pre_nms_topk.train": 512,
            "model.rpn.pre_nms_topk.test": 256,
            "model.rpn.post_nms_topk.train": 256,
            "model.rpn.post_nms_topk.test": 128,
            "model.rpn.batch_per_image": 64,
            "model.roi_heads.batch_per_image": 64,
            "model.roi_align.aligned": True,
            "model.box_head.dim": 256,
            "model.inference.detections_per_image": 20,
            "train.global_batch": 8,
            "train.optimizer": "adamw",
            "train.base_lr": 0.004,  # 0.002 at batch 8, as tiny
            "train.steps": 1000,
            "train.warmup_steps": 50,
            "train.decay_steps": (800,),
            "train.eval_every": 500,
            "train.best_metric": "keypoints_AP",
        },
    )
