"""Processes and memory: data workers end with their parent however it ends,
no shared memory is left behind, and a step that cannot fit is refused before
it runs (real `mrcli` processes)."""

import signal
import time
from pathlib import Path

import pytest
from test_train import _cli, _train_args, _wait

from mrcli.data.prepare import prepare_shapes

WORKERS = ["--set", "data.num_workers=2"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    prepare_shapes(data_dir=root, num_train=24, num_val=8, size=64, seed=3)
    return root


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("jax-cache")


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every live process (Linux /proc)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
            out[int(entry.name)] = (int(fields[1]), fields[0])
    return out


def _descendants(pid: int) -> set[int]:
    procs, found, todo = _processes(), set(), [pid]
    while todo:
        parent = todo.pop()
        children = [p for p, (pp, _) in procs.items() if pp == parent]
        found.update(children)
        todo.extend(children)
    return found


def _alive(pids: set[int]) -> set[int]:
    """The pids that still run (zombies waiting for a reaper hold nothing)."""
    procs = _processes()
    return {p for p in pids if p in procs and procs[p][1] != "Z"}


def _until_first_checkpoint(proc, run: Path) -> None:
    deadline = time.time() + 300
    while not (run / "checkpoints" / "1").is_dir():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "no checkpoint in 300 s"
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("ending", ["sigkill", "timeout"])
def test_workers_end_with_their_parent_and_the_capture_closes(tmp_path, data_dir, cache_dir, ending):
    """Killed after its first checkpoint (SIGKILL; or SIGTERM then SIGKILL, as
    `timeout -k` does): within 10 s no process of it is left, and a caller
    reading its captured output sees the end."""
    run = tmp_path / "run"
    proc = _cli(_train_args(run, 400, 1) + WORKERS, data_dir, cache_dir)
    _until_first_checkpoint(proc, run)
    time.sleep(1.0)  # the workers run ahead of the loop
    children = _descendants(proc.pid)
    assert len(children) >= 2, "the data workers should be running"
    if ending == "timeout":
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    start = time.time()
    proc.communicate(timeout=10)  # EOF on stdout and stderr: nothing holds them
    while _alive(children) and time.time() - start < 10:
        time.sleep(0.1)
    assert not _alive(children), f"left running: {_alive(children)}"


@pytest.mark.slow
def test_train_and_eval_with_workers_leave_no_shared_memory(tmp_path, data_dir, cache_dir):
    run = tmp_path / "run"
    rc, _, err = _wait(_cli(_train_args(run, 2, 2) + WORKERS, data_dir, cache_dir))
    assert rc == 0, err
    assert "resource_tracker" not in err and "leaked" not in err, err
    rc, _, err = _wait(_cli(["eval", "--workdir", str(run), *WORKERS], data_dir, cache_dir))
    assert rc == 0, err
    assert "resource_tracker" not in err and "leaked" not in err, err


def test_a_step_beyond_this_machine_is_refused_before_it_runs(tmp_path, data_dir, cache_dir):
    """The tiny model at 4096 px and 24 images a step: XLA's memory analysis of
    the compiled step says it cannot fit, in one line naming what to lower,
    with exit 2, before anything is written."""
    run = tmp_path / "huge"
    args = _train_args(run, 2, 1) + ["--set", "data.image_size=4096", "--set", "data.max_size=4096",
                                       "--set", "train.global_batch=24"]  # fmt: skip
    start = time.time()
    rc, _, err = _wait(_cli(args, data_dir, cache_dir))
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2, err[-3000:]
    assert len(lines) == 1 and "Traceback" not in err
    assert "the train step at 4096x4096, batch 24 needs" in lines[0]
    assert "host RAM available" in lines[0] and "Lower train.global_batch (24)" in lines[0]
    assert time.time() - start < 180
    assert not run.exists() or not any(run.iterdir()), list(run.iterdir())


def test_train_says_what_its_step_needs(tmp_path, data_dir, cache_dir):
    rc, _, err = _wait(_cli(_train_args(tmp_path / "run", 1, 1), data_dir, cache_dir))
    assert rc == 0, err
    line = next(ln for ln in err.splitlines() if "compiled the train step for 64x64" in ln)
    assert "per device x 2 devices, of" in line and "GB host RAM available" in line


def test_memory_need_counts_donated_buffers_once():
    import jax
    import jax.numpy as jnp

    from mrcli import parallel

    mesh = parallel.make_mesh(jax.devices()[:2])
    rep = parallel.replicated(mesh)
    x = jax.ShapeDtypeStruct((1024, 1024), jnp.float32, sharding=rep)  # 4 MB
    step = jax.jit(lambda a: a * 2.0, in_shardings=rep, out_shardings=rep, donate_argnums=0)
    need = parallel.memory_need(step.lower(x).compile(), mesh)
    assert need.arguments == 4 * 1024 * 1024
    assert 4 * 1024 * 1024 <= need.per_device < 2 * 4 * 1024 * 1024  # the output reuses the input
    assert need.devices == 2 and need.where == "host RAM" and need.available > 0
    assert need.fits
    tight = parallel.MemoryNeed(per_device=need.per_device, arguments=need.arguments,
                                temporaries=0, devices=2, available=need.per_device, where="host RAM")  # fmt: skip
    with pytest.raises(parallel.UserError, match="needs .* GB .* Lower the batch"):
        parallel.check_memory(tight, "this", "the batch")


