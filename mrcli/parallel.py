"""Devices, processes and how arrays are laid out over them (docs/design.md §5).

One data-parallel layout serves training and inference: a 1-D mesh
`('data',)` over the devices of every process; a batch is sharded on its
leading axis, parameters and optimiser state are replicated. XLA inserts the
collectives, so the same global batch gives the same result on 1 device or 8
(up to the order of floating-point sums).

Start-up, before anything touches a device:
  `use_cpu_cores(global_batch)`  one XLA device per CPU core on CPU hosts;
  `maybe_initialize_distributed()` join a multi-host run (SLURM, TPU pods,
                                   Kubernetes, or the JAX_* variables).

Before a compiled program first runs, `memory_need` compares XLA's memory
analysis of it with what the devices have, and `check_memory` refuses a
program that cannot fit with one line saying what to lower, instead of an
out-of-memory kill minutes later.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mrcli.errors import UserError


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D data-parallel mesh over `devices` (default: all devices of every process)."""
    devices = devices if devices is not None else jax.devices()
    return Mesh(np.asarray(devices), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def local_mesh() -> Mesh:
    """A 1-D mesh over this process's devices only: inference runs one per
    process on its own share of the images, with no collective between
    processes (evaluate_split, predict)."""
    return make_mesh(jax.local_devices())


def to_local(tree: Any) -> Any:
    """`tree` with each replicated array that spans other processes' devices
    as a host copy of this process's replica (numpy), ready to be placed on
    a local mesh; other leaves unchanged."""

    def local(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return x

    return jax.tree.map(local, tree)


def round_batch(batch_size: int, mesh: Mesh) -> int:
    """The smallest multiple of the mesh's device count that holds `batch_size`
    (inference pads the rest; padding is never counted or written)."""
    n = mesh.devices.size
    return -(-int(batch_size) // n) * n


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


# --- agreeing across processes (multi-controller runs) ----------------------------------


def gather_ints(values: Sequence[int]) -> np.ndarray:
    """[P, n] int32: every process's `values` (n the same on each), row p
    process p's. One process: just its own row, no collective."""
    row = np.asarray(list(values), np.int32)
    if jax.process_count() == 1:
        return row[None]
    return np.asarray(multihost_utils.process_allgather(row)).reshape(jax.process_count(), -1)


def fingerprint(text: str) -> list[int]:
    """Two int32 of `text`'s SHA-256, to compare across processes (gather_ints)."""
    return np.frombuffer(hashlib.sha256(text.encode()).digest()[:8], np.int32).tolist()


def check_same(what: dict[str, str]) -> None:
    """A UserError on every process unless each of `what`'s texts (a config, a
    dataset fingerprint, by name) is the same on all processes, naming the
    processes that differ from process 0; before the first step, so a run of
    hosts that disagree never starts."""
    names = list(what)
    rows = gather_ints([v for n in names for v in fingerprint(what[n])])
    differ = []
    for k, name in enumerate(names):
        cols = rows[:, 2 * k:2 * k + 2]
        others = [p for p in range(len(rows)) if not np.array_equal(cols[p], cols[0])]
        if others:
            differ.append(f"{name} of process{'es' if len(others) > 1 else ''} "
                          f"{', '.join(map(str, others))}")  # fmt: skip
    if differ:
        raise UserError(
            f"the processes of this run disagree: the {'; the '.join(differ)} differ from process "
            "0's. Start every process with the same command, recipe, --set values and data (the "
            "same MRCLI_DATA / --data-dir contents on every host)")


def barrier(name: str) -> None:
    """Wait until every process reaches `name` (nothing with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


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


def maybe_initialize_distributed(force: bool = False, timeout_s: int | None = None) -> None:
    """Join a multi-host run: on SLURM, TPU pods and Kubernetes (or when
    `force`), `jax.distributed.initialize()` finds the coordinator itself.

    Elsewhere (and under `mrcli launch`) the JAX_* variables say it:
    JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES,
    JAX_PROCESS_ID (default: a Kubernetes Indexed Job's JOB_COMPLETION_INDEX), and JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo for CPU
    collectives across processes (JAX reads that one itself). A coordinator
    that does not answer within `timeout_s` (default MRCLI_COORDINATOR_TIMEOUT
    or 300 s) is a UserError naming its address."""
    env = os.environ
    auto = (
        int(env.get("SLURM_NTASKS", "1")) > 1
        or "TPU_WORKER_HOSTNAMES" in env
        or "JAX_COORDINATOR_ADDRESS" in env
    )
    if not (force or auto):
        return
    if jax.distributed.is_initialized():
        return
    kwargs: dict = {}
    # A Kubernetes Indexed Job numbers its pods in JOB_COMPLETION_INDEX.
    ids = ("JAX_PROCESS_ID",) if env.get("JAX_PROCESS_ID", "") != "" else ("JOB_COMPLETION_INDEX",)
    for name, key in (("JAX_NUM_PROCESSES", "num_processes"), (ids[0], "process_id")):
        if env.get(name, "") != "":
            try:
                kwargs[key] = int(env[name])
            except ValueError:
                raise UserError(f"{name}={env[name]!r} is not a whole number: set it to "
                                "an integer (or unset it where the cluster is detected)") from None
    if env.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
        jax.config.update("jax_cpu_collectives_implementation",
                          env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"])
    timeout = int(timeout_s if timeout_s is not None else env.get("MRCLI_COORDINATOR_TIMEOUT", 300))
    address = env.get("JAX_COORDINATOR_ADDRESS")
    if address and kwargs.get("process_id", 0) != 0:
        # jax.distributed aborts the process (a fatal C++ log, SIGABRT) when the
        # coordinator never answers, instead of raising: wait for its port here.
        wait_for_coordinator(address, timeout)
    jax.distributed.initialize(initialization_timeout=timeout, **kwargs)


def wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Until `address` (host:port) accepts a TCP connection; a UserError naming
    it after `timeout_s` seconds."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise UserError(
                    f"the coordinator at {address} did not answer in {timeout_s:g} s: start "
                    "process 0 (JAX_PROCESS_ID=0) there, check the address and that its port is "
                    "reachable from here, or raise MRCLI_COORDINATOR_TIMEOUT") from None
            time.sleep(0.25)


# --- memory --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryNeed:
    """What one device's program needs (XLA's memory analysis of the compiled
    program) and what the devices offer, in bytes."""

    per_device: int  # arguments + outputs not aliased with them + temporaries + code
    arguments: int
    temporaries: int
    devices: int  # devices of this process that share `available`
    available: int | None  # None: unknown here
    where: str  # "host RAM" or "device memory"

    @property
    def total(self) -> int:
        """What the devices sharing `available` need together."""
        return self.per_device * self.devices

    @property
    def fits(self) -> bool:
        return self.available is None or self.total <= self.available

    def describe(self) -> str:
        """e.g. '2.1 GB per device x 2 devices, of 21.9 GB host RAM available'."""
        text = f"{gb(self.per_device)} per device"
        if self.devices > 1:
            text += f" x {self.devices} devices"
        if self.available is not None:
            text += f", of {gb(self.available)} {self.where} available"
        return text


def gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n < 10e9 else f"{n / 1e9:.1f} GB"


def _host_available() -> int | None:
    """Memory this host can still give (Linux MemAvailable), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def memory_need(compiled: jax.stages.Compiled, mesh: Mesh) -> MemoryNeed:
    """The per-device memory of a compiled program over `mesh`, beside what this
    process's devices of the mesh have: their own memory on accelerators
    (`memory_stats()['bytes_limit']`), the host's available RAM, shared by every
    local device, on CPU."""
    stats = compiled.memory_analysis()
    args = int(stats.argument_size_in_bytes)
    # Donated arguments come back as aliased outputs: count them once.
    outputs = int(stats.output_size_in_bytes) - int(stats.alias_size_in_bytes)
    temps = int(stats.temp_size_in_bytes)
    code = int(stats.generated_code_size_in_bytes)
    local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    device = local[0]
    if device.platform == "cpu":
        available, sharing, where = _host_available(), len(local), "host RAM"
    else:
        limit = (device.memory_stats() or {}).get("bytes_limit")
        available, sharing, where = (int(limit) if limit else None), 1, "device memory"
    return MemoryNeed(per_device=args + outputs + temps + code, arguments=args, temporaries=temps,
                      devices=sharing, available=available, where=where)  # fmt: skip


def check_memory(need: MemoryNeed, what: str, lower: str) -> None:
    """A UserError unless `need` fits: one line naming the need, what is
    available, and `lower`, the settings that shrink it."""
    if need.fits:
        return
    raise UserError(
        f"{what} needs {gb(need.total)} ({need.describe()}; arguments {gb(need.arguments)}, "
        f"temporaries {gb(need.temporaries)} per device): it cannot run here. Lower {lower}"
    )
