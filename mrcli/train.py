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

import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mrcli import config as config_lib
from mrcli.config import Config, TrainConfig
from mrcli.errors import UserError
from mrcli.files import write_json_atomic

PyTree = Any
# loss_fn(params, constants, batch, rng) -> (scalar loss, dict of scalar metrics);
# gradients are taken with respect to `params` only.
LossFn = Callable[
    [PyTree, PyTree, dict[str, jax.Array], jax.Array], tuple[jax.Array, dict[str, jax.Array]]
]


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
    """SGD with momentum, weight decay added to the gradient before momentum as
    PyTorch's SGD does; or AdamW with decoupled weight decay. Both decay
    kernels only, with optional global-norm clipping first."""
    parts = []
    if cfg.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    if cfg.optimizer == "adamw":
        parts.append(optax.adamw(learning_rate(cfg), weight_decay=cfg.weight_decay,
                                 mask=decay_mask))  # fmt: skip
    else:
        parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask))
        parts.append(optax.sgd(learning_rate(cfg), momentum=cfg.momentum))
    return optax.chain(*parts)


# --- state and step ----------------------------------------------------------------


@struct.dataclass
class TrainState:
    step: jax.Array  # [] int32
    params: PyTree  # trainable parameters
    # Frozen weights and constants (frozen stages, frozen BatchNorm): inputs of
    # the step, never updated; carried here so they are arguments of the
    # compiled program rather than constants baked into it.
    constants: PyTree
    opt_state: optax.OptState
    rng: jax.Array  # base PRNG key; step keys are fold_in(rng, step)


def init_state(
    params: PyTree, tx: optax.GradientTransformation, seed: int, constants: PyTree = None
) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        constants={} if constants is None else constants,
        opt_state=tx.init(params),
        # A raw uint32[2] key (not a typed key array) so orbax saves it as is.
        rng=jax.random.PRNGKey(seed),
    )


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D data-parallel mesh over all devices (of every process)."""
    devices = devices if devices is not None else jax.devices()
    return Mesh(np.asarray(devices), ("data",))


def use_cpu_cores(global_batch: int) -> int:
    """Before JAX starts: split the CPU into one XLA device per core, as many as
    divide `global_batch` (gcd). XLA:CPU runs one device's program with intra-op
    threads that a small model's many small ops leave idle; devices run their
    shards concurrently, so the tiny recipe's step takes 0.42 s instead of 0.47 s
    on 2 cores (benchmarks/train.py, BENCHMARKS.md). Returns the count set, or 0
    where it does not apply: XLA_FLAGS or jax_num_cpu_devices already chose, or
    the backends are up. Accelerator hosts are unaffected: CPU devices are not
    their default devices."""
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return 0
    if jax.config.jax_num_cpu_devices >= 0:
        return 0
    n = math.gcd(int(global_batch), os.cpu_count() or 1)
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # the backends are initialised: too late to split
        return 0
    return n


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
            state.params, state.constants, batch, rng
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


# --- the run: workdir, checkpoints, loop ------------------------------------------------
#
#   WORKDIR/
#     run.json            resolved config, dataset name + fingerprint, category map
#     checkpoints/STEP/   orbax items: model (full model state), opt (optimiser
#                         state, step, rng), data (iterator state), record (JSON)
#     metrics.jsonl       one JSON object per line: train metrics every
#                         log_every steps, eval results as their own lines
#     tb/                 TensorBoard event files (tensorboardX)

RUN_RECORD = "run.json"
CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
CKPT_FORMAT = "mrcli-train/1"

# Fields a resumed run may change: how long, how often, how many workers.
RESUMABLE_CHANGES = frozenset(
    {
        "train.steps",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "train.eval_every",
        "train.log_every",
        "data.num_workers",
        "eval.batch_size",
        "eval.max_images",
    }
)


def check_workdir(workdir: Path, cfg: Config, dataset_name: str, fingerprint: str,
                  categories: list[dict[str, Any]]) -> bool:  # fmt: skip
    """Create WORKDIR/run.json, or check that this run may continue the one there.

    Returns True where the workdir already holds a run (a resume). A workdir
    made with another dataset, or with a config that differs in anything but
    RESUMABLE_CHANGES, is refused with the fields that differ."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / RUN_RECORD
    record = {
        "format": CKPT_FORMAT,
        "config": config_lib.to_dict(cfg),
        "dataset": dataset_name,
        "fingerprint": fingerprint,
        "categories": categories,
    }
    if not path.exists():
        write_json_atomic(path, record)
        return False
    try:
        old = json.loads(path.read_text())
        old_cfg = config_lib.from_dict(old["config"])
    except (json.JSONDecodeError, KeyError, UserError) as e:
        raise UserError(f"{path} is damaged ({e}); use a new --workdir") from e
    if old.get("fingerprint") != fingerprint:
        raise UserError(
            f"{workdir} holds a run on dataset {old.get('dataset')!r} (fingerprint "
            f"{old.get('fingerprint')}); this run uses {dataset_name!r} ({fingerprint}). "
            "Use a new --workdir for a new dataset"
        )
    changed = {
        k: (v, config_lib.diff(cfg, old_cfg).get(k))
        for k, v in config_lib.diff(old_cfg, cfg).items()
        if k not in RESUMABLE_CHANGES
    }
    if changed:
        detail = "; ".join(f"{k}: {v!r} there, {w!r} now" for k, (v, w) in sorted(changed.items()))
        raise UserError(
            f"{workdir} holds a run with another config ({detail}). Run the same recipe and "
            "--set options to resume, or use a new --workdir"
        )
    write_json_atomic(path, record)
    return True


def _checkpoint_manager(workdir: Path, keep: int, read_only: bool = False):
    import orbax.checkpoint as ocp
    from orbax.checkpoint import checkpoint_managers as cm

    policy = cm.AnyPreservationPolicy(
        [
            cm.LatestN(n=max(1, keep)),
            # The best by the periodic eval's mask AP (box AP for box-only models).
            cm.BestN(get_metric_fn=lambda m: m["score"], n=1, keep_checkpoints_without_metrics=False),
        ]
    )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        enable_async_checkpointing=False,
        read_only=read_only,
        create=not read_only,
        save_interval_steps=0 if read_only else 1,
    )
    # Reading a run (eval, predict, export) opens it read-only on purpose;
    # orbax warns about that through absl at WARNING, which users need not see.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    if read_only:
        absl_logger.setLevel(logging.ERROR)
    try:
        return ocp.CheckpointManager(
            (workdir / CHECKPOINTS).resolve(),
            options=options,
            item_names=("model", "opt", "data", "record"),
        )
    finally:
        absl_logger.setLevel(level)


def _pure_tree(state: Any) -> Any:
    return state.to_pure_dict() if hasattr(state, "to_pure_dict") else state


@dataclass
class RunResult:
    step: int  # the step reached
    reason: str  # "done" | "signal" | "nonfinite"
    last_checkpoint: int | None  # the step of the newest checkpoint
    metrics: dict[str, float]  # the last logged train metrics
    eval: dict[str, float] | None  # the last periodic eval's numbers


class _Metrics:
    """WORKDIR/metrics.jsonl lines and TensorBoard scalars."""

    def __init__(self, workdir: Path, process_index: int):
        self.enabled = process_index == 0
        self.path = workdir / METRICS
        self._tb = None
        if self.enabled:
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(workdir / "tb"))
            except ImportError:  # pragma: no cover - a base dependency
                self._tb = None

    def write(self, record: dict[str, Any], prefix: str = "train") -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            step = int(record["step"])
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(f"{prefix}/{k}", v, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class _StopSignals:
    """SIGTERM/SIGINT set a flag; the loop finishes its step, saves, and exits 0."""

    def __init__(self):
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _init_model(cfg: Config, init_from: str | None, say: Callable[[str], None]):
    """(Model, full model state): fresh, with `--init-from` weights merged in.

    Arrays whose shapes differ from the model's (a COCO head on a dataset
    with another number of classes) are skipped and listed, as Detectron2's
    checkpointer does when fine-tuning."""
    from mrcli import checkpoints
    from mrcli import model as model_lib

    model, state = model_lib.create(cfg.model, seed=cfg.train.seed)
    if not init_from:
        return model, state
    from flax import nnx

    if (Path(init_from).expanduser() / RUN_RECORD).is_file():
        # Another training run (fine-tuning a model trained with mrcli): its best checkpoint.
        trained = load_trained(init_from, "best")
        flat, origin = checkpoints.flatten(trained.state.to_pure_dict()), trained.origin
    else:
        ckpt = checkpoints.load(init_from)
        flat, origin = checkpoints.flatten(ckpt.state), str(ckpt.path)
    shapes = {tuple(str(k) for k in p): tuple(v.shape) for p, v in nnx.to_flat_state(state)}
    skipped = [k for k, v in flat.items() if k in shapes and tuple(np.shape(v)) != shapes[k]]
    for k in skipped:
        del flat[k]
    if skipped:
        say(f"--init-from: {len(skipped)} arrays of another shape not loaded (the class-specific "
            f"layers of another dataset), e.g. {'.'.join(skipped[0])}")  # fmt: skip
    state = checkpoints.restore(
        state, checkpoints.unflatten(flat), partial=True, origin=f"--init-from {init_from}"
    )
    say(f"--init-from: {len(flat)} arrays from {origin}")
    return model, state


def train(
    cfg: Config,
    workdir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    init_from: str | None = None,
    report: Callable[[str, dict[str, Any]], None] | None = None,
) -> RunResult:
    """Train (or resume) the run in `workdir` to `cfg.train.steps`.

    `report(kind, data)` receives progress: ("start", {...}), ("step", metrics
    every log_every steps), ("eval", numbers), ("checkpoint", {"step"}),
    ("message", {"text"}). Returns how the run ended.
    """
    from mrcli.data import pipeline
    from mrcli.data.store import find_dataset
    from mrcli.model import split_params

    report = report or (lambda kind, data: None)
    say = lambda text: report("message", {"text": text})  # noqa: E731
    use_cpu_cores(cfg.train.global_batch)
    workdir = Path(workdir).expanduser()
    tc = cfg.train
    ds = find_dataset(cfg.data.dataset, data_dir)
    ds.check_split(cfg.data.train_split)
    if ds.num_classes != cfg.model.num_classes:
        raise UserError(
            f"dataset {ds.name!r} has {ds.num_classes} classes but model.num_classes is "
            f"{cfg.model.num_classes}; add --set model.num_classes={ds.num_classes}"
        )
    n_proc, n_dev = jax.process_count(), jax.device_count()
    if tc.global_batch % n_dev:
        raise UserError(
            f"train.global_batch={tc.global_batch} does not split over {n_dev} devices; "
            f"use a multiple of {n_dev} (--set train.global_batch=...)"
        )
    resuming = check_workdir(workdir, cfg, ds.name, ds.fingerprint, ds.categories)

    mesh = make_mesh()
    model, model_state = _init_model(cfg, None if resuming else init_from, say)
    params, constants = split_params(model_state)
    schedule = learning_rate(tc)
    tx = make_optimizer(tc)
    rep = replicated(mesh)
    state = jax.device_put(init_state(params, tx, tc.seed, constants), rep)
    step_fn = make_train_step(model_loss(model), tx, mesh, schedule)
    batches = pipeline.train_batches(cfg, ds)

    manager = _checkpoint_manager(workdir, tc.keep_checkpoints)
    start = 0
    if resuming and manager.latest_step() is not None:
        start = int(manager.latest_step())
        state = _restore(manager, start, state, batches, rep)
        say(f"resumed {workdir} at step {start}")
    elif resuming:
        say(f"{workdir} has no checkpoint yet; starting at step 0")

    metrics_out = _Metrics(workdir, jax.process_index())
    last_ckpt = int(manager.latest_step()) if manager.latest_step() is not None else None
    last_metrics: dict[str, float] = {}
    last_eval: dict[str, float] | None = None
    window: list[tuple[int, dict[str, jax.Array]]] = []
    t_window = time.perf_counter()
    report("start", {"step": start, "steps": tc.steps, "devices": n_dev, "processes": n_proc,
                     "resumed": start > 0})  # fmt: skip

    def save(step: int, score: float | None = None) -> None:
        nonlocal last_ckpt
        _save(manager, step, state, batches, cfg, ds, score)
        last_ckpt = step
        report("checkpoint", {"step": step})

    def flush(step: int) -> dict[str, float] | None:
        """Fetch the window's metrics; None where a loss went non-finite."""
        nonlocal window, t_window, last_metrics
        if not window:
            return last_metrics
        fetched = jax.device_get(window)
        elapsed = time.perf_counter() - t_window
        for s, m in fetched:
            if not np.isfinite(m["loss"]):
                bad = {k: float(v) for k, v in m.items()}
                raise _NonFinite(s, bad)
        s, m = fetched[-1]
        last_metrics = {k: float(v) for k, v in m.items()}
        last_metrics["images_per_s"] = len(fetched) * tc.global_batch / max(elapsed, 1e-9)
        record = {"step": s + 1, **last_metrics}
        metrics_out.write(record)
        report("step", record)
        window, t_window = [], time.perf_counter()
        return last_metrics

    step = start
    reason = "done"
    try:
        with _StopSignals() as stop:
            while step < tc.steps:
                batch = next(batches)
                state, metrics = step_fn(state, shard_batch(batch, mesh))
                window.append((step, metrics))
                step += 1
                # Periodic eval runs on one host only (see evaluate.evaluate_model).
                at_eval = tc.eval_every > 0 and step % tc.eval_every == 0 and n_proc == 1
                at_ckpt = step % tc.checkpoint_every == 0 or step == tc.steps or at_eval
                if step % tc.log_every == 0 or at_ckpt or stop.received is not None:
                    flush(step)
                score = None
                if at_eval:
                    last_eval = evaluate_during_training(model, state, ds, cfg, mesh)
                    metrics_out.write({"step": step, **last_eval}, prefix="eval")
                    report("eval", {"step": step, **last_eval})
                    score = last_eval.get("segm_AP", last_eval.get("bbox_AP"))
                if at_ckpt or stop.received is not None:
                    save(step, score)
                if stop.received is not None:
                    reason = "signal"
                    say(f"stopped by signal {stop.received} at step {step}; saved, resume with "
                        "the same command")  # fmt: skip
                    break
    except _NonFinite as e:
        reason = "nonfinite"
        where = f"step {last_ckpt} in {workdir / CHECKPOINTS}" if last_ckpt is not None else "none yet"
        metrics_out.write({"step": e.step + 1, "nonfinite": True, **e.metrics})
        batches.close()
        metrics_out.close()
        manager.close()
        raise TrainingDiverged(
            f"the loss became non-finite at step {e.step + 1} "
            f"({', '.join(f'{k}={v:.4g}' for k, v in e.metrics.items() if 'loss' in k)}); "
            f"the last good checkpoint is {where} and is kept. Lower train.base_lr or set "
            "train.grad_clip_norm, then resume"
        ) from None
    batches.close()
    metrics_out.close()
    manager.wait_until_finished()
    manager.close()
    return RunResult(step=step, reason=reason, last_checkpoint=last_ckpt,
                     metrics=last_metrics, eval=last_eval)  # fmt: skip


class _NonFinite(Exception):
    def __init__(self, step: int, metrics: dict[str, float]):
        self.step, self.metrics = step, metrics


class TrainingDiverged(RuntimeError):
    """The loss went NaN/inf: a runtime failure (exit 1), the checkpoint is kept."""


def model_loss(model) -> LossFn:
    """The model's training loss in the step's (params, constants, batch, rng) form."""
    from mrcli.model import merge_params

    def loss_fn(params, constants, batch, rng):
        return model.loss(merge_params(params, constants), batch, rng)

    return loss_fn


def _save(manager, step, state, batches, cfg, ds, score) -> None:
    import orbax.checkpoint as ocp

    from mrcli.model import merge_params

    model_state = merge_params(state.params, state.constants)
    record = {
        "format": CKPT_FORMAT,
        "step": int(step),
        "config": config_lib.to_dict(cfg),
        "dataset": ds.name,
        "fingerprint": ds.fingerprint,
        "categories": ds.categories,
        "score": score,
    }
    args = ocp.args.Composite(
        model=ocp.args.StandardSave(_pure_tree(model_state)),
        opt=ocp.args.StandardSave(
            {"step": state.step, "opt_state": state.opt_state, "rng": state.rng}
        ),
        data=ocp.args.JsonSave(batches.get_state()),
        record=ocp.args.JsonSave(record),
    )
    manager.save(step, args=args, metrics=None if score is None else {"score": float(score)},
                 force=True)  # fmt: skip
    manager.wait_until_finished()


def _restore(manager, step, state, batches, sharding) -> TrainState:
    """`state` and `batches` as saved at `step` (the iterator is set in place)."""
    import orbax.checkpoint as ocp

    from mrcli.model import merge_params, split_params

    template_model = _pure_tree(merge_params(state.params, state.constants))
    template_opt = {"step": state.step, "opt_state": state.opt_state, "rng": state.rng}
    as_abstract = lambda t: jax.tree.map(  # noqa: E731
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), t
    )
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            model=ocp.args.StandardRestore(as_abstract(template_model)),
            opt=ocp.args.StandardRestore(as_abstract(template_opt)),
            data=ocp.args.JsonRestore(),
        ),
    )
    from mrcli import checkpoints

    full = merge_params(state.params, state.constants)
    full = checkpoints.restore(full, restored["model"], origin=f"checkpoint {step}")
    params, constants = jax.device_put(split_params(full), sharding)
    opt = restored["opt"]
    state = state.replace(
        step=opt["step"], params=params, constants=constants,
        opt_state=opt["opt_state"], rng=opt["rng"],
    )  # fmt: skip
    batches.set_state(restored["data"])
    return state


def evaluate_during_training(model, state, ds, cfg, mesh) -> dict[str, float]:
    """The periodic evaluation on data.eval_split: COCO box and mask AP."""
    from mrcli.evaluate import evaluate_model
    from mrcli.model import merge_params

    result = evaluate_model(model, merge_params(state.params, state.constants), ds, cfg,
                            split=cfg.data.eval_split, mesh=mesh)  # fmt: skip
    return result.summary()


# --- reading a run's checkpoints (eval, predict, export) ---------------------------------


@dataclass(frozen=True)
class TrainedModel:
    """A model ready for inference: from a run's checkpoint or a checkpoint directory."""

    config: Config
    categories: list[dict[str, Any]] | None
    model: Any  # mrcli.model.Model
    state: Any  # full nnx.State
    origin: str  # what it was read from, for messages
    step: int | None = None


def _pick_step(manager, which: str, workdir: Path) -> int:
    steps = sorted(manager.all_steps())
    if not steps:
        raise UserError(f"{workdir} has no checkpoint yet; train first (mrcli train --workdir {workdir})")
    if which == "last":
        return steps[-1]
    if which == "best":
        scored = []
        for s in steps:
            record = manager.restore(s, args=_record_args())["record"]
            if record.get("score") is not None:
                scored.append((record["score"], s))
        return max(scored)[1] if scored else steps[-1]
    try:
        step = int(which)
    except ValueError:
        raise UserError(f"--checkpoint {which!r}: use best, last, a step number or a directory") from None
    if step not in steps:
        raise UserError(f"{workdir} has no checkpoint at step {step}; it has {', '.join(map(str, steps))}")
    return step


def _record_args():
    import orbax.checkpoint as ocp

    return ocp.args.Composite(record=ocp.args.JsonRestore())


def load_trained(workdir: str | os.PathLike[str] | None = None, checkpoint: str | None = None) -> TrainedModel:
    """The model of `workdir` at `checkpoint` (best | last | STEP; default best),
    or of a checkpoint directory (`mrcli weights import`) given as `checkpoint`."""
    import orbax.checkpoint as ocp

    from mrcli import checkpoints
    from mrcli import model as model_lib

    if checkpoint and Path(checkpoint).expanduser().is_dir():
        ckpt = checkpoints.load(checkpoint)
        if ckpt.partial:
            raise UserError(f"{ckpt.path} holds only a backbone; use it with `mrcli train --init-from`")
        model, state = model_lib.create(ckpt.config.model)
        state = checkpoints.restore(state, ckpt.state, origin=str(ckpt.path))
        return TrainedModel(ckpt.config, ckpt.categories, model, state, str(ckpt.path))
    if workdir is None:
        raise UserError("name a trained model: --workdir RUN_DIR, or --checkpoint DIR")
    workdir = Path(workdir).expanduser()
    if not (workdir / RUN_RECORD).is_file():
        raise UserError(f"{workdir} is not an mrcli training run (no {RUN_RECORD}); check --workdir")
    manager = _checkpoint_manager(workdir, keep=1, read_only=True)
    try:
        step = _pick_step(manager, checkpoint or "best", workdir)
        record = manager.restore(step, args=_record_args())["record"]
        cfg = config_lib.from_dict(record["config"])
        model, abstract = model_lib.abstract(cfg.model)
        # On this process's first device, whatever mesh the run trained on (a
        # template without a sharding makes orbax ask for the saved topology).
        one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one),
                                _pure_tree(abstract))  # fmt: skip
        restored = manager.restore(
            step, args=ocp.args.Composite(model=ocp.args.StandardRestore(template))
        )["model"]
    finally:
        manager.close()
    # Fill the abstract state: no random initialisation of a model about to be overwritten.
    state = checkpoints.restore(abstract, restored, origin=f"{workdir} step {step}")
    return TrainedModel(cfg, record["categories"], model, state, f"{workdir} step {step}", step)
