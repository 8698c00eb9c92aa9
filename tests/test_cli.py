"""The command line as a user runs it: a real process, real exit codes."""

import json
import os
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


def _commands():
    """(path, click command) of every command and sub-command."""
    from typer.main import get_command

    from mrcli.cli import app

    def walk(command, path):
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, [*path, name])

    return list(walk(get_command(app), []))


def test_help_examples_stay_whole_at_80_columns():
    """Every example command in every --help is on one line at 80 columns, so it
    can be copied and pasted (issue 19: long ones were broken across lines)."""
    from typer.testing import CliRunner

    from mrcli.cli import app

    runner = CliRunner()
    checked = 0
    for path, command in _commands():
        shown = runner.invoke(app, [*path, "--help"], terminal_width=80, env={"COLUMNS": "80"})
        assert shown.exit_code == 0, (path, shown.output)
        lines = shown.output.splitlines()
        assert max(map(len, lines)) <= 80, path
        for line in (command.help or "").splitlines():
            text = line.strip().removeprefix("Example: ").replace("\\[", "[")
            if text.startswith("mrcli "):
                checked += 1
                assert any(text in shown_line for shown_line in lines), (path, text)
    assert checked >= 30


def test_recipes_table_on_stdout_fits_80_columns():
    result = run("recipes", env={**os.environ, "COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= 80
    assert any(line.split("│")[1].strip() == "tiny" for line in lines if line.count("│") > 2)
    (nin,) = [line for line in lines if line.count("│") > 2 and line.split("│")[1].strip() == "tiny_nin"]
    assert "NIN-FPN 128px" in nin


def test_model_names_say_the_backbone_and_a_box_head_other_than_fc():
    from mrcli.cli.info import model_name
    from mrcli.config import load_recipe, override

    tiny = load_recipe("tiny").config
    assert model_name(tiny.model) == "R14-FPN"
    assert model_name(load_recipe("r101_fpn").config.model) == "R101-FPN"
    assert model_name(override(tiny, {"model.box_head.kind": "nin"}).model) == "R14-FPN + NIN head"
    both = override(tiny, {"model.box_head.kind": "nin", "model.backbone.kind": "nin"})
    assert model_name(both.model) == "NIN-FPN + NIN head"


def test_datasets_lists_what_is_prepared(tmp_path):
    from mrcli.data.prepare import prepare_shapes

    env = {**os.environ, "MRCLI_DATA": str(tmp_path)}
    empty = run("datasets", env=env)
    assert empty.returncode == 0 and empty.stdout == "" and "mrcli prepare" in empty.stderr
    prepare_shapes(data_dir=tmp_path, name="sh", num_train=3, num_val=2, size=48)
    listed = run("datasets", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert row["name"] == "sh" and row["classes"] == 4
    assert {s: v["images"] for s, v in row["splits"].items()} == {"train": 3, "val": 2}
    assert row["splits"]["train"]["instances"] > 0
    table = run("datasets", env=env).stdout
    assert "sh" in table and "train" in table and "val" in table


def test_info_says_how_train_splits_the_cpu():
    """`mrcli info` shows one CPU device, but `mrcli train` runs one per core:
    info says so (issue 19: "cpu x1" while train used 2 devices)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = run("info", env={**env, "COLUMNS": "300"})
    assert result.returncode == 0, result.stderr
    if (os.cpu_count() or 1) > 1:
        assert f"mrcli train splits the CPU into up to {os.cpu_count()} devices" in result.stdout
