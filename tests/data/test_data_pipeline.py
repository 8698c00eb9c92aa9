"""The input pipeline: the batch contract's shapes and dtypes in every bucket,
normalisation, flip consistency, determinism, exact resume, process sharding,
eval coverage with padding, worker processes."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image

from mrcli.config import Config, override
from mrcli.data import masks as masklib
from mrcli.data import pipeline as P
from mrcli.errors import UserError


def _cfg(**extra):
    """Shapes at long side 64: two buckets (landscape, portrait), scale jitter."""
    base = {
        "data.image_size": 48,
        "data.max_size": 64,
        "data.train_scales": (40, 48),
        "data.buckets": ((48, 64), (64, 48)),
        "data.max_instances": 8,
        "data.mask_crop_size": 16,
        "data.num_workers": 0,
        "train.global_batch": 4,
        "eval.batch_size": 4,
    }
    base.update(extra)
    return override(Config(), base)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _check_batch(batch, cfg, B):
    H, W = batch["image"].shape[1:3]
    assert (H, W) in cfg.data.resolved_buckets()
    want = P.batch_shapes(cfg, B, (H, W))
    assert set(batch) == set(want) == set(P.KEYS)
    for k, (shape, dtype) in want.items():
        assert batch[k].shape == shape, k
        assert batch[k].dtype == dtype, k
    for i in range(B):
        oh, ow, scale, rh, rw = batch["image_info"][i]
        if batch["is_padding"][i]:
            assert not batch["image"][i].any() and batch["image_id"][i] == -1
            assert not batch["gt_valid"][i].any()
            continue
        assert (rh, rw) == P.resized_size(int(oh), int(ow), float(scale))
        assert rh <= H and rw <= W
        img = batch["image"][i]
        assert not img[int(rh):].any() and not img[:, int(rw):].any()  # zero padded
        real = batch["gt_valid"][i] | batch["gt_crowd"][i]
        assert not (batch["gt_valid"][i] & batch["gt_crowd"][i]).any()
        assert (batch["gt_classes"][i][real] >= 1).all() and (batch["gt_classes"][i][~real] == 0).all()
        boxes = batch["gt_boxes"][i][real]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= rw).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= rh).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert not batch["gt_masks"][i][~real].any() and not batch["gt_boxes"][i][~real].any()
        assert set(np.unique(batch["gt_masks"][i])) <= {0, 1}
    return H, W


def test_contract_shapes_in_every_bucket(shapes_dataset):
    cfg = _cfg()
    seen = set()
    with P.train_batches(cfg, shapes_dataset, process_index=0, process_count=1) as it:
        for batch in _take(it, 8):
            seen.add(_check_batch(batch, cfg, 4))
            assert not batch["is_padding"].any()
    with P.eval_batches(cfg, shapes_dataset) as it:
        for batch in it:
            seen.add(_check_batch(batch, cfg, 4))
    assert seen == {(48, 64), (64, 48)}


def test_empty_batch_matches_contract():
    cfg = _cfg()
    b = P.empty_batch(cfg, 3, (48, 64))
    _check_batch(b, cfg, 3)
    assert b["is_padding"].all()


def test_normalisation_and_pixel_order(shapes_dataset):
    rec = shapes_dataset.source("val")[0]
    h, w = int(rec["height"]), int(rec["width"])
    for order, mean, std in (("rgb", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
                             ("bgr", (103.53, 116.28, 123.675), (1.0, 1.0, 1.0))):
        cfg = _cfg(**{"model.input.pixel_order": order, "model.input.pixel_mean": mean, "model.input.pixel_std": std})
        b = P.example_batch(cfg, shapes_dataset, "val", [0])
        rh, rw = (int(v) for v in b["image_info"][0, 3:])
        scale = min(48 / min(h, w), 64 / max(h, w))
        assert (rh, rw) == P.resized_size(h, w, scale)
        rgb = np.asarray(Image.open(io.BytesIO(rec["image"])).convert("RGB").resize((rw, rh), Image.Resampling.BILINEAR),
                         np.float32)
        pix = rgb[..., ::-1] if order == "bgr" else rgb
        want = (pix - np.float32(mean)) / np.float32(std)
        np.testing.assert_allclose(b["image"][0, :rh, :rw], want, rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(P.denormalize(b["image"][0, :rh, :rw], cfg), rgb.astype(np.uint8))
        assert b["image_id"][0] == rec["image_id"]


def test_flip_is_consistent(shapes_dataset):
    """Flipping mirrors the image, the boxes and the mask crops together, so a
    flipped mask's box is the flipped box."""
    cfg = _cfg()
    idx = next(k for k in range(40) if shapes_dataset.index("train")["num_instances"][k] >= 3)
    a = P.example_batch(cfg, shapes_dataset, "train", [idx], train=True, flip=False)
    b = P.example_batch(cfg, shapes_dataset, "train", [idx], train=True, flip=True)
    np.testing.assert_array_equal(a["image_info"], b["image_info"])
    H, W = a["image"].shape[1:3]
    rh, rw = (int(v) for v in a["image_info"][0, 3:])
    np.testing.assert_array_equal(b["image"][0, :rh, :rw], a["image"][0, :rh, :rw][:, ::-1])
    assert not b["image"][0, :, rw:].any()
    v = a["gt_valid"][0]
    np.testing.assert_array_equal(v, b["gt_valid"][0])
    ba, bb = a["gt_boxes"][0][v], b["gt_boxes"][0][v]
    np.testing.assert_allclose(bb[:, [0, 2]], rw - ba[:, [2, 0]], atol=1e-5)
    np.testing.assert_array_equal(bb[:, [1, 3]], ba[:, [1, 3]])
    np.testing.assert_array_equal(b["gt_masks"][0][v], a["gt_masks"][0][v][:, :, ::-1])
    for crop_a, box_a, crop_b, box_b in zip(a["gt_masks"][0][v], ba, b["gt_masks"][0][v], bb):
        full_a = masklib.paste(crop_a, box_a, H, W)[:rh, :rw]
        full_b = masklib.paste(crop_b, box_b, H, W)[:rh, :rw]
        ys, xs = np.nonzero(full_b)
        tight_b = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        ys, xs = np.nonzero(full_a[:, ::-1])
        mirrored_a = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        np.testing.assert_allclose(tight_b, mirrored_a, atol=1)
        np.testing.assert_allclose(tight_b, box_b, atol=1.5)


def test_mask_crops_match_the_source_masks(shapes_dataset):
    cfg = _cfg(**{"data.mask_crop_size": 56})
    src = shapes_dataset.source("val")
    ious = []
    for k in range(4):
        rec = src[k]
        h, w = int(rec["height"]), int(rec["width"])
        b = P.example_batch(cfg, shapes_dataset, "val", [k])
        rh, rw = (int(v) for v in b["image_info"][0, 3:])
        H, W = b["image"].shape[1:3]
        for j in range(len(rec["ann_ids"])):
            want = masklib.decode(rec["rles"][j], h, w)
            want = np.asarray(Image.fromarray(want * 255).resize((rw, rh), Image.Resampling.BILINEAR)) >= 128
            got = masklib.paste(b["gt_masks"][0, j], b["gt_boxes"][0, j], H, W)[:rh, :rw].astype(bool)
            if want.sum() >= 30:
                ious.append((want & got).sum() / (want | got).sum())
            assert b["gt_classes"][0, j] == rec["classes"][j]
    assert len(ious) >= 4 and min(ious) > 0.75 and np.mean(ious) > 0.85


def test_deterministic_for_a_seed(shapes_dataset):
    cfg = _cfg()
    kw = dict(process_index=0, process_count=1)
    a = _take(P.train_batches(cfg, shapes_dataset, **kw), 3)
    b = _take(P.train_batches(cfg, shapes_dataset, **kw), 3)
    c = _take(P.train_batches(cfg, shapes_dataset, seed=1, **kw), 3)
    for x, y in zip(a, b):
        _assert_same(x, y)
    assert any(not np.array_equal(x["image_id"], y["image_id"]) for x, y in zip(a, c))


def test_scale_jitter_uses_the_train_scales(shapes_dataset):
    cfg = _cfg()
    shorts = set()
    for batch in _take(P.train_batches(cfg, shapes_dataset, process_index=0, process_count=1), 6):
        for oh, ow, scale, rh, rw in batch["image_info"]:
            if max(oh, ow) * 48 / min(oh, ow) <= 64:  # not limited by max_size
                shorts.add(int(min(rh, rw)))
    assert shorts == {40, 48}


def test_resume_gives_exactly_the_next_batches(shapes_dataset):
    cfg = _cfg()
    kw = dict(process_index=0, process_count=1)
    straight = _take(P.train_batches(cfg, shapes_dataset, **kw), 14)  # crosses an epoch
    it = P.train_batches(cfg, shapes_dataset, **kw)
    _take(it, 9)
    state = it.get_state()
    assert state["step"] == 9
    it.close()
    resumed = P.train_batches(cfg, shapes_dataset, **kw)
    resumed.set_state(state)
    for want, got in zip(straight[9:], _take(resumed, 5)):
        _assert_same(want, got)
    other = P.train_batches(cfg, shapes_dataset, seed=5, **kw)
    with pytest.raises(UserError, match="saved seed"):
        other.set_state(state)


def test_workers_give_the_same_batches(shapes_dataset):
    """Worker processes change nothing: the same batches, also when resuming
    (the state is the step, so a restored run starts its workers there)."""
    cfg = _cfg()
    kw = dict(process_index=0, process_count=1)
    want = _take(P.train_batches(cfg, shapes_dataset, num_workers=0, **kw), 5)
    with P.train_batches(cfg, shapes_dataset, num_workers=2, **kw) as it:
        it.set_state({"step": 2})
        got = _take(it, 3)
        assert it.get_state()["step"] == 5
    for a, b in zip(want[2:], got):
        assert type(b["image"]) is np.ndarray
        _assert_same(a, b)


def test_two_processes_see_disjoint_shards(shapes_dataset):
    cfg = _cfg(**{"train.global_batch": 8})
    its = [P.train_batches(cfg, shapes_dataset, process_index=p, process_count=2) for p in (0, 1)]
    steps = its[0].plan.batches_per_epoch
    seen = [[], []]
    for _ in range(steps):
        b0, b1 = next(its[0]), next(its[1])
        assert b0["image"].shape == b1["image"].shape == (4,) + b0["image"].shape[1:]
        seen[0] += b0["image_id"].tolist()
        seen[1] += b1["image_id"].tolist()
    assert not set(seen[0]) & set(seen[1])
    assert len(set(seen[0] + seen[1])) == len(seen[0] + seen[1])  # nobody twice in an epoch
    all_ids = set(shapes_dataset.index("train")["image_id"].tolist())
    # Each bucket drops fewer than one global batch per epoch.
    assert len(all_ids) - len(set(seen[0] + seen[1])) < 8 * len(cfg.data.resolved_buckets())
    # The same global batch as one process with the whole batch.
    one = P.train_batches(cfg, shapes_dataset, process_index=0, process_count=1)
    whole = next(one)
    p0 = P.train_batches(cfg, shapes_dataset, process_index=0, process_count=2)
    p1 = P.train_batches(cfg, shapes_dataset, process_index=1, process_count=2)
    a, b = next(p0), next(p1)
    for k in P.KEYS:
        np.testing.assert_array_equal(whole[k], np.concatenate([a[k], b[k]]))


def test_eval_sees_every_image_once_and_pads(shapes_dataset):
    cfg = _cfg()
    all_ids = shapes_dataset.index("val")["image_id"].tolist()
    for pc in (1, 2, 3):  # the split divided between pc processes, each batching its own part
        ids, pads, batches_seen = [], 0, 0
        for p in range(pc):
            part_ids = []
            for b in P.eval_batches(cfg, shapes_dataset, part=(p, pc)):
                _check_batch(b, cfg, 4)
                part_ids += b["image_id"][~b["is_padding"]].tolist()
                pads += int(b["is_padding"].sum())
                batches_seen += 1
                assert (b["image_id"][b["is_padding"]] == -1).all()
            assert sorted(part_ids) == sorted(all_ids[p::pc])
            ids += part_ids
        assert sorted(ids) == sorted(all_ids)  # every image once over the parts
        assert pads == batches_seen * 4 - len(all_ids)
        assert pads < 4 * len(cfg.data.resolved_buckets()) * pc
    with pytest.raises(ValueError, match="part 2 not in"):
        P.eval_batches(cfg, shapes_dataset, part=(2, 2))
    limited = P.eval_batches(cfg, shapes_dataset, max_images=5)
    got = [i for b in limited for i in b["image_id"][~b["is_padding"]].tolist()]
    assert sorted(got) == sorted(all_ids[:5])


def test_too_many_instances_keep_the_largest_and_warn_once(shapes_dataset, caplog):
    cfg = _cfg(**{"data.max_instances": 2})
    index = shapes_dataset.index("train")
    many = [k for k in range(40) if index["num_instances"][k] >= 4]
    P._warned["max_instances"] = False
    with caplog.at_level(logging.WARNING, logger="mrcli.data"):
        for k in many[:2]:
            b = P.example_batch(cfg, shapes_dataset, "train", [k])
            rec = shapes_dataset.source("train")[k]
            keep = np.sort(np.argsort(-rec["areas"], kind="stable")[:2])
            np.testing.assert_array_equal(b["gt_classes"][0], rec["classes"][keep])
    assert sum("max_instances" in r.message for r in caplog.records) == 1


def test_batch_and_dataset_size_errors(shapes_dataset):
    with pytest.raises(UserError, match="multiple of the number of processes"):
        P.train_batches(_cfg(), shapes_dataset, process_index=0, process_count=3)
    with pytest.raises(UserError, match="fewer than one global batch"):
        P.train_batches(_cfg(**{"train.global_batch": 64}), shapes_dataset, process_index=0, process_count=1)


def test_bucket_assignment():
    buckets = ((800, 1344), (1344, 800))
    got = P.assign_buckets(np.array([480, 640, 500, 3000]), np.array([640, 480, 500, 100]), 800, 1333, buckets)
    assert got.tolist() == [0, 1, 0, 1]


# --- repeat-factor sampling ---------------------------------------------------------------


def test_repeat_factors_follow_lvis():
    """r_c = max(1, sqrt(t / f_c)); an image takes its rarest class's factor."""
    classes = [np.array([1])] * 8 + [np.array([1, 2]), np.array([], np.int32)]
    r = P.repeat_factors(classes, threshold=0.5)
    f2 = 1 / 10  # class 2 in one image of ten; class 1 in nine (f = 0.9 > t: factor 1)
    assert r[:8].tolist() == [1.0] * 8
    assert r[8] == pytest.approx(np.sqrt(0.5 / f2)) and r[9] == 1.0


def test_repeat_factor_epochs_repeat_rare_images(shapes_dataset):
    cfg = _cfg(**{"data.repeat_factor_threshold": 1.0})
    ds = shapes_dataset
    classes = ds.image_classes("train")
    r = P.repeat_factors(classes, 1.0)
    assert (r > 1).any() and (r == 1).any()  # shapes has rarer and commoner classes per image
    index = ds.index("train")
    plan = P.Plan(index["height"], index["width"], cfg=cfg, train=True, seed=1, global_batch=2,
                  process_index=0, process_count=1, repeat=r)  # fmt: skip
    counts = np.zeros(len(r))
    epochs = 200
    for e in range(epochs):
        seq = plan.epoch_indices(e, np.random.default_rng(e).permutation(len(r)))
        assert len(seq) == plan.repeat_total == int(np.ceil(r.sum()))
        counts += np.bincount(seq, minlength=len(r))
        assert len(plan._epoch(e)[1]) >= plan.batches_per_epoch
    np.testing.assert_allclose(counts / epochs, r * plan.repeat_total / r.sum(), atol=0.15)
    # train_batches takes the factors from the dataset; the same batches every time.
    a = _take(P.train_batches(cfg, ds, num_steps=3, num_workers=0), 3)
    b = _take(P.train_batches(cfg, ds, num_steps=3, num_workers=0), 3)
    for x, y in zip(a, b):
        _assert_same(x, y)


def test_image_classes_from_the_index_equal_the_records(shapes_dataset):
    source = shapes_dataset.source("val")
    from_records = [np.unique(np.asarray(source[i]["classes"])[~np.asarray(source[i]["crowd"], bool)])
                    for i in range(len(source))]  # fmt: skip
    got = shapes_dataset.image_classes("val")
    assert len(got) == len(from_records)
    for a, b in zip(got, from_records):
        np.testing.assert_array_equal(a, b)


# --- torchvision's resize (model.input.resize = "torchvision") ------------------------------


def test_torchvision_resize_gives_torchvisions_input():
    """pipeline.image_input with the torchvision profile == torchvision's
    GeneralizedRCNNTransform (normalise, bilinear resize without antialiasing to
    the truncated size, zero padding): the same sizes, pixels to float rounding."""
    import torchvision_ref

    tv = torchvision_ref.load()
    if tv is None:
        pytest.skip("torch/torchvision not installed")
    import torch
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    rng = np.random.default_rng(0)
    transform = GeneralizedRCNNTransform(800, 1333, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    for h, w in [(375, 500), (480, 640), (333, 1000), (1000, 27), (1200, 1600), (50, 70)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        images, _ = transform([torch.from_numpy(img).permute(2, 0, 1).float() / 255])
        theirs = images.tensors[0].permute(1, 2, 0).numpy()
        cfg = override(Config(), {"model.input.resize": "torchvision", "data.buckets": [list(theirs.shape[:2])]})
        spec = P.Spec.from_config(cfg)
        ours, info = P.image_input(Image.fromarray(img), spec.buckets[0], spec, 800)
        assert tuple(info[3:].astype(int)) == tuple(images.image_sizes[0]), (h, w)
        np.testing.assert_allclose(ours, theirs, atol=1e-3, err_msg=str((h, w)))
