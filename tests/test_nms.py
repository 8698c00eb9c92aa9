"""mrcli.ops.nms: exactly the greedy algorithm (same kept set, same order).

Every case runs through each implementation: the greedy loop (`nms`,
`batched_nms`) and the blocked accelerator form (`nms_blocked`,
`batched_nms_blocked`) with its default tile (one tile here), with tiles of
16 (four tiles, each resolved by its fixed-point iteration) and of 7 (tiles
that do not divide N: padding), and the per-platform `nms_auto` (greedy here,
on the CPU)."""

from __future__ import annotations

import functools
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torchvision_ref
from hypothesis import given, settings
from hypothesis import strategies as st

from common import proposal_like_boxes  # benchmarks/common.py (tests/conftest.py puts it on the path)
from mrcli.ops import nms as nms_ops
from mrcli.ops.nms import batched_nms, batched_nms_auto, batched_nms_blocked, nms, nms_auto, nms_blocked

N, D = 64, 32  # fixed shapes: boxes [N, 4], max_output D


class Impl:
    """One NMS implementation: `nms` and `batched_nms` with the module's signatures."""

    def __init__(self, plain, batched):
        self.plain, self.batched = plain, batched
        self.jit_nms = jax.jit(plain, static_argnums=3)
        self.jit_batched = jax.jit(batched, static_argnums=4)


IMPLS = {
    "greedy": Impl(nms, batched_nms),
    "blocked": Impl(nms_blocked, batched_nms_blocked),
    "blocked_tile16": Impl(functools.partial(nms_blocked, tile=16), functools.partial(batched_nms_blocked, tile=16)),
    "blocked_tile7": Impl(functools.partial(nms_blocked, tile=7), functools.partial(batched_nms_blocked, tile=7)),
    "auto": Impl(nms_auto, batched_nms_auto),
}


@pytest.fixture(params=sorted(IMPLS))
def impl(request) -> Impl:
    return IMPLS[request.param]


# --- reference: the textbook loop, float32 scalar arithmetic -------------------------


def ref_iou32(p, q):
    f = np.float32
    iw = max(f(0), min(p[2], q[2]) - max(p[0], q[0]))
    ih = max(f(0), min(p[3], q[3]) - max(p[1], q[1]))
    inter = f(iw * ih)
    union = f(f(f((p[2] - p[0]) * (p[3] - p[1])) + f((q[2] - q[0]) * (q[3] - q[1]))) - inter)
    return f(inter / union) if union > 0 else f(0)


def ref_nms(boxes, scores, thr, classes=None, valid=None):
    """Sort by score (desc), ties by index; keep unsuppressed; suppress later IoU > thr."""
    boxes = np.asarray(boxes, np.float32)
    n = len(boxes)
    ok = [
        (s > -np.inf) and (valid is None or bool(valid[i]))  # NaN > -inf is False
        for i, s in enumerate(np.asarray(scores, np.float32))
    ]
    order = sorted((i for i in range(n) if ok[i]), key=lambda i: (-scores[i], i))
    suppressed = [False] * n
    keep = []
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        for j in order[pos + 1 :]:
            if classes is not None and classes[j] != classes[i]:
                continue
            if ref_iou32(boxes[i], boxes[j]) > np.float32(thr):
                suppressed[j] = True
    return keep


def check(out, keep, d=D):
    idx, valid = (np.asarray(x) for x in out)
    assert idx.shape == (d,) and idx.dtype == np.int32 and valid.dtype == np.bool_
    k = min(len(keep), d)
    assert valid.tolist() == [True] * k + [False] * (d - k)
    assert idx[:k].tolist() == keep[:k]
    assert np.all(idx[k:] == 0)


# --- inputs ---------------------------------------------------------------------


def random_input(seed, n=N, quantum=None, tie_levels=None, spread=120.0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, spread, (n, 2))
    wh = rng.uniform(2, 60, (n, 2))
    b = np.concatenate([xy, xy + wh], 1)
    if quantum:  # exact arithmetic: every IoU decision is bit-identical everywhere
        b = np.round(b / quantum) * quantum
    s = rng.random(n) if tie_levels is None else rng.integers(0, tie_levels, n) / tie_levels
    return b.astype(np.float32), s.astype(np.float32)


def adversarial_input(seed=0):
    rng = np.random.default_rng(seed)
    b, s = random_input(seed, quantum=1.0, tie_levels=4)
    b[0:4] = [10, 10, 50, 50]  # identical boxes
    s[0:4] = [0.5, 0.9, 0.9, 0.1]  # ...with a score tie
    b[4:8] = [[0, 0, 0, 0], [0, 0, 0, 0], [5, 5, 5, 30], [7, 7, 7, 7]]  # zero area
    s[4:8] = 1.0
    b[8:10] = [[0, 0, 20, 10], [0, 0, 10, 10]]  # IoU exactly 0.5
    s[8:10] = [0.99, 0.98]
    b[10:12] = [[-500, -500, -400, -400], [-480, -480, -380, -380]]  # outside the image
    b[12] = [30, 30, 10, 10]  # inverted
    s[13:16] = [-np.inf, np.nan, np.inf]  # never / never / first
    b[16:24] = rng.uniform(40, 42, (8, 4)).cumsum(1).astype(np.float32)  # a dense cluster
    return b, s


CASES = {
    "random": lambda: random_input(0),
    "quarter_pixels_score_ties": lambda: random_input(1, quantum=0.25, tie_levels=5),
    "integer_grid_dense": lambda: random_input(2, quantum=1.0, tie_levels=3, spread=20),
    "adversarial": adversarial_input,
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_matches_reference(case, thr, impl):
    b, s = CASES[case]()
    check(impl.jit_nms(b, s, thr, D), ref_nms(b, s, thr))


def test_output_longer_than_input_and_truncation(impl):
    b, s = random_input(3)
    keep = ref_nms(b, s, 0.5)
    check(impl.jit_nms(b, s, 0.5, 2 * N), keep, 2 * N)
    assert len(keep) > 8
    check(impl.jit_nms(b, s, 0.5, 8), keep, 8)


def test_special_cases(impl):
    jit_nms = impl.jit_nms
    b, s = random_input(4, quantum=1.0)
    # identical boxes, equal scores: the lowest index survives
    same = np.tile(np.float32([[1, 2, 30, 40]]), (N, 1))
    check(jit_nms(same, np.ones(N, np.float32), 0.5, D), [0])
    # all scores -inf, all NaN, all invalid: nothing
    check(jit_nms(b, np.full(N, -np.inf, np.float32), 0.5, D), [])
    check(jit_nms(b, np.full(N, np.nan, np.float32), 0.5, D), [])
    check(jit_nms(b, s, 0.5, D, np.zeros(N, bool)), [])
    # a valid mask equals -inf scores on the masked boxes
    valid = np.random.default_rng(5).random(N) < 0.5
    want = ref_nms(b, s, 0.5, valid=valid)
    check(jit_nms(b, s, 0.5, D, valid), want)
    check(jit_nms(b, np.where(valid, s, -np.inf).astype(np.float32), 0.5, D), want)
    # zero-area boxes never suppress or get suppressed: all kept, by score
    z = np.zeros((N, 4), np.float32)
    check(jit_nms(z, s, 0.0, D), ref_nms(z, s, 0.0))
    assert len(ref_nms(z, s, 0.0)) == N
    # threshold 1.0 suppresses nothing; a negative one suppresses every pair (IoU >= 0 > t)
    check(jit_nms(b, s, 1.0, D), sorted(range(N), key=lambda i: (-s[i], i)))
    check(jit_nms(b, s, -1.0, D), [int(np.argmax(s))])


def test_empty_and_tiny(impl):
    idx, valid = impl.plain(jnp.zeros((0, 4)), jnp.zeros((0,)), 0.5, 5)
    assert idx.shape == (5,) and not np.asarray(valid).any()
    idx, valid = impl.plain(jnp.ones((1, 4)) * jnp.array([0, 0, 1, 1.0]), jnp.ones((1,)), 0.5, 3)
    assert idx.tolist() == [0, 0, 0] and valid.tolist() == [True, False, False]


def _torch():
    tv = torchvision_ref.load()
    if tv is None:
        pytest.skip("torchvision not installed")
    import torch

    return tv, torch


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("thr", [0.5, 0.7])
def test_matches_torchvision(seed, thr, impl):
    tv, torch = _torch()
    # distinct scores: torchvision's compiled kernels do not fix the order of ties
    b, s = random_input(seed, quantum=0.25 if seed else None)
    want = tv.ops.nms(torch.from_numpy(b), torch.from_numpy(s), thr).tolist()
    check(impl.jit_nms(b, s, thr, D), want)
    check(impl.jit_nms(b, s, thr, N), want, N)


def ref_batched(b, s, c, thr):
    keep = []
    for k in np.unique(c):
        members = np.flatnonzero(c == k)
        keep += [int(members[i]) for i in ref_nms(b[members], s[members], thr)]
    return sorted(keep, key=lambda i: (-s[i], i))


@pytest.mark.parametrize("case", sorted(CASES))
def test_batched_matches_reference(case, impl):
    jit_batched = impl.jit_batched
    b, s = CASES[case]()
    c = np.random.default_rng(7).integers(0, 4, N).astype(np.int32)
    want = ref_batched(b, s, c, 0.5)
    assert want == ref_nms(b, s, 0.5, classes=c)  # the two reference forms agree
    check(jit_batched(b, s, c, 0.5, D), want)
    # one class: plain NMS
    check(jit_batched(b, s, np.zeros(N, np.int32), 0.5, D), ref_nms(b, s, 0.5))
    # all different classes: nothing suppressed
    check(jit_batched(b, s, np.arange(N, dtype=np.int32), 0.5, D), ref_nms(b, s, 2.0))


@pytest.mark.parametrize("seed", [0, 1])
def test_batched_matches_torchvision(seed, impl):
    tv, torch = _torch()
    b, s = random_input(seed + 10, quantum=0.25)
    c = np.random.default_rng(seed).integers(0, 5, N).astype(np.int32)
    want = tv.ops.batched_nms(torch.from_numpy(b), torch.from_numpy(s), torch.from_numpy(c).long(), 0.5)
    check(impl.jit_batched(b, s, c, 0.5, D), want.tolist())


def test_vmap_over_a_batch(impl):
    nms, batched_nms = impl.plain, impl.batched
    inputs = [random_input(20), random_input(21, quantum=1.0, tie_levels=3)]
    b = np.stack([x[0] for x in inputs])
    s = np.stack([x[1] for x in inputs])
    valid = np.ones((2, N), bool)
    valid[1, ::3] = False
    f = jax.jit(jax.vmap(lambda b, s, t, v: nms(b, s, t, D, v), in_axes=(0, 0, None, 0)))
    idx, ok = f(b, s, 0.6, valid)
    for i in range(2):
        check((idx[i], ok[i]), ref_nms(b[i], s[i], 0.6, valid=valid[i]))
    c = np.stack([np.arange(N) % 3, np.arange(N) % 2]).astype(np.int32)
    fb = jax.jit(jax.vmap(lambda b, s, c: batched_nms(b, s, c, 0.6, D)))
    idx, ok = fb(b, s, c)
    for i in range(2):
        check((idx[i], ok[i]), ref_batched(b[i], s[i], c[i], 0.6))


@settings(max_examples=20, deadline=None, database=None)
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from([0.0, 0.3, 0.5, 0.7]),
    st.sampled_from([1, 2, 3, 1000]),
    st.floats(0.1, 1.0),
)
def test_property_small_integer_boxes(seed, thr, tie_levels, neg_fraction):
    """Dense small-integer boxes (many exact IoU values, ties), some -inf scores,
    through every implementation (hypothesis' `given` does not mix with fixtures)."""
    rng = np.random.default_rng(seed)
    xy = rng.integers(0, 10, (N, 2))
    b = np.concatenate([xy, xy + rng.integers(0, 6, (N, 2))], 1).astype(np.float32)
    s = (rng.integers(0, tie_levels, N) / tie_levels).astype(np.float32)
    s[rng.random(N) < neg_fraction * 0.3] = -np.inf
    want = ref_nms(b, s, thr)
    for impl in IMPLS.values():
        check(impl.jit_nms(b, s, thr, D), want)


# --- the blocked form against the greedy loop at the model's sizes -------------------


@pytest.mark.parametrize("n,d,thr,tile", [(2000, 2000, 0.7, 512), (1000, 1000, 0.7, 256),
                                          (5000, 100, 0.5, 512), (3000, 300, 0.3, 1024)])
def test_blocked_equals_greedy_at_model_sizes(n, d, thr, tile):
    """Proposal-sized inputs, one image and a vmapped batch with a valid mask (as the RPN calls it)."""
    b, s = proposal_like_boxes(n, seed=n)
    want = jax.jit(nms, static_argnums=3)(b, s, thr, d)
    got = jax.jit(functools.partial(nms_blocked, tile=tile), static_argnums=3)(b, s, thr, d)
    assert np.array_equal(want[0], got[0]) and np.array_equal(want[1], got[1])
    assert int(want[1].sum()) > min(d, 50)
    bb = np.stack([b, proposal_like_boxes(n, seed=n + 1)[0]])
    ss = np.stack([s, proposal_like_boxes(n, seed=n + 1)[1]])
    vv = np.random.default_rng(0).random((2, n)) < 0.9
    c = np.random.default_rng(1).integers(0, 3, (2, n)).astype(np.int32)
    for fn_a, fn_b, extra in [(nms, nms_blocked, ()), (batched_nms, batched_nms_blocked, (c,))]:
        def run(fn):
            f = jax.vmap(lambda b, s, v, *c: fn(b, s, *c, thr, d, valid=v))
            return jax.jit(f)(bb, ss, vv, *extra)

        want, got = run(fn_a), run(functools.partial(fn_b, tile=tile))
        assert np.array_equal(want[0], got[0]) and np.array_equal(want[1], got[1])


def test_blocked_iterations_are_few_and_bounded():
    """The inner fixed-point loop stops after a handful of iterations per tile on
    proposal-like boxes (its point), and never exceeds its bound on a worst case: a
    chain where each box suppresses only the next one (all iterations needed)."""
    b, s = proposal_like_boxes(2000, seed=3)
    fn = jax.jit(nms_ops._blocked, static_argnums=(2, 4, 6))
    _, ok, iterations = fn(b, s, None, 0.7, 2000, None, 512)
    assert int(ok.sum()) > 100 and iterations.shape == (4,) and int(iterations.max()) <= 8
    # A chain: boxes shifted by 1 px, IoU(i, i+1) = 9/11 > 0.7 >= IoU(i, i+2) = 8/12.
    n = 40
    x = np.arange(n, dtype=np.float32)
    chain = np.stack([x, np.zeros(n), x + 10, np.ones(n)], 1).astype(np.float32)
    scores = np.linspace(1, 0.5, n).astype(np.float32)
    idx, ok, iterations = fn(chain, scores, None, 0.7, n, None, n)
    assert idx[ok].tolist() == ref_nms(chain, scores, 0.7) == list(range(0, n, 2))
    assert iterations.shape == (1,) and n // 2 <= int(iterations[0]) <= n


def _whiles(fn, platform, *args):
    """(stablehlo.while ops, data-dependent ones) in `fn` exported for `platform`."""
    text = jax.export.export(jax.jit(fn), platforms=(platform,))(*args).mlir_module()
    return text.count("stablehlo.while")


@pytest.mark.parametrize("batched", [False, True])
def test_auto_is_greedy_on_cpu_and_blocked_elsewhere(batched):
    """"auto": the greedy loop (one while) where lowered for a CPU, the blocked form
    (the tile loop and its inner fixed-point loop) for a GPU or TPU; one export for
    several platforms holds both; and the result is the greedy one."""
    b, s = random_input(0)
    c = np.arange(N, dtype=np.int32) % 3
    if batched:
        fn, args, ref = (lambda b, s, c: batched_nms_auto(b, s, c, 0.5, D)), (b, s, c), ref_batched(b, s, c, 0.5)
    else:
        fn, args, ref = (lambda b, s: nms_auto(b, s, 0.5, D)), (b, s), ref_nms(b, s, 0.5)
    assert _whiles(fn, "cpu", *args) == 1
    assert _whiles(fn, "cuda", *args) == _whiles(fn, "tpu", *args) == 2
    assert jax.export.export(jax.jit(fn), platforms=("cpu", "cuda"))(*args).mlir_module().count(
        "stablehlo.while") == 3
    check(jax.jit(fn)(*args), ref)


def test_config_names_pick_the_functions():
    assert nms_ops.nms_for("greedy") is nms and nms_ops.nms_for("blocked") is nms_blocked
    assert nms_ops.nms_for("auto") is nms_auto
    assert nms_ops.batched_nms_for("greedy") is batched_nms
    assert nms_ops.batched_nms_for("blocked") is batched_nms_blocked
    assert nms_ops.batched_nms_for("auto") is batched_nms_auto
    # the config's Literal and the ops' names agree
    from typing import get_args, get_type_hints

    from mrcli.config import InferenceConfig, RPNConfig

    for cls in (RPNConfig, InferenceConfig):
        assert get_args(get_type_hints(cls)["nms"]) == nms_ops.ALGORITHMS
    with pytest.raises(ValueError, match="unknown NMS algorithm"):
        nms_ops.nms_for("fast")
