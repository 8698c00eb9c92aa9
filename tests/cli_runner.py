"""Run the mrcli command line inside the test process (fast; exit codes kept)."""

from __future__ import annotations


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run `mrcli ARGS` in this process: (exit code, stdout, stderr)."""
    from mrcli.cli import app

    capsys.readouterr()
    try:
        app(list(args), prog_name="mrcli")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err
