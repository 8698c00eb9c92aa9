"""Inference speed of R50-FPN / R101-FPN, mrcli against torchvision (training: benchmarks/train.py).

    python benchmarks/model.py                          # everything (CPU: ~10-20 min)
    python benchmarks/model.py --models r50 --batches 1
    python benchmarks/model.py --no-torchvision --dtype bfloat16    # GPU/TPU
    python benchmarks/model.py --json results.json

For each model and batch size, on an 800 x 1344 bucket (COCO's short side
800, long side <= 1333 padded to a multiple of 32): Model.detect (backbone,
FPN, RPN + 1000 proposals, box head, per-class NMS, mask head on the 100
detections), jit.

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
numbers are a lower bound on what compiled kernels would give. PyPI's
default (CUDA) builds of torch and torchvision load their compiled CPU
kernels without a GPU (BENCHMARKS.md: the CPU peer rows).

Not a test: nothing is asserted. The numbers go into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import jax

sys.path.insert(0, os.path.dirname(__file__))
from common import median_time, synthetic_batch, torchvision, torchvision_inputs, torchvision_maskrcnn  # noqa: E402

H, W = 800, 1344
DEPTHS = {"r50": 50, "r101": 101}


def bench_mrcli(depth: int, batch: int, steps: int, dtype: str) -> dict:
    """The compiled detect that eval and predict run (mrcli.inference.Predictor), on
    one device; the first call compiles."""
    from mrcli.config import Config, override

    cfg = override(Config(), {"model.backbone.depth": depth, "model.num_classes": 90,
                              "model.dtype": dtype})  # fmt: skip
    return bench_detect(cfg, batch, (H, W), steps)


def bench_detect(cfg, batch: int, size: tuple[int, int], steps: int) -> dict:
    """Model.detect of `cfg`'s model through a Predictor on one device, at `batch`
    images of `size`: compile_s (the first call), step_s (median), images_per_s."""
    from mrcli import model, parallel
    from mrcli.config import override
    from mrcli.inference import Predictor

    cfg = override(cfg, {"eval.batch_size": batch})
    m, state = model.create(cfg.model, seed=0)
    predictor = Predictor(m, state, cfg, mesh=parallel.make_mesh(jax.devices()[:1]))
    data = synthetic_batch(batch, *size, num_classes=cfg.model.num_classes)

    def run():
        jax.block_until_ready(predictor.dispatch(data["image"], data["image_info"]))

    t = time.perf_counter()
    run()
    first_s = time.perf_counter() - t
    step_s = median_time(run, steps, warmup=False)  # the first call was the warm-up
    return {"compile_s": first_s, "step_s": step_s, "images_per_s": batch / step_s}


def bench_torchvision(depth: int, batch: int, steps: int, size: tuple[int, int] = (H, W), **model_kwargs) -> dict:
    """torchvision's model in eval mode on `batch` images of `size` (on CUDA where
    torch has it, else the CPU), synchronised before the clock stops; `model_kwargs`
    go to its MaskRCNN."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = torchvision_maskrcnn(depth, *size, **model_kwargs).to(device)
    images, _ = torchvision_inputs(synthetic_batch(batch, *size), device)
    net.eval()

    def run():
        with torch.no_grad():
            net(images)
        if device == "cuda":
            torch.cuda.synchronize()

    t = time.perf_counter()
    run()  # first call: torch.compile of the RoIAlign fallback, allocator warm-up
    first_s = time.perf_counter() - t
    step_s = median_time(run, steps, warmup=False)  # the first call was the warm-up
    return {"compile_s": first_s, "step_s": step_s, "images_per_s": batch / step_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="r50,r101")
    p.add_argument("--batches", default="1,2")
    p.add_argument("--steps", type=int, default=3, help="timed calls after one warm-up")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--torchvision", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--no-mrcli", dest="mrcli", action="store_false", help="torchvision rows only")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args()
    with_tv = args.torchvision
    if with_tv is None:
        try:
            with_tv = torchvision() is not None
        except Exception:  # noqa: BLE001
            with_tv = False
    if with_tv:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)

    dev = jax.devices()[0]
    print(f"# {dev.platform} {getattr(dev, 'device_kind', '')}, {os.cpu_count()} CPU cores, "
          f"jax {jax.__version__}, mrcli dtype {args.dtype}, {H}x{W}", flush=True)  # fmt: skip
    header = "| model | batch | impl | compile / first call (s) | step (s) | images/s |"
    print(header + "\n|---|---|---|---|---|---|", flush=True)
    rows = []
    for name in args.models.split(","):
        for b in (int(x) for x in args.batches.split(",")):
            impls = []
            if args.mrcli:
                impls.append(("mrcli", lambda: bench_mrcli(DEPTHS[name], b, args.steps, args.dtype)))
            if with_tv:
                impls.append(("torchvision", lambda: bench_torchvision(DEPTHS[name], b, args.steps)))
            for impl, fn in impls:
                try:
                    r = fn()
                except Exception as e:  # noqa: BLE001 - report and go on (e.g. out of memory)
                    r = {"error": f"{type(e).__name__}: {e}"[:200]}
                row = {"model": name.upper() + "-FPN", "batch": b, "impl": impl, **r}
                rows.append(row)
                if "error" in r:
                    print(f"| {row['model']} | {b} | {impl} | error: {r['error']} | | |", flush=True)
                else:
                    print(f"| {row['model']} | {b} | {impl} | {r['compile_s']:.1f} | "
                          f"{r['step_s']:.2f} | {r['images_per_s']:.3f} |", flush=True)  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
