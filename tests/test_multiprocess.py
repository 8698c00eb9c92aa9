"""Several real JAX processes on 127.0.0.1 (jax.distributed, gloo CPU
collectives): training, resume, preemption, eval and predict give what one
process gives.

Every run is a subprocess, as on a cluster; they share one JAX compilation
cache. The micro config of tests/test_train.py trains 8 steps with a
checkpoint every 2.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_train import MICRO, _final_params

from mrcli.data.prepare import prepare_shapes
from mrcli.launch import child_env, free_port

pytestmark = pytest.mark.slow

STEPS, EVERY = 8, 2


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    prepare_shapes(data_dir=data, num_train=24, num_val=8, size=64, seed=3)
    return {**os.environ, "MRCLI_DATA": str(data), "JAX_PLATFORMS": "cpu",
            "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax-cache"))}  # fmt: skip


def _train(workdir, steps=STEPS, every=EVERY):
    sets = [*MICRO, f"train.steps={steps}", f"train.checkpoint_every={every}"]
    return ["train", "--recipe", "tiny", "--data", "shapes", "--workdir", str(workdir),
            *[a for s in sets for a in ("--set", s)]]  # fmt: skip


def _one(args, env, devices=8):
    """`mrcli ARGS` in one process of `devices` CPU devices."""
    env = {**env, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    return subprocess.Popen([sys.executable, "-m", "mrcli.cli", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def _launch(args, env, processes=2, devices=4):
    """`mrcli launch -n 2 -d 4 -- ARGS`: what a user runs (and how a cluster's hosts join)."""
    cmd = [sys.executable, "-m", "mrcli.cli", "launch", "--processes", str(processes),
           "--devices-per-process", str(devices), "--", *args]  # fmt: skip
    return subprocess.Popen(cmd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _done(proc, timeout=600):
    """All it printed (mrcli launch prints its processes' lines on its stdout and stderr)."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out + err
    return out + err


def _losses(workdir):
    return {r["step"]: r["loss"] for r in map(json.loads, (Path(workdir) / "metrics.jsonl").open())
            if "loss" in r}  # fmt: skip


def _checkpoints(workdir):
    return sorted(int(p.name) for p in (Path(workdir) / "checkpoints").iterdir() if p.name.isdigit())


def _assert_close(a, b, what):
    assert a[0] == b[0] and a[1].keys() == b[1].keys(), what
    for k in a[1]:
        np.testing.assert_allclose(a[1][k], b[1][k], rtol=2e-4, atol=2e-6, err_msg=f"{what}: {k}")


@pytest.fixture(scope="module")
def runs(env, tmp_path_factory):
    """The uninterrupted runs: 1 process x 8 devices and 2 processes x 4."""
    root = tmp_path_factory.mktemp("runs")
    one, two = root / "one", root / "two"
    _done(_one(_train(one), env))
    return {"one": one, "two": two, "two_log": _done(_launch(_train(two), env))}


def test_two_processes_train_as_one(runs):
    two = runs["two"]
    # Same batches, same updates: the parameters and the loss curve of 8 devices
    # in one process, up to the order of the all-reduce's float sums.
    _assert_close(_final_params(runs["one"]), _final_params(two), "2 x 4 vs 1 x 8")
    one_loss, two_loss = _losses(runs["one"]), _losses(two)
    assert sorted(two_loss) == list(range(1, STEPS + 1))  # one line a step: process 0 only writes
    np.testing.assert_allclose([two_loss[s] for s in sorted(two_loss)],
                               [one_loss[s] for s in sorted(one_loss)], rtol=1e-5)  # fmt: skip
    assert _checkpoints(two) == [4, 6, 8]  # written once, by both (orbax), the last 3 kept
    err = runs["two_log"]
    assert "[0] training on 8 device(s), 2 process(es)" in err
    # Progress and messages from process 0 only; process 1 says how it ended.
    assert "[0] train 8/8 loss=" in err and "[1] train" not in err and "[1] training on" not in err


def test_sigkill_one_process_then_restart_resumes_exactly(runs, env, tmp_path):
    run = tmp_path / "killed"
    launcher = _launch(_train(run), env)
    deadline = time.time() + 300
    while not (run / "checkpoints" / str(EVERY)).is_dir():
        assert launcher.poll() is None, launcher.communicate()
        assert time.time() < deadline
        time.sleep(0.02)
    children = _children(launcher.pid)
    assert len(children) == 2, children
    os.kill(children[-1], signal.SIGKILL)  # one host lost
    out, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 137, out + err  # the worst code: the killed one's
    saved = _checkpoints(run)
    assert saved and saved[-1] < STEPS, "killed too late to test a resume"
    err = _done(_launch(_train(run), env))
    assert f"resumed at step {saved[-1]}" in err
    a, b = _final_params(runs["two"]), _final_params(run)
    assert a[0] == b[0] == STEPS
    for k in a[1]:  # bitwise: the same processes and devices, the same sums
        np.testing.assert_array_equal(a[1][k], b[1][k], err_msg=str(k))
    assert _losses(run)[STEPS] == _losses(runs["two"])[STEPS]


def test_sigterm_to_one_process_stops_both_at_the_same_step(env, tmp_path):
    run = tmp_path / "term"
    port = free_port()
    procs = []
    for i in range(2):
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "mrcli.cli", *_train(run, steps=1000, every=500)],
            env=child_env(env, i, 2, port, devices_per_process=4), text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        ))  # fmt: skip
    deadline = time.time() + 300
    while not (run / "metrics.jsonl").is_file():
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        assert time.time() < deadline
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)  # a preemption notice to one host
    errs = [_done(p, timeout=300) for p in procs]
    saved = _checkpoints(run)
    assert len(saved) == 1 and 0 < saved[0] < 500, saved
    assert f"stopped by SIGTERM on process 1 at step {saved[0]}" in errs[0], errs[0]
    assert f"signal: step {saved[0]}" in errs[1], errs[1]  # process 1 stopped at the same step


@pytest.mark.parametrize("source, resume_on", [("two", "one"), ("one", "two")])
def test_a_checkpoint_resumes_on_another_process_count(runs, env, tmp_path, source, resume_on):
    """A run of 2 processes resumed in 1, and the reverse: from its step-4
    checkpoint to the end, it reaches the uninterrupted run's parameters."""
    run = tmp_path / f"{source}-then-{resume_on}"
    shutil.copytree(runs[source], run)
    for step in (6, 8):  # as if stopped after the checkpoint at step 4
        shutil.rmtree(run / "checkpoints" / str(step))
    err = _done(_one(_train(run), env) if resume_on == "one" else _launch(_train(run), env))
    assert "resumed at step 4" in err
    _assert_close(_final_params(runs[resume_on]), _final_params(run), f"{source} -> {resume_on}")


def _detections(path):
    """detections.json as a set, floats rounded (1 and 2 processes run other batch shapes)."""
    rows = json.loads(Path(path).read_text())
    return {(d["image_id"], d["category_id"], round(d["score"], 3), *(round(v, 1) for v in d["bbox"]))
            for d in rows}  # fmt: skip


def test_eval_and_predict_on_two_processes_equal_one(runs, env, tmp_path):
    work = runs["two"]
    keep_all = ["--set", "model.inference.score_threshold=0.0"]  # an untrained model: keep every detection
    common = ["eval", "--workdir", str(work), "--no-plots", *keep_all]
    _done(_one([*common, "--out", str(tmp_path / "eval1")], env))
    out = _done(_launch([*common, "--out", str(tmp_path / "eval2")], env))
    one, two = (json.loads((tmp_path / d / "eval.json").read_text()) for d in ("eval1", "eval2"))
    numbers = [k for k in one if k.startswith(("bbox_", "segm_"))]
    assert len(numbers) == 24 and {k: one[k] for k in numbers} == {k: two[k] for k in numbers}
    assert one["num_images"] == two["num_images"] == 8
    dets = _detections(tmp_path / "eval1" / "detections.json")
    assert len({d[0] for d in dets}) == 8  # every image has detections
    assert _detections(tmp_path / "eval2" / "detections.json") == dets
    assert not list((tmp_path / "eval2").glob("*.part-*"))  # the parts were merged and removed
    assert "[0] COCO eval of" in out

    images = tmp_path / "images" / "sub"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):  # odd: the processes get 3 and 2
        Image.fromarray(rng.integers(0, 255, (64, 48 + 8 * i, 3), np.uint8)).save(images / f"{i}.png")
    (images / "broken.png").write_bytes(b"not a png")
    args = ["predict", str(tmp_path / "images"), "--workdir", str(work), "--score", "0.0"]
    _done(_one([*args, "--out", str(tmp_path / "pred1")], env))
    err = _done(_launch([*args, "--out", str(tmp_path / "pred2")], env))
    assert "[0] predicted 5 of 6 image(s)" in err
    p1, p2 = tmp_path / "pred1", tmp_path / "pred2"
    assert _detections(p1 / "detections.json") == _detections(p2 / "detections.json")
    assert sorted(json.loads((p1 / "images.json").read_text()), key=lambda r: r["id"]) == sorted(
        json.loads((p2 / "images.json").read_text()), key=lambda r: r["id"])  # fmt: skip
    maps = sorted(p.relative_to(p1) for p in (p1 / "masks").rglob("*.png"))
    assert len(maps) == 5 and maps == sorted(p.relative_to(p2) for p in (p2 / "masks").rglob("*.png"))
    for rel in maps:
        np.testing.assert_array_equal(np.asarray(Image.open(p1 / rel)), np.asarray(Image.open(p2 / rel)),
                                      err_msg=str(rel))  # fmt: skip
    assert not list(p2.glob("*.part-*"))


def _children(pid):
    """The pids whose parent is `pid` (Linux /proc), in start order."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append((int(fields[19]), int(stat.parent.name)))  # (start time, pid)
    return [p for _, p in sorted(kids)]


def test_processes_that_disagree_are_named_before_step_one(env, tmp_path):
    run = tmp_path / "disagree"
    port = free_port()
    procs = []
    for i, seed in enumerate((0, 1)):  # process 1 was started with another --set
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "mrcli.cli", *_train(run), "--set", f"train.seed={seed}"],
            env=child_env(env, i, 2, port, devices_per_process=4), text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        ))  # fmt: skip
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 2, out + err
        assert "the config of process 1 differ" in err and "Traceback" not in err, err
    assert not (run / "run.json").exists()  # refused before anything was written

    # 3 processes cannot share a global batch of 8.
    launcher = _launch(_train(tmp_path / "three"), env, processes=3, devices=1)
    out, err = launcher.communicate(timeout=300)
    assert launcher.returncode == 2, out + err
    # The processes' errors come out on the launcher's stderr, as they printed them.
    assert "train.global_batch=8 does not split evenly over the 3 processes" in err, out + err
    assert "--set train.global_batch=6" in err
