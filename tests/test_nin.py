"""Network In Network in Mask R-CNN (issue 18): model.box_head.kind = "nin" and
model.backbone.kind = "nin". Shapes, parameter counts against the formula,
jax.eval_shape at COCO size, one training step that moves every new parameter,
and what --init-from does across the switches."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_model_grad import _tiny_batch
from test_model_shapes import H, R50_FPN_PARAMS, W, _batch_spec, _model

from mrcli import checkpoints, model, parallel, train
from mrcli.config import BoxHeadConfig, UserError, load_recipe, override
from mrcli.model.backbone import NIN, ResNet
from mrcli.model.heads import NINBoxHead
from mrcli.model.layers import MLPConv
from mrcli.progress import Report

NIN_BOTH = {"model.box_head.kind": "nin", "model.box_head.mlpconv_dim": 32, "model.backbone.kind": "nin"}


def _flat(state) -> dict[tuple[str, ...], np.ndarray]:
    return {tuple(map(str, p)): np.asarray(v.value) for p, v in nnx.to_flat_state(state)}


def test_mlpconv_is_a_conv_then_two_1x1_convs_each_with_relu():
    layer = MLPConv(5, 7, 3, rngs=nnx.Rngs(0))
    assert [c.kernel.value.shape for c in layer.convs] == [(3, 3, 5, 7), (1, 1, 7, 7), (1, 1, 7, 7)]
    x = jax.random.normal(jax.random.key(1), (2, 9, 11, 5))
    y = layer(x)
    assert y.shape == (2, 9, 11, 7) and float(y.min()) >= 0.0
    want = x
    for conv in layer.convs:
        want = jax.nn.relu(conv(want))
    np.testing.assert_allclose(np.asarray(y), np.asarray(want), rtol=1e-6)


def test_nin_box_head_classifies_and_regresses_from_the_pooled_vector():
    cfg = BoxHeadConfig(kind="nin", mlpconv_blocks=2, mlpconv_dim=16)
    head = NINBoxHead(cfg, 8, 4, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(2), (6, 7, 7, 8))
    logits, deltas = head(x)
    assert logits.shape == (6, 5) and deltas.shape == (6, 5, 4)
    assert logits.dtype == deltas.dtype == jnp.float32
    feats = head.blocks[1](head.blocks[0](x))
    assert feats.shape == (6, 7, 7, 16)
    pooled = feats.mean(axis=(1, 2))
    np.testing.assert_allclose(np.asarray(logits), np.asarray(head.cls(pooled)), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(deltas), np.asarray(head.deltas(pooled).reshape(6, 5, 4)),
                               rtol=1e-5, atol=1e-7)  # fmt: skip
    # The same as NIN's classifier without its ReLU: one map per class
    # (the 1x1 conv of the same weights), averaged over the 7 x 7 positions.
    w, bias = head.cls.kernel.value, head.cls.bias.value
    maps = jnp.einsum("rhwd,dk->rhwk", feats, w) + bias
    np.testing.assert_allclose(np.asarray(logits), np.asarray(maps.mean(axis=(1, 2))), rtol=1e-5, atol=1e-6)


def test_nin_backbone_has_resnets_outputs():
    """The FPN takes C2..C5 at strides 4..32 with ResNet's channels, whatever the kind."""
    tiny = load_recipe("tiny").config.model.backbone
    x = jnp.zeros((2, 64, 96, 3))
    want = [o.shape for o in ResNet(tiny, rngs=nnx.Rngs(0))(x)]
    got = [o.shape for o in NIN(dataclasses.replace(tiny, kind="nin"), rngs=nnx.Rngs(0))(x)]
    assert got == want == [(2, 16, 24, 64), (2, 8, 12, 128), (2, 4, 6, 256), (2, 2, 3, 512)]


def test_r50_fpn_parameter_count_with_the_nin_box_head():
    """fc6 + fc7 (12,846,080 + 1,049,600 of torchvision's 44.4M) give way to two
    mlpconv blocks of 256; the class and box layers shrink from 1024 inputs to 256."""
    k1, d, f = 91, 256, 256

    def head(fc: bool) -> int:
        if fc:
            return (f * 7 * 7 * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 * k1 + k1) + (1024 * 4 * k1 + 4 * k1)
        block = lambda cin: (cin * 9 * d + d) + 2 * (d * d + d)  # noqa: E731
        return block(f) + block(d) + (d * k1 + k1) + (d * 4 * k1 + 4 * k1)

    _, state = model.abstract(_model({"num_classes": 90, "box_head.kind": "nin"}))
    assert model.count_parameters(state) == R50_FPN_PARAMS - head(True) + head(False) == 31_599_601
    box = sum(int(np.prod(v.value.shape)) for p, v in nnx.to_flat_state(state) if str(p[0]) == "box_head")
    assert box == head(False) == 1_560_263


@pytest.mark.parametrize("fields", [{"box_head.kind": "nin"}, {"backbone.kind": "nin", "backbone.freeze_at": 0,
                                                                "backbone.norm": "group_norm"}])  # fmt: skip
def test_eval_shape_at_coco_size(fields):
    cfg = _model({"num_classes": 80, **fields})
    m, state = model.abstract(cfg)
    d = cfg.inference.detections_per_image
    dets = jax.eval_shape(m.detect, state, jax.ShapeDtypeStruct((2, H, W, 3), jnp.float32),
                          jax.ShapeDtypeStruct((2, 5), jnp.float32))  # fmt: skip
    assert {k: v.shape for k, v in dets.items()} == {
        "boxes": (2, d, 4), "scores": (2, d), "classes": (2, d), "masks": (2, d, 28, 28), "valid": (2, d),
    }  # fmt: skip
    loss, metrics = jax.eval_shape(m.loss, state, _batch_spec(cfg, 2), jax.random.key(0))
    assert loss.shape == () and loss.dtype == jnp.float32
    assert {"loss_cls", "loss_box", "loss_mask"} <= set(metrics)


def test_one_step_moves_every_new_parameter():
    """Both switches on the tiny config, NIN stem + first stage frozen: one AdamW
    step (no decay, no warm-up) moves a parameter iff its gradient is non-zero,
    so every trainable array changes and every frozen one stays bit for bit."""
    cfg = override(load_recipe("tiny").config, {
        **NIN_BOTH, "model.backbone.freeze_at": 2, "train.weight_decay": 0.0,
        "train.warmup_steps": 0, "train.global_batch": 2, "train.base_lr": 8.0,
    })  # fmt: skip
    m, state = model.create(cfg.model, seed=0)
    params, constants = model.split_params(state)
    frozen = set(_flat(constants))
    assert ("backbone", "stem", "kernel") in frozen and ("backbone", "stages", "0", "convs", "0", "kernel") in frozen
    assert ("backbone", "stages", "1", "convs", "0", "kernel") not in frozen
    names = list(_flat(params))
    assert {("box_head", "blocks", "1", "convs", "2", "kernel"), ("box_head", "cls", "kernel"),
            ("box_head", "deltas", "kernel"), ("backbone", "stages", "3", "convs", "2", "kernel")} <= set(names)
    assert not any("fc6" in n or "res2" in n for n in map(".".join, names))

    tx = train.make_optimizer(cfg.train)
    ts = train.init_state(params, tx, seed=0, constants=constants)
    before_params = [np.array(x) for x in jax.tree.leaves(ts.params)]
    before_constants = [np.array(x) for x in jax.tree.leaves(ts.constants)]
    step = train.make_train_step(
        train.model_loss(m), tx, parallel.make_mesh(jax.devices()[:1]), train.learning_rate(cfg.train)
    )
    ts, metrics = step(ts, _tiny_batch(2, cfg))
    for k, v in metrics.items():
        assert np.isfinite(float(v)), k
    for a, b in zip(before_constants, jax.tree.leaves(ts.constants), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    unchanged = [".".join(n) for n, a, b in zip(names, before_params, jax.tree.leaves(ts.params), strict=True)
                 if np.array_equal(a, np.asarray(b))]  # fmt: skip
    assert not unchanged, f"zero gradient for {unchanged}"


class _Messages(Report, list):
    def say(self, text, kind="info"):
        self.append(text)


def test_init_from_an_fc_head_run_into_the_nin_head(tmp_path):
    """Fine-tuning an fc-head model with the NIN head: the backbone, FPN, RPN and
    mask head load, fc6/fc7/cls/deltas are skipped with a message, the NIN head
    starts fresh. Another backbone kind is refused, naming the --set that fits."""
    tiny = load_recipe("tiny").config
    _, state = model.create(tiny.model, seed=1)
    checkpoints.save(tmp_path / "fc", state, tiny)
    want = _flat(state)

    nin = override(tiny, {"model.box_head.kind": "nin", "model.box_head.mlpconv_dim": 32})
    messages = _Messages()
    _, got = train.init_model(nin, str(tmp_path / "fc"), messages)
    got = _flat(got)
    _, fresh = model.create(nin.model, seed=0)
    fresh = _flat(fresh)
    for k in got:
        np.testing.assert_array_equal(got[k], want[k] if k[0] != "box_head" else fresh[k], err_msg=str(k))
    assert any("8 arrays of its fc box head not loaded; the nin box head starts from scratch" in m
               for m in messages), messages  # fmt: skip

    # Back again: the NIN head's blocks, cls and deltas are skipped the same way.
    nin_state = _flat(model.create(nin.model, seed=1)[1])
    checkpoints.save(tmp_path / "nin", checkpoints.unflatten(nin_state), nin)
    messages = _Messages()
    _, back = train.init_model(tiny, str(tmp_path / "nin"), messages)
    n_head = sum(k[0] == "box_head" for k in nin_state)
    assert n_head == 2 * 6 + 4 and any(f"{n_head} arrays of its nin box head" in m for m in messages)
    for k, v in _flat(back).items():
        if k[0] != "box_head":
            np.testing.assert_array_equal(v, nin_state[k], err_msg=str(k))

    with pytest.raises(UserError, match=r"model\.backbone\.kind=resnet.*--set model\.backbone\.kind=resnet"):
        train.init_model(override(tiny, {"model.backbone.kind": "nin"}), str(tmp_path / "fc"), Report())


def test_another_unknown_array_is_still_refused(tmp_path):
    """Only a box head of another kind is dropped: an fc-head checkpoint with an
    array no model has is another architecture, and stays an error."""
    tiny = load_recipe("tiny").config
    _, state = model.create(tiny.model, seed=1)
    pure = state.to_pure_dict()
    pure["fpn"]["extra"] = {"kernel": np.zeros((1,), np.float32)}
    checkpoints.save(tmp_path / "odd", pure, tiny)
    with pytest.raises(UserError, match="arrays the model lacks"):
        train.init_model(tiny, str(tmp_path / "odd"), Report())
