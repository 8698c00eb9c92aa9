"""Model speed: inference and the train step of R50-FPN / R101-FPN, mrcli against torchvision.

    python benchmarks/model.py                          # everything (CPU: ~30-60 min)
    python benchmarks/model.py --models r50 --batches 1 --modes infer
    python benchmarks/model.py --no-torchvision --dtype bfloat16    # GPU/TPU
    python benchmarks/model.py --json results.json

For each model, batch size and mode, on an 800 x 1344 bucket (COCO's short
side 800, long side <= 1333 padded to a multiple of 32):

  infer   Model.detect: backbone, FPN, RPN + 1000 proposals, box head,
          per-class NMS, mask head on the 100 detections (jit)
  train   one optimiser step of mrcli.train.make_train_step (SGD, the
          tiny-to-COCO training step: 2000 proposals, 512 RoIs, 128 mask
          slots per image; frozen stem + res2), on a synthetic batch

Reported: compile (trace + XLA compile, seconds), step (median of --steps
calls after one warm-up, seconds), images/s = batch / step. Static shapes
make the cost independent of the weights and the image content, so random
weights and random pixels give the real numbers.

torchvision (`--torchvision`, default on where it is installed) runs the same
architecture (MaskRCNN + resnet_fpn_backbone, FrozenBatchNorm2d, 91 classes)
on the same machine with torch's own thread pool. On a CPU-only torch it goes
through tests/torchvision_ref.py: NMS is a pure-torch greedy loop and RoIAlign
torchvision's Python fallback (torch.compile'd on first use; that is its
"compile" column), not the compiled kernels a CUDA build has, so its CPU
numbers are a lower bound on what compiled kernels would give, and its train
step is not run there: the fallback's RoIAlign of the full-image gt masks
(project_masks_on_boxes) asks for 13-34 GB at 800 x 1344.

Not a test: nothing is asserted. The numbers go into the issue notes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

H, W = 800, 1344
DEPTHS = {"r50": 50, "r101": 101}


def _synthetic_batch(b: int, n: int = 100, objects: int = 10, g: int = 112, seed: int = 0):
    """A training batch in the data pipeline's format: `objects` boxes per image with
    elliptic masks, padded to `n` instances."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:g, 0:g] + 0.5
    ellipse = (((yy / g - 0.5) ** 2 + (xx / g - 0.5) ** 2) < 0.25).astype(np.uint8)
    boxes = np.zeros((b, n, 4), np.float32)
    for i in range(b):
        wh = rng.uniform(32, 400, (objects, 2))
        xy = rng.uniform(0, 1, (objects, 2)) * (np.array([W, H]) - wh)
        boxes[i, :objects] = np.concatenate([xy, xy + wh], 1)
    valid = np.zeros((b, n), bool)
    valid[:, :objects] = True
    return {
        "image": rng.normal(size=(b, H, W, 3)).astype(np.float32),
        "image_info": np.tile(np.array([H, W, 1.0, H, W], np.float32), (b, 1)),
        "gt_boxes": boxes,
        "gt_classes": np.where(valid, rng.integers(1, 81, (b, n)), 0).astype(np.int32),
        "gt_masks": np.where(valid[:, :, None, None], ellipse, 0).astype(np.uint8),
        "gt_valid": valid,
        "gt_crowd": np.zeros((b, n), bool),
    }


def _time(fn, steps: int, warmup: bool = True) -> float:
    if warmup:
        fn()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_mrcli(depth: int, mode: str, batch: int, steps: int, dtype: str) -> dict:
    from mrcli import model, train
    from mrcli.config import Config, override

    cfg = override(Config(), {"model.depth": depth, "model.num_classes": 90,
                              "model.dtype": dtype, "train.global_batch": batch})  # fmt: skip
    m, state = model.create(cfg.model, seed=0)
    data = _synthetic_batch(batch)
    if mode == "infer":
        images, info = jax.device_put(data["image"]), jax.device_put(data["image_info"])
        t = time.perf_counter()
        compiled = jax.jit(m.detect).lower(state, images, info).compile()
        compile_s = time.perf_counter() - t
        step_s = _time(lambda: jax.block_until_ready(compiled(state, images, info)), steps)
    else:
        params, constants = model.split_params(state)
        tx = train.make_optimizer(cfg.train)
        mesh = train.make_mesh(jax.devices()[:1])
        step = train.make_train_step(train.model_loss(m), tx, mesh, train.learning_rate(cfg.train))
        ts = train.init_state(params, tx, seed=0, constants=constants)
        data = train.shard_batch(data, mesh)
        t = time.perf_counter()
        compiled = step.lower(ts, data).compile()
        compile_s = time.perf_counter() - t
        holder = {"ts": ts}

        def run():
            holder["ts"], metrics = compiled(holder["ts"], data)
            jax.block_until_ready(metrics)

        step_s = _time(run, steps)
    return {"compile_s": compile_s, "step_s": step_s, "images_per_s": batch / step_s}


def _torchvision():
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import torchvision_ref

    return torchvision_ref.load()


def bench_torchvision(depth: int, mode: str, batch: int, steps: int) -> dict:
    import torch

    _torchvision()  # torchvision importable on a CPU-only torch
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops import FrozenBatchNorm2d

    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(backbone_name=f"resnet{depth}", weights=None,
                                   norm_layer=FrozenBatchNorm2d, trainable_layers=3)  # fmt: skip
    net = MaskRCNN(backbone, num_classes=91, min_size=H, max_size=W)
    data = _synthetic_batch(batch)
    # The same pixels, in [0, 1] (torchvision normalises inside the model).
    images = [torch.from_numpy(img).permute(2, 0, 1).sigmoid() for img in data["image"]]
    if mode == "infer":
        net.eval()

        def run():
            with torch.no_grad():
                net(images)
    else:
        if not hasattr(torch.ops.torchvision, "roi_align"):
            raise RuntimeError(
                "not run: torchvision's compiled kernels are not loaded (CPU-only torch), and its "
                "Python RoIAlign fallback asks for 13-34 GB for the mask targets at 800x1344"
            )
        net.train()
        opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.02 * batch / 16,
                              momentum=0.9, weight_decay=1e-4)  # fmt: skip
        targets = []
        for i in range(batch):
            v = data["gt_valid"][i]
            boxes = torch.from_numpy(data["gt_boxes"][i][v])
            masks = torch.zeros((int(v.sum()), H, W), dtype=torch.uint8)
            for j, (x1, y1, x2, y2) in enumerate(boxes.round().int().tolist()):
                masks[j, y1:y2, x1:x2] = 1
            targets.append({"boxes": boxes, "labels": torch.from_numpy(data["gt_classes"][i][v]).long(),
                            "masks": masks})  # fmt: skip

        def run():
            losses = net(images, targets)
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()

    t = time.perf_counter()
    run()  # first call: torch.compile of the RoIAlign fallback, allocator warm-up
    first_s = time.perf_counter() - t
    step_s = _time(run, steps, warmup=False)  # the first call was the warm-up
    return {"compile_s": first_s, "step_s": step_s, "images_per_s": batch / step_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="r50,r101")
    p.add_argument("--batches", default="1,2")
    p.add_argument("--modes", default="infer,train")
    p.add_argument("--steps", type=int, default=3, help="timed calls after one warm-up")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--torchvision", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--no-mrcli", dest="mrcli", action="store_false", help="torchvision rows only")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args()
    with_tv = args.torchvision
    if with_tv is None:
        try:
            with_tv = _torchvision() is not None
        except Exception:  # noqa: BLE001
            with_tv = False
    if with_tv:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)

    dev = jax.devices()[0]
    print(f"# {dev.platform} {getattr(dev, 'device_kind', '')}, {os.cpu_count()} CPU cores, "
          f"jax {jax.__version__}, mrcli dtype {args.dtype}, {H}x{W}", flush=True)  # fmt: skip
    header = "| model | mode | batch | impl | compile / first call (s) | step (s) | images/s |"
    print(header + "\n|---|---|---|---|---|---|---|", flush=True)
    rows = []
    for name in args.models.split(","):
        for mode in args.modes.split(","):
            for b in (int(x) for x in args.batches.split(",")):
                impls = []
                if args.mrcli:
                    impls.append(("mrcli", lambda: bench_mrcli(DEPTHS[name], mode, b, args.steps, args.dtype)))
                if with_tv:
                    impls.append(("torchvision", lambda: bench_torchvision(DEPTHS[name], mode, b, args.steps)))
                for impl, fn in impls:
                    try:
                        r = fn()
                    except Exception as e:  # noqa: BLE001 - report and go on (e.g. out of memory)
                        r = {"error": f"{type(e).__name__}: {e}"[:200]}
                    row = {"model": name.upper() + "-FPN", "mode": mode, "batch": b, "impl": impl, **r}
                    rows.append(row)
                    if "error" in r:
                        print(f"| {row['model']} | {mode} | {b} | {impl} | error: {r['error']} | | |", flush=True)
                    else:
                        print(f"| {row['model']} | {mode} | {b} | {impl} | {r['compile_s']:.1f} | "
                              f"{r['step_s']:.2f} | {r['images_per_s']:.3f} |", flush=True)  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
