"""Training throughput: images/s and compile time per bucket, mrcli against torchvision.

    python benchmarks/train.py                                   # tiny recipe, this CPU (~2 min)
    python benchmarks/train.py --recipe r50_fpn_1x --batch 8 --dtype bfloat16     # a GPU
    python benchmarks/train.py --recipe r101_fpn --batch 8 --dtype bfloat16
    python benchmarks/train.py --recipe r50_fpn_1x --batch 1 --size 512x512      # CPU, reduced
    python benchmarks/train.py --json rows.json

For the recipe's model, optimiser and sampling counts, at `--batch` images a
step over all local devices (default: the recipe's global batch) and for each
of its buckets (or `--size HxW`):

  step      one compiled optimiser step (mrcli.train.make_train_step, jit over
            the data mesh, state donated) on a synthetic batch in the
            pipeline's format: compile seconds (trace + XLA), median step
            seconds over --steps calls after a warm-up, images/s.
  pipeline  (--pipeline, default on for tiny) the train loop's inner part
            end to end: batches from the prepared dataset (`--data`, default
            the recipe's; the shapes data is prepared in a temporary folder if
            absent) through grain's workers, sharded onto the devices and
            stepped; images/s over --pipeline-steps steps after compiling.

torchvision (default on where it is installed and the recipe is a ResNet
model: torchvision has no R14/GroupNorm model like tiny's) runs its
maskrcnn_resnet{50,101}_fpn training step (FrozenBatchNorm2d, stem + res2
frozen, SGD) at the same batch and image size, under AMP (torch.autocast,
float16) on CUDA, in float32 on a CPU. It needs torchvision's compiled
kernels: on a CPU-only torch (tests/torchvision_ref.py) its Python RoIAlign
fallback ran out of memory (24 GB) in training even at 256 x 256, batch 1,
so the row reports that instead. On a CPU the kernels come with PyPI's
default (CUDA) builds of torch and torchvision, whose compiled CPU kernels
load without a GPU (BENCHMARKS.md says how to install them beside mrcli).
Its first call (allocator warm-up, cuDNN autotuning) is the "compile" column.

Static shapes make the cost independent of the content, so random weights and
synthetic batches give the real step time. Not a test: nothing is asserted;
the numbers go into BENCHMARKS.md with the device and date.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import jax

sys.path.insert(0, os.path.dirname(__file__))
from common import median_time, synthetic_batch, torchvision, torchvision_inputs, torchvision_maskrcnn  # noqa: E402


def _config(args):
    from mrcli import config as config_lib

    sets = [f"model.dtype={args.dtype}", *args.set]
    if args.batch:
        sets.append(f"train.global_batch={args.batch}")
    if args.size:
        h, w = (int(v) for v in args.size.lower().split("x"))
        sets += [f"data.buckets=[[{h},{w}]]", f"data.image_size={min(h, w)}",
                 f"data.max_size={max(h, w)}", f"data.train_scales={min(h, w)}"]  # fmt: skip
    return config_lib.resolve(args.recipe, sets)


def _train_step(cfg):
    """(jitted step, initial train state on the devices, mesh) of the recipe, as
    `mrcli train` builds them (freshly initialised weights)."""
    from mrcli import model, parallel, train

    m, state = model.create(cfg.model, seed=0)
    params, constants = model.split_params(state)
    tx = train.make_optimizer(cfg.train)
    mesh = parallel.make_mesh()
    step = train.make_train_step(train.model_loss(m), tx, mesh, train.learning_rate(cfg.train))
    ts = jax.device_put(train.init_state(params, tx, seed=0, constants=constants),
                        parallel.replicated(mesh))  # fmt: skip
    return step, ts, mesh


def bench_step(cfg, bucket, steps: int) -> dict:
    """Compile and median step time of the recipe's train step at one bucket."""
    from mrcli import parallel

    b = cfg.train.global_batch
    step, ts, mesh = _train_step(cfg)
    n = cfg.data.max_instances
    data = synthetic_batch(b, *bucket, n=n, objects=min(10, n), g=cfg.data.mask_crop_size,
                           num_classes=cfg.model.num_classes)  # fmt: skip
    data = parallel.shard_batch(data, mesh)
    t = time.perf_counter()
    compiled = step.lower(ts, data).compile()
    compile_s = time.perf_counter() - t
    holder = {"ts": ts}

    def run():
        holder["ts"], metrics = compiled(holder["ts"], data)
        jax.block_until_ready(metrics)

    step_s = median_time(run, steps)
    return {"compile_s": compile_s, "step_s": step_s, "images_per_s": b / step_s}


def bench_pipeline(cfg, data_dir, steps: int) -> dict:
    """images/s of data pipeline + sharding + compiled step, as the train loop runs them."""
    from mrcli import parallel
    from mrcli.data import pipeline
    from mrcli.data.store import find_dataset

    ds = find_dataset(cfg.data.dataset, data_dir)
    step, ts, mesh = _train_step(cfg)
    warm = len(cfg.data.resolved_buckets()) * 4  # every bucket compiled before the clock starts
    with pipeline.train_batches(cfg, ds, num_steps=warm + steps) as batches:
        for _ in range(warm):
            ts, metrics = step(ts, parallel.shard_batch(next(batches), mesh))
        jax.block_until_ready(metrics)
        t = time.perf_counter()
        for _ in range(steps):
            ts, metrics = step(ts, parallel.shard_batch(next(batches), mesh))
        jax.block_until_ready(metrics)
        wall = time.perf_counter() - t
    b = cfg.train.global_batch
    return {"step_s": wall / steps, "images_per_s": b * steps / wall}


def bench_torchvision(depth: int, batch: int, h: int, w: int, steps: int, objects: int) -> dict:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not hasattr(torch.ops.torchvision, "roi_align"):
        # Measured on a 2-core, 24 GB machine: killed for memory at 512 x 512 and
        # at 256 x 256, batch 1 (24 GB resident).
        raise RuntimeError("not run: torchvision's compiled kernels are not loaded (CPU-only "
                           "torch); its Python RoIAlign fallback runs out of memory in training; "
                           "PyPI's CUDA builds of torch and torchvision have them (BENCHMARKS.md)")  # fmt: skip
    net = torchvision_maskrcnn(depth, h, w).to(device).train()
    images, targets = torchvision_inputs(synthetic_batch(batch, h, w, objects=objects), device)
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.02 * batch / 16,
                          momentum=0.9, weight_decay=1e-4)  # fmt: skip
    amp = device == "cuda"
    scaler = torch.amp.GradScaler(device, enabled=amp)

    def run():
        with torch.autocast(device, dtype=torch.float16, enabled=amp):
            losses = net(images, targets)
        opt.zero_grad()
        scaler.scale(sum(losses.values())).backward()
        scaler.step(opt)
        scaler.update()
        if device == "cuda":
            torch.cuda.synchronize()

    t = time.perf_counter()
    run()
    first_s = time.perf_counter() - t
    step_s = median_time(run, steps, warmup=False)  # the first call was the warm-up
    return {"compile_s": first_s, "step_s": step_s, "images_per_s": batch / step_s,
            "precision": "amp float16" if amp else "float32"}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="tiny")
    p.add_argument("--batch", type=int, default=0, help="global batch (default: the recipe's)")
    p.add_argument("--size", help="one bucket HxW instead of the recipe's buckets")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--set", action="append", default=[], help="more config overrides, key=value")
    p.add_argument("--steps", type=int, default=5, help="timed step calls after one warm-up")
    p.add_argument("--pipeline", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--pipeline-steps", type=int, default=100)
    p.add_argument("--data", help="prepared dataset for --pipeline (default: the recipe's)")
    p.add_argument("--data-dir")
    p.add_argument("--torchvision", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args()

    cfg = _config(args)
    from mrcli.parallel import use_cpu_cores

    use_cpu_cores(cfg.train.global_batch)  # as `mrcli train` does on a CPU host
    if args.data:
        from mrcli import config as config_lib

        cfg = config_lib.override(cfg, {"data.dataset": args.data})
    resnet = cfg.model.backbone.depth in (50, 101) and cfg.model.backbone.norm == "frozen_bn"
    with_tv = args.torchvision
    if with_tv is None:
        try:
            with_tv = resnet and torchvision() is not None
        except Exception:  # noqa: BLE001
            with_tv = False
    if with_tv:
        import torch

        torchvision()
        torch.set_num_threads(os.cpu_count() or 1)
    dev = jax.devices()[0]
    print(f"# {time.strftime('%Y-%m-%d')}, {jax.device_count()} x {dev.platform} "
          f"{getattr(dev, 'device_kind', '')}, {os.cpu_count()} CPU cores, jax {jax.__version__}; "
          f"recipe {args.recipe}, global batch {cfg.train.global_batch}, mrcli dtype {args.dtype}",
          flush=True)  # fmt: skip
    print("| what | bucket | impl | compile / first call (s) | step (s) | images/s |\n"
          "|---|---|---|---|---|---|", flush=True)  # fmt: skip
    rows = []

    def emit(row):
        rows.append(row)
        if "error" in row:
            print(f"| {row['what']} | {row['bucket']} | {row['impl']} | error: {row['error']} | | |", flush=True)
            return
        compile_s = f"{row['compile_s']:.1f}" if "compile_s" in row else "-"
        print(f"| {row['what']} | {row['bucket']} | {row['impl']} | {compile_s} | "
              f"{row['step_s']:.3f} | {row['images_per_s']:.2f} |", flush=True)  # fmt: skip

    def attempt(fn):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - report and go on (e.g. out of memory)
            return {"error": f"{type(e).__name__}: {e}"[:200]}

    for h, w in cfg.data.resolved_buckets():
        bucket = f"{h}x{w}"
        emit({"what": "step", "bucket": bucket, "impl": f"mrcli {args.dtype}",
              **attempt(lambda: bench_step(cfg, (h, w), args.steps))})  # fmt: skip
        if with_tv:
            r = attempt(lambda: bench_torchvision(cfg.model.backbone.depth, cfg.train.global_batch, h, w,
                                                  args.steps, min(10, cfg.data.max_instances)))  # fmt: skip
            emit({"what": "step", "bucket": bucket, "impl": f"torchvision {r.pop('precision', '')}".strip(), **r})
    if args.pipeline if args.pipeline is not None else args.recipe == "tiny":
        data_dir = args.data_dir or os.environ.get("MRCLI_DATA")
        with tempfile.TemporaryDirectory() as tmp:
            from mrcli.data.store import find_dataset
            from mrcli.errors import UserError

            try:
                find_dataset(cfg.data.dataset, data_dir)
            except UserError:
                if cfg.data.dataset != "shapes":
                    raise
                from mrcli.data.prepare import prepare_shapes

                data_dir = tmp
                prepare_shapes(data_dir=data_dir)
            buckets = "+".join(f"{h}x{w}" for h, w in cfg.data.resolved_buckets())
            emit({"what": f"pipeline ({cfg.data.dataset}, {cfg.data.num_workers} workers)",
                  "bucket": buckets, "impl": f"mrcli {args.dtype}",
                  **attempt(lambda: bench_pipeline(cfg, data_dir, args.pipeline_steps))})  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
