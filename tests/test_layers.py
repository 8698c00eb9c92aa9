"""The layering of docs/design.md §1, checked by import-linter (pyproject.toml's
[tool.importlinter] contract): no module imports from a layer above its own,
and the command modules do not import each other."""

import pkgutil
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import mrcli

ROOT = Path(__file__).resolve().parent.parent
LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LINT], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(cwd), "PATH": ""})  # fmt: skip


def _layers() -> list[set[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = config["contracts"]
    return [{m.strip() for m in layer.replace(":", "|").split("|")} for layer in contract["layers"]]


def test_the_layers_contract_is_kept():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_every_module_has_a_layer():
    named = set().union(*_layers())
    modules = {f"mrcli.{m.name}" for m in pkgutil.iter_modules(mrcli.__path__)}
    assert modules == named, (sorted(modules - named), sorted(named - modules))


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The same check on a copy of the package where an op imports the command line."""
    shutil.copytree(ROOT / "mrcli", tmp_path / "mrcli")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    boxes = tmp_path / "mrcli" / "ops" / "boxes.py"
    boxes.write_text(boxes.read_text() + "\nimport mrcli.cli  # noqa\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "mrcli.ops is not allowed to import mrcli.cli" in result.stdout
