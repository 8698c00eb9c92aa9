"""`mrcli prepare` and `mrcli show` from the command line: the README's data
commands in real processes, --json output, and one-line errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from data_helpers import run_cli

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_data_commands() -> list[str]:
    """The first code block of the README's "Data" section."""
    text = README.read_text()
    section = text.split("\n## Data\n", 1)[1]
    commands, in_block = [], False
    for line in section.splitlines():
        if line.startswith("    mrcli "):
            commands.append(line.strip().split("  #")[0].strip())
            in_block = True
        elif in_block:
            break
    return commands


def test_readme_prepare_shapes_then_show(tmp_path):
    """The README's commands as a user runs them (with MRCLI_DATA set, and a
    smaller dataset than the default so that the test is quick)."""
    commands = readme_data_commands()
    assert commands[0] == "mrcli prepare shapes" and commands[1].startswith("mrcli show shapes")
    env = dict(os.environ, MRCLI_DATA=str(tmp_path / "data"))
    for command in commands:
        args = command.split()[1:]
        if args[:2] == ["prepare", "shapes"]:
            args += ["--num-train", "16", "--num-val", "4"]
        result = subprocess.run([sys.executable, "-m", "mrcli.cli", *args], cwd=tmp_path, env=env,
                                capture_output=True, text=True)
        assert result.returncode == 0, f"{command}\n{result.stderr}"
        if args[0] == "prepare":
            assert "fingerprint" in result.stderr and "circle" in result.stderr
    pngs = sorted(p.name for p in (tmp_path / "overlays").glob("*.png"))
    assert len([p for p in pngs if p.startswith("val_")]) == 4
    assert len([p for p in pngs if p.endswith("_aug.png")]) == 4
    assert {p.name for p in (tmp_path / "stats").glob("*.png")} == {
        "classes.png", "instances_per_image.png", "object_sizes.png", "aspect_ratios.png", "image_sizes.png"}


def test_checker_failure_exits_2_in_a_real_process(tmp_path):
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "x.png", "height": 4, "width": 4}],
                               "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    (tmp_path / "imgs").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "mrcli.cli", "prepare", "coco-json", "--annotations", str(ann),
         "--images", str(tmp_path / "imgs"), "--name", "x", "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert "x.png" in result.stderr and "[missing_image_file]" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())


def test_prepare_shapes_json_and_show(tmp_path, capsys):
    d = str(tmp_path / "d")
    code, out, err = run_cli(capsys, "prepare", "shapes", "--num-train", "5", "--num-val", "2",
                             "--size", "48", "--seed", "2", "--name", "sh", "--data-dir", d, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["written"] and result["name"] == "sh"
    assert result["record"]["splits"]["train"]["images"] == 5
    assert [c["name"] for c in result["record"]["categories"]] == ["circle", "square", "triangle", "star"]
    code, out, err = run_cli(capsys, "show", "sh", "--data-dir", d, "--out", str(tmp_path / "o"),
                             "--num", "3", "--split", "val", "--json")
    assert code == 0, err
    assert [Path(p).name for p in json.loads(out)] == ["val_000001.png", "val_000002.png"]
    code, out, err = run_cli(capsys, "show", "sh", "--data-dir", d, "--out", str(tmp_path / "o"),
                             "--num", "1", "--augmented", "--set", "data.image_size=64",
                             "--set", "data.max_size=64", "--json")
    assert code == 0, err
    assert Path(json.loads(out)[0]).name == "train_000001_aug.png"


def test_show_errors_are_one_line(tmp_path, capsys):
    d = str(tmp_path / "d")
    code, _, err = run_cli(capsys, "show", "nope", "--data-dir", d, "--out", str(tmp_path / "o"))
    assert code == 2 and "no prepared dataset 'nope'" in err and "Traceback" not in err
    run_cli(capsys, "prepare", "shapes", "--num-train", "2", "--num-val", "1", "--size", "32", "--data-dir", d)
    code, _, err = run_cli(capsys, "show", "shapes", "--data-dir", d, "--out", str(tmp_path / "o"),
                           "--split", "test")
    assert code == 2 and re.search(r"no split 'test'.*train, val", err)
    code, _, err = run_cli(capsys, "prepare", "shapes", "--data-dir", d)
    assert code == 2 and "already exists; pass --overwrite" in err


def test_readme_datasets_section_lists_every_prepare_command():
    """The "Datasets" section (right after "Data") names each format's command."""
    from mrcli.cli.prepare import prepare_app

    text = README.read_text()
    assert text.index("\n## Data\n") < text.index("\n## Datasets\n")
    section = text.split("\n## Datasets\n", 1)[1].split("\n## ", 1)[0]
    for command in prepare_app.registered_commands:
        if command.name != "shapes":  # the built-in data, in "Data"
            assert f"`mrcli prepare {command.name} " in section, command.name
    assert "--val-fraction" in section
