"""Test set-up: 8 simulated CPU devices, so data-parallel code runs as on a GPU host.

XLA reads XLA_FLAGS when the backend starts, so this must run before jax is imported.
"""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

# tests/ helpers (torchvision_ref, ...) and the benchmarks' shared helpers
# (benchmarks/common.py, which tests use for inputs) import as plain modules.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
sys.path.insert(0, os.path.dirname(__file__))
