"""The tiny recipe's result over seeds and device counts: how fragile is "mask AP 0.526"?

    python benchmarks/tiny_spread.py --seeds 0 1 2 3 4 --devices 2
    python benchmarks/tiny_spread.py --seeds 0 --devices 1 8

Each run is `mrcli train --recipe tiny --data shapes` in a fresh workdir with
`--set train.seed=S` and `XLA_FLAGS=--xla_force_host_platform_device_count=D`
(same global batch of 8, so the same update in exact arithmetic; only the
order of floating-point sums differs), then `mrcli eval` on the shapes val
split. One JSON line per run on stdout, then the spread (min / median / max)
of mask and box AP. A run takes ~8 min on an idle 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_one(seed: int, devices: int, root: Path, data_dir: str | None, extra: list[str]) -> dict:
    workdir = root / f"seed{seed}_dev{devices}"
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    data = ["--data-dir", data_dir] if data_dir else []
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mrcli.cli", "train", "--recipe", "tiny", "--data", "shapes",
                    "--workdir", str(workdir), "--set", f"train.seed={seed}", *extra, *data],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    train_s = time.perf_counter() - t0
    out = subprocess.run([sys.executable, "-m", "mrcli.cli", "eval", "--workdir", str(workdir),
                          "--checkpoint", "last", "--json", *data],
                         env=env, check=True, capture_output=True, text=True).stdout
    scores = json.loads(out)
    return {"seed": seed, "devices": devices, "segm_AP": scores["segm_AP"],
            "bbox_AP": scores["bbox_AP"], "train_s": round(train_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--devices", type=int, nargs="+", default=[2])
    ap.add_argument("--root", help="where the workdirs go (default: a temporary folder)")
    ap.add_argument("--data-dir", help="mrcli data directory holding the prepared shapes dataset")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="extra train --set (e.g. to try a recipe change over the same grid)")
    args = ap.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="tiny_spread_"))
    extra = [x for s in args.sets for x in ("--set", s)]
    rows = []
    for devices in args.devices:
        for seed in args.seeds:
            row = run_one(seed, devices, root, args.data_dir, extra)
            rows.append(row)
            print(json.dumps(row), flush=True)
    for key in ("segm_AP", "bbox_AP"):
        v = [r[key] for r in rows]
        print(f"{key}: min {min(v):.3f}  median {statistics.median(v):.3f}  max {max(v):.3f}  "
              f"({len(v)} runs)", flush=True)


if __name__ == "__main__":
    main()
