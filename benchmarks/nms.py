"""NMS compile and run time: mrcli.ops.nms vs alternatives vs torchvision.

    python benchmarks/nms.py [--sizes 1000 4000 20000] [--max-output 1000] [--reps 5]

Inputs: N random boxes (corners uniform over a 1333 x 800 image, sides 8..256
pixels) with uniform random scores, so that boxes overlap as RPN proposals do
and the kept set fills max_output at N >= 4000. For each N it prints the time
of the first call (trace + compile + run) and the best of `reps` later calls,
for: mrcli's `nms` (one image), the same vmapped over a batch of 2, the two
alternative exact algorithms the module docstring discusses, and
torchvision's `nms` on the same input (whatever `tests/torchvision_ref.load()`
gives: the compiled kernel where it loads, else a plain-torch greedy loop).
It checks that every variant returns exactly torchvision's first max_output
indices.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from mrcli.ops import boxes as box_ops  # noqa: E402
from mrcli.ops.nms import nms  # noqa: E402


@functools.partial(jax.jit, static_argnums=3)
def nms_unsorted_argmax(boxes, scores, thr, max_output):
    """Alternative 2: no sort; each step argmax over the masked float scores."""
    n = boxes.shape[0]
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    rem = jnp.where(scores > -jnp.inf, scores, -jnp.inf)

    def body(k, c):
        rem, idx, val = c
        i = jnp.argmax(rem)
        ok = rem[i] > -jnp.inf
        w = jnp.maximum(jnp.minimum(boxes[i, 2], x2) - jnp.maximum(boxes[i, 0], x1), 0)
        h = jnp.maximum(jnp.minimum(boxes[i, 3], y2) - jnp.maximum(boxes[i, 1], y1), 0)
        inter = w * h
        union = areas[i] + areas - inter
        row = jnp.where(union > 0, inter / jnp.where(union > 0, union, 1), 0)
        rem = jnp.where(ok & (row > thr), -jnp.inf, rem).at[i].set(-jnp.inf)
        return rem, idx.at[k].set(jnp.where(ok, i, 0)), val.at[k].set(ok)

    init = (rem, jnp.zeros(max_output, jnp.int32), jnp.zeros(max_output, bool))
    _, idx, val = lax.fori_loop(0, min(max_output, n), body, init)
    return idx, val


@functools.partial(jax.jit, static_argnums=(3, 4))
def nms_blocked(boxes, scores, thr, max_output, tile=256):
    """Alternative 3: sorted tiles; tile x kept-buffer IoU at once, greedy within the tile."""
    n = boxes.shape[0]
    cand = scores > -jnp.inf
    key = jnp.where(cand, -scores, jnp.inf)
    _, order = lax.sort((key, jnp.arange(n, dtype=jnp.int32)), num_keys=1, is_stable=True)
    nb = -(-n // tile)
    pad = nb * tile - n
    b = jnp.pad(boxes[order], ((0, pad), (0, 0))).reshape(nb, tile, 4)
    c = jnp.pad(cand[order], (0, pad)).reshape(nb, tile)
    o = jnp.pad(order, (0, pad)).reshape(nb, tile)
    later = jnp.arange(tile)[:, None] < jnp.arange(tile)[None, :]

    def block(carry, xs):
        kept_boxes, idx, count = carry
        bb, cc, oo = xs
        cc = cc & ~jnp.any(box_ops.iou(bb, kept_boxes) > thr, axis=1)
        m = (box_ops.iou(bb, bb) > thr) & later
        cc = lax.fori_loop(0, tile, lambda i, cc: cc & ~(cc[i] & m[i]), cc)
        pos = jnp.where(cc, count + jnp.cumsum(cc) - 1, max_output)
        kept_boxes = kept_boxes.at[pos].set(bb, mode="drop")
        idx = idx.at[pos].set(oo, mode="drop")
        return (kept_boxes, idx, count + jnp.sum(cc)), None

    init = (jnp.zeros((max_output, 4), boxes.dtype), jnp.zeros(max_output, jnp.int32), jnp.int32(0))
    (_, idx, count), _ = lax.scan(block, init, (b, c, o))
    val = jnp.arange(max_output) < count
    return jnp.where(val, idx, 0), val


def make_input(n, seed):
    rng = np.random.default_rng(seed)
    wh = rng.uniform(8, 256, (n, 2))
    xy = rng.uniform(0, 1, (n, 2)) * (np.array([1333.0, 800.0]) - wh)
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    return boxes, rng.random(n).astype(np.float32)


def timed(fn, reps):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    runs = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        runs.append(time.perf_counter() - t0)
    return first, min(runs), out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 20000])
    ap.add_argument("--max-output", type=int, default=1000)
    ap.add_argument("--threshold", type=float, default=0.7)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-alternatives", action="store_true", help="skip the alternative algorithms")
    args = ap.parse_args(argv)

    import torchvision_ref

    tv = torchvision_ref.load()
    torch = None
    if tv is not None:
        import torch
    d, thr = args.max_output, args.threshold
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, {os.cpu_count()} CPUs; "
          f"max_output {d}, IoU threshold {thr}; times in ms (first call = trace + compile + run)")
    rows = []
    for n in args.sizes:
        b, s = make_input(n, 0)
        b2 = np.stack([b, make_input(n, 1)[0]])
        s2 = np.stack([s, make_input(n, 1)[1]])
        want = None
        if tv is not None:
            tb, ts = torch.from_numpy(b), torch.from_numpy(s)
            first, run, keep = timed(lambda: tv.ops.nms(tb, ts, thr), max(1, min(args.reps, 3)))
            want = keep[:d].numpy()
            rows.append((n, "torchvision.ops.nms", first, run, len(want)))

        variants = [
            ("mrcli nms (sorted)", jax.jit(nms, static_argnums=3), (b, s, thr, d), False),
            ("mrcli nms, vmap B=2", jax.jit(jax.vmap(lambda b, s: nms(b, s, thr, d))), (b2, s2), True),
        ]
        if not args.no_alternatives:
            variants += [
                ("alt: unsorted argmax", nms_unsorted_argmax, (b, s, thr, d), False),
                ("alt: blocked tiles 256", nms_blocked, (b, s, thr, d), False),
            ]
        for name, fn, fargs, batched in variants:
            first, run, (idx, ok) = timed(lambda: fn(*fargs), args.reps)
            idx, ok = np.asarray(idx), np.asarray(ok)
            if batched:
                idx, ok = idx[0], ok[0]
            if want is not None and not np.array_equal(idx[ok], want):
                raise SystemExit(f"{name} at N={n}: result differs from torchvision")
            rows.append((n, name, first, run, int(ok.sum())))
        print(f"  N={n} done", file=sys.stderr, flush=True)

    print(f"\n{'N':>6}  {'implementation':<24} {'first call':>10} {'run':>9} {'kept':>5}")
    for n, name, first, run, kept in rows:
        print(f"{n:>6}  {name:<24} {first * 1e3:>10.1f} {run * 1e3:>9.2f} {kept:>5}")
    if want is not None:
        print("\nall variants returned exactly torchvision's kept indices, in order")


if __name__ == "__main__":
    main()
