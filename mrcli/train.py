"""Training: the optimiser, the data-parallel train step, the train state.

The step is one compiled program per input shape (bucket): `jax.jit` over
NamedShardings on a 1-D device mesh `('data',)`. The batch is sharded on its
leading axis, parameters and optimiser state are replicated, and XLA inserts
the gradient all-reduce; because the loss is computed on the global batch,
the same global batch gives the same update on 1 device or on 8 (up to the
order of floating-point sums). The train state is donated, so parameters
are updated in place.

Many hosts: `jax.distributed.initialize()` before anything touches a device
(mrcli.parallel.maybe_initialize_distributed); the mesh then spans every
process's devices and each process feeds its own shard of the global batch.

The run's files (workdir, checkpoints, metrics) are mrcli.runs'; the periodic
evaluation is mrcli.inference.evaluate_split, the same as `mrcli eval`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from jax.sharding import Mesh
from tensorboardX import SummaryWriter

from mrcli import checkpoints, inference, parallel, runs, weights
from mrcli import config as config_lib
from mrcli import model as model_lib
from mrcli.config import Config, TrainConfig
from mrcli.data import pipeline
from mrcli.data.store import Dataset, find_dataset
from mrcli.errors import UserError
from mrcli.progress import Kind, Report, for_process, silent

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

    rep, dat = parallel.replicated(mesh), parallel.data_sharded(mesh)
    return jax.jit(
        step_fn,
        in_shardings=(rep, dat),
        out_shardings=(rep, rep),
        donate_argnums=(0,),
    )


def model_loss(model: model_lib.Model) -> LossFn:
    """The model's training loss in the step's (params, constants, batch, rng) form."""

    def loss_fn(params, constants, batch, rng):
        return model.loss(model_lib.merge_params(params, constants), batch, rng)

    return loss_fn


# --- the run --------------------------------------------------------------------------


@dataclass
class RunResult:
    step: int  # the step reached
    reason: str  # "done" | "signal" | "nonfinite"
    last_checkpoint: int | None  # the step of the newest checkpoint
    metrics: dict[str, float]  # the last logged train metrics
    eval: dict[str, float] | None  # the last periodic eval's numbers


class TrainingDiverged(RuntimeError):
    """The loss went NaN/inf: a runtime failure (exit 1), the checkpoint is kept."""


class _NonFinite(Exception):
    def __init__(self, step: int, metrics: dict[str, float]):
        self.step, self.metrics = step, metrics


class _Metrics:
    """WORKDIR/metrics.jsonl lines and TensorBoard scalars (process 0 only)."""

    def __init__(self, workdir: Path, process_index: int):
        self.enabled = process_index == 0
        self.path = workdir / runs.METRICS
        self._tb = None
        if self.enabled:
            self._tb = SummaryWriter(str(workdir / runs.TENSORBOARD))

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
    """SIGTERM/SIGINT set a flag; the loop finishes its step, saves, and exits 0.

    With several processes every one must stop at the same step, since saving
    a checkpoint is collective: the flag is all-gathered (`agreed`) at the
    steps every process logs or checkpoints at, and the run stops where any
    process was signalled. A preemption notice (SIGTERM on one host, or on
    all at slightly different times) is so answered within train.log_every
    steps: inside the 30 s that SLURM (KillWait) and GCE spot VMs give
    before SIGKILL at usual step times. One process checks at every step."""

    def __init__(self):
        self.received: int | None = None
        self._agreed: tuple[int, int] | None = None  # (signal, the first process that got it)
        self._old: dict[int, Any] = {}

    def agreed(self, at_sync_step: bool) -> bool:
        """Whether the run stops after this step (the same answer on every process)."""
        if jax.process_count() == 1:
            return self.received is not None
        if not at_sync_step:
            return False
        got = parallel.gather_ints([self.received or 0])[:, 0]
        if not got.any():
            return False
        first = int(np.flatnonzero(got)[0])
        self._agreed = (int(got[first]), first)
        return True

    def describe(self) -> str:
        """e.g. 'SIGTERM', or 'SIGTERM on process 1' in a multi-process run."""
        if self._agreed is None:
            return signal_name(self.received) if self.received is not None else "a signal"
        signum, process = self._agreed
        return f"{signal_name(signum)} on process {process}"

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


def signal_name(signum: int) -> str:
    """What a user calls a signal: Ctrl-C for SIGINT, else its name (SIGTERM)."""
    if signum == signal.SIGINT:
        return "Ctrl-C"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def init_model(cfg: Config, init_from: str | None, report: Report) -> tuple[model_lib.Model, Any]:
    """(Model, full model state): fresh, with `init_from`'s weights merged in.

    `init_from` (train.init_from, `--init-from`) is another run's workdir (its
    best checkpoint), a catalogue name (`mrcli weights list`: downloaded and
    imported once), a .pth/.pkl file, or a checkpoint directory (`mrcli weights
    import`: a backbone or a full model). Weights made for another stride
    convention, norm or pixel profile are refused (check_profile). Arrays
    whose shapes differ from the model's (a COCO head on a dataset with another
    number of classes) are skipped and listed, as Detectron2's checkpointer
    does when fine-tuning; so is a box head of another model.box_head.kind."""
    model, state = model_lib.create(cfg.model, seed=cfg.train.seed)
    if not init_from:
        return model, state
    if runs.is_run(init_from):
        trained = runs.load_trained(init_from, "best")
        source_cfg, origin = trained.config, trained.origin
        flat = checkpoints.flatten(trained.state.to_pure_dict())
    else:
        ckpt = checkpoints.load(weights.resolve(init_from, report=report))
        source_cfg, origin = ckpt.config, str(ckpt.path)
        flat = checkpoints.flatten(ckpt.state)
    check_profile(cfg, source_cfg, init_from)
    # A box head of another kind (fc6/fc7 vs mlpconv blocks) starts fresh, even
    # its arrays of matching shapes (the regressor of other features); the
    # backbone, FPN, RPN and mask head still load. Any other array the model
    # lacks stays an error (checkpoints.check): another architecture.
    source_head, head = source_cfg.model.box_head.kind, cfg.model.box_head.kind
    if source_head != head:
        other = [k for k in flat if k[0] == "box_head"]
        for k in other:
            del flat[k]
        report.say(f"--init-from: {len(other)} arrays of its {source_head} box head not loaded; "
                   f"the {head} box head starts from scratch")  # fmt: skip
    shapes = {tuple(str(k) for k in p): tuple(v.shape) for p, v in nnx.to_flat_state(state)}
    skipped = [k for k, v in flat.items() if k in shapes and tuple(np.shape(v)) != shapes[k]]
    for k in skipped:
        del flat[k]
    if skipped:
        report.say(f"--init-from: {len(skipped)} arrays of another shape not loaded (the "
                   f"class-specific layers of another dataset), e.g. {'.'.join(skipped[0])}")  # fmt: skip
    state = checkpoints.restore(
        state, checkpoints.unflatten(flat), partial=True, origin=f"--init-from {init_from}"
    )
    report.say(f"--init-from: {len(flat)} arrays from {origin}")
    return model, state


def check_profile(cfg: Config, source: Config, init_from: str) -> None:
    """A UserError where weights were made for another backbone (depth, width,
    stride convention, norm) or pixel profile than the model's: arrays of the
    same shapes would load into a model that computes something else, and
    missing or reshaped ones would stay random."""
    want = config_lib.flatten(config_lib.to_dict(cfg))
    have = config_lib.flatten(config_lib.to_dict(source))
    keys = [k for k in want if k in weights.BACKBONE_PROFILE or k.startswith("model.input.pixel_")]
    differ = [k for k in keys if want[k] != have[k]]
    if differ:
        sets = " ".join(f"--set {k}={_cli_value(have[k])}" for k in differ)
        raise UserError(
            f"--init-from {init_from}: its weights were made for "
            + ", ".join(f"{k}={have[k]}" for k in differ)
            + f", the model has {', '.join(f'{want[k]}' for k in differ)}; run with {sets} "
            "(or a recipe made for these weights)"
        )


def _cli_value(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, list) else str(value).lower() if isinstance(
        value, bool) else str(value)


def check_weights(cfg: Config, resuming: bool) -> None:
    """A UserError for a run that would train frozen random weights: frozen
    stages (model.backbone.freeze_at > 0) and frozen BatchNorm keep their
    initial values, so from random weights they never learn."""
    b = cfg.model.backbone
    if resuming or cfg.train.init_from or (b.freeze_at == 0 and b.norm != "frozen_bn"):
        return
    frozen = []
    if b.freeze_at > 0:
        frozen.append(f"model.backbone.freeze_at={b.freeze_at} keeps the first {b.freeze_at} "
                      "stage(s) as initialised")  # fmt: skip
    if b.norm == "frozen_bn":
        frozen.append("frozen BatchNorm (model.backbone.norm=frozen_bn) never updates its constants")
    raise UserError(
        "this model would train from random weights that stay frozen: " + "; ".join(frozen)
        + ". Start from pretrained weights (--init-from NAME, `mrcli weights list`; the paper "
        "recipes name theirs), or train from scratch with --set model.backbone.norm=group_norm "
        "--set model.backbone.freeze_at=0"
    )


def schedule_for_dataset(num_images: int, cfg: Config) -> dict[str, Any]:
    """train.* fields for `num_images` training images (train.schedule =
    "by_dataset_size"), at the config's global batch:

    - epochs: 100 at 100 images or fewer (Ultralytics' default for custom
      data), 12 at 100k images (Detectron2's 1x COCO schedule, ~12 epochs),
      log-linear between: E = 100 * (N / 100) ** -0.307, clipped to [12, 100];
    - steps = E * N / batch, at least 100;
    - warm-up: 10% of the steps, at most 1000 (Detectron2's 1000);
    - LR decays by 10x at 2/3 and 8/9 of the steps (Detectron2's 60k and 80k
      of 90k);
    - an eval and a checkpoint every tenth of the steps, for early stopping
      (train.patience)."""
    n, b = max(1, int(num_images)), cfg.train.global_batch
    exponent = -math.log(100 / 12) / math.log(1000)
    epochs = min(100.0, max(12.0, 100.0 * (n / 100) ** exponent))
    steps = max(100, round(epochs * n / b))
    return {"train.steps": steps, **schedule_periods(steps)}


def schedule_periods(steps: int) -> dict[str, Any]:
    """Warm-up, decays, eval and checkpoint periods of a `steps` schedule
    (schedule_for_dataset)."""
    every = max(1, math.ceil(steps / 10))
    return {
        "train.warmup_steps": min(1000, steps // 10),
        "train.decay_steps": (round(steps * 2 / 3), round(steps * 8 / 9)),
        "train.eval_every": every,
        "train.checkpoint_every": every,
    }


def _check_run(cfg: Config, ds: Dataset, report: Report) -> None:
    """What can be checked before the first compile: the splits, that the train
    split has something to learn, the classes, the batch over the devices and
    the data (the input pipeline's plan), the model's own settings."""
    d = cfg.data
    ds.check_split(d.train_split)
    instances = ds.record["splits"][d.train_split].get("instances", 0)
    if not instances:
        raise UserError(
            f"split {d.train_split!r} of dataset {ds.name!r} has no instances, nothing to learn "
            "from: check its annotations (a COCO file needs an 'annotations' list) and prepare "
            "it again"
        )
    if cfg.train.eval_every > 0 and d.eval_split not in ds.splits:
        raise UserError(
            f"dataset {ds.name!r} has no split {d.eval_split!r} for the periodic eval (its splits: "
            f"{', '.join(ds.splits)}); prepare one (`mrcli prepare ... --val-fraction 0.1`), or "
            f"evaluate on another (--set data.eval_split={d.train_split}: the AP then measures "
            "memorisation), or --set train.eval_every=0"
        )
    if cfg.train.eval_every > 0 and d.eval_split == d.train_split:
        report.say(f"the periodic eval runs on the training split {d.train_split!r}: its AP "
                   "measures how well the model fits the data it trains on, not how it "
                   "generalises", "warning")  # fmt: skip
    model_lib.check_config(cfg.model)
    n_proc = jax.process_count()
    if cfg.train.global_batch % n_proc:
        fit = max(n_proc, cfg.train.global_batch // n_proc * n_proc)
        raise UserError(
            f"train.global_batch={cfg.train.global_batch} does not split evenly over the {n_proc} "
            f"processes (each reads its own rows of every batch): use a multiple of {n_proc} "
            f"(--set train.global_batch={fit}), or start another number of processes"
        )
    n_dev = jax.device_count()
    if cfg.train.global_batch % n_dev:
        fit = max(n_dev, cfg.train.global_batch // n_dev * n_dev)
        raise UserError(
            f"train.global_batch={cfg.train.global_batch} does not split evenly over the {n_dev} "
            f"devices: use a multiple of {n_dev} (--set train.global_batch={fit})"
        )
    if ds.num_classes != cfg.model.num_classes:
        raise UserError(
            f"dataset {ds.name!r} has {ds.num_classes} classes but model.num_classes is "
            f"{cfg.model.num_classes}; add --set model.num_classes={ds.num_classes}"
        )
    if cfg.model.keypoints:
        ds.check_num_keypoints(cfg.model.keypoint_head.num_keypoints)


class _EarlyStop:
    """train.patience: evals without a better train.best_metric before stopping."""

    def __init__(self, patience: int, metric: str):
        self.patience, self.metric = patience, metric
        self.best: float | None = None
        self.best_step: int | None = None
        self.since_best = 0

    def update(self, step: int, numbers: dict[str, float]) -> float | None:
        """Count one eval; its score (the metric, box AP for a box-only model)."""
        score = numbers.get(self.metric, numbers.get("bbox_AP"))
        if score is None:
            return None
        if self.best is None or score > self.best:
            self.best, self.best_step, self.since_best = score, step, 0
        else:
            self.since_best += 1
        return score

    @property
    def stop(self) -> bool:
        return self.patience > 0 and self.since_best >= self.patience

    def explain(self) -> str:
        at = f" at step {self.best_step}" if self.best_step is not None else ""
        return (f"stopped early: no better {self.metric} in {self.since_best} evals (train.patience="
                f"{self.patience}); the best, {self.best:.3f}{at}, is the kept best checkpoint")  # fmt: skip


def _save(manager, step: int, state: TrainState, batches, cfg: Config, ds: Dataset,
          score: float | None, stopping: _EarlyStop) -> None:  # fmt: skip
    record = {**runs.run_record(cfg, ds), "best_score": stopping.best,
              "evals_since_best": stopping.since_best}  # fmt: skip
    runs.save_checkpoint(
        manager, step,
        model_state=model_lib.merge_params(state.params, state.constants),
        opt={"step": state.step, "opt_state": state.opt_state, "rng": state.rng},
        data_state=batches.get_state(), record=record, score=score,
    )  # fmt: skip


def _restore(manager, step: int, state: TrainState, batches, sharding) -> tuple[TrainState, dict]:
    """`state` and `batches` as saved at `step` (the iterator is set in place),
    and the checkpoint's JSON record."""
    full = model_lib.merge_params(state.params, state.constants)
    model, opt, data_state, record = runs.restore_checkpoint(
        manager, step, model_template=full, sharding=sharding,
        opt_template={"step": state.step, "opt_state": state.opt_state, "rng": state.rng},
    )  # fmt: skip
    full = checkpoints.restore(full, model, origin=f"checkpoint {step}")
    params, constants = jax.device_put(model_lib.split_params(full), sharding)
    state = state.replace(
        step=opt["step"], params=params, constants=constants,
        opt_state=opt["opt_state"], rng=opt["rng"],
    )  # fmt: skip
    batches.set_state(data_state)
    return state, record


def evaluate_during_training(model: model_lib.Model, state: TrainState, ds: Dataset, cfg: Config,
                             mesh: Mesh, workdir: Path) -> dict[str, float]:  # fmt: skip
    """The periodic evaluation on data.eval_split: COCO box, mask and keypoint AP.
    One process uses the train mesh; several divide the split, each on its own
    devices, and merge their results in WORKDIR/eval/periodic (shared by the
    hosts like the checkpoints).

    A run on crops (data.train_crop) learns the images at their own scale, so
    it is evaluated so: tiled (inference.evaluate_split `tile`) in windows of
    the crop's longer side overlapping by a quarter of it."""
    full = model_lib.merge_params(state.params, state.constants)
    tile = max(cfg.data.train_crop) if cfg.data.train_crop else None
    tiled = {"tile": tile, "tile_overlap": tile // 4} if tile else {}
    if jax.process_count() == 1:
        predictor = inference.Predictor(model, full, cfg, mesh=mesh)
        return inference.evaluate_split(predictor, ds, cfg.data.eval_split, **tiled).summary()
    predictor = inference.Predictor(model, full, cfg)
    out = workdir / runs.EVAL_DIR / "periodic"
    return inference.evaluate_split(predictor, ds, cfg.data.eval_split, out_dir=out, **tiled).summary()


def _abstract_batch(cfg: Config, bucket: tuple[int, int], mesh: Mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch of one bucket as shapes and shardings (nothing allocated)."""
    sharding = parallel.data_sharded(mesh)
    shapes = pipeline.batch_shapes(cfg, cfg.train.global_batch, bucket)
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding) for k, (shape, dtype) in shapes.items()}


def compile_steps(step_fn, state: TrainState, cfg: Config, mesh: Mesh, report: Report) -> None:
    """Compile the train step of every bucket before step 1, and refuse (a
    UserError) a step whose memory the devices do not have. The compiled
    programs stay in the jit's cache, so the loop does not compile again."""
    d, m, t = cfg.data, cfg.model, cfg.train
    size = (f"the crop (data.train_crop={','.join(map(str, d.train_crop))})" if d.train_crop else
            f"the image size (data.image_size={d.image_size}, data.max_size={d.max_size})")
    lower = (f"train.global_batch ({t.global_batch}), {size} or the RoIs per image "
             f"(model.roi_heads.batch_per_image={m.roi_heads.batch_per_image}, "
             f"model.mask_head.fg_slots={m.mask_head.fg_slots}, "
             f"model.keypoint_head.fg_slots={m.keypoint_head.fg_slots})")  # fmt: skip
    for bucket in pipeline.train_buckets(cfg):
        start = time.perf_counter()
        compiled = step_fn.lower(state, _abstract_batch(cfg, bucket, mesh)).compile()
        need = parallel.memory_need(compiled, mesh)
        report.say(f"compiled the train step for {bucket[0]}x{bucket[1]} in "
                   f"{time.perf_counter() - start:.1f} s; it needs {need.describe()}", "detail")  # fmt: skip
        parallel.check_memory(need, f"the train step at {bucket[0]}x{bucket[1]}, batch "
                                    f"{t.global_batch}", lower)  # fmt: skip


def _draw_curves(workdir: Path, report: Report, kind: Kind = "detail") -> None:
    """WORKDIR/plots/curves.png from metrics.jsonl (runs.plot_curves). A
    picture that cannot be drawn is a warning: it never ends a run."""
    try:
        path = runs.plot_curves(workdir)
    except Exception as e:  # noqa: BLE001 - e.g. a full disk; the run itself goes on
        report.say(f"could not draw the training curves in {workdir / runs.PLOTS}: {type(e).__name__}: {e}",
                   "warning")  # fmt: skip
        return
    report.say(f"training curves: {path}", kind)


def _format_eval(step: int, numbers: dict[str, float]) -> str:
    text = f"step {step}: box AP {numbers.get('bbox_AP', float('nan')):.3f}"
    for key, what in (("segm_AP", "mask AP"), ("keypoints_AP", "keypoint AP")):
        if key in numbers:
            text += f", {what} {numbers[key]:.3f}"
    return text


def _round_up(x: float, multiple: int) -> int:
    return int(math.ceil(x / multiple) * multiple)


# The fields instance_limits may raise.
LIMIT_KEYS = frozenset({
    "data.max_instances", "model.roi_heads.batch_per_image", "model.rpn.post_nms_topk.train",
    "model.rpn.pre_nms_topk.train", "model.mask_head.fg_slots", "model.keypoint_head.fg_slots",
    "model.inference.detections_per_image", "eval.max_dets", "model.rpn.post_nms_topk.test",
    "model.rpn.pre_nms_topk.test",
})  # fmt: skip


def instance_limits(cfg: Config, most_train: int, most_any: int,
                    explicit: frozenset[str] = frozenset()) -> dict[str, Any]:  # fmt: skip
    """The limits that cap what a run learns and finds, raised (never lowered) to
    hold a dataset whose training images have at most `most_train` instances
    each (crowd regions included) and whose images of any split at most
    `most_any`; the keys in `explicit` (set on the command line) are kept.

    - data.max_instances (gt slots): every training instance, rounded up to 8;
    - model.roi_heads.batch_per_image (RoIs sampled per image): enough that its
      foreground share (roi_heads.positive_fraction, Fast R-CNN's 25%) can hold
      one RoI per instance, rounded up to 64; model.rpn.post_nms_topk.train (the
      proposals they are drawn from) at least that;
    - model.mask_head.fg_slots (and keypoint_head's, for a keypoint model): the
      foreground RoIs the mask head trains on, one per instance;
    - model.inference.detections_per_image: 1.25x the densest image of any split
      (headroom for unseen images), rounded up to 10; eval.max_dets (COCOeval's
      maxDets) with it, so the score is not capped at COCO's 100; the test-time
      proposals (model.rpn.pre/post_nms_topk.test) at least twice the detections.

    A limit that already holds the data is left as the recipe set it."""
    m = cfg.model
    out: dict[str, Any] = {}

    def raise_to(key: str, current: int, need: int) -> None:
        if key not in explicit and need > current:
            out[key] = int(need)

    if most_train > cfg.data.max_instances:
        raise_to("data.max_instances", cfg.data.max_instances, _round_up(most_train, 8))
    rh = m.roi_heads
    if most_train > rh.batch_per_image * rh.positive_fraction:
        raise_to("model.roi_heads.batch_per_image", rh.batch_per_image,
                 _round_up(most_train / rh.positive_fraction, 64))  # fmt: skip
        batch = out.get("model.roi_heads.batch_per_image", rh.batch_per_image)
        raise_to("model.rpn.post_nms_topk.train", m.rpn.post_nms_topk.train, batch)
        raise_to("model.rpn.pre_nms_topk.train", m.rpn.pre_nms_topk.train,
                 out.get("model.rpn.post_nms_topk.train", 0))  # fmt: skip
    if most_train > m.mask_head.fg_slots:
        raise_to("model.mask_head.fg_slots", m.mask_head.fg_slots, _round_up(most_train, 8))
    if m.keypoints and most_train > m.keypoint_head.fg_slots:
        raise_to("model.keypoint_head.fg_slots", m.keypoint_head.fg_slots, _round_up(most_train, 8))
    if most_any > m.inference.detections_per_image:
        raise_to("model.inference.detections_per_image", m.inference.detections_per_image,
                 _round_up(1.25 * most_any, 10))  # fmt: skip
        dets = out.get("model.inference.detections_per_image", m.inference.detections_per_image)
        raise_to("eval.max_dets", cfg.eval.max_dets, dets)
        raise_to("model.rpn.post_nms_topk.test", m.rpn.post_nms_topk.test, 2 * dets)
        raise_to("model.rpn.pre_nms_topk.test", m.rpn.pre_nms_topk.test,
                 out.get("model.rpn.post_nms_topk.test", 0))  # fmt: skip
    return out


def for_dataset(cfg: Config, ds: Dataset, explicit: frozenset[str] = frozenset(),
                report: Report | None = None) -> Config:  # fmt: skip
    """`cfg` with what the dataset decides, except the dotted keys in `explicit`
    (set on the command line): the number of classes (and of keypoints, for a
    keypoint model), the instance limits (instance_limits), and with
    train.schedule = "by_dataset_size" the batch (at most the split's size, a
    power of two) and the schedule (schedule_for_dataset; then "fixed", so the
    run records the values used)."""
    report = silent(report)
    updates: dict[str, Any] = {}
    if "model.num_classes" not in explicit and cfg.model.num_classes != ds.num_classes:
        updates["model.num_classes"] = ds.num_classes
        report.say(f"model.num_classes = {ds.num_classes}, from dataset {ds.name!r}")
    kset = ds.keypoint_set
    key = "model.keypoint_head.num_keypoints"
    if (cfg.model.keypoints and kset is not None and key not in explicit
            and cfg.model.keypoint_head.num_keypoints != kset.num_keypoints):
        updates[key] = kset.num_keypoints
        report.say(f"{key} = {kset.num_keypoints}, from dataset {ds.name!r}")
    counts = {split: ds.index(split)["num_instances"] for split in ds.splits}
    most_train = int(counts[ds.check_split(cfg.data.train_split)].max(initial=0))
    most_any = max(int(c.max(initial=0)) for c in counts.values())
    limits = instance_limits(cfg, most_train, most_any, explicit)
    if limits:
        updates.update(limits)
        report.say(f"limits for dataset {ds.name!r} (up to {most_train} instances per training "
                   f"image, {most_any} in any split): "
                   + ", ".join(f"{k}={v}" for k, v in limits.items()))  # fmt: skip
    if cfg.train.schedule == "by_dataset_size":
        n = ds.num_examples(ds.check_split(cfg.data.train_split))
        batch = cfg.train.global_batch
        if "train.global_batch" not in explicit:
            batch = min(batch, 1 << max(0, n.bit_length() - 1))
        at = config_lib.override(cfg, {"train.global_batch": batch})
        chosen = {"train.global_batch": batch, **schedule_for_dataset(n, at)}
        if "train.steps" in explicit:  # the periods follow the steps asked for
            chosen.update(schedule_periods(cfg.train.steps))
        chosen = {k: v for k, v in chosen.items() if k not in explicit}
        updates.update(chosen, **{"train.schedule": "fixed"})
        report.say(f"schedule for {n} training images: " + ", ".join(
            f"{k.removeprefix('train.')}={v}" for k, v in chosen.items()))  # fmt: skip
    return config_lib.override(cfg, updates) if updates else cfg


def train(
    cfg: Config,
    workdir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    report: Report | None = None,
    explicit: frozenset[str] = frozenset(),
) -> RunResult:
    """Train (or resume) the run in `workdir` to `cfg.train.steps`, from
    cfg.train.init_from's weights; what the dataset decides (for_dataset) is
    taken from it, except the keys in `explicit`.

    Progress goes to `report` (mrcli.progress): the task "train" advanced with
    the logged metrics every log_every steps, lines for compiled steps (with
    their memory), checkpoints, evals and messages. The train step of every
    bucket is compiled and its memory checked before the run record is
    written. The input pipeline, metric writers and checkpoint manager are
    closed on every way out. Returns how the run ended."""
    report = silent(report)
    t_start = time.perf_counter()  # the run's wall time (elapsed_s) counts from here
    workdir = Path(workdir).expanduser()
    ds = find_dataset(cfg.data.dataset, data_dir)
    if runs.is_run(workdir):  # a run goes on with the limits it started with (a run of 0.1 too)
        explicit = explicit | LIMIT_KEYS
    cfg = for_dataset(cfg, ds, explicit, report)
    parallel.use_cpu_cores(cfg.train.global_batch)
    tc = cfg.train
    _check_run(cfg, ds, report)
    how = runs.check_workdir(workdir, cfg, ds)
    if jax.process_count() > 1:
        # Also a barrier: no process writes the run record before every one has
        # read the workdir (else a late one would take a new run for a resume).
        parallel.check_same({"config": json.dumps(config_lib.to_dict(cfg), sort_keys=True),
                             "dataset fingerprint": ds.fingerprint,
                             f"state of {workdir} (new, resume or restart)": how})  # fmt: skip
    resuming = how == "resume"
    if how == "restart":
        report.say(f"{workdir} holds a run that saved no checkpoint; starting it again with "
                   "this config")  # fmt: skip
    check_weights(cfg, resuming and runs.has_checkpoints(workdir))
    n_proc, n_dev = jax.process_count(), jax.device_count()

    mesh = parallel.make_mesh()
    model, model_state = init_model(cfg, None if resuming else tc.init_from, report)
    params, constants = model_lib.split_params(model_state)
    schedule = learning_rate(tc)
    tx = make_optimizer(tc)
    rep = parallel.replicated(mesh)
    state = jax.device_put(init_state(params, tx, tc.seed, constants), rep)
    step_fn = make_train_step(model_loss(model), tx, mesh, schedule)
    with contextlib.ExitStack() as closing:
        # Everything that can fail is checked before the run writes anything:
        # the batches' plan (enough images for a global batch), each step's memory.
        batches = pipeline.train_batches(cfg, ds)  # its workers start with the first batch
        closing.callback(batches.close)
        compile_steps(step_fn, state, cfg, mesh, report)
        if jax.process_index() == 0:
            runs.start_run(workdir, cfg, ds, how)
        manager = runs.open_checkpoints(workdir, tc.keep_checkpoints)
        closing.callback(manager.close)
        start = 0
        stopping = _EarlyStop(tc.patience, tc.best_metric)
        if resuming and manager.latest_step() is not None:
            start = int(manager.latest_step())
            state, record = _restore(manager, start, state, batches, rep)
            stopping.best, stopping.since_best = record.get("best_score"), record.get("evals_since_best", 0)
            report.say(f"resumed {workdir} at step {start}")
        elif resuming:
            report.say(f"{workdir} has no checkpoint yet; starting at step 0")
        # A resumed run's wall time goes on from what it was at its checkpoint.
        elapsed_before = runs.elapsed_at(workdir, start) if start > 0 else 0.0
        metrics_out = _Metrics(workdir, jax.process_index())
        closing.callback(metrics_out.close)
        last_ckpt = int(manager.latest_step()) if manager.latest_step() is not None else None
        last_metrics: dict[str, float] = {}
        last_eval: dict[str, float] | None = None
        window: list[tuple[int, dict[str, jax.Array]]] = []
        t_window = time.perf_counter()
        report.say(f"training on {n_dev} device(s), {n_proc} process(es)"
                   + (f", resumed at step {start}" if start > 0 else ""))  # fmt: skip
        report.task("train", total=tc.steps, done=start)

        def flush() -> None:
            """Fetch the window's metrics; _NonFinite where a loss went non-finite."""
            nonlocal window, t_window, last_metrics
            if not window:
                return
            fetched = jax.device_get(window)
            elapsed = time.perf_counter() - t_window
            for s, m in fetched:
                if not np.isfinite(m["loss"]):
                    raise _NonFinite(s, {k: float(v) for k, v in m.items()})
            s, m = fetched[-1]
            last_metrics = {k: float(v) for k, v in m.items()}
            last_metrics["images_per_s"] = len(fetched) * tc.global_batch / max(elapsed, 1e-9)
            last_metrics["elapsed_s"] = elapsed_before + time.perf_counter() - t_start
            metrics_out.write({"step": s + 1, **last_metrics})
            report.advance(s + 1, **last_metrics)
            window, t_window = [], time.perf_counter()

        step = start
        reason = "done"
        try:
            with _StopSignals() as stop:
                while step < tc.steps:
                    batch = next(batches)
                    state, metrics = step_fn(state, parallel.shard_batch(batch, mesh))
                    window.append((step, metrics))
                    step += 1
                    # The last step is evaluated too (as Detectron2's EvalHook after
                    # training): else a run of 780 steps at eval_every 500 ends with
                    # weights never scored, and `best` (--init-from) ignores them.
                    at_eval = tc.eval_every > 0 and (step % tc.eval_every == 0 or step == tc.steps)
                    at_ckpt = step % tc.checkpoint_every == 0 or step == tc.steps or at_eval
                    at_log = step % tc.log_every == 0
                    signalled = stop.agreed(at_log or at_ckpt)
                    if at_log or at_ckpt or signalled:
                        flush()
                    score = None
                    if at_eval:
                        last_eval = evaluate_during_training(model, state, ds, cfg, mesh, workdir)
                        metrics_out.write({"step": step, **last_eval}, prefix="eval")
                        report.say(_format_eval(step, last_eval))
                        score = stopping.update(step, last_eval)
                    if at_ckpt or signalled or stopping.stop:
                        _save(manager, step, state, batches, cfg, ds, score, stopping)
                        last_ckpt = step
                        report.say(f"checkpoint at step {step}", "detail")
                    if at_eval and metrics_out.enabled:
                        _draw_curves(workdir, report)
                    if signalled:
                        reason = "signal"
                        report.say(f"stopped by {stop.describe()} at step {step}; "
                                   "saved, resume with the same command")  # fmt: skip
                        break
                    if stopping.stop:
                        reason = "early_stop"
                        report.say(stopping.explain())
                        break
        except _NonFinite as e:
            where = (f"step {last_ckpt} in {workdir / runs.CHECKPOINTS}" if last_ckpt is not None
                     else "none yet")  # fmt: skip
            metrics_out.write({"step": e.step + 1, "nonfinite": True, **e.metrics})
            if metrics_out.enabled:
                _draw_curves(workdir, report)
            raise TrainingDiverged(
                f"the loss became non-finite at step {e.step + 1} "
                f"({', '.join(f'{k}={v:.4g}' for k, v in e.metrics.items() if 'loss' in k)}); "
                f"the last good checkpoint is {where} and is kept. Lower train.base_lr or set "
                "train.grad_clip_norm, then resume"
            ) from None
        finally:
            report.end()
        manager.wait_until_finished()
        if metrics_out.enabled:
            _draw_curves(workdir, report, "info")
    return RunResult(step=step, reason=reason, last_checkpoint=last_ckpt,
                     metrics=last_metrics, eval=last_eval)  # fmt: skip


def run(
    workdir: str | os.PathLike[str],
    *,
    recipe: str | None = None,
    sets: Sequence[str] = (),
    data: str | None = None,
    init_from: str | None = None,
    distributed: bool = False,
    data_dir: str | os.PathLike[str] | None = None,
    report: Report | None = None,
) -> RunResult:
    """`mrcli train`: join a multi-host run where there is one (or `distributed`),
    resolve the config (mrcli.runs.resolve_config: the run's own when resuming
    without a recipe; `init_from` sets train.init_from) and train; what the
    dataset decides is taken from it unless set with `sets`."""
    parallel.maybe_initialize_distributed(distributed)
    report = for_process(report, jax.process_index())
    cfg = runs.resolve_config(workdir, recipe, sets, data)
    if init_from:
        cfg = config_lib.override(cfg, {"train.init_from": init_from})
    explicit = frozenset(config_lib.parse_sets(list(sets)))
    return train(cfg, workdir, data_dir=data_dir, report=report, explicit=explicit)
