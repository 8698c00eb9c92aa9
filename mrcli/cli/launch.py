"""`mrcli launch`: N local processes of one multi-process run (mrcli.launch)."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer


def _mrcli_commands() -> set[str]:
    from mrcli.cli.core import app

    names = {c.name or c.callback.__name__ for c in app.registered_commands if c.callback}
    return names | {g.name for g in app.registered_groups if g.name}


def resolve(command: list[str]) -> list[str]:
    """An mrcli command (`train ...`) runs as this Python's `-m mrcli.cli`; anything else as given."""
    if command and command[0] in _mrcli_commands():
        return [sys.executable, "-m", "mrcli.cli", *command]
    return list(command)


def launch(
    command: Annotated[
        list[str], typer.Argument(help="After --: an mrcli command (train ..., eval ...) or any program.")
    ],
    processes: Annotated[int, typer.Option("--processes", "-n", help="How many processes.")] = 2,
    devices_per_process: Annotated[
        Optional[int],
        typer.Option("--devices-per-process", help="CPU devices each process simulates "
                     "(XLA_FLAGS --xla_force_host_platform_device_count); default: as configured."),
    ] = None,
) -> None:
    """Run one multi-process JAX run as N local processes: a laptop rehearsal of a cluster run.

    Each process gets JAX_COORDINATOR_ADDRESS (127.0.0.1 and a free port),
    JAX_NUM_PROCESSES, JAX_PROCESS_ID and gloo CPU collectives; its output
    lines are prefixed with its index. When one fails the others are stopped;
    the exit code is the worst of theirs.

    Examples:

      mrcli launch -n 2 -- train --recipe tiny --data shapes --workdir runs/t

      mrcli launch -n 2 --devices-per-process 4 -- eval --workdir runs/t

      mrcli launch -n 2 -- python my_script.py
    """
    from mrcli.launch import launch as launch_lib

    code = launch_lib(resolve(command), processes, devices_per_process)
    raise typer.Exit(code)
