"""`mrcli quickstart`: the whole workflow on the built-in data, on a CPU.

    prepare shapes -> train --recipe tiny -> eval -> predict (overlays)

Each step is the library function its command calls; a second run reuses the
prepared data and resumes (or skips) the training in the same workdir. The
pictures: the training curves in WORKDIR/plots/curves.png, the evaluation's
in WORKDIR/eval/plots/ (mrcli.evaluate).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from mrcli import config as config_lib
from mrcli import predict, runs
from mrcli.data.prepare import prepare_shapes
from mrcli.data.store import Dataset, find_dataset
from mrcli.errors import UserError
from mrcli.evaluate import run_eval
from mrcli.progress import Report, silent
from mrcli.train import train

RECIPE = "tiny"
DATASET = "shapes"
# Val images written out as files and run through `mrcli predict`.
PREDICT_IMAGES = 8


@dataclass
class QuickstartResult:
    workdir: Path
    eval: dict[str, float]  # bbox_* and segm_* numbers on the val split
    overlays: Path  # the overlay PNGs predict wrote
    seconds: dict[str, float] = field(default_factory=dict)  # per stage
    curves: Path | None = None  # the training curves (WORKDIR/plots/curves.png)
    eval_plots: Path | None = None  # the evaluation's pictures (WORKDIR/eval/plots)

    @property
    def mask_ap(self) -> float:
        return self.eval["segm_AP"]


def _ensure_shapes(data_dir: str | None, report: Report) -> Dataset:
    try:
        ds = find_dataset(DATASET, data_dir)
        report.say(f"using the prepared {DATASET!r} dataset in {ds.path}")
        return ds
    except UserError:
        pass
    report.say(f"preparing the built-in {DATASET!r} dataset")
    prepare_shapes(data_dir=data_dir, name=DATASET)
    return find_dataset(DATASET, data_dir)


def _write_val_images(ds: Dataset, split: str, out: Path, n: int) -> Path:
    """The first `n` images of `split`, as the files a user would have."""
    out.mkdir(parents=True, exist_ok=True)
    src = ds.source(split)
    for k in range(min(n, len(src))):
        ex = src[k]
        name = Path(ex["file_name"].decode() if isinstance(ex["file_name"], bytes)
                    else str(ex["file_name"])).name  # fmt: skip
        (out / name).write_bytes(ex["image"])
    return out


def run(
    workdir: str | os.PathLike[str] = "runs/quickstart",
    *,
    data_dir: str | None = None,
    sets: Sequence[str] = (),
    report: Report | None = None,
) -> QuickstartResult:
    """Prepare the shapes data (once), train the tiny recipe in `workdir`,
    evaluate it on the val split, and predict overlays for a few val images.

    `report` hears each stage ("stage" lines) and what train, eval and predict
    report."""
    report = silent(report)
    workdir = Path(workdir).expanduser()
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    report.say("prepare", "stage")
    ds = _ensure_shapes(data_dir, report)
    seconds["prepare"] = time.perf_counter() - t

    t = time.perf_counter()
    report.say("train", "stage")
    cfg = config_lib.resolve(RECIPE, list(sets))
    cfg = config_lib.override(cfg, {"data.dataset": DATASET, "train.eval_every": 0})
    train(cfg, workdir, data_dir=data_dir, report=report)
    seconds["train"] = time.perf_counter() - t

    t = time.perf_counter()
    report.say("eval", "stage")
    result = run_eval(workdir=str(workdir), checkpoint="last", data=DATASET,
                      out=str(workdir / "eval"), data_dir=data_dir, report=report)  # fmt: skip
    seconds["eval"] = time.perf_counter() - t

    t = time.perf_counter()
    report.say("predict", "stage")
    images = _write_val_images(ds, cfg.data.eval_split, workdir / "val_images", PREDICT_IMAGES)
    pred = predict.run(images, workdir / "predictions", workdir=workdir, checkpoint="last",
                       overwrite=True, report=report)  # fmt: skip
    seconds["predict"] = time.perf_counter() - t
    curves = workdir / runs.PLOTS / runs.CURVES
    return QuickstartResult(workdir=workdir, eval=result.summary(), overlays=pred.out / predict.OVERLAYS_DIR,
                            seconds=seconds, curves=curves if curves.is_file() else None,
                            eval_plots=result.plots[0].parent if result.plots else None)  # fmt: skip
