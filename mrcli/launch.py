"""`mrcli launch`: N local processes of one multi-process JAX run (docs/design.md §5).

A laptop rehearsal of a cluster run, and what the tests use: each process gets
the environment that `mrcli.parallel.maybe_initialize_distributed` reads,

    JAX_COORDINATOR_ADDRESS   127.0.0.1:PORT (a free port, loopback only)
    JAX_NUM_PROCESSES         N
    JAX_PROCESS_ID            0 .. N-1
    JAX_CPU_COLLECTIVES_IMPLEMENTATION  gloo (CPU collectives across processes)
    XLA_FLAGS                 --xla_force_host_platform_device_count=D (with
                              devices_per_process; other flags are kept)

Every line a process prints comes out prefixed with its index, `[1] ...`, on
the launcher's stdout or stderr as the process printed it. The two streams are
read through separate pipes, so a line is never torn by the other stream's
writes (gloo's C++ logging on stderr used to split a Python print on stdout
mid-line when both shared one pipe). When one process fails the others are stopped (SIGTERM, then
SIGKILL after a grace period); the result is the worst exit code of those
that were not stopped (a killed process counts 128 + signal).

No JAX here: the launcher itself never starts a backend.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from mrcli.errors import UserError

ENV_ADDRESS = "JAX_COORDINATOR_ADDRESS"
ENV_COUNT = "JAX_NUM_PROCESSES"
ENV_ID = "JAX_PROCESS_ID"
ENV_COLLECTIVES = "JAX_CPU_COLLECTIVES_IMPLEMENTATION"
_DEVICE_FLAG = re.compile(r"--xla_force_host_platform_device_count=\S*")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def child_env(base: Mapping[str, str], process_id: int, processes: int, port: int,
              devices_per_process: int | None = None) -> dict[str, str]:
    """The environment of process `process_id` of `processes` (pure)."""
    env = dict(base)
    env[ENV_ADDRESS] = f"127.0.0.1:{port}"
    env[ENV_COUNT] = str(processes)
    env[ENV_ID] = str(process_id)
    env[ENV_COLLECTIVES] = "gloo"
    if devices_per_process is not None:
        flags = _DEVICE_FLAG.sub("", env.get("XLA_FLAGS", "")).split()
        flags.append(f"--xla_force_host_platform_device_count={int(devices_per_process)}")
        env["XLA_FLAGS"] = " ".join(flags)
    return env


def exit_status(returncode: int) -> int:
    """A shell's exit status: a process killed by signal S counts as 128 + S."""
    return 128 - returncode if returncode < 0 else returncode


def _pump(index: int, stream, write: Callable[[str], None]) -> None:
    for line in iter(stream.readline, ""):
        write(f"[{index}] {line if line.endswith(chr(10)) else line + chr(10)}")
    stream.close()


def launch(argv: Sequence[str], processes: int, devices_per_process: int | None = None, *,
           env: Mapping[str, str] | None = None, write: Callable[[str], None] | None = None,
           grace_s: float = 30.0, port: int | None = None) -> int:
    """Run `argv` as `processes` local processes of one JAX run; the worst exit status.

    `write` receives each prefixed output line, whole, from both streams
    (default: a process's stdout lines to this process's stdout, its stderr
    lines to stderr). A process that fails (non-zero exit) stops the others: SIGTERM,
    and SIGKILL after `grace_s` seconds. SIGTERM/SIGINT to the launcher are
    passed on to every process."""
    if processes < 1:
        raise UserError(f"--processes {processes}: give 1 or more")
    if devices_per_process is not None and devices_per_process < 1:
        raise UserError(f"--devices-per-process {devices_per_process}: give 1 or more")
    if not argv:
        raise UserError("no command to launch: give it after --, e.g. "
                        "mrcli launch --processes 2 -- train --recipe tiny --workdir runs/t")
    lock = threading.Lock()

    def writer(stream) -> Callable[[str], None]:
        def locked(text: str) -> None:
            with lock:
                if write is not None:
                    write(text)
                else:
                    stream.write(text)
                    stream.flush()
        return locked

    port = port or free_port()
    base = dict(os.environ if env is None else env)
    procs: list[subprocess.Popen] = []
    pumps: list[threading.Thread] = []
    try:
        for i in range(processes):
            try:
                p = subprocess.Popen(list(argv), env=child_env(base, i, processes, port,
                                                               devices_per_process),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True, bufsize=1,
                                     start_new_session=True)  # fmt: skip
            except OSError as e:
                raise UserError(f"cannot start {argv[0]!r}: {e.strerror}; give a program on "
                                "PATH or an mrcli command after --") from e
            procs.append(p)
            for pipe, stream in ((p.stdout, sys.stdout), (p.stderr, sys.stderr)):
                t = threading.Thread(target=_pump, args=(i, pipe, writer(stream)), daemon=True)
                t.start()
                pumps.append(t)
        forwarded = _forward_signals(procs)
        try:
            codes, stopped = _wait_all(procs, grace_s)
        finally:
            _restore_signals(forwarded)
    finally:
        for p in procs:  # an exception above (KeyboardInterrupt, a failed start): no orphans
            if p.poll() is None:
                _kill(p, signal.SIGKILL)
                p.wait()
    for t in pumps:
        t.join(timeout=5)
    # The processes stopped because another failed do not hide the failure's own code.
    return max(exit_status(c) for i, c in enumerate(codes) if i not in stopped)


def _wait_all(procs: list[subprocess.Popen], grace_s: float) -> tuple[list[int], set[int]]:
    """Every exit code, and the indices of the processes stopped because another failed."""
    stopping_since: float | None = None
    stopped: set[int] = set()
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            return codes, stopped  # type: ignore[return-value]
        if stopping_since is None and any(c not in (None, 0) for c in codes):
            stopping_since = time.monotonic()
            for i, (p, c) in enumerate(zip(procs, codes)):
                if c is None:
                    stopped.add(i)
                    _kill(p, signal.SIGTERM)
        elif stopping_since is not None and time.monotonic() - stopping_since > grace_s:
            for p, c in zip(procs, codes):
                if c is None:
                    _kill(p, signal.SIGKILL)
        time.sleep(0.05)


def _kill(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)  # the process and its data workers
    except (ProcessLookupError, PermissionError):
        pass


def _forward_signals(procs: list[subprocess.Popen]) -> dict[int, object]:
    if threading.current_thread() is not threading.main_thread():
        return {}
    old = {}

    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                _kill(p, signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        old[sig] = signal.signal(sig, forward)
    return old


def _restore_signals(old: dict[int, object]) -> None:
    for sig, handler in old.items():
        signal.signal(sig, handler)
