"""NMS compile and run time: mrcli's greedy loop and its blocked form vs torchvision.

    python benchmarks/nms.py [--sizes 1000 4000 20000] [--max-output 1000] [--reps 5]
    python benchmarks/nms.py --boxes clustered --sizes 2000 --max-output 2000
    python benchmarks/nms.py --alternatives          # also the unsorted-argmax loop

Inputs (`--boxes`): "uniform", N random boxes (corners uniform over a 1333 x
800 image, sides 8..256 pixels) with uniform random scores, so that boxes
overlap as RPN proposals do and the kept set fills max_output at N >= 4000;
or "clustered", boxes jittered around 40 objects with scores falling away
from each object's box (common.proposal_like_boxes), where chains of
suppression are longer. For each N it prints the time of the first call
(trace + compile + run) and the best of `reps` later calls, for: mrcli's
`nms` (one image), the same vmapped over a batch of 2, `nms_blocked` with
tiles of 256 / 512 / 1024 / one tile of N (N <= 4096; with its fixed-point iterations
summed over the tiles: the data-dependent part of its sequential steps), the
blocked form vmapped, and torchvision's `nms` on the same input (whatever
`tests/torchvision_ref.load()` gives: the compiled kernel where it loads,
else a plain-torch greedy loop). It checks that every variant returns
exactly torchvision's first max_output indices, or the greedy loop's where
torchvision is absent.
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

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from common import proposal_like_boxes  # noqa: E402

from mrcli.ops import nms as nms_ops  # noqa: E402
from mrcli.ops.nms import nms, nms_blocked  # noqa: E402

TILES = (256, 512, 1024, 0)  # 0: one tile of N boxes


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


def uniform_boxes(n, seed):
    rng = np.random.default_rng(seed)
    wh = rng.uniform(8, 256, (n, 2))
    xy = rng.uniform(0, 1, (n, 2)) * (np.array([1333.0, 800.0]) - wh)
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    return boxes, rng.random(n).astype(np.float32)


def make_input(kind, n, seed):
    return proposal_like_boxes(n, seed) if kind == "clustered" else uniform_boxes(n, seed)


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


def _blocked_with_iterations(tile):
    """nms_blocked that also returns its fixed-point iterations (summed over tiles)."""
    def run(b, s, thr, d):
        return nms_ops._blocked(b, s, None, thr, d, None, tile or b.shape[0])

    return jax.jit(run, static_argnums=3)


def measure(sizes=(1000, 4000, 20000), max_output=1000, threshold=0.7, reps=5, boxes="uniform",
            tiles=TILES, alternatives=False, torchvision=True, log=None) -> list[dict]:
    """Rows {n, impl, first_ms, run_ms, kept, iterations}; raises if a variant's
    indices differ from the reference (torchvision's, else the greedy loop's)."""
    tv = None
    if torchvision:
        import torchvision_ref

        tv = torchvision_ref.load()
    d, thr = max_output, threshold
    rows = []
    for n in sizes:
        b, s = make_input(boxes, n, 0)
        b1, s1 = make_input(boxes, n, 1)
        b2, s2 = np.stack([b, b1]), np.stack([s, s1])
        want = None
        if tv is not None:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
            tb, ts = torch.from_numpy(b).to(device), torch.from_numpy(s).to(device)

            def tv_nms():
                keep = tv.ops.nms(tb, ts, thr)
                if device == "cuda":
                    torch.cuda.synchronize()
                return keep

            first, run, keep = timed(tv_nms, max(1, min(reps, 3)))
            want = keep[:d].cpu().numpy()
            rows.append({"n": n, "impl": f"torchvision.ops.nms ({device})", "first_ms": first * 1e3,
                         "run_ms": run * 1e3, "kept": len(want), "iterations": None})  # fmt: skip

        variants = [
            ("mrcli nms (greedy)", jax.jit(nms, static_argnums=3), (b, s, thr, d), False),
            ("mrcli nms, vmap B=2", jax.jit(jax.vmap(lambda b, s: nms(b, s, thr, d))), (b2, s2), True),
        ]
        for tile in tiles:
            if not tile and n > 4096:
                continue  # one N x N tile: 35 s to compile and 0.6 s a call at N = 20000 on the CPU
            name = f"nms_blocked tile {tile or n}" + (" (one tile)" if not tile else "")
            variants.append((name, _blocked_with_iterations(tile), (b, s, thr, d), False))
        variants.append(("nms_blocked 512, vmap B=2",
                         jax.jit(jax.vmap(lambda b, s: nms_blocked(b, s, thr, d))), (b2, s2), True))  # fmt: skip
        if alternatives:
            variants.append(("alt: unsorted argmax", nms_unsorted_argmax, (b, s, thr, d), False))
        for name, fn, fargs, batched in variants:
            first, run, out = timed(lambda: fn(*fargs), reps)  # noqa: B023
            idx, ok = np.asarray(out[0]), np.asarray(out[1])
            iterations = int(np.sum(out[2])) if len(out) == 3 else None
            if batched:
                idx, ok = idx[0], ok[0]
            if want is None:
                want = idx[ok]
            if not np.array_equal(idx[ok], want):
                raise SystemExit(f"{name} at N={n}: result differs from the reference")
            rows.append({"n": n, "impl": name, "first_ms": first * 1e3, "run_ms": run * 1e3,
                         "kept": int(ok.sum()), "iterations": iterations})  # fmt: skip
        if log:
            log(f"  N={n} done")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 20000])
    ap.add_argument("--max-output", type=int, default=1000)
    ap.add_argument("--threshold", type=float, default=0.7)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--boxes", choices=["uniform", "clustered"], default="uniform")
    ap.add_argument("--alternatives", action="store_true", help="also the unsorted-argmax loop")
    args = ap.parse_args(argv)
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, {os.cpu_count()} CPUs; {args.boxes} "
          f"boxes, max_output {args.max_output}, IoU threshold {args.threshold}; times in ms "
          f"(first call = trace + compile + run)")  # fmt: skip
    rows = measure(args.sizes, args.max_output, args.threshold, args.reps, args.boxes,
                   alternatives=args.alternatives, log=lambda m: print(m, file=sys.stderr, flush=True))  # fmt: skip
    print(f"\n{'N':>6}  {'implementation':<30} {'first call':>10} {'run':>9} {'kept':>5} {'iterations':>10}")
    for r in rows:
        it = "" if r["iterations"] is None else r["iterations"]
        print(f"{r['n']:>6}  {r['impl']:<30} {r['first_ms']:>10.1f} {r['run_ms']:>9.2f} {r['kept']:>5} {it:>10}")
    print("\nall variants returned exactly the reference's kept indices, in order")


if __name__ == "__main__":
    main()
