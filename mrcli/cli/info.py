"""`mrcli info` and `mrcli recipes [show NAME]`: what this machine and mrcli offer."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table
from rich.tree import Tree

from mrcli import config as config_lib
from mrcli.cli.display import key_value_table, out, print_json
from mrcli.cli.options import Json, Sets


def info(as_json: Json = False) -> None:
    """Versions, the JAX backend and its devices, and whether bfloat16 is fast there.

    Example: mrcli info --json
    """
    from mrcli.system import system_info

    data = system_info()
    if as_json:
        print_json(data)
        return
    shown = dict(data)
    shown["devices"] = ", ".join(f"{d['kind']} ({d['platform']}) x{d['count']}" for d in data["devices"])
    if data["backend"] == "cpu" and data["local_device_count"] == 1 and data["cpu_cores"] > 1:
        # mrcli.parallel.use_cpu_cores: what `mrcli train` sees on this host.
        shown["devices"] += (f"; mrcli train splits the CPU into up to {data['cpu_cores']} devices, "
                             "one per core (as many as divide train.global_batch)")  # fmt: skip
    out.print(key_value_table("mrcli info", shown))


recipes_app = typer.Typer(
    help="List the built-in recipes, or show one fully resolved.\n\n"
    "Examples:\n\n  mrcli recipes\n\n  mrcli recipes show r101_fpn --json",
    invoke_without_command=True,
    no_args_is_help=False,
)


def recipe_row(recipe: config_lib.Recipe) -> dict[str, Any]:
    """What `mrcli recipes` lists of a recipe."""
    cfg = recipe.config
    b = cfg.model.backbone
    return {
        "name": recipe.name,
        "description": recipe.summary,
        "backbone": model_name(cfg.model) + (f" (width {b.width})" if b.width != 64 else ""),
        "image_size": f"{cfg.data.image_size}/{cfg.data.max_size}",
        "schedule": f"{cfg.train.steps} steps @ batch {cfg.train.global_batch}",
        "dataset": cfg.data.dataset,
    }


def model_name(cfg) -> str:
    """R50-FPN, NIN-FPN, R14-FPN + NIN head: the backbone, and the box head where not fc."""
    b = cfg.backbone
    name = ("NIN" if b.kind == "nin" else f"R{b.depth}") + "-FPN"
    return name + (" + NIN head" if cfg.box_head.kind == "nin" else "")


def recipes_table(recipes: list[config_lib.Recipe]) -> Table:
    """The recipes at 80 columns: the name and numbers never wrap, the
    description wraps in its own column."""
    table = Table(title="recipes")
    table.add_column("recipe", no_wrap=True)
    table.add_column("model", no_wrap=True)
    table.add_column("steps x batch", no_wrap=True, justify="right")
    table.add_column("what", ratio=1)
    for recipe in recipes:
        cfg = recipe.config
        table.add_row(recipe.name, f"{model_name(cfg.model)} {cfg.data.image_size}px",
                      f"{cfg.train.steps:,} x {cfg.train.global_batch}", recipe.summary)  # fmt: skip
    return table


@recipes_app.callback()
def recipes_list(ctx: typer.Context, as_json: Json = False) -> None:
    """List the recipes: name, model, schedule, what each is for."""
    if ctx.invoked_subcommand is not None:
        return
    recipes = [config_lib.load_recipe(n) for n in config_lib.recipe_names()]
    if as_json:
        print_json([recipe_row(r) for r in recipes])
        return
    out.print(recipes_table(recipes))


@recipes_app.command("show")
def recipes_show(
    name: Annotated[str, typer.Argument(help="Recipe name (see `mrcli recipes`).")],
    sets: Sets = None,
    as_json: Json = False,
) -> None:
    """Show a recipe's fully resolved config (defaults + recipe + --set).

    Example: mrcli recipes show tiny --set model.dtype=bfloat16 --json
    """
    cfg = config_lib.resolve(name, sets or [])
    data = config_lib.to_dict(cfg)
    if as_json:
        print_json(data)
        return
    changed = config_lib.diff(cfg)
    tree = Tree(f"[bold]{name}[/] (fields changed from the defaults in bold)")

    def add(branch: Tree, values: dict[str, Any], prefix: str) -> None:
        for key, value in values.items():
            if isinstance(value, dict):
                add(branch.add(f"[cyan]{key}[/]"), value, f"{prefix}{key}.")
            else:
                label = f"{key} = {value}"
                branch.add(f"[bold yellow]{label}[/]" if f"{prefix}{key}" in changed else label)

    add(tree, data, "")
    out.print(tree)
