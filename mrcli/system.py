"""What this machine offers: versions, the JAX backend and devices."""

from __future__ import annotations

import os
from importlib import metadata
from typing import Any

from mrcli import __version__


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def bf16_is_fast(platform: str, device_kind: str) -> bool:
    """bfloat16 matmuls run at full rate on TPUs and on NVIDIA GPUs from Ampere
    (compute capability 8.0) on; CPUs emulate or convert them."""
    if platform == "tpu":
        return True
    if platform == "gpu":
        kind = device_kind.lower()
        old = ("tesla k", "tesla p", "tesla v", "v100", "p100", "t4", "quadro", "gtx", "rtx 20")
        return not any(o in kind for o in old)
    return False


def system_info() -> dict[str, Any]:
    """Versions of mrcli and its engines, the JAX backend, devices and processes."""
    import jax

    devices = jax.devices()
    kinds: dict[tuple[str, str], int] = {}
    for d in devices:
        kinds[(d.platform, d.device_kind)] = kinds.get((d.platform, d.device_kind), 0) + 1
    backend = jax.default_backend()
    return {
        "mrcli": __version__,
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "flax": _version("flax"),
        "backend": backend,
        "devices": [
            {"platform": p, "kind": k, "count": c} for (p, k), c in sorted(kinds.items())
        ],
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "bf16_fast": bf16_is_fast(backend, devices[0].device_kind),
        "cpu_cores": os.cpu_count() or 1,
    }
