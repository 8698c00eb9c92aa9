"""One training step of the tiny model: finite losses, a non-zero gradient for every
trainable parameter, and no change in the frozen weights and constants."""

from __future__ import annotations


import jax
import numpy as np
from flax import nnx

from mrcli import model, parallel, train
from mrcli.config import load_recipe, override


def _tiny_batch(b: int, cfg) -> dict[str, np.ndarray]:
    """Two 128-px images with a few box + mask objects (masks: ellipses in their boxes)."""
    size, n, g = cfg.data.image_size, cfg.data.max_instances, cfg.data.mask_crop_size
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:g, 0:g] + 0.5
    ellipse = ((yy / g - 0.5) ** 2 + (xx / g - 0.5) ** 2 < 0.25).astype(np.uint8)
    batch = {
        "image": rng.normal(size=(b, size, size, 3)).astype(np.float32),
        "image_info": np.tile(np.array([size, size, 1.0, size, size], np.float32), (b, 1)),
        "gt_boxes": np.zeros((b, n, 4), np.float32),
        "gt_classes": np.zeros((b, n), np.int32),
        "gt_masks": np.zeros((b, n, g, g), np.uint8),
        "gt_valid": np.zeros((b, n), bool),
        "gt_crowd": np.zeros((b, n), bool),
    }
    objects = [
        [(10, 12, 50, 60, 1), (70, 20, 120, 70, 2), (20, 80, 60, 120, 3)],
        [(30, 30, 100, 90, 4), (5, 90, 40, 125, 1)],
    ]
    for i, objs in enumerate(objects[:b]):
        for j, (x1, y1, x2, y2, c) in enumerate(objs):
            batch["gt_boxes"][i, j] = (x1, y1, x2, y2)
            batch["gt_classes"][i, j] = c
            batch["gt_masks"][i, j] = ellipse
            batch["gt_valid"][i, j] = True
    batch["gt_crowd"][1, 2] = batch["gt_valid"][1, 2] = True  # a crowd region
    batch["gt_boxes"][1, 2] = (60, 0, 128, 30)
    return batch


def test_one_step_of_the_tiny_model():
    """mrcli.train's step on the tiny config (stem + res2 frozen). Without weight decay
    and warm-up an SGD step moves a parameter iff its gradient is non-zero, so one
    compiled step shows both: every trainable array changes, no frozen one does."""
    cfg = override(
        load_recipe("tiny").config,
        {"model.backbone.freeze_at": 2, "train.weight_decay": 0.0, "train.warmup_steps": 0,
         "train.global_batch": 2, "train.base_lr": 8.0},  # lr 1.0: small gradients show
    )
    m, state = model.create(cfg.model, seed=0)
    params, constants = model.split_params(state)
    frozen = [tuple(map(str, p)) for p, _ in nnx.to_flat_state(constants)]
    assert ("backbone", "res2", "0", "conv1", "kernel") in frozen
    assert ("backbone", "stem", "kernel") in frozen
    batch = _tiny_batch(2, cfg)

    tx = train.make_optimizer(cfg.train)
    ts = train.init_state(params, tx, seed=0, constants=constants)
    before_params = [np.array(x) for x in jax.tree.leaves(ts.params)]
    before_constants = [np.array(x) for x in jax.tree.leaves(ts.constants)]
    names = [".".join(map(str, p)) for p, _ in nnx.to_flat_state(ts.params)]
    step = train.make_train_step(
        train.model_loss(m), tx, parallel.make_mesh(jax.devices()[:1]), train.learning_rate(cfg.train)
    )
    ts, metrics = step(ts, batch)

    for k, v in metrics.items():
        assert np.isfinite(float(v)), k  # grad_norm finite: every gradient is finite
    assert float(metrics["rpn_fg_fraction"]) > 0 and float(metrics["roi_fg_fraction"]) > 0
    assert float(metrics["loss_mask"]) > 0
    for a, b in zip(before_constants, jax.tree.leaves(ts.constants), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))  # frozen: bit for bit
    unchanged = [n for n, a, b in zip(names, before_params, jax.tree.leaves(ts.params), strict=True)
                 if np.array_equal(a, np.asarray(b))]
    assert not unchanged, f"zero gradient for {unchanged}"
