"""Training: the optimiser, the data-parallel train step, the train state.

The step is one compiled program per input shape (bucket): `jax.jit` over
NamedShardings on a 1-D device mesh `('data',)`. The batch is sharded on its
leading axis, parameters and optimiser state are replicated, and XLA inserts
the gradient all-reduce; because the loss is computed on the global batch,
the same global batch gives the same update on 1 device or on 8 (up to the
order of floating-point sums). The train state is donated, so parameters
are updated in place.

Many hosts: `jax.distributed.initialize()` before anything touches a device
(see `maybe_initialize_distributed`); the mesh then spans every process's
devices and each process feeds its own shard of the global batch.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mrcli.config import TrainConfig

PyTree = Any
# loss_fn(params, batch, rng) -> (scalar loss, dict of scalar metrics)
LossFn = Callable[[PyTree, dict[str, jax.Array], jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


# --- optimiser -------------------------------------------------------------------


def learning_rate(cfg: TrainConfig) -> optax.Schedule:
    """Linear warm-up then step decay (Detectron2's WarmupMultiStepLR), with the
    LR scaled linearly with the global batch (Goyal et al. 2017, "Accurate,
    Large Minibatch SGD")."""
    peak = cfg.base_lr * cfg.global_batch / cfg.lr_reference_batch
    decay_steps = jnp.asarray(sorted(cfg.decay_steps) or [cfg.steps + 1], jnp.int32)

    def schedule(step: jax.Array) -> jax.Array:
        step = jnp.asarray(step, jnp.int32)
        n_decays = jnp.sum(step >= decay_steps)
        lr = peak * cfg.decay_factor**n_decays
        if cfg.warmup_steps > 0:
            alpha = jnp.minimum(step / cfg.warmup_steps, 1.0)
            lr = lr * (cfg.warmup_factor * (1 - alpha) + alpha)
        return lr

    return schedule


def decay_mask(params: PyTree) -> PyTree:
    """Weight decay on kernels only: arrays of rank >= 2. Norm scales/offsets
    and biases (rank 1) are not decayed."""
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """SGD with momentum 0.9, weight decay added to the gradient as PyTorch's
    SGD does (decoupled from nothing), optional global-norm clipping."""
    parts = []
    if cfg.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask))
    parts.append(optax.sgd(learning_rate(cfg), momentum=cfg.momentum))
    return optax.chain(*parts)


# --- state and step ----------------------------------------------------------------


@struct.dataclass
class TrainState:
    step: jax.Array  # [] int32
    params: PyTree  # trainable parameters
    opt_state: optax.OptState
    rng: jax.Array  # base PRNG key; step keys are fold_in(rng, step)


def init_state(params: PyTree, tx: optax.GradientTransformation, seed: int) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.key(seed),
    )


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D data-parallel mesh over all devices (of every process)."""
    devices = devices if devices is not None else jax.devices()
    return Mesh(np.asarray(devices), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    schedule: optax.Schedule | None = None,
) -> Callable[[TrainState, dict[str, np.ndarray]], tuple[TrainState, dict[str, jax.Array]]]:
    """A jitted `step(state, batch) -> (state, metrics)` over `mesh`.

    The step's PRNG key is fold_in(state.rng, state.step): the same on any
    number of devices, and restored exactly with the state on resume.
    `schedule` (the optimiser's LR schedule) is only read to log the LR.
    """

    def step_fn(state: TrainState, batch: dict[str, jax.Array]):
        rng = jax.random.fold_in(state.rng, state.step)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, batch, rng
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            **metrics,
            "loss": loss,
            "lr": schedule(state.step) if schedule is not None else jnp.nan,
            "grad_norm": optax.global_norm(grads),
        }
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    rep, dat = replicated(mesh), data_sharded(mesh)
    return jax.jit(
        step_fn,
        in_shardings=(rep, dat),
        out_shardings=(rep, rep),
        donate_argnums=(0,),
    )


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Place this process's part of the global batch on its devices, sharded
    on axis 0 (each process passes its own local shard)."""
    sharding = data_sharded(mesh)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in batch.items()
    }


def maybe_initialize_distributed(force: bool = False) -> None:
    """Join a multi-host run: on SLURM, TPU pods and Kubernetes (or when
    `force`), `jax.distributed.initialize()` finds the coordinator itself."""
    auto = (
        int(os.environ.get("SLURM_NTASKS", "1")) > 1
        or "TPU_WORKER_HOSTNAMES" in os.environ
        or "JAX_COORDINATOR_ADDRESS" in os.environ
    )
    if force or auto:
        jax.distributed.initialize()
