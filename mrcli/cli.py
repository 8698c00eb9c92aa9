"""The mrcli command line: each command parses, calls one library function, prints.

Conventions (DESIGN.md §7): tables and progress go to stderr with rich;
machine-readable results go to stdout (`--json`); a user's mistake
(`mrcli.errors.UserError`) prints one line and exits 2; any other failure
prints one line and exits 1; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from mrcli import __version__
from mrcli import config as config_lib
from mrcli.errors import UserError

err = Console(stderr=True)
_state = {"debug": False}


class _App(typer.Typer):
    """A Typer app that turns exceptions into one line and an exit code."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except UserError as e:
            if _state["debug"]:
                raise
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            sys.exit(2)
        except Exception as e:  # noqa: BLE001 - the last line of defence
            if _state["debug"]:
                raise
            err.print(
                f"[bold red]failed:[/] {type(e).__name__}: {e} (run with --debug for the traceback)",
                highlight=False,
                soft_wrap=True,
            )
            sys.exit(1)


app = _App(
    name="mrcli",
    help=(
        "Mask R-CNN on JAX/Flax: from annotated images to a trained, evaluated and "
        "exported instance-segmentation model.\n\n"
        "Examples:\n\n"
        "  mrcli info\n\n"
        "  mrcli recipes\n\n"
        "  mrcli recipes show tiny --set train.steps=500 --json"
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        print(f"mrcli {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")
    ] = False,
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = None,
) -> None:
    _state["debug"] = debug


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


# --- info ---------------------------------------------------------------------------


@app.command()
def info(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Versions, the JAX backend and its devices, and whether bfloat16 is fast there.

    Example: mrcli info --json
    """
    from mrcli.system import system_info

    data = system_info()
    if as_json:
        _print_json(data)
        return
    table = Table(title="mrcli info", show_header=False)
    for key, value in data.items():
        if key == "devices":
            value = ", ".join(f"{d['kind']} ({d['platform']}) x{d['count']}" for d in value)
        table.add_row(key, str(value))
    err.print(table)


# --- recipes ------------------------------------------------------------------------

recipes_app = typer.Typer(
    help="List the built-in recipes, or show one fully resolved.\n\n"
    "Examples:\n\n  mrcli recipes\n\n  mrcli recipes show r101_fpn --json",
    invoke_without_command=True,
    no_args_is_help=False,
)
app.add_typer(recipes_app, name="recipes")


def _recipe_row(recipe: config_lib.Recipe) -> dict[str, Any]:
    cfg = recipe.config
    return {
        "name": recipe.name,
        "description": recipe.summary,
        "backbone": f"R{cfg.model.depth}-FPN" + (f" (width {cfg.model.width})" if cfg.model.width != 64 else ""),
        "image_size": f"{cfg.data.image_size}/{cfg.data.max_size}",
        "schedule": f"{cfg.train.steps} steps @ batch {cfg.train.global_batch}",
        "dataset": cfg.data.dataset,
    }


@recipes_app.callback()
def recipes_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """List the recipes: name, description, backbone, image size, schedule."""
    if ctx.invoked_subcommand is not None:
        return
    rows = [_recipe_row(config_lib.load_recipe(n)) for n in config_lib.recipe_names()]
    if as_json:
        _print_json(rows)
        return
    table = Table(title="recipes")
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*row.values())
    err.print(table)


@recipes_app.command("show")
def recipes_show(
    name: Annotated[str, typer.Argument(help="Recipe name (see `mrcli recipes`).")],
    sets: Annotated[
        Optional[list[str]],
        typer.Option("--set", help="Override a field: --set section.field=value (repeatable)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Show a recipe's fully resolved config (defaults + recipe + --set).

    Example: mrcli recipes show tiny --set model.dtype=bfloat16 --json
    """
    cfg = config_lib.resolve(name, sets or [])
    data = config_lib.to_dict(cfg)
    if as_json:
        _print_json(data)
        return
    changed = config_lib.diff(cfg)
    tree = Tree(f"[bold]{name}[/] (fields changed from the defaults in bold)")
    for section, values in data.items():
        branch = tree.add(f"[cyan]{section}[/]")
        for key, value in values.items():
            label = f"{key} = {value}"
            branch.add(f"[bold yellow]{label}[/]" if f"{section}.{key}" in changed else label)
    err.print(tree)


if __name__ == "__main__":  # pragma: no cover
    app()
