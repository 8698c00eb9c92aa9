"""`python -m mrcli.cli`: the command line."""

from mrcli.cli import app

app(prog_name="mrcli")
