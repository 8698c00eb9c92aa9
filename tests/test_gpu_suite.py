"""benchmarks/gpu: the suite runs end to end in its CPU tiny mode, stops at its time
budget, and its wheel list is exactly what a GPU machine lacks of what it imports.

Nothing here needs the network: the wheel script is checked by its commands
(--dry-run) and its list against the device's package list and the imports a
tiny run records.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "benchmarks" / "gpu" / "run.py"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"gpu_{name}", ROOT / "benchmarks" / "gpu" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args, timeout=300) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # The suite measures one device (a GPU machine has one): not the 8 simulated
    # CPU devices of tests/conftest.py.
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if "xla_force_host_platform_device_count" not in f)  # fmt: skip
    return subprocess.run([sys.executable, str(RUN), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-suite")
    # A generous budget: this test checks that every kind of case runs, not the
    # budget (test_cases_that_do_not_fit_the_budget_are_skipped does), and a
    # busy 2-core machine takes twice the 170 s of an idle one.
    proc = _run("--out", str(out), "--tiny", "--budget", "900", timeout=1000)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text()), (out / "results.md").read_text()


@pytest.mark.slow
def test_tiny_mode_runs_every_kind_of_case(tiny_run):
    out, results, md = tiny_run
    run = _module("run")
    meta, rows = results["meta"], results["rows"]
    assert meta["tiny"] and meta["env"]["platform"] == "cpu"
    # every case ran, none skipped
    assert {n: meta["cases"][n]["status"] for n in ["env", *run.CASES]} == dict.fromkeys(["env", *run.CASES], "ok")
    assert not [r for r in rows if "skipped" in r]
    by_case = {}
    for r in rows:
        by_case.setdefault(r["case"], []).append(r)
    # mrcli rows have numbers: train steps (both depths' cases, both batches), inference,
    # the other NMS form in the step and in detect, the pipeline
    mrcli = [r for r in rows if r.get("impl", "").startswith("mrcli") and r["what"] != "nms"]
    assert {r["what"] for r in mrcli} >= {"train step", "inference", "train step, blocked NMS",
                                          "train loop: pipeline (1 workers) + step"}
    assert {r["nms"] for r in mrcli} == {"auto", "blocked"}
    for name in ("r50_b8", "r50_b16", "r101_b8", "r101_b16", "detect_r50", "detect_r101", "nms_in_model"):
        assert [r for r in by_case[name] if r.get("impl", "").startswith("mrcli")], name
    assert {r["model"] for r in by_case["r101_b8"] + by_case["detect_r101"] if "model" in r} == {
        "R101-FPN (tiny stand-in)"}
    for r in mrcli:
        assert "error" not in r and r["step_s"] > 0 and r["images_per_s"] > 0, r
    # torchvision: inference measured; its train step needs compiled kernels this CPU torch lacks
    tv = by_case["torchvision"]
    assert any(r["what"] == "inference" and r.get("step_s", 0) > 0 for r in tv), tv
    # NMS variants all returned the reference's indices (a mismatch is an error row)
    nms = by_case["nms"]
    assert len(nms) >= 5 and all("error" not in r for r in nms)
    assert any(r["impl"].startswith("nms_blocked") and r["iterations"] >= 1 for r in nms)
    assert all("error" not in r for r in by_case["roi_align"])
    # the markdown has the three tables
    for header in ("| what | model | impl |", "| NMS boxes |", "| RoIAlign variant |"):
        assert header in md


@pytest.mark.slow
def test_wheel_list_is_exactly_what_the_device_lacks(tiny_run):
    _, results, _ = tiny_run
    wheels = _module("wheels")
    device = wheels.device_packages()
    missing = {wheels.canonical(n) for n in wheels.MISSING}
    optional = {wheels.canonical(n) for n in wheels.OPTIONAL_HERE}
    imported = {wheels.canonical(n) for n in results["meta"]["packages"]} - {"mrcli"}
    assert len(imported) > 20
    assert not missing & device, "a package the device has is listed as missing"
    uncovered = imported - device - missing - optional
    assert not uncovered, f"imported by the suite, neither on the device nor in wheels.MISSING: {uncovered}"
    assert missing <= imported, f"in wheels.MISSING but never imported: {missing - imported}"


def test_wheel_commands_are_for_python_312_manylinux():
    wheels = _module("wheels")
    cmds = wheels.commands(sorted(wheels.MISSING), Path("/tmp/w"), python="python3")
    assert len(cmds) == len(wheels.MISSING)
    from importlib import metadata

    for name, cmd in zip(sorted(wheels.MISSING), cmds):
        assert cmd[-1] == f"{name}=={metadata.version(name)}" and "--no-deps" in cmd
        if name in wheels.SDIST_ONLY:
            assert cmd[3] == "wheel"
        else:
            assert cmd[3] == "download" and "--only-binary=:all:" in cmd
            assert cmd[cmd.index("--python-version") + 1] == "3.12"
            assert "manylinux2014_x86_64" in cmd and cmd[cmd.index("-d") + 1] == "/tmp/w"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu/wheels.py"), "--dry-run",
                           "--with-tested", "flax"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0 and f"flax=={metadata.version('flax')}" in proc.stdout
    assert proc.stdout.count("pip download") == len(wheels.MISSING) - len(wheels.SDIST_ONLY) + 1


def test_cases_that_do_not_fit_the_budget_are_skipped(tmp_path):
    proc = _run("--out", str(tmp_path), "--only", "nms,roi_align", "--budget", "1", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert {n: c["status"] for n, c in results["meta"]["cases"].items()} == {
        "env": "skipped", "nms": "skipped", "roi_align": "skipped"}
    assert all("time budget" in r["skipped"] for r in results["rows"])
    assert (tmp_path / "results.md").read_text().startswith("GPU suite")
    bad = _run("--out", str(tmp_path), "--only", "nope", timeout=60)
    assert bad.returncode == 2 and "unknown case" in bad.stderr


def test_gpu_mode_configs(tmp_path):
    """What the cases run on a GPU: the recipes' models at 800x1344 in bfloat16, one bucket,
    the batch given (checked here, where the cases themselves cannot run)."""
    run = _module("run")
    case = run.Case("r101_b16", tmp_path, tiny=False)
    for depth, recipe_depth in ((50, 50), (101, 101)):
        cfg = case.config(depth)
        assert cfg.model.backbone.depth == recipe_depth and cfg.model.dtype == "bfloat16"
        assert cfg.data.resolved_buckets() == ((800, 1344),) and cfg.data.resolved_train_scales() == (800,)
        assert cfg.model.num_classes == 80 and cfg.model.rpn.nms == cfg.model.inference.nms == "auto"
    greedy = case.config(50, sets=["model.rpn.nms=greedy", "model.inference.nms=greedy"])
    assert greedy.model.rpn.nms == greedy.model.inference.nms == "greedy"
    tiny = run.Case("r50_b8", tmp_path, tiny=True).config(101)
    assert tiny.model.dtype == "float32" and tiny.data.resolved_buckets() == ((64, 64),)
