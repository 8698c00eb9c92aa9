"""Training crops (data.train_crop): the window's pixels, the rules for the
instances it cuts (kept with the tight box of their visible part, ignored
below data.crop_min_visible, dropped when nothing is visible, crowd regions
stay crowd), keypoints outside the window, max_instances after the crop, scale
jitter, small images, the one bucket, determinism and exact resume."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from data_helpers import bbox_of, ellipse_mask, noise_rgb, rle_string
from PIL import Image

from mrcli.config import Config, override, parse_sets
from mrcli.data import masks as masklib
from mrcli.data import pipeline as P
from mrcli.errors import UserError

H, W = 100, 120  # the hand-made image


def _rect(y0, y1, x0, x1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def _instances():
    """name -> (category id, iscrowd, mask, keypoints or None). With the window
    [0, 60) x [0, 60) (rows x columns):"""
    g = _rect(10, 40, 45, 55) | _rect(80, 84, 0, 50)  # two parts: 300 px inside, 200 outside
    return {
        "inside": (1, 0, _rect(10, 30, 10, 30), None),
        "most": (2, 0, ellipse_mask(H, W, (36, 2, 72, 28)), [[45, 10, 2], [66, 12, 2]]),  # ~5/8 inside
        "little": (3, 0, _rect(35, 55, 50, 90), None),  # 10 of 40 columns inside: 25%
        "outside": (4, 0, _rect(70, 90, 70, 100), None),
        "crowd": (5, 1, _rect(40, 80, 0, 20), None),  # half inside, stays crowd
        "parts": (6, 0, g, None),  # 60% visible; its clipped stored box is much larger than the visible part
    }


@pytest.fixture(scope="module")
def crop_dataset(tmp_path_factory):
    from mrcli.data.prepare import prepare_coco_json
    from mrcli.data.store import find_dataset

    root = tmp_path_factory.mktemp("crop")
    (root / "imgs").mkdir()
    Image.fromarray(noise_rgb(H, W, 7)).save(root / "imgs" / "a.png")
    cats, anns = [], []
    for k, (name, (cid, crowd, mask, kps)) in enumerate(_instances().items()):
        cat = {"id": cid, "name": name}
        if kps is not None:
            cat["keypoints"] = ["left_tip", "right_tip"]
        cats.append(cat)
        ann = {"id": 10 + k, "image_id": 1, "category_id": cid,
               "segmentation": {"size": [H, W], "counts": rle_string(mask)},
               "bbox": bbox_of(mask), "area": float(mask.sum()), "iscrowd": crowd}
        if kps is not None:
            ann.update(keypoints=[v for p in kps for v in p], num_keypoints=len(kps))
        anns.append(ann)
    data = {"images": [{"id": 1, "file_name": "a.png", "height": H, "width": W}],
            "annotations": anns, "categories": cats}
    (root / "ann.json").write_text(json.dumps(data))
    prepare_coco_json(annotations=root / "ann.json", images=root / "imgs", val_annotations=root / "ann.json",
                      name="crop", data_dir=root / "data")  # fmt: skip
    return find_dataset("crop", root / "data")


def _cfg(**extra):
    base = {"data.train_crop": (60,), "data.max_instances": 8, "data.mask_crop_size": 32,
            "data.num_workers": 0, "data.image_size": 96, "data.max_size": 128,
            "model.keypoints": True, "model.keypoint_head.num_keypoints": 2}
    base.update(extra)
    return override(Config(), base)


def _batch(cfg, ds, uv, *, flip=False, short=0, index=0):
    """One training example with the crop position (u_y, u_x) given."""
    spec = P.Spec.from_config(cfg, ds, train=True)
    slots = [P.Slot(index, short, flip, uv)]

    class _One:
        def __getitem__(self, step):
            return len(spec.buckets) - 1, slots

    return P.MakeBatch(ds.source("train"), _One(), spec)(0)


def _by_class(batch):
    """class -> row of the example's real slots."""
    real = batch["gt_valid"][0] | batch["gt_crowd"][0]
    return {int(batch["gt_classes"][0, j]): j for j in np.flatnonzero(real)}


def _source_rgb(ds):
    return np.asarray(Image.open(io.BytesIO(ds.source("train")[0]["image"])).convert("RGB"))


def _visible_box(mask):
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def test_rules_for_each_instance(crop_dataset):
    cfg = _cfg()
    b = _batch(cfg, crop_dataset, (0.0, 0.0))  # the window [0, 60) x [0, 60)
    assert b["image"].shape == (1, 64, 64, 3)  # 60 rounded up to size_divisor 32
    np.testing.assert_allclose(b["image_info"][0], [60, 60, 1, 60, 60])
    np.testing.assert_array_equal(P.denormalize(b["image"][0, :60, :60], cfg), _source_rgb(crop_dataset)[:60, :60])
    assert not b["image"][0, 60:].any() and not b["image"][0, :, 60:].any()
    rows = _by_class(b)
    inst = _instances()
    assert set(rows) == {1, 2, 3, 5, 6}  # "outside" (4) is absent
    expect = {"inside": (True, False), "most": (True, False), "little": (False, True),
              "crowd": (False, True), "parts": (True, False)}  # (gt_valid, gt_crowd)
    for name, (valid, crowd) in expect.items():
        cid, _, mask, _ = inst[name]
        j = rows[cid]
        visible = mask[:60, :60]
        frac = visible.sum() / mask.sum()
        if name in ("most", "parts"):
            assert 0.5 <= frac < 1
        if name == "little":
            assert 0 < frac < 0.5
        assert (b["gt_valid"][0, j], b["gt_crowd"][0, j]) == (valid, crowd), name
        # The tight box of the visible pixels, not the stored box clipped.
        np.testing.assert_allclose(b["gt_boxes"][0, j], _visible_box(visible), err_msg=name)
        # The mask is the visible part, resampled in that box.
        pasted = masklib.paste(b["gt_masks"][0, j], b["gt_boxes"][0, j], 60, 60).astype(bool)
        iou = (pasted & visible).sum() / (pasted | visible).sum()
        assert iou > 0.9, (name, iou)
    clipped = np.minimum(np.asarray(crop_dataset.source("train")[0]["boxes"])[rows[6]], 60)
    assert clipped[0] == 0 and b["gt_boxes"][0, rows[6], 0] == 45  # "parts": the window cuts its far part off
    # Keypoints: the one outside the window is unlabelled.
    np.testing.assert_allclose(b["gt_keypoints"][0, rows[2]], [[45, 10, 2], [0, 0, 0]])
    assert not b["gt_keypoints"][0, rows[1]].any()


def test_lower_threshold_keeps_the_cut_instance(crop_dataset):
    b = _batch(_cfg(**{"data.crop_min_visible": 0.2}), crop_dataset, (0.0, 0.0))
    j = _by_class(b)[3]
    assert b["gt_valid"][0, j] and not b["gt_crowd"][0, j]
    b = _batch(_cfg(**{"data.crop_min_visible": 0.7}), crop_dataset, (0.0, 0.0))
    rows = _by_class(b)
    assert b["gt_crowd"][0, rows[2]] and b["gt_crowd"][0, rows[6]] and b["gt_valid"][0, rows[1]]


def test_other_corner_and_flip(crop_dataset):
    cfg = _cfg()
    a = _batch(cfg, crop_dataset, (0.999, 0.999))  # the window rows [40, 100), columns [60, 120)
    f = _batch(cfg, crop_dataset, (0.999, 0.999), flip=True)
    src = _source_rgb(crop_dataset)
    np.testing.assert_array_equal(P.denormalize(a["image"][0, :60, :60], cfg), src[40:, 60:])
    np.testing.assert_array_equal(P.denormalize(f["image"][0, :60, :60], cfg), src[40:, 60:][:, ::-1])
    rows = _by_class(a)
    assert set(rows) == {3, 4}  # "little" (30 of 40 columns here) and "outside", now inside
    j = rows[4]
    assert a["gt_valid"][0, j]
    np.testing.assert_allclose(a["gt_boxes"][0, j], [10, 30, 40, 50])
    np.testing.assert_allclose(a["gt_boxes"][0, rows[3]], [0, 0, 30, 15])
    np.testing.assert_array_equal(_by_class(f), rows)
    fb, ab = f["gt_boxes"][0], a["gt_boxes"][0]
    np.testing.assert_allclose(fb[:, [0, 2]][list(rows.values())], 60 - ab[:, [2, 0]][list(rows.values())])
    np.testing.assert_array_equal(f["gt_masks"][0], a["gt_masks"][0][:, :, ::-1])


def test_flip_mirrors_keypoints_in_the_window(crop_dataset):
    b = _batch(_cfg(), crop_dataset, (0.0, 0.0), flip=True)
    # left_tip (45, 10) mirrors to 60 - 45 = 15 and becomes right_tip; the
    # outside right_tip is unlabelled, so left_tip is.
    np.testing.assert_allclose(b["gt_keypoints"][0, _by_class(b)[2]], [[0, 0, 0], [15, 10, 2]])


def test_max_instances_count_only_the_visible(crop_dataset):
    b = _batch(_cfg(**{"data.max_instances": 3}), crop_dataset, (0.0, 0.0))
    inst = _instances()
    seen = {cid: int(m[:60, :60].sum()) for cid, _, m, _ in inst.values() if m[:60, :60].any()}
    largest = sorted(sorted(seen, key=lambda c: -seen[c])[:3])
    assert sorted(_by_class(b)) == largest
    # In stored (category) order.
    assert b["gt_classes"][0].tolist() == largest


def test_scale_jitter_then_crop(crop_dataset):
    """train_scales (50,): scale 0.5 (short side 100 -> 50) with no max_size limit,
    then a 40 x 40 window: the window of the whole resized image."""
    cfg = _cfg(**{"data.train_crop": (40, 40), "data.train_scales": (50,), "data.max_size": 10})
    b = _batch(cfg, crop_dataset, (0.5, 0.999), short=50)  # sh, sw = 50, 60: y0 = 5, x0 = 20
    np.testing.assert_allclose(b["image_info"][0], [80, 80, 0.5, 40, 40])
    whole = np.asarray(Image.fromarray(_source_rgb(crop_dataset)).resize((60, 50), Image.Resampling.BILINEAR))
    got = P.denormalize(b["image"][0, :40, :40], cfg).astype(int)
    assert np.abs(got - whole[5:45, 20:60]).max() <= 1
    rows = _by_class(b)
    # "little" rows [35, 55) columns [50, 90): at half scale [17.5, 27.5) x [25, 45), minus (20, 5).
    np.testing.assert_allclose(b["gt_boxes"][0, rows[3]], [5, 12.5, 25, 22.5])
    assert b["gt_valid"][0, rows[3]]  # wholly inside this window


def test_torchvision_profile_crops_its_own_resize(crop_dataset):
    """model.input.resize "torchvision": the window of resize_normalized's whole image."""
    cfg = _cfg(**{"data.train_crop": (40, 40), "model.input.resize": "torchvision"})
    b = _batch(cfg, crop_dataset, (0.5, 0.999), short=50, flip=True)
    spec = P.Spec.from_config(cfg)
    arr = (_source_rgb(crop_dataset).astype(np.float32) - np.float32(spec.mean)) / np.float32(spec.std)
    whole = P.resize_normalized(arr, (50, 60))
    np.testing.assert_allclose(b["image"][0, :40, :40], whole[5:45, 20:60][:, ::-1], atol=1e-5)


def test_image_smaller_than_the_window_is_taken_whole(crop_dataset):
    cfg = _cfg(**{"data.train_crop": (200, 300)})
    b = _batch(cfg, crop_dataset, (0.7, 0.3))
    assert b["image"].shape == (1, 224, 320, 3)
    np.testing.assert_allclose(b["image_info"][0], [H, W, 1, H, W])
    np.testing.assert_array_equal(P.denormalize(b["image"][0, :H, :W], cfg), _source_rgb(crop_dataset))
    assert not b["image"][0, H:].any() and not b["image"][0, :, W:].any()
    rows = _by_class(b)
    assert len(rows) == 6 and b["gt_crowd"][0, rows[5]] and b["gt_crowd"][0].sum() == 1


def test_config_sizes_and_buckets():
    assert parse_sets(["data.train_crop=512"]) == {"data.train_crop": [512]}
    cfg = override(Config(), parse_sets(["data.train_crop=512"]))
    assert P.train_crop_size(cfg) == (512, 512) and P.crop_bucket(cfg) == (512, 512)
    cfg = override(Config(), parse_sets(["data.train_crop=500,700"]))
    assert P.train_crop_size(cfg) == (500, 700) and P.crop_bucket(cfg) == (512, 704)
    assert P.train_buckets(cfg) == ((512, 704),)
    assert P.train_buckets(Config()) == Config().data.resolved_buckets()
    assert P.train_crop_size(Config()) == ()
    for bad in ({"data.train_crop": (1, 2, 3)}, {"data.train_crop": (0,)},
                {"data.train_crop": (64,), "data.crop_min_visible": 1.5}):
        with pytest.raises(UserError):
            P.train_crop_size(override(Config(), bad))
    # The eval spec keeps its buckets; the training spec adds the crop bucket.
    assert P.Spec.from_config(cfg).buckets == cfg.data.resolved_buckets()
    assert P.Spec.from_config(cfg, train=True).buckets == cfg.data.resolved_buckets() + ((512, 704),)


# --- the training stream -------------------------------------------------------------------


def _shapes_cfg(**extra):
    base = {"data.image_size": 48, "data.max_size": 64, "data.buckets": ((48, 64), (64, 48)),
            "data.max_instances": 8, "data.mask_crop_size": 16, "data.num_workers": 0,
            "train.global_batch": 4, "eval.batch_size": 4, "data.train_crop": (40, 36)}
    base.update(extra)
    return override(Config(), base)


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_stream_is_one_bucket_deterministic_and_resumes(shapes_dataset):
    cfg = _shapes_cfg()
    kw = dict(process_index=0, process_count=1)
    straight = _take(P.train_batches(cfg, shapes_dataset, **kw), 14)  # crosses an epoch
    for batch in straight:
        assert batch["image"].shape == (4, 64, 64, 3)  # (40, 36) rounded up to 32
        for i in range(4):
            oh, ow, scale, rh, rw = batch["image_info"][i]
            assert scale == 1 and rh <= 40 and rw <= 36 and (oh, ow) == (rh, rw)
            assert not batch["image"][i, int(rh):].any() and not batch["image"][i, :, int(rw):].any()
            real = batch["gt_valid"][i] | batch["gt_crowd"][i]
            assert not (batch["gt_valid"][i] & batch["gt_crowd"][i]).any()
            bx = batch["gt_boxes"][i][real]
            assert (bx[:, 0] >= 0).all() and (bx[:, 2] <= rw).all() and (bx[:, 1] >= 0).all()
            assert (bx[:, 3] <= rh).all() and (bx[:, 2] > bx[:, 0]).all() and (bx[:, 3] > bx[:, 1]).all()
            assert not batch["gt_masks"][i][~real].any()
    it = P.train_batches(cfg, shapes_dataset, **kw)
    _take(it, 9)
    state = it.get_state()
    it.close()
    resumed = P.train_batches(cfg, shapes_dataset, **kw)
    resumed.set_state(state)
    for want, got in zip(straight[9:], _take(resumed, 5)):
        for k in P.KEYS:
            np.testing.assert_array_equal(want[k], got[k], err_msg=k)
    # The window moves: between steps, and for one image between epochs.
    plan = resumed.plan
    windows = [s.crop for step in range(6) for s in plan[step][1]]
    assert all(w is not None for w in windows) and len(set(windows)) == len(windows)
    assert plan._augment(0, 3).crop != plan._augment(1, 3).crop
    assert plan._augment(0, 3) == plan._augment(0, 3)
    other = P.train_batches(cfg, shapes_dataset, seed=3, **kw).plan
    assert other._augment(0, 3).crop != plan._augment(0, 3).crop


def test_without_train_crop_nothing_changes(shapes_dataset):
    """The default: no crop positions drawn, the usual buckets, and the
    crop settings have no effect."""
    cfg = _shapes_cfg(**{"data.train_crop": ()})
    kw = dict(process_index=0, process_count=1)
    it = P.train_batches(cfg, shapes_dataset, **kw)
    assert all(s.crop is None for step in range(4) for s in it.plan[step][1])
    assert it._spec.buckets == cfg.data.resolved_buckets()
    a = _take(it, 3)
    b = _take(P.train_batches(override(cfg, {"data.crop_min_visible": 0.9}), shapes_dataset, **kw), 3)
    for x, y in zip(a, b):
        for k in P.KEYS:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)
