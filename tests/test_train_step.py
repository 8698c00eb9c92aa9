"""The optimiser and the data-parallel step, on a small stand-in loss.

The model's own loss plugs into the same step (tests/test_train*.py);
here the point is the mechanics: schedule, weight-decay mask, and that 8
devices and 1 device give the same parameters for the same global batch.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrcli.config import TrainConfig
from mrcli.parallel import make_mesh, shard_batch
from mrcli.train import (
    decay_mask,
    init_state,
    learning_rate,
    make_optimizer,
    make_train_step,
)


def test_schedule_warmup_decay_and_batch_scaling():
    cfg = TrainConfig(global_batch=32, base_lr=0.02, warmup_steps=100, warmup_factor=0.001,
                      decay_steps=(1000, 2000), decay_factor=0.1)  # fmt: skip
    lr = learning_rate(cfg)
    peak = 0.04  # 0.02 at batch 16, scaled to 32
    assert float(lr(0)) == pytest.approx(peak * 0.001)
    assert float(lr(50)) == pytest.approx(peak * (0.001 * 0.5 + 0.5))
    assert float(lr(100)) == pytest.approx(peak)
    assert float(lr(999)) == pytest.approx(peak)
    assert float(lr(1000)) == pytest.approx(peak * 0.1)
    assert float(lr(2500)) == pytest.approx(peak * 0.01)


def test_weight_decay_only_on_kernels():
    params = {"conv": {"kernel": jnp.ones((3, 3, 2, 4)), "bias": jnp.ones((4,))},
              "norm": {"scale": jnp.ones((4,))}}  # fmt: skip
    mask = decay_mask(params)
    assert mask == {"conv": {"kernel": True, "bias": False}, "norm": {"scale": False}}
    # LR 1 and no momentum: with a zero gradient the update is -decay * param.
    zero = jax.tree.map(jnp.zeros_like, params)
    cfg = TrainConfig(base_lr=1.0, lr_reference_batch=16, global_batch=16, warmup_steps=0,
                      weight_decay=0.5, momentum=0.0)  # fmt: skip
    tx = make_optimizer(cfg)
    updates, _ = tx.update(zero, tx.init(params), params)
    assert np.allclose(updates["conv"]["kernel"], -0.5)
    assert np.allclose(updates["conv"]["bias"], 0.0) and np.allclose(updates["norm"]["scale"], 0.0)


def _loss(params, constants, batch, rng):
    """Per-image noisy regression: uses the step key per image, as the model's
    samplers do, so the 8- vs 1-device check covers the RNG too."""
    keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(batch["index"])
    noise = jax.vmap(lambda k: jax.random.normal(k, (3,)))(keys)
    pred = jnp.tanh(batch["x"] @ params["w"] + params["b"] + constants["shift"]) + 0.01 * noise
    loss = jnp.mean((pred - batch["y"]) ** 2)
    return loss, {"mse": loss}


def _run(devices, steps=4, batch=16):
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32), "b": jnp.zeros((3,))}
    cfg = TrainConfig(global_batch=batch, base_lr=0.1, warmup_steps=2, decay_steps=(3,))
    tx = make_optimizer(cfg)
    mesh = make_mesh(devices)
    step = make_train_step(_loss, tx, mesh, learning_rate(cfg))
    state = jax.device_put(init_state(params, tx, seed=0, constants={"shift": jnp.full((3,), 0.1)}), jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec()))  # fmt: skip
    for i in range(steps):
        data = {
            "x": rng.normal(size=(batch, 5)).astype(np.float32),
            "y": rng.normal(size=(batch, 3)).astype(np.float32),
            "index": np.arange(i * batch, (i + 1) * batch, dtype=np.int32),
        }
        state, metrics = step(state, shard_batch(data, mesh))
    return jax.device_get(state.params), jax.device_get(metrics)


def test_eight_devices_match_one():
    assert jax.device_count() == 8, "tests/conftest.py sets 8 simulated devices"
    p8, m8 = _run(jax.devices())
    p1, m1 = _run(jax.devices()[:1])
    for a, b in zip(jax.tree.leaves(p8), jax.tree.leaves(p1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert m8["loss"] == pytest.approx(float(m1["loss"]), rel=1e-5)
    assert float(m8["lr"]) == pytest.approx(0.01)  # after the decay at step 3
    assert np.isfinite(m8["grad_norm"]) and m8["grad_norm"] > 0


def test_adamw_decays_kernels_only():
    params = {"kernel": jnp.ones((3, 4)), "bias": jnp.ones((4,))}
    cfg = TrainConfig(optimizer="adamw", base_lr=1.0, lr_reference_batch=16, global_batch=16,
                      warmup_steps=0, weight_decay=0.5)  # fmt: skip
    tx = make_optimizer(cfg)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    # Zero gradient: Adam's step is 0; decoupled decay is -lr * decay * param.
    assert np.allclose(updates["kernel"], -0.5) and np.allclose(updates["bias"], 0.0)


@pytest.mark.parametrize(
    ("xla_flags", "batch", "cores", "want"),
    [("", 8, 2, 2), ("", 6, 4, 2), ("", 8, 1, 1), ("--xla_force_host_platform_device_count=3", 8, 2, 3)],
)
def test_use_cpu_cores_splits_the_cpu_before_jax_starts(xla_flags, batch, cores, want):
    """One CPU device per core, as many as divide the global batch; XLA_FLAGS wins."""
    import os
    import subprocess
    import sys

    code = (
        "import os; os.cpu_count = lambda: %d\n"
        "from mrcli.parallel import use_cpu_cores\n"
        "n = use_cpu_cores(%d)\n"
        "import jax\n"
        "devices = jax.device_count()\n"
        "assert use_cpu_cores(%d) == 0  # already chosen (and the backends are up)\n"
        "print(n, devices)\n"
    ) % (cores, batch, batch)
    env = {**os.environ, "XLA_FLAGS": xla_flags, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    set_count, devices = map(int, out.stdout.split())
    assert devices == want
    assert set_count == (0 if xla_flags else want)
