"""`mrcli launch`: N real local processes of one JAX run on 127.0.0.1 (mrcli.launch)."""

import subprocess
import sys
import time

import pytest

from mrcli import parallel
from mrcli.errors import UserError
from mrcli.launch import child_env, exit_status, free_port, launch

PROBE = """
import jax, numpy as np
from mrcli import parallel
parallel.maybe_initialize_distributed()
from jax.experimental import multihost_utils as mh
got = mh.process_allgather(np.array([jax.process_index()])).ravel().tolist()
print("process", jax.process_index(), "of", jax.process_count(), "devices", jax.device_count(),
      "local", jax.local_device_count(), "gathered", got, flush=True)
"""


def test_child_env_sets_what_maybe_initialize_distributed_reads():
    env = child_env({"XLA_FLAGS": "--xla_foo=1 --xla_force_host_platform_device_count=8", "A": "b"},
                    1, 3, 1234, devices_per_process=4)
    assert env["JAX_COORDINATOR_ADDRESS"] == "127.0.0.1:1234"
    assert (env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"]) == ("3", "1")
    assert env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] == "gloo"
    assert env["XLA_FLAGS"] == "--xla_foo=1 --xla_force_host_platform_device_count=4"
    assert env["A"] == "b"
    assert "XLA_FLAGS" not in child_env({}, 0, 2, 1)  # without D: as configured
    assert exit_status(-9) == 137 and exit_status(3) == 3


def test_two_processes_join_one_run_with_prefixed_output():
    lines: list[str] = []
    code = launch([sys.executable, "-c", PROBE], 2, devices_per_process=2, write=lines.append)
    assert code == 0, "".join(lines)
    for i in range(2):
        assert f"[{i}] process {i} of 2 devices 4 local 2 gathered [0, 1]\n" in lines, "".join(lines)
    assert all(line[:3] in ("[0]", "[1]") for line in lines)


def test_a_line_is_never_torn_by_the_other_stream():
    # What failed CI once: gloo's C++ logging on stderr landed inside a Python print on stdout
    # while both shared one pipe. Here the two streams' halves alternate deterministically.
    script = ("import os\n"
              "for k in range(3):\n"
              "    os.write(1, b'out %d ' % k); os.write(2, b'err %d ' % k)\n"
              "    os.write(1, b'whole\\n'); os.write(2, b'whole\\n')\n")
    lines: list[str] = []
    assert launch([sys.executable, "-c", script], 1, write=lines.append) == 0
    assert sorted(lines) == sorted(f"[0] {s} {k} whole\n" for s in ("out", "err") for k in range(3))


def test_one_failure_stops_the_others_and_gives_the_worst_code():
    script = ("import os, sys, time\n"
              "if os.environ['JAX_PROCESS_ID'] == '1': sys.exit(3)\n"
              "time.sleep(120)\n")
    start = time.monotonic()
    lines: list[str] = []
    code = launch([sys.executable, "-c", script], 2, write=lines.append, grace_s=5)
    assert code == 3  # the failure's own code, not that of the process it stopped
    assert time.monotonic() - start < 30
    worst = ("import os, sys\n"
             "sys.exit({'0': 0, '1': 4, '2': 2}[os.environ['JAX_PROCESS_ID']])\n")
    assert launch([sys.executable, "-c", worst], 3, write=lines.append, grace_s=5) == 4


def test_cli_runs_an_mrcli_command_in_each_process(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mrcli.cli", "launch", "--processes", "2", "--",
                          "recipes"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "[0] " in out.stdout and "[1] " in out.stdout and "tiny" in out.stdout
    err = subprocess.run([sys.executable, "-m", "mrcli.cli", "launch", "-n", "1", "--", sys.executable,
                          "-c", "import sys; print('to out'); print('to err', file=sys.stderr)"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert (err.stdout, err.stderr) == ("[0] to out\n", "[0] to err\n")  # each stream kept
    bad = subprocess.run([sys.executable, "-m", "mrcli.cli", "launch", "-n", "2", "--",
                          "train", "--no-such-option"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2, bad.stdout + bad.stderr


def test_a_coordinator_that_never_answers_is_named(monkeypatch):
    port = free_port()
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", f"127.0.0.1:{port}")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    with pytest.raises(UserError, match=f"coordinator at 127.0.0.1:{port} did not answer in 1 s"):
        parallel.maybe_initialize_distributed(timeout_s=1)
    monkeypatch.setenv("JAX_PROCESS_ID", "x")
    with pytest.raises(UserError, match="JAX_PROCESS_ID='x'"):
        parallel.maybe_initialize_distributed(timeout_s=1)
