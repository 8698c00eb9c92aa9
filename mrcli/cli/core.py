"""The Typer app: exit codes, --debug, --version, and what every command shares.

Conventions (docs/design.md §7): a command's output (a table, a list, --json)
goes to stdout; progress and messages go to stderr. A user's mistake
(mrcli.errors.UserError) prints one line and exits 2; any other failure prints
one line and exits 1; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from mrcli import __version__
from mrcli.cli.display import err
from mrcli.errors import Failure, UserError

_state = {"debug": False}


class _App(typer.Typer):
    """A Typer app that turns exceptions into one line and an exit code."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except UserError as e:
            if _state["debug"]:
                raise
            err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            sys.exit(2)
        except Failure as e:
            if _state["debug"]:
                raise
            err.print(f"[bold red]failed:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            sys.exit(1)
        except Exception as e:  # noqa: BLE001 - the last line of defence
            if _state["debug"]:
                raise
            err.print(
                f"[bold red]failed:[/] {type(e).__name__}: {escape(str(e))} (run with --debug for "
                "the traceback)",
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


def use_compilation_cache() -> None:
    """Reuse compiled programs across runs (a resumed run, eval after train):
    JAX's persistent cache in $JAX_COMPILATION_CACHE_DIR, else ~/.cache/mrcli/jax,
    for programs that took over a second to compile. Before JAX is imported
    (a command-line process) through the environment JAX reads its defaults
    from, so that commands that compute nothing do not import JAX."""
    path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.expanduser("~/.cache/mrcli/jax")
    if "jax" in sys.modules:  # the app called inside a program that already uses JAX
        import jax

        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    else:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = path
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1.0")


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
    use_compilation_cache()
