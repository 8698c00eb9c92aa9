"""`mrcli train` end to end on a micro config: exact resume after SIGKILL,
SIGTERM saves and exits 0, workdir checks, non-finite losses, 8 vs 1 devices,
--init-from; and one step of each paper recipe at a reduced image size.

The processes share a JAX compilation cache, so only the first compiles.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from common import MICRO_SETS  # benchmarks/common.py (tests/conftest.py puts it on the path)

from mrcli import config as c
from mrcli.data.prepare import prepare_shapes

# The tiny recipe, smaller still: 64 px images, few RoIs, a narrow mask head
# (benchmarks/common.py), in the main process, with a short schedule.
MICRO = [
    *MICRO_SETS, "data.num_workers=0",
    "train.global_batch=8", "train.warmup_steps=2", "train.decay_steps=5",
    "train.log_every=1", "train.eval_every=0", "eval.batch_size=8",
]  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    prepare_shapes(data_dir=root, num_train=24, num_val=8, size=64, seed=3)
    return root


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("jax-cache")


def _cli(args, data_dir, cache_dir, devices=2, env_extra=None, **popen):
    env = {**os.environ, "MRCLI_DATA": str(data_dir), "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
           "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           **(env_extra or {})}  # fmt: skip
    cmd = [sys.executable, "-m", "mrcli.cli", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)  # fmt: skip


def _train_args(workdir, steps, every):
    sets = [*MICRO, f"train.steps={steps}", f"train.checkpoint_every={every}"]
    return ["train", "--recipe", "tiny", "--data", "shapes", "--workdir", str(workdir),
            *[a for s in sets for a in ("--set", s)]]  # fmt: skip


def _final_params(workdir):
    from mrcli.runs import load_trained

    trained = load_trained(workdir, "last")
    return trained.step, {k: np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(
        trained.state.to_pure_dict())}  # fmt: skip


def _wait(proc, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise_identical(tmp_path, data_dir, cache_dir):
    steps = 8
    ref = tmp_path / "uninterrupted"
    rc, _, err = _wait(_cli(_train_args(ref, steps, 2), data_dir, cache_dir))
    assert rc == 0, err
    # stderr is a pipe, not a terminal: plain progress lines, the last one complete.
    assert re.search(rf"^train {steps}/{steps} loss=\d.*img/s elapsed \d+:\d\d ETA 0:00$", err, re.M), err

    run = tmp_path / "killed"
    proc = _cli(_train_args(run, steps, 2), data_dir, cache_dir)
    deadline = time.time() + 300
    while not (run / "checkpoints" / "2").is_dir():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and saved[-1] < steps, "killed too late to test a resume"

    rc, _, err = _wait(_cli(_train_args(run, steps, 2), data_dir, cache_dir))
    assert rc == 0, err
    assert f"resumed at step {saved[-1]}" in err

    step_a, a = _final_params(ref)
    step_b, b = _final_params(run)
    assert step_a == step_b == steps
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))
    # The metrics of the resumed steps are those of the uninterrupted run.
    lines = lambda p: {r["step"]: r["loss"] for r in map(json.loads, (p / "metrics.jsonl").open())  # noqa: E731
                       if "loss" in r}  # fmt: skip
    assert lines(run)[steps] == lines(ref)[steps]


@pytest.mark.slow
def test_sigterm_saves_and_exits_zero(tmp_path, data_dir, cache_dir):
    run = tmp_path / "term"
    proc = _cli(_train_args(run, 1000, 500), data_dir, cache_dir)
    deadline = time.time() + 300
    while not (run / "metrics.jsonl").is_file():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    rc, _, err = _wait(proc)
    assert rc == 0, err
    assert "stopped by SIGTERM" in err
    saved = [int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(saved) == 1 and 0 < saved[0] < 500


@pytest.mark.slow
def test_ctrl_c_with_data_workers_says_so_without_tracebacks(tmp_path, data_dir, cache_dir):
    """Ctrl-C in a terminal signals the whole process group, data workers
    included: the run saves and says "Ctrl-C"; no worker prints a traceback."""
    run = tmp_path / "int"
    args = _train_args(run, 1000, 500)
    args[args.index("data.num_workers=0")] = "data.num_workers=2"
    proc = _cli(args, data_dir, cache_dir, start_new_session=True)
    deadline = time.time() + 300
    while not (run / "metrics.jsonl").is_file():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    rc, _, err = _wait(proc)
    assert rc == 0, err
    assert "stopped by Ctrl-C at step" in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


def test_workdir_of_another_config_or_dataset_is_refused(tmp_path, data_dir):
    """A run with checkpoints resumes only with its own dataset and config; one
    that never saved a checkpoint may start again with another."""
    from types import SimpleNamespace

    from mrcli.runs import check_workdir, start_run

    cfg = c.resolve("tiny", MICRO)
    cats = [{"id": 1, "contiguous_id": 1, "name": "a"}]
    shapes = SimpleNamespace(name="shapes", fingerprint="f1", categories=cats)
    other = SimpleNamespace(name="other", fingerprint="f2", categories=cats)
    assert check_workdir(tmp_path, cfg, shapes) == "new"
    assert not (tmp_path / "run.json").exists()  # checking writes nothing
    start_run(tmp_path, cfg, shapes, "new")
    bigger = c.override(cfg, {"model.backbone.depth": 50})
    assert check_workdir(tmp_path, bigger, shapes) == "restart"  # no checkpoint yet
    assert check_workdir(tmp_path, cfg, other) == "restart"
    (tmp_path / "checkpoints" / "2").mkdir(parents=True)
    assert check_workdir(tmp_path, c.override(cfg, {"train.steps": 99}), shapes) == "resume"
    with pytest.raises(c.UserError, match="dataset 'shapes'.*new --workdir"):
        check_workdir(tmp_path, cfg, other)
    with pytest.raises(c.UserError, match="model.backbone.depth: 14 there, 50 now"):
        check_workdir(tmp_path, bigger, shapes)


def test_cli_refuses_a_mismatched_class_count(tmp_path, data_dir, cache_dir):
    args = _train_args(tmp_path / "w", 2, 1) + ["--set", "model.num_classes=7"]
    rc, _, err = _wait(_cli(args, data_dir, cache_dir))
    assert rc == 2 and "model.num_classes=4" in err and "Traceback" not in err


def test_nonfinite_loss_stops_and_keeps_the_checkpoint(tmp_path, data_dir, monkeypatch):
    """A loss that turns NaN at step 3: the run stops naming step 3 and checkpoint 2."""
    from mrcli import train as train_lib

    real = train_lib.model_loss

    def poisoned(model):
        loss_fn = real(model)

        def fn(params, constants, batch, rng):
            loss, metrics = loss_fn(params, constants, batch, rng)
            # The iterator below adds a "poison" factor per batch: NaN at step 3
            # (the batches the step is compiled for before step 1 have none).
            poison = batch["poison"][0] if "poison" in batch else 1.0
            return loss * poison, metrics

        return fn

    class Poison:
        def __init__(self, it):
            self.it, self.step = it, 0

        def __next__(self):
            b = next(self.it)
            self.step += 1
            return {**b, "poison": np.full(b["image"].shape[:1], np.nan if self.step == 3 else 1.0, np.float32)}

        def get_state(self):
            return self.it.get_state()

        def set_state(self, s):
            self.it.set_state(s)

        def close(self):
            self.it.close()

    from mrcli.data import pipeline

    real_batches = pipeline.train_batches
    monkeypatch.setattr(train_lib, "model_loss", poisoned)
    monkeypatch.setattr(pipeline, "train_batches", lambda *a, **k: Poison(real_batches(*a, **k)))
    cfg = c.resolve("tiny", [*MICRO, "train.steps=6", "train.checkpoint_every=2",
                             ])  # fmt: skip
    with pytest.raises(train_lib.TrainingDiverged, match="non-finite at step 3.*step 2"):
        train_lib.train(cfg, tmp_path / "nan", data_dir=data_dir)
    assert (tmp_path / "nan" / "checkpoints" / "2").is_dir()
    assert not (tmp_path / "nan" / "checkpoints" / "4").exists()


def test_model_on_eight_devices_matches_one(data_dir):
    """The same global batch on 8 devices and on 1 gives the same parameters."""
    from mrcli import model as model_lib
    from mrcli import parallel
    from mrcli import train as train_lib
    from mrcli.data import pipeline
    from mrcli.data.store import find_dataset

    cfg = c.resolve("tiny", MICRO)
    ds = find_dataset("shapes", data_dir)
    batches = pipeline.train_batches(cfg, ds, num_steps=2, num_workers=0)
    data = list(batches)
    model, state = model_lib.create(cfg.model, seed=0)
    # Host copies: the step donates its state, so each run gets its own arrays.
    params, constants = jax.tree.map(np.asarray, model_lib.split_params(state))
    tx = train_lib.make_optimizer(cfg.train)

    def run(devices):
        mesh = parallel.make_mesh(devices)
        step = train_lib.make_train_step(train_lib.model_loss(model), tx, mesh)
        st = jax.device_put(train_lib.init_state(params, tx, 0, constants),
                            parallel.replicated(mesh))  # fmt: skip
        for batch in data:
            st, metrics = step(st, parallel.shard_batch(batch, mesh))
        return jax.device_get(st.params), jax.device_get(st.constants), float(metrics["loss"])

    p8, c8, loss8 = run(jax.devices())
    p1, c1, loss1 = run(jax.devices()[:1])
    assert loss8 == pytest.approx(loss1, rel=1e-4)
    flat8, flat1 = jax.tree.leaves(p8), jax.tree.leaves(p1)
    assert len(flat8) == len(flat1) > 10
    for a, b in zip(flat8, flat1):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    # Frozen weights and constants are inputs of the step, never updated.
    for a, b in zip(jax.tree.leaves(c8), jax.tree.leaves(constants)):
        np.testing.assert_array_equal(a, b)


def test_init_from_a_run_or_a_checkpoint_directory(tmp_path, data_dir, cache_dir):
    """--init-from takes another run's workdir (its best checkpoint) or a checkpoint
    directory; arrays of another shape (the class-specific layers) are skipped."""
    from mrcli import checkpoints
    from mrcli.progress import Report
    from mrcli.runs import load_trained
    from mrcli.train import init_model

    class Messages(Report, list):
        def say(self, text, kind="info"):
            self.append(text)

    source = tmp_path / "source"
    rc, _, err = _wait(_cli(_train_args(source, 2, 2), data_dir, cache_dir))
    assert rc == 0, err
    trained = load_trained(source, "best")
    want = checkpoints.flatten(trained.state.to_pure_dict())

    # Fine-tuning the run's model in a new workdir, through the command a user runs,
    # on one device: a checkpoint saved on 2 devices restores on any number.
    rc, _, err = _wait(_cli(_train_args(tmp_path / "finetune", 1, 1) + ["--init-from", str(source)],
                            data_dir, cache_dir, devices=1))  # fmt: skip
    assert rc == 0, err
    assert f"--init-from: {len(want)} arrays from {source} step 2" in " ".join(err.split())

    # The same weights as a checkpoint directory, into a model with 6 classes.
    ckpt_dir = tmp_path / "ckpt"
    checkpoints.save(ckpt_dir, trained.state, trained.config, trained.categories)
    messages = Messages()
    cfg = c.override(trained.config, {"model.num_classes": 6})
    _, state = init_model(cfg, str(ckpt_dir), messages)
    got = checkpoints.flatten(state.to_pure_dict())
    skipped = {k for k in want if np.shape(want[k]) != np.shape(got[k])}
    assert skipped == {("box_head", "cls", "bias"), ("box_head", "cls", "kernel"),
                       ("box_head", "deltas", "bias"), ("box_head", "deltas", "kernel"),
                       ("mask_head", "predictor", "bias"), ("mask_head", "predictor", "kernel")}
    assert "of another shape not loaded" in messages[0]
    for k in want.keys() - skipped:
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=str(k))
    # A fresh model differs: the loaded arrays did come from the checkpoint.
    _, fresh = init_model(cfg, None, messages)
    fresh = checkpoints.flatten(fresh.to_pure_dict())
    assert any(not np.array_equal(fresh[k], want[k]) for k in want.keys() - skipped)


# The paper schedules at a reduced image size: the recipe's own model (R50/R101-FPN,
# frozen BatchNorm, 512 RoIs and 128 mask slots per image) and optimiser, one image
# of 128 px per step on one CPU device, on the shapes data (4 classes).
REDUCED = ["data.image_size=128", "data.max_size=128", "data.train_scales=96,128",
           "data.num_workers=0", "data.max_instances=8", "model.num_classes=4",
           "train.global_batch=1", "train.steps=1", "train.eval_every=0", "train.log_every=1"]  # fmt: skip


@pytest.fixture(scope="module")
def msra_host(tmp_path_factory):
    """$MRCLI_WEIGHTS_MIRROR (a folder) with MSRA ImageNet files of the paper
    recipes' backbones (mrcli's own initial weights in Caffe2 names), and an
    empty weights cache."""
    from weights_helpers import model_config, msra_file

    from mrcli.config import DETECTRON2_NUMERICS

    root = tmp_path_factory.mktemp("weights")
    profile = {k.removeprefix("model.").replace(".", "__"): v for k, v in DETECTRON2_NUMERICS.items()}
    for depth in (50, 101):
        msra_file(root / f"R-{depth}.pkl", model_config(backbone__depth=depth, **profile))
    return {"MRCLI_WEIGHTS_MIRROR": str(root), "MRCLI_WEIGHTS": str(root / "cache")}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["r50_fpn_1x", "r50_fpn_3x", "r101_fpn"])
def test_paper_recipes_start(tmp_path, data_dir, cache_dir, msra_host, recipe):
    """One compiled train step of each paper recipe on CPU, from the ImageNet
    weights it names (fetched through the mirror): finite losses, a checkpoint."""
    run = tmp_path / recipe
    args = ["train", "--recipe", recipe, "--data", "shapes", "--workdir", str(run),
            *[a for s in REDUCED for a in ("--set", s)], "--json"]  # fmt: skip
    rc, out, err = _wait(_cli(args, data_dir, cache_dir, devices=1, env_extra=msra_host))
    assert rc == 0, err
    depth = 101 if recipe == "r101_fpn" else 50
    n = " ".join(err.split())
    assert "--init-from: " in n and f"d2-msra-r{depth}-imagenet/checkpoint" in n
    result = json.loads(out)
    assert result["step"] == 1 and result["reason"] == "done", result
    metrics = result["metrics"]
    for term in ("loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask"):
        assert np.isfinite(metrics[term]) and metrics[term] > 0, (term, metrics)
    record = json.loads((run / "run.json").read_text())
    assert record["config"]["model"]["backbone"]["depth"] == depth
    assert record["config"]["model"]["roi_heads"]["batch_per_image"] == 512
    assert (run / "checkpoints" / "1").is_dir()


def test_frozen_random_weights_are_refused_before_anything_runs(tmp_path, data_dir, cache_dir):
    """A paper recipe without its weights (frozen stem and res2, frozen BatchNorm)
    would train random weights that never learn: refused in one line, exit 2."""
    run = tmp_path / "r50"
    args = ["train", "--recipe", "r50_fpn_1x", "--data", "shapes", "--workdir", str(run),
            *[a for s in REDUCED for a in ("--set", s)], "--set", "train.init_from="]  # fmt: skip
    rc, _, err = _wait(_cli(args, data_dir, cache_dir, devices=1))
    assert rc == 2 and "Traceback" not in err
    line = " ".join(err.split())
    assert "random weights that stay frozen" in line and "--init-from NAME" in line
    assert "model.backbone.norm=group_norm" in line
    assert not run.exists()


def test_init_from_weights_of_another_profile_is_refused(tmp_path, data_dir):
    """MSRA weights (BGR, stride in the 1x1) into a torchvision-profile model."""
    from weights_helpers import model_config, msra_file

    from mrcli import train as train_lib
    from mrcli.progress import Report
    from mrcli.weights import import_weights

    msra_file(tmp_path / "R-14.pkl", model_config(backbone__depth=14, backbone__width=8,
                                                  backbone__stride_in_1x1=True))  # fmt: skip
    import_weights("detectron2", tmp_path / "R-14.pkl", tmp_path / "ckpt")
    cfg = c.resolve("tiny", [*MICRO])
    with pytest.raises(c.UserError, match="--init-from .*made for .*stride_in_1x1=True.*--set "
                                          "model.backbone.stride_in_1x1=true"):
        train_lib.init_model(c.override(cfg, {"model.backbone.norm": "frozen_bn"}), str(tmp_path / "ckpt"),
                             Report())  # fmt: skip

