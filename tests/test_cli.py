"""The command line as a user runs it: a real process, real exit codes."""

import json
import subprocess
import sys

import pytest


def run(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "mrcli.cli", *args], capture_output=True, text=True, env=env
    )


def test_help_lists_commands():
    result = run("--help")
    assert result.returncode == 0
    assert "info" in result.stdout and "recipes" in result.stdout


def test_info_json():
    result = run("info", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    for key in ("mrcli", "jax", "jaxlib", "flax", "backend", "devices", "process_index",
                "process_count", "bf16_fast"):
        assert key in data
    assert data["backend"] == "cpu" and data["bf16_fast"] is False


def test_recipes_list_and_show():
    listed = json.loads(run("recipes", "--json").stdout)
    assert {r["name"] for r in listed} >= {"tiny", "r50_fpn_1x", "r50_fpn_3x", "r101_fpn"}
    assert all(r["description"] and r["schedule"] for r in listed)
    shown = run("recipes", "show", "r101_fpn", "--json")
    assert shown.returncode == 0
    assert json.loads(shown.stdout)["model"]["backbone"]["depth"] == 101
    tree = run("recipes", "show", "tiny")
    assert tree.returncode == 0 and "num_classes" in tree.stdout


@pytest.mark.parametrize(
    "args, words",
    [
        (["recipes", "show", "nope"], ["unknown recipe 'nope'", "r101_fpn", "tiny"]),
        (["recipes", "show", "tiny", "--set", "model.nope=1"], ["model.nope"]),
        (["recipes", "show", "tiny", "--set", "model.backbone.depth=x"], ["model.backbone.depth"]),
        # A key of mrcli 0.1 names its new place.
        (["recipes", "show", "tiny", "--set", "model.depth=50"], ["renamed", "model.backbone.depth"]),
    ],
)
def test_user_errors_exit_2_with_one_line(args, words):
    result = run(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0]


def test_debug_shows_the_traceback():
    result = run("--debug", "recipes", "show", "nope")
    assert result.returncode != 0 and "Traceback" in result.stderr
