"""Training runs on disk: the workdir, its checkpoints, and reading a trained model.

    WORKDIR/
      run.json            resolved config, dataset name + fingerprint, category map
      checkpoints/STEP/   orbax items: model (full model state), opt (optimiser
                          state, step, rng), data (iterator state), record (JSON:
                          the run.json fields + step + score)
      metrics.jsonl       one JSON object per line: train metrics every
                          log_every steps, eval results as their own lines
      tb/                 TensorBoard event files (tensorboardX)

`load_trained` is how eval, predict, export and `train --init-from` get a
model: a run's checkpoint (best | last | STEP) or a checkpoint directory
(mrcli.checkpoints: what `mrcli weights import` writes). Records written by
mrcli 0.1 (flat model config) are migrated as they are read
(mrcli.config.from_dict): checkpoints are never rewritten, and a resumed run
rewrites its run.json in the current form.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from mrcli import checkpoints
from mrcli import config as config_lib
from mrcli import model as model_lib
from mrcli import weights as weights_lib
from mrcli.config import Config
from mrcli.errors import UserError
from mrcli.files import write_json_atomic
from mrcli.progress import Report

RUN_RECORD = "run.json"
CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
TENSORBOARD = "tb"
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
        # Where the weights came from matters only before the first checkpoint.
        "train.init_from",
        "train.patience",
        "train.best_metric",
    }
)


def is_run(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a training run's workdir (it holds run.json)."""
    return (Path(path).expanduser() / RUN_RECORD).is_file()


def read_run_config(workdir: str | os.PathLike[str]) -> Config:
    """The config recorded in WORKDIR/run.json (migrated from older releases)."""
    path = Path(workdir).expanduser() / RUN_RECORD
    try:
        return config_lib.from_dict(json.loads(path.read_text())["config"])
    except (json.JSONDecodeError, KeyError) as e:
        raise UserError(f"{path} is damaged ({e}); use a new --workdir") from e


def resolve_config(workdir: str | os.PathLike[str], recipe: str | None, sets: Sequence[str],
                   data: str | None = None) -> Config:  # fmt: skip
    """The config `mrcli train` runs with: the run's own (run.json) when resuming
    without --recipe, else the recipe (or the defaults); then --set, then --data."""
    if recipe is None and is_run(workdir):
        cfg = config_lib.override(read_run_config(workdir), config_lib.parse_sets(list(sets)))
    else:
        cfg = config_lib.resolve(recipe, list(sets))
    if data:
        cfg = config_lib.override(cfg, {"data.dataset": data})
    return cfg


def run_record(cfg: Config, dataset: Any) -> dict[str, Any]:
    """What run.json (and each checkpoint's record) says about the run."""
    return {
        "format": CKPT_FORMAT,
        "config": config_lib.to_dict(cfg),
        "dataset": dataset.name,
        "fingerprint": dataset.fingerprint,
        "categories": dataset.categories,
    }


def has_checkpoints(workdir: Path) -> bool:
    """Whether the run in `workdir` saved any checkpoint."""
    folder = workdir / CHECKPOINTS
    return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


def check_workdir(workdir: Path, cfg: Config, dataset: Any) -> str:
    """Whether this run may use `workdir`, writing nothing: "new" (no run there),
    "resume" (the same run: its config differs at most in RESUMABLE_CHANGES),
    or "restart" (a run with another config or dataset that never saved a
    checkpoint: nothing to lose, so it starts again). A workdir whose run has
    checkpoints and another dataset or config is refused with the fields
    that differ."""
    path = workdir / RUN_RECORD
    if not path.exists():
        return "new"
    try:
        old = json.loads(path.read_text())
        old_cfg = config_lib.from_dict(old["config"])
    except (json.JSONDecodeError, KeyError, UserError) as e:
        raise UserError(f"{path} is damaged ({e}); use a new --workdir") from e
    changed = {
        k: (v, config_lib.diff(cfg, old_cfg).get(k))
        for k, v in config_lib.diff(old_cfg, cfg).items()
        if k not in RESUMABLE_CHANGES
    }
    same_data = old.get("fingerprint") == dataset.fingerprint
    if same_data and not changed:
        return "resume"
    if not has_checkpoints(workdir):
        return "restart"
    if not same_data:
        raise UserError(
            f"{workdir} holds a run on dataset {old.get('dataset')!r} (fingerprint "
            f"{old.get('fingerprint')}); this run uses {dataset.name!r} ({dataset.fingerprint}). "
            "Use a new --workdir for a new dataset"
        )
    detail = "; ".join(f"{k}: {v!r} there, {w!r} now" for k, (v, w) in sorted(changed.items()))
    raise UserError(
        f"{workdir} holds a run with another config ({detail}). Run the same recipe and "
        "--set options to resume, or use a new --workdir"
    )


def start_run(workdir: Path, cfg: Config, dataset: Any, how: str) -> None:
    """Write WORKDIR/run.json as training starts (`how` from check_workdir); a
    restarted run's metrics, from an attempt that never saved, are removed."""
    workdir.mkdir(parents=True, exist_ok=True)
    if how == "restart":
        (workdir / METRICS).unlink(missing_ok=True)
        shutil.rmtree(workdir / TENSORBOARD, ignore_errors=True)
    write_json_atomic(workdir / RUN_RECORD, run_record(cfg, dataset))


# --- checkpoints of a run -------------------------------------------------------------


def open_checkpoints(workdir: Path, keep: int, read_only: bool = False) -> ocp.CheckpointManager:
    """The run's orbax CheckpointManager: the last `keep` plus the best by score."""
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


def pure_tree(state: Any) -> Any:
    """An nnx.State as the nested dict orbax saves (other trees unchanged)."""
    return state.to_pure_dict() if hasattr(state, "to_pure_dict") else state


def save_checkpoint(manager: ocp.CheckpointManager, step: int, *, model_state: Any,
                    opt: dict[str, Any], data_state: dict[str, Any], record: dict[str, Any],
                    score: float | None) -> None:  # fmt: skip
    """Write checkpoint `step`: the full model state, the optimiser's tree
    (step, opt_state, rng), the data iterator's state and the JSON record."""
    args = ocp.args.Composite(
        model=ocp.args.StandardSave(pure_tree(model_state)),
        opt=ocp.args.StandardSave(opt),
        data=ocp.args.JsonSave(data_state),
        record=ocp.args.JsonSave({**record, "step": int(step), "score": score}),
    )
    manager.save(step, args=args, metrics=None if score is None else {"score": float(score)},
                 force=True)  # fmt: skip
    manager.wait_until_finished()


def restore_checkpoint(manager: ocp.CheckpointManager, step: int, *, model_template: Any,
                       opt_template: dict[str, Any], sharding: Any) -> tuple[Any, Any, Any, Any]:  # fmt: skip
    """(model as a pure dict, opt tree, data iterator state, JSON record) of
    checkpoint `step`, placed with `sharding`; the templates give shapes and dtypes."""

    def as_abstract(tree):
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)

    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            model=ocp.args.StandardRestore(as_abstract(pure_tree(model_template))),
            opt=ocp.args.StandardRestore(as_abstract(opt_template)),
            data=ocp.args.JsonRestore(),
            record=ocp.args.JsonRestore(),
        ),
    )
    return restored["model"], restored["opt"], restored["data"], restored["record"]


def _record_args() -> ocp.args.Composite:
    return ocp.args.Composite(record=ocp.args.JsonRestore())


def pick_step(manager: ocp.CheckpointManager, which: str, workdir: Path) -> int:
    """The checkpoint step that `which` names: best (by score; the last where no
    checkpoint has one), last, or a step number."""
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


# --- a trained model ----------------------------------------------------------------------


@dataclass(frozen=True)
class TrainedModel:
    """A model ready for inference: from a run's checkpoint or a checkpoint directory."""

    config: Config
    categories: list[dict[str, Any]] | None
    model: model_lib.Model
    state: Any  # full nnx.State
    origin: str  # what it was read from, for messages
    step: int | None = None


def load_trained(workdir: str | os.PathLike[str] | None = None, checkpoint: str | None = None,
                 weights: str | None = None, report: Report | None = None) -> TrainedModel:  # fmt: skip
    """The model of `workdir` at `checkpoint` (best | last | STEP; default best),
    of a checkpoint directory (`mrcli weights import`) given as `checkpoint`, or
    of `weights`: a catalogue name (downloaded and imported once), a .pth/.pkl
    file or a checkpoint directory (mrcli.weights.resolve)."""
    if weights:
        if workdir or checkpoint:
            raise UserError("name one model: --weights, or --workdir/--checkpoint, not both")
        checkpoint = str(weights_lib.resolve(weights, report=report))
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
    if not is_run(workdir):
        raise UserError(f"{workdir} is not an mrcli training run (no {RUN_RECORD}); check --workdir")
    manager = open_checkpoints(workdir, keep=1, read_only=True)
    try:
        step = pick_step(manager, checkpoint or "best", workdir)
        record = manager.restore(step, args=_record_args())["record"]
        cfg = config_lib.from_dict(record["config"])
        model, abstract = model_lib.abstract(cfg.model)
        # On this process's first device, whatever mesh the run trained on (a
        # template without a sharding makes orbax ask for the saved topology).
        one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one),
                                pure_tree(abstract))  # fmt: skip
        restored = manager.restore(
            step, args=ocp.args.Composite(model=ocp.args.StandardRestore(template))
        )["model"]
    finally:
        manager.close()
    # Fill the abstract state: no random initialisation of a model about to be overwritten.
    state = checkpoints.restore(abstract, restored, origin=f"{workdir} step {step}")
    return TrainedModel(cfg, record["categories"], model, state, f"{workdir} step {step}", step)
