"""Tiled prediction of one large dense image: `mrcli predict --tile` end to end.

    python benchmarks/tiled.py [--side 4096] [--tile 512] [--overlap 64] [--workdir RUN] [--set k=v] [--json]

Image: a side x side mosaic of the built-in shapes scenes (mrcli.data.shapes.render,
128 px each, the scale the `tiny` recipe trains at), so a 4096 px image holds
32 x 32 scenes, about 3,500 shapes. Model: a trained run (--workdir; e.g. a
`tiny` run on shapes), else `tiny` freshly initialised with its mask predictor
set to "all foreground" (the merge and the mask crops then still have work).

Reported: wall seconds of predict (read, windows through the compiled model,
merge, label map, RLEs, overlay, writes), the same without compiling, images/s,
windows, instances written, and the process's peak resident memory (ru_maxrss)
before and after predicting: what the tiled path adds on top of the model and
the image. Other load on the machine changes the wall-clock numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from mrcli import checkpoints, predict, tiling  # noqa: E402
from mrcli import config as config_lib  # noqa: E402
from mrcli.data import shapes  # noqa: E402


def mosaic(side: int, scene: int = 128, seed: int = 0) -> np.ndarray:
    """[side, side, 3] uint8: shapes scenes of `scene` px in a grid."""
    n = -(-side // scene)
    out = np.zeros((n * scene, n * scene, 3), np.uint8)
    for k in range(n * n):
        r, c = divmod(k, n)
        img = shapes.render(seed, "val", k, scene)[0]  # long side `scene`
        out[r * scene: r * scene + img.shape[0], c * scene: c * scene + img.shape[1]] = img
    return np.ascontiguousarray(out[:side, :side])


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--side", type=int, default=4096)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--score", type=float, default=0.5)
    ap.add_argument("--workdir")
    # A 512 px window holds 16 scenes, about 56 shapes: the tiny recipe's 20
    # detections (and 128 proposals) per image would cap it.
    ap.add_argument("--set", dest="sets", action="append",
                    default=["model.inference.detections_per_image=200", "model.rpn.post_nms_topk.test=1000",
                             "model.rpn.pre_nms_topk.test=1000"])  # fmt: skip
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from PIL import Image

    from mrcli import model as model_lib
    from mrcli.runs import load_trained

    tmp = Path(tempfile.mkdtemp(prefix="mrcli-bench-tiled-"))
    if args.workdir:
        trained = load_trained(args.workdir, None)
        model_name = args.workdir
    else:
        cfg = config_lib.resolve("tiny", [])
        _, state = model_lib.create(cfg.model)
        pure = checkpoints._pure(state)
        head = pure["mask_head"]["predictor"]
        head["kernel"] = np.zeros_like(head["kernel"])
        head["bias"] = np.full_like(head["bias"], 8.0)
        cats = [{**c, "contiguous_id": k} for k, c in enumerate(shapes.CATEGORIES, 1)]
        trained = load_trained(None, str(checkpoints.save(tmp / "ckpt", pure, cfg, cats)))
        model_name = "tiny, freshly initialised"
    rgb = mosaic(args.side)
    (tmp / "in").mkdir()
    Image.fromarray(rgb).save(tmp / "in" / "large.png")
    tile, overlap = tiling.round_tile(args.tile, args.overlap, trained.config.data.size_divisor)
    windows = len(tiling.tile_windows(args.side, args.side, tile, overlap, trained.config.data.size_divisor))
    del rgb
    before = peak_mb()
    start = time.perf_counter()
    result = predict.run(tmp / "in", tmp / "out", trained=trained, score=args.score, batch_size=args.batch,
                         tile=args.tile, tile_overlap=args.overlap, sets=args.sets)  # fmt: skip
    seconds = time.perf_counter() - start
    out = {
        "side": args.side, "tile": tile, "overlap": overlap, "windows": windows, "batch": result.batch_size,
        "model": model_name, "sets": args.sets, "score": args.score, "instances": result.num_instances,
        "seconds": round(seconds, 2), "compile_seconds": round(result.compile_seconds, 2),
        "images_per_s": round(1 / seconds, 4),
        "steady_images_per_s": round(1 / max(seconds - result.compile_seconds, 1e-9), 4),
        "windows_per_s": round(windows / max(seconds - result.compile_seconds, 1e-9), 2),
        "peak_rss_mb_before": round(before), "peak_rss_mb": round(peak_mb()),
        "image_mb": round(args.side * args.side * 3 / 2**20),
    }  # fmt: skip
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>22}: {v}")


if __name__ == "__main__":
    main()
