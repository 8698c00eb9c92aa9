"""Training runs on disk: the workdir, its checkpoints, and reading a trained model.

    WORKDIR/
      run.json            resolved config, dataset name + fingerprint, category map
      checkpoints/STEP/   orbax items: model (full model state), opt (optimiser
                          state, step, rng), data (iterator state), record (JSON:
                          the run.json fields + step + score)
      metrics.jsonl       one JSON object per line: train metrics every
                          log_every steps (with elapsed_s, the run's wall time
                          so far), eval results as their own lines
      tb/                 TensorBoard event files (tensorboardX)
      plots/curves.png    the curves of metrics.jsonl (+ curves.json), drawn
                          at each periodic eval and at the end (plot_curves)

`read_curves` reads metrics.jsonl back as series (a resumed run's lines
from the attempt it replaced left out); `summarize` and `compare` describe
runs side by side (`mrcli compare`).

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
import math
import os
import shutil
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

import numpy as np

from mrcli import checkpoints
from mrcli import config as config_lib
from mrcli import model as model_lib
from mrcli import plots
from mrcli import weights as weights_lib
from mrcli.config import Config
from mrcli.errors import UserError
from mrcli.files import write_json_atomic
from mrcli.progress import Report

RUN_RECORD = "run.json"
CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
TENSORBOARD = "tb"
PLOTS = "plots"
CURVES = "curves.png"
# `mrcli eval`'s default output folder in a run, and its record of what it
# evaluated (mrcli.evaluate): `summarize` reads it for runs without a periodic eval.
EVAL_DIR = "eval"
EVAL_RECORD = "eval.json"
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
        "eval.max_dets",
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


# What `--set` may change on eval, predict and export: how a trained model is
# fed and how its detections are kept, never what it learned (its layers,
# classes, anchors). Detectron2's INPUT.MIN_SIZE_TEST / TEST.DETECTIONS_PER_IMAGE
# and the RPN's test-time top-k are the same kind of field.
INFERENCE_SETS = ("data.", "eval.", "model.inference.", "model.rpn.pre_nms_topk.test",
                  "model.rpn.post_nms_topk.test")  # fmt: skip


def with_sets(trained: TrainedModel, sets: Sequence[str]) -> TrainedModel:
    """`trained` with `--set key=value` pairs applied to its inference fields
    (INFERENCE_SETS); a field the model was trained with is refused, named."""
    if not sets:
        return trained
    updates = config_lib.parse_sets(list(sets))
    fixed = [k for k in updates if not k.startswith(INFERENCE_SETS)]
    if fixed:
        raise UserError(
            f"--set {fixed[0]}: a trained model's {fixed[0].rsplit('.', 1)[0]} fields are what it "
            "was trained with; here --set changes data.*, eval.*, model.inference.* and "
            "model.rpn.*_nms_topk.test (train again to change the rest)"
        )
    cfg = config_lib.override(trained.config, updates)
    model_lib.check_config(cfg.model)
    return dataclasses.replace(trained, config=cfg, model=dataclasses.replace(trained.model, cfg=cfg.model))


# --- the run's curves, and runs side by side ----------------------------------------------


@dataclass(frozen=True)
class Curves:
    """metrics.jsonl as series: `train` and `eval` each map "step" and every
    number logged to a list, one entry per line (NaN where a line lacks it)."""

    train: dict[str, list[float]] = field(default_factory=dict)
    eval: dict[str, list[float]] = field(default_factory=dict)


def _series(records: list[dict[str, Any]]) -> dict[str, list[float]]:
    keys = list(dict.fromkeys(k for r in records for k, v in r.items()
                              if isinstance(v, (int, float)) and not isinstance(v, bool)))  # fmt: skip
    return {k: [float(r[k]) if isinstance(r.get(k), (int, float)) else math.nan for r in records] for k in keys}


def read_curves(workdir: str | os.PathLike[str]) -> Curves:
    """WORKDIR/metrics.jsonl as series. A resumed run logs again from its
    checkpoint, so where a train line's step is not past the previous one,
    the lines of the replaced attempt from that step on are dropped; a line
    cut short by a kill and the non-finite line that ends a diverged run are
    left out."""
    path = Path(workdir).expanduser() / METRICS
    kept: list[dict[str, Any]] = []
    last = -1
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict) or "step" not in record or record.get("nonfinite"):
            continue
        step = int(record["step"])
        if "loss" in record:
            if step <= last:
                kept = [r for r in kept if int(r["step"]) < step]
            last = step
        kept.append(record)
    train = [r for r in kept if "loss" in r]
    evals = [r for r in kept if "loss" not in r and any(k.endswith("_AP") for k in r)]
    return Curves(_series(train), _series(evals))


def elapsed_at(workdir: str | os.PathLike[str], step: int) -> float:
    """The run's wall time (elapsed_s) at its last train line at or before
    `step`: where a resumed run's clock starts. 0 without one."""
    train = read_curves(workdir).train
    times = [t for s, t in zip(train.get("step", []), train.get("elapsed_s", [])) if s <= step and t == t]
    return times[-1] if times else 0.0


def plot_curves(workdir: str | os.PathLike[str]) -> Path:
    """Draw WORKDIR/plots/curves.png (+ .json) from metrics.jsonl: every loss
    term, the LR, images/s and the periodic eval's AP against the step."""
    workdir = Path(workdir).expanduser()
    curves = read_curves(workdir)
    steps = curves.train.get("step", [])
    title = f"{workdir.name}: training curves"
    if is_run(workdir):
        record = json.loads((workdir / RUN_RECORD).read_text())
        planned = record.get("config", {}).get("train", {}).get("steps")
        title += f" on {record.get('dataset')}, step {int(steps[-1]) if steps else 0} of {planned}"
    return plots.training_curves(workdir / PLOTS / CURVES, train=curves.train, evals=curves.eval, title=title)


def closest_recipe(cfg: Config) -> tuple[str, dict[str, Any]]:
    """The recipe `cfg` differs least from (runs do not record which recipe
    they came from), and the fields that differ from it (data.dataset, which
    --data sets, not counted): ("tiny", {}) for an unchanged recipe,
    ("defaults", {...}) where no recipe is closer than the defaults."""
    best: tuple[str, dict[str, Any]] | None = None
    candidates = [("defaults", Config())]
    candidates += [(n, config_lib.load_recipe(n).config) for n in config_lib.recipe_names()]
    for name, base in candidates:
        changed = {k: v for k, v in config_lib.diff(cfg, base).items() if k != "data.dataset"}
        if best is None or len(changed) < len(best[1]):
            best = (name, changed)
    assert best is not None
    return best


@dataclass(frozen=True)
class RunSummary:
    """What `mrcli compare` shows of a run."""

    workdir: Path
    recipe: str  # the closest recipe (closest_recipe)
    changed: dict[str, Any]  # config fields that differ from it
    dataset: str
    step: int  # the last step logged
    planned_steps: int  # train.steps
    # "bbox_AP" / "segm_AP" -> (the best value, its step): the periodic eval's,
    # or else `mrcli eval`'s (WORKDIR/eval/eval.json, step None if unknown).
    best: dict[str, tuple[float, int | None]]
    best_from: str  # "periodic eval", "mrcli eval" or "" (no eval)
    images_per_s: float | None  # median over the logged lines
    wall_s: float | None  # training wall time (elapsed_s of the last line; None for older runs)
    curves: Curves = field(repr=False, default_factory=Curves)

    def to_json(self) -> dict[str, Any]:
        return {
            "workdir": str(self.workdir), "recipe": self.recipe, "changed": self.changed,
            "dataset": self.dataset, "step": self.step, "planned_steps": self.planned_steps,
            "best": {k: {"value": v, "step": s} for k, (v, s) in self.best.items()},
            "best_from": self.best_from, "images_per_s": self.images_per_s, "wall_s": self.wall_s,
        }  # fmt: skip


def summarize(workdir: str | os.PathLike[str]) -> RunSummary:
    """A run's recipe, dataset, progress, best AP (and at which step), speed
    and wall time, from run.json, metrics.jsonl and WORKDIR/eval."""
    workdir = Path(workdir).expanduser()
    if not is_run(workdir):
        raise UserError(f"{workdir} is not an mrcli training run (no {RUN_RECORD}); name run directories "
                        "(mrcli train --workdir)")  # fmt: skip
    record = json.loads((workdir / RUN_RECORD).read_text())
    cfg = read_run_config(workdir)
    recipe, changed = closest_recipe(cfg)
    curves = read_curves(workdir)
    steps = curves.train.get("step", [])
    best: dict[str, tuple[float, int | None]] = {}
    best_from = ""
    evals = curves.eval
    for key in ("bbox_AP", "segm_AP"):
        values = [(v, int(s)) for s, v in zip(evals.get("step", []), evals.get(key, [])) if v == v]
        if values:
            best[key] = max(values, key=lambda x: (x[0], -x[1]))
            best_from = "periodic eval"
    eval_record = workdir / EVAL_DIR / EVAL_RECORD
    if not best and eval_record.is_file():
        numbers = json.loads(eval_record.read_text())
        for key in ("bbox_AP", "segm_AP"):
            if key in numbers:
                best[key] = (float(numbers[key]), numbers.get("step"))
        if best:
            best_from = "mrcli eval"
            curves = Curves(curves.train, {"step": [numbers.get("step") or (steps[-1] if steps else 0)],
                                           **{k: [v] for k, (v, _) in best.items()}})  # fmt: skip
    speeds = [v for v in curves.train.get("images_per_s", []) if v == v]
    times = [v for v in curves.train.get("elapsed_s", []) if v == v]
    return RunSummary(
        workdir=workdir, recipe=recipe, changed=changed, dataset=str(record.get("dataset")),
        step=int(steps[-1]) if steps else 0, planned_steps=cfg.train.steps, best=best, best_from=best_from,
        images_per_s=float(np.median(speeds)) if speeds else None, wall_s=times[-1] if times else None,
        curves=curves,
    )  # fmt: skip


@dataclass(frozen=True)
class Comparison:
    runs: list[RunSummary]
    plot: Path  # their curves overlaid (+ .json beside it)


def compare(workdirs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> Comparison:
    """`mrcli compare`: each run summarized, and their curves overlaid in
    OUT/compare.png (smoothed loss, box AP, mask AP against the step)."""
    if not workdirs:
        raise UserError("name at least one run directory: mrcli compare RUN [RUN ...]")
    summaries = [summarize(w) for w in workdirs]
    labels = [s.workdir.name for s in summaries]
    if len(set(labels)) < len(labels):
        labels = [str(s.workdir) for s in summaries]
    runs = {label: {"train": s.curves.train, "eval": s.curves.eval} for label, s in zip(labels, summaries)}
    plot = plots.compare_curves(Path(out) / "compare.png", runs,
                                title=f"{len(summaries)} run(s): {', '.join(labels)}")  # fmt: skip
    return Comparison(summaries, plot)
