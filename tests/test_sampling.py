"""mrcli.ops.sampling: the matcher vs a loop reference and torchvision; the balanced sampler."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torchvision_ref

from mrcli.ops import boxes as box_ops
from mrcli.ops.anchors import anchor_grid
from mrcli.ops.sampling import match, match_boxes, sample_balanced

ANCHORS = anchor_grid((64, 96))  # [1536, 4]
A = ANCHORS.shape[0]
NGT = 8  # padded gt rows

jit_match_boxes = jax.jit(match_boxes, static_argnums=(3, 4, 5))
jit_match = jax.jit(match, static_argnums=(2, 3, 4))
jit_sample = jax.jit(sample_balanced, static_argnums=(1, 2))


# --- reference: loops -------------------------------------------------------------


def ref_match(iou, valid, high, low, allow_low):
    """Faster R-CNN matching written out per anchor and per gt."""
    n, a = iou.shape
    rows = [g for g in range(n) if valid[g]]
    matched = np.zeros(a, np.int64)
    labels = np.zeros(a, np.int64)
    if not rows:
        return matched, labels
    best_gt = np.zeros(a, np.int64)
    for j in range(a):
        best = max(rows, key=lambda g: (iou[g, j], -g))  # highest IoU, then lowest index
        best_gt[j] = best
        v = iou[best, j]
        labels[j] = 1 if v >= high else (-1 if v >= low else 0)
    if allow_low:
        for g in rows:
            top = max(iou[g, j] for j in range(a))
            if top <= 0:
                continue  # a gt that overlaps no anchor forces nothing (see match's docstring)
            for j in range(a):
                if iou[g, j] == top:
                    labels[j] = 1
    for j in range(a):
        matched[j] = best_gt[j] if labels[j] == 1 else 0
    return matched, labels


def gt_case(case, seed=0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-10, 80, (NGT, 2))
    wh = rng.uniform(4, 70, (NGT, 2))
    gt = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    valid = np.ones(NGT, bool)
    valid[[0, 5, 7]] = False  # padding at the front, middle and end
    if case == "identical_gt":
        gt[2] = gt[3] = gt[4]
    elif case == "anchor_aligned":  # gt equal to anchors: IoU exactly 1, ties at 1
        gt[1:5] = ANCHORS[[100, 101, 700, 1200]]
        gt[6] = ANCHORS[100]
    elif case == "integer_grid":  # many anchors tied at a gt's best IoU
        gt = np.round(gt / 8) * 8
        gt[:, 2:] = np.maximum(gt[:, 2:], gt[:, :2] + 8)
    elif case == "one_gt":
        valid[:] = False
        valid[3] = True
    elif case == "no_gt":
        valid[:] = False
    elif case == "outside_gt":  # one gt overlaps no anchor; one has zero area
        gt[2] = [1000, 1000, 1100, 1100]
        gt[4] = [20, 20, 20, 20]
    return gt, valid


CASES = ["random", "identical_gt", "anchor_aligned", "integer_grid", "one_gt", "no_gt", "outside_gt"]
SETTINGS = [(0.7, 0.3, True), (0.5, 0.5, False), (0.7, 0.3, False), (0.5, 0.4, True)]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("high,low,allow", SETTINGS)
def test_match_matches_reference(case, high, low, allow):
    gt, valid = gt_case(case)
    matched, labels = (np.asarray(x) for x in jit_match_boxes(gt, valid, ANCHORS, high, low, allow))
    assert matched.shape == labels.shape == (A,) and matched.dtype == labels.dtype == np.int32
    iou = np.asarray(box_ops.iou(gt, ANCHORS))  # our IoU is tested against loops in test_boxes
    want_m, want_l = ref_match(iou, valid, high, low, allow)
    assert np.array_equal(labels, want_l)
    assert np.array_equal(matched, want_m)
    assert set(np.unique(labels)) <= {-1, 0, 1}
    assert np.all(valid[matched[labels == 1]])
    if not valid.any():
        assert np.all(labels == 0) and np.all(matched == 0)
    # the iou form gives the same
    m2, l2 = jit_match(iou, valid, high, low, allow)
    assert np.array_equal(np.asarray(m2), matched) and np.array_equal(np.asarray(l2), labels)


@pytest.mark.parametrize("case", [c for c in CASES if c not in ("no_gt", "outside_gt")])
@pytest.mark.parametrize("high,low,allow", SETTINGS)
def test_match_matches_torchvision(case, high, low, allow):
    tv = torchvision_ref.load()
    if tv is None:
        pytest.skip("torchvision not installed")
    import torch
    from torchvision.models.detection._utils import Matcher

    gt, valid = gt_case(case)
    rows = np.flatnonzero(valid)
    q = tv.ops.box_iou(torch.from_numpy(gt[rows]), torch.from_numpy(ANCHORS.copy()))
    m = Matcher(high, low, allow_low_quality_matches=allow)(q)
    # torchvision RPN's assign_targets_to_anchors: labels from the match codes
    want_l = np.where(m >= 0, 1, np.where(m == Matcher.BELOW_LOW_THRESHOLD, 0, -1))
    want_m = np.where(want_l == 1, rows[m.clamp(min=0).numpy()], 0)
    matched, labels = jit_match_boxes(gt, valid, ANCHORS, high, low, allow)
    assert np.array_equal(np.asarray(labels), want_l)
    assert np.array_equal(np.asarray(matched), want_m)


def test_gt_overlapping_no_anchor_forces_nothing():
    """torchvision would make every anchor positive here; we make none (documented)."""
    gt = np.zeros((NGT, 4), np.float32)
    gt[0] = [5000, 5000, 5100, 5100]
    valid = np.zeros(NGT, bool)
    valid[0] = True
    _, labels = jit_match_boxes(gt, valid, ANCHORS, 0.7, 0.3, True)
    assert np.all(np.asarray(labels) == 0)


def test_crowd_regions_turn_background_into_ignore():
    gt, valid = gt_case("random")
    crowd = np.array([[0, 0, 40, 40], [60, 0, 96, 64], [0, 0, 0, 0]], np.float32)
    crowd_valid = np.array([True, True, False])
    f = jax.jit(match_boxes, static_argnums=(3, 4, 5))
    m0, l0 = (np.asarray(x) for x in f(gt, valid, ANCHORS, 0.7, 0.3, True))
    m1, l1 = (np.asarray(x) for x in f(gt, valid, ANCHORS, 0.7, 0.3, True, crowd, crowd_valid))
    ioa = np.asarray(box_ops.ioa(ANCHORS, crowd[:2])).max(1)
    want = np.where((l0 == 0) & (ioa >= 0.7), -1, l0)
    assert np.array_equal(l1, want) and np.array_equal(m1, m0)
    assert (want != l0).sum() > 10  # the case is not vacuous
    # an invalid crowd row changes nothing
    _, l2 = f(gt, valid, ANCHORS, 0.7, 0.3, True, crowd[2:], crowd_valid[2:])
    assert np.array_equal(np.asarray(l2), l0)


def test_match_jit_vmap():
    cases = [gt_case("random", 1), gt_case("no_gt"), gt_case("integer_grid", 2)]
    gt = np.stack([c[0] for c in cases])
    valid = np.stack([c[1] for c in cases])
    f = jax.jit(jax.vmap(lambda g, v: match_boxes(g, v, jnp.asarray(ANCHORS), 0.7, 0.3, True)))
    matched, labels = f(gt, valid)
    assert matched.shape == labels.shape == (3, A)
    for i in range(3):
        want_m, want_l = ref_match(np.asarray(box_ops.iou(gt[i], ANCHORS)), valid[i], 0.7, 0.3, True)
        assert np.array_equal(np.asarray(labels[i]), want_l)
        assert np.array_equal(np.asarray(matched[i]), want_m)


# --- sampler ----------------------------------------------------------------------


def random_labels(seed, n_pos, n_neg, a=A):
    rng = np.random.default_rng(seed)
    labels = np.full(a, -1, np.int32)
    perm = rng.permutation(a)
    labels[perm[:n_pos]] = 1
    labels[perm[n_pos : n_pos + n_neg]] = 0
    return labels


def check_sample(labels, out, num_samples, fraction):
    idx, lab, ok = (np.asarray(x) for x in out)
    assert idx.shape == lab.shape == ok.shape == (num_samples,)
    assert idx.dtype == np.int32 and ok.dtype == np.bool_
    n_pos_all, n_neg_all = int((labels == 1).sum()), int((labels == 0).sum())
    # torchvision's BalancedPositiveNegativeSampler counts
    n_pos = min(n_pos_all, int(num_samples * fraction))
    n_neg = min(n_neg_all, num_samples - n_pos)
    assert lab.tolist() == [1] * n_pos + [0] * n_neg + [-1] * (num_samples - n_pos - n_neg)
    assert ok.tolist() == [True] * (n_pos + n_neg) + [False] * (num_samples - n_pos - n_neg)
    assert np.array_equal(labels[idx[ok]], lab[ok])  # never an ignored anchor
    assert len(set(idx[ok].tolist())) == n_pos + n_neg  # without replacement
    assert np.all(idx[~ok] == 0)
    return idx[ok]


@pytest.mark.parametrize(
    "n_pos,n_neg",
    [(500, 800), (3, 800), (500, 10), (0, 800), (300, 0), (0, 0), (128, 128), (A, 0), (0, A)],
)
def test_sample_counts(n_pos, n_neg):
    labels = random_labels(n_pos + n_neg, n_pos, n_neg)
    out = jit_sample(labels, 256, 0.5, jax.random.key(n_pos))
    check_sample(labels, out, 256, 0.5)
    tv = torchvision_ref.load()
    if tv is not None:  # torchvision picks the same numbers of each
        import torch
        from torchvision.models.detection._utils import BalancedPositiveNegativeSampler

        pos, neg = BalancedPositiveNegativeSampler(256, 0.5)([torch.from_numpy(labels)])
        lab = np.asarray(out[1])
        assert int(pos[0].sum()) == (lab == 1).sum() and int(neg[0].sum()) == (lab == 0).sum()


def test_sample_fewer_anchors_than_samples_and_odd_fraction():
    labels = np.array([1, 0, -1, 1, 0, 0, 1, -1, 0, 1], np.int32)
    check_sample(labels, sample_balanced(labels, 16, 0.25, jax.random.key(0)), 16, 0.25)
    check_sample(labels, sample_balanced(labels, 7, 0.3, jax.random.key(1)), 7, 0.3)  # int(2.1) = 2
    check_sample(labels, sample_balanced(labels, 4, 0.0, jax.random.key(2)), 4, 0.0)
    check_sample(labels, sample_balanced(labels, 4, 1.0, jax.random.key(3)), 4, 1.0)


def test_sample_is_uniform_and_depends_on_the_key():
    """10 positives of which 2 are drawn, 30 negatives of which 6: each element has p = 0.2."""
    labels = np.array([1] * 10 + [0] * 30 + [-1] * 8, np.int32)
    rng = np.random.default_rng(0)
    labels = labels[rng.permutation(len(labels))]
    draws = 1000
    keys = jax.random.split(jax.random.key(42), draws)
    idx, lab, ok = jax.jit(jax.vmap(lambda k: sample_balanced(jnp.asarray(labels), 8, 0.25, k)))(keys)
    idx, ok = np.asarray(idx), np.asarray(ok)
    assert ok.all()
    counts = np.bincount(idx.ravel(), minlength=len(labels))
    assert np.all(counts[labels == -1] == 0)
    eligible = counts[labels >= 0]
    expected = draws * 0.2
    sd = np.sqrt(draws * 0.2 * 0.8)
    assert np.all(np.abs(eligible - expected) < 5 * sd)
    chi2 = (((eligible - expected) ** 2) / expected).sum()  # 39 degrees of freedom
    assert chi2 < 90  # p ~ 1e-5
    assert len({tuple(sorted(r)) for r in idx.tolist()}) > draws * 0.9  # different keys, different samples
