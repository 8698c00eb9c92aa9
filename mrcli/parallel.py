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
"""

from __future__ import annotations

import math
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D data-parallel mesh over `devices` (default: all devices of every process)."""
    devices = devices if devices is not None else jax.devices()
    return Mesh(np.asarray(devices), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


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
