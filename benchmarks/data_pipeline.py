"""Input-pipeline throughput: images/s per core on 1024-px COCO-like images.

    python benchmarks/data_pipeline.py [--images 48] [--batch 8] [--workers 0 2] [--json]

Data: `--images` synthetic images with a long side of 1024 px and a short side
of 768..1024 (COCO's photos are 640 px; 1024 px is what a larger dataset or
the 1.6x upscaling of COCO costs), textured backgrounds and noise, stored as
JPEG (quality 92), with up to 12 occluding instances each (about 6 on
average; COCO has 7.3), prepared into a temporary data directory.

Pipeline: the default config (short side 800, long side <= 1333, buckets
800x1344 / 1344x800, flip 0.5, ImageNet normalisation, 100 gt slots, 112x112
mask crops): decode, resize, flip, normalise, pad, crop masks, stack.

Reported:
- per core: images per CPU-second of the whole batch function run in this
  process (CPU time, so other load on the machine does not change it much),
  and a per-stage split of one core's time (decode, resize, normalise + pad
  into the bucket, RLE decode + mask crops, the rest);
- wall clock: images/s through `train_batches` with 0 (one thread in this
  process) and N worker processes; on a shared or small machine this is
  bounded by the free cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from mrcli.config import Config, override  # noqa: E402
from mrcli.data import images as imagelib  # noqa: E402
from mrcli.data import masks as masklib  # noqa: E402
from mrcli.data import pipeline as P  # noqa: E402
from mrcli.data import shapes, store  # noqa: E402


def build(data_dir: str, n: int) -> store.Dataset:
    examples = [shapes.make_example(7, "train", k, 1024, max_shapes=12) for k in range(n)]
    record = {
        "source": {"kind": "benchmark"},
        "categories": list(shapes.CATEGORIES),
        "splits": store.record_summary(list(shapes.CATEGORIES), {"train": examples}),
        "fingerprint": store.fingerprint(list(shapes.CATEGORIES), {"train": examples}),
    }
    store.write_dataset("bench", data_dir, {"train": examples}, record)
    return store.find_dataset("bench", data_dir)


def per_core(ds: store.Dataset, cfg: Config, batch: int, steps: int) -> dict:
    it = P.train_batches(cfg, ds, global_batch=batch, num_workers=0, process_index=0, process_count=1)
    plan, spec = it.plan, P.Spec.from_config(cfg)
    make = P.MakeBatch(ds.source("train"), plan, spec)
    make(0)  # warm up
    c0, w0 = time.process_time(), time.perf_counter()
    for step in range(steps):
        make(step)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    n = steps * batch

    # Per-stage split over the same images (one core).
    src = ds.source("train")
    stages = {"decode": 0.0, "resize": 0.0, "normalise+pad": 0.0, "masks": 0.0}
    count = 0
    for step in range(steps):
        bucket_id, slots = plan[step]
        H, W = spec.buckets[bucket_id]
        for slot in slots:
            rec = src[slot.index]
            h, w = int(rec["height"]), int(rec["width"])
            scale = min(P.resize_scale(h, w, slot.short, spec.max_size), H / h, W / w)
            rh, rw = P.resized_size(h, w, scale)
            t = time.process_time()
            img = imagelib.decode_rgb(rec["image"])
            img.load()
            t1 = time.process_time()
            img = img.resize((rw, rh), imagelib.Image.Resampling.BILINEAR)
            arr = np.asarray(img)
            t2 = time.process_time()
            out = np.zeros((H, W, 3), np.float32)
            dst = out[:rh, :rw].reshape(rh, rw * 3)
            np.subtract(arr.reshape(rh, rw * 3), np.tile(np.float32(spec.mean), rw), out=dst, dtype=np.float32)
            dst *= np.tile(np.float32([1 / s for s in spec.std]), rw)
            t3 = time.process_time()
            crops = np.zeros((spec.max_instances, spec.mask_size, spec.mask_size), np.uint8)
            for j, r in enumerate(rec["rles"]):
                crops[j] = masklib.crop_and_resize(masklib.decode(r, h, w), rec["boxes"][j], spec.mask_size)
            t4 = time.process_time()
            for key, dt in zip(stages, (t1 - t, t2 - t1, t3 - t2, t4 - t3)):
                stages[key] += dt
            count += 1
    ms = {k: 1000 * v / count for k, v in stages.items()}
    ms["other (read, parse, boxes, stack)"] = max(0.0, 1000 * cpu / n - sum(ms.values()))
    return {"images_per_cpu_second": n / cpu, "ms_per_image_cpu": 1000 * cpu / n,
            "images_per_second_wall_1_core": n / wall, "stage_ms_per_image": ms}


def wall(ds: store.Dataset, cfg: Config, batch: int, steps: int, workers: int) -> float:
    with P.train_batches(cfg, ds, global_batch=batch, num_workers=workers,
                         process_index=0, process_count=1) as it:
        next(it)  # start-up (worker spawn) not counted
        if workers:
            time.sleep(2.0)  # let the workers fill their buffers as they would during a compile
        t = time.perf_counter()
        for _ in range(steps):
            next(it)
        return steps * batch / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6, help="batches timed per measurement")
    ap.add_argument("--workers", type=int, nargs="*", default=[0, 2])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cfg = override(Config(), {"data.num_workers": 0})
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        ds = build(tmp, args.images)
        prep_s = time.perf_counter() - t
        idx = ds.index("train")
        res = {
            "images": args.images,
            "mean_instances": float(idx["num_instances"].mean()),
            "image_size": [int(idx["height"].max()), int(idx["width"].max())],
            "cores": os.cpu_count(),
            "prepare_seconds": prep_s,
            "per_core": per_core(ds, cfg, args.batch, args.steps),
            "wall_images_per_second": {str(w): wall(ds, cfg, args.batch, args.steps, w) for w in args.workers},
        }
    if args.json:
        print(json.dumps(res, indent=2))
        return
    pc = res["per_core"]
    print(f"{args.images} images, long side 1024, {res['mean_instances']:.1f} instances/image, "
          f"{res['cores']} cores; batch {args.batch}, default config (800/1333, 112x112 mask crops)")
    print(f"per core: {pc['images_per_cpu_second']:.1f} images/s ({pc['ms_per_image_cpu']:.1f} ms CPU/image)")
    for k, v in pc["stage_ms_per_image"].items():
        print(f"    {k:<34} {v:6.1f} ms")
    for w, v in res["wall_images_per_second"].items():
        print(f"wall clock, {w} worker process(es): {v:.1f} images/s")


if __name__ == "__main__":
    main()
