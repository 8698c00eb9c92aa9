"""`mrcli predict` throughput: images/s end to end (read, decode, resize,
model, paste masks, label maps, RLE, overlays, PNG/JSON writes) against the
model alone on the same batches.

    python benchmarks/predict.py [--images 256] [--batch 8] [--checkpoint DIR | --workdir RUN] [--json]

Images: `--images` shapes images (mrcli.data.shapes.render, long side 128,
JPEG) in a temporary folder. Model: a trained one (--checkpoint/--workdir),
else the `tiny` recipe freshly initialised, its mask predictor set to "all
foreground" so that every detection gets a non-empty mask (an untrained
model's scores are low: --score 0.05 keeps its detections_per_image).

Reported: predict's images/s over the whole run and after compiling (the
summary `mrcli predict` prints), the model's images/s alone (jit, batch
`--batch`, blocked on each batch), instances written, and the host's CPU
seconds per image. Other load on the machine changes the wall-clock numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from mrcli import checkpoints, predict  # noqa: E402
from mrcli import config as config_lib  # noqa: E402
from mrcli.data import shapes  # noqa: E402
from mrcli.data.images import encode_jpeg  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--score", type=float, default=0.05)
    ap.add_argument("--checkpoint")
    ap.add_argument("--workdir")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import jax

    from mrcli import inference
    from mrcli import model as model_lib
    from mrcli.runs import load_trained

    tmp = Path(tempfile.mkdtemp(prefix="mrcli-bench-predict-"))
    if args.checkpoint or args.workdir:
        trained = load_trained(args.workdir, args.checkpoint)
    else:
        cfg = config_lib.resolve("tiny", [])
        _, state = model_lib.create(cfg.model)
        pure = checkpoints._pure(state)
        head = pure["mask_head"]["predictor"]
        head["kernel"], head["bias"] = np.zeros_like(head["kernel"]), np.full_like(head["bias"], 8.0)
        checkpoints.save(tmp / "ckpt", pure, cfg, shapes.CATEGORIES)
        trained = load_trained(None, str(tmp / "ckpt"))
    images = tmp / "images"
    images.mkdir()
    for i in range(args.images):
        rgb, _ = shapes.render(0, "val", i, 128)
        (images / f"{i:05d}.jpg").write_bytes(encode_jpeg(rgb, quality=92))

    cpu0 = time.process_time()
    r = predict.run(images, tmp / "out", trained=trained, score=args.score, batch_size=args.batch)
    cpu = time.process_time() - cpu0

    # The model alone on full batches of the same bucket, already compiled.
    H, W = r.buckets[0]
    x = np.random.default_rng(0).normal(size=(r.batch_size, H, W, 3)).astype(np.float32)
    info = np.tile(np.array([[H, W, 1.0, H, W]], np.float32), (r.batch_size, 1))
    model = inference.with_score_threshold(trained.model, args.score)
    predictor = inference.Predictor(model, trained.state, trained.config, batch_size=r.batch_size)
    jax.block_until_ready(predictor.dispatch(x, info))
    n = max(2, args.images // r.batch_size)
    t = time.perf_counter()
    for _ in range(n):
        jax.block_until_ready(predictor.dispatch(x, info))
    model_ips = n * r.batch_size / (time.perf_counter() - t)

    out = {
        "images": r.num_images, "instances": r.num_instances, "batch": r.batch_size,
        "bucket": [H, W], "seconds": round(r.seconds, 2), "compile_seconds": round(r.compile_seconds, 2),
        "predict_images_per_s": round(r.images_per_s, 2),
        "predict_images_per_s_after_compile": round(r.steady_images_per_s, 2),
        "model_only_images_per_s": round(model_ips, 2),
        "cpu_seconds_per_image": round(cpu / max(1, r.num_images), 4),
        "devices": [str(d) for d in jax.local_devices()], "cpus": os.cpu_count(),
    }  # fmt: skip
    print(json.dumps(out, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
