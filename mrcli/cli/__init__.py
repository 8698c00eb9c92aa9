"""The mrcli command line: each command parses, calls one library function, prints.

    core.py      the Typer app, exit codes (2 for a user's mistake, 1 for a
                 failure), --debug, --version, the compilation cache
    options.py   options several commands share (--workdir, --checkpoint, ...)
    display.py   consoles (stdout for output, stderr for progress), JSON,
                 tables, the progress renderer (mrcli.progress.Report)
    info.py      info, recipes           prepare.py   prepare
    data.py      show, datasets          train.py     train, quickstart
    evaluate.py  eval                    predict.py   predict
    export.py    export                  weights.py   weights import
    compare.py   compare                 launch.py    launch

Library modules are imported inside the commands, so that `mrcli --help`
starts without importing JAX.
"""

from mrcli.cli import (compare, data, evaluate, export, info, launch, predict, prepare, train,
                       weights)
from mrcli.cli.core import app

app.command()(info.info)
app.add_typer(info.recipes_app, name="recipes")
app.add_typer(prepare.prepare_app, name="prepare")
app.command()(data.show)
app.command()(data.datasets)
app.command()(train.train)
app.command("eval")(evaluate.eval_cmd)
app.command()(predict.predict)
app.command()(train.quickstart)
app.add_typer(weights.weights_app, name="weights")
app.command("export")(export.export)
app.command("compare")(compare.compare)
app.command("launch")(launch.launch)

__all__ = ["app"]
