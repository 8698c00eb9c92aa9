"""Tiled prediction (mrcli.tiling): the windows, compact masks, the merge rule
on hand-made detections, a dense synthetic large image tiled vs untiled by one
translation-equivariant detector, and `predict.run(tile=...)` with a micro
Mask R-CNN (the fixtures of tests/test_predict.py)."""

from __future__ import annotations

import json

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image
from scipy import ndimage

from mrcli import tiling as T
from mrcli.errors import UserError

# --- windows ----------------------------------------------------------------------------------


def test_windows_exact_cover():
    w = T.tile_windows(256, 384, 128, 0)
    assert w.shape == (6, 4)
    assert set(map(tuple, w[:, [0, 2]].tolist())) == {(0, 128), (128, 256), (256, 384)}
    assert set(map(tuple, w[:, [1, 3]].tolist())) == {(0, 128), (128, 256)}


def test_windows_flush_last_and_full_size():
    w = T.tile_windows(300, 1000, 256, 64)
    xs = sorted(set(w[:, 0].tolist()))
    assert xs == [0, 192, 384, 576, 744]  # last one flush: 1000 - 256
    assert (w[:, 2] - w[:, 0] == 256).all() and (w[:, 3] - w[:, 1] == 256).all()
    assert w[:, 2].max() == 1000 and w[:, 3].max() == 300
    cover = np.zeros((300, 1000), bool)
    for x0, y0, x1, y1 in w.tolist():
        cover[y0:y1, x0:x1] = True
    assert cover.all()
    small = T.tile_windows(100, 700, 256, 64)  # shorter than the tile: one window along y
    assert (small[:, 1] == 0).all() and (small[:, 3] == 100).all()
    aligned = T.tile_windows(300, 1000, 256, 64, align=32)  # origins on the 32 grid, last flush
    assert (aligned[:, :2] % 32 == 0).all() and aligned[:, 2].max() == 1000


def test_windows_overlap_error():
    with pytest.raises(UserError, match="--tile-overlap"):
        T.tile_windows(500, 500, 128, 128)
    with pytest.raises(UserError, match="--tile-overlap"):
        T.round_tile(100, 120, 32)
    assert T.round_tile(1000, 100, 32) == (1024, 128)


# --- compact masks ----------------------------------------------------------------------------


def test_crop_rle_equals_dense_encoding_and_label_map():
    rng = np.random.default_rng(0)
    h, w = 37, 53
    dense = np.zeros((5, h, w), bool)
    for i, (x0, y0, x1, y1) in enumerate([(0, 0, 5, 7), (48, 30, 53, 37), (10, 3, 30, 20), (20, 10, 40, 36),
                                          (0, 20, 53, 22)]):
        dense[i, y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) > 0.3
    cm = T.CroppedMasks.from_dense(dense)
    for i in range(5):
        ref = mask_util.encode(np.asfortranarray(dense[i].astype(np.uint8)))
        assert cm.rle(i)["counts"] == ref["counts"].decode()
        np.testing.assert_array_equal(cm.dense(i), dense[i])
    empty = T.CroppedMasks.from_dense(np.zeros((1, h, w), bool))
    assert mask_util.decode(empty.rle(0)).sum() == 0
    from mrcli.predict import label_map as dense_label_map

    labels, kept = T.label_map(cm)
    ref_labels, ref_kept = dense_label_map(dense)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_array_equal(kept, ref_kept)


# --- the merge rule on hand-made detections ----------------------------------------------------


def _dets(h, w, items):
    """items: (class, score, x0, y0, x1, y1) rectangles in window pixels -> Detections."""
    boxes = np.array([it[2:] for it in items], np.float32).reshape(-1, 4)
    regions = []
    for _, _, x0, y0, x1, y1 in items:
        regions.append((np.ones((y1 - y0, x1 - x0), bool), x0, y0))
    return T.Detections(boxes, np.array([it[1] for it in items], np.float32),
                        np.array([it[0] for it in items], np.int32),
                        T.CroppedMasks.from_regions(regions, h, w), h, w)


# Two windows side by side: [0, 100) and [60, 160) of a 100 x 160 image; shared x in [60, 100).
WINDOWS = np.array([[0, 0, 100, 100], [60, 0, 160, 100]])


def test_duplicate_in_the_overlap_is_one():
    left = _dets(100, 100, [(1, 0.9, 70, 10, 85, 30)])
    right = _dets(100, 100, [(1, 0.8, 10, 10, 25, 30)])  # the same, at x 70..85
    m = T.merge_tiles(WINDOWS, [left, right], 100, 160)
    assert len(m) == 1 and m.scores[0] == np.float32(0.9)
    np.testing.assert_array_equal(m.boxes[0], [70, 10, 85, 30])


def test_cut_instance_is_the_union_of_its_parts():
    # One bar x 40..130 cut by both windows' interior edges (x 100 and x 60).
    left = _dets(100, 100, [(2, 0.7, 40, 50, 100, 60)])
    right = _dets(100, 100, [(2, 0.6, 0, 50, 70, 60)])  # x 60..130
    m = T.merge_tiles(WINDOWS, [left, right], 100, 160)
    assert len(m) == 1 and m.scores[0] == np.float32(0.7) and m.classes[0] == 2
    want = np.zeros((100, 160), bool)
    want[50:60, 40:130] = True
    np.testing.assert_array_equal(m.masks.dense(0), want)
    np.testing.assert_array_equal(m.boxes[0], [40, 50, 130, 60])


def test_an_uncut_view_wins_over_a_cut_one():
    left = _dets(100, 100, [(1, 0.9, 80, 40, 100, 50)])  # cut by the left window's edge x = 100
    right = _dets(100, 100, [(1, 0.6, 20, 40, 60, 50)])  # the whole instance, x 80..120
    m = T.merge_tiles(WINDOWS, [left, right], 100, 160)
    assert len(m) == 1 and m.scores[0] == np.float32(0.6)
    np.testing.assert_array_equal(m.boxes[0], [80, 40, 120, 50])
    assert m.masks.area(0) == 400


def test_box_only_detections_merge_by_their_boxes():
    left = _dets(100, 100, [(1, 0.9, 70, 10, 85, 30)])
    right = _dets(100, 100, [(1, 0.8, 10, 10, 25, 30)])
    strip = lambda d: T.Detections(d.boxes, d.scores, d.classes, None, d.height, d.width)  # noqa: E731
    m = T.merge_tiles(WINDOWS, [strip(left), strip(right)], 100, 160)
    assert len(m) == 1 and m.masks is None and m.scores[0] == np.float32(0.9)


def test_touching_instances_and_other_classes_are_not_merged():
    # Two instances touching at x = 80 inside the shared region, each seen by both windows.
    left = _dets(100, 100, [(1, 0.9, 65, 10, 80, 30), (1, 0.8, 80, 10, 95, 30), (3, 0.5, 65, 60, 90, 80)])
    right = _dets(100, 100, [(1, 0.85, 5, 10, 20, 30), (1, 0.75, 20, 10, 35, 30), (4, 0.6, 5, 60, 30, 80)])
    m = T.merge_tiles(WINDOWS, [left, right], 100, 160)
    got = sorted((int(c), tuple(int(v) for v in b)) for c, b in zip(m.classes, m.boxes))
    assert got == [(1, (65, 10, 80, 30)), (1, (80, 10, 95, 30)), (3, (65, 60, 90, 80)),
                   (4, (65, 60, 90, 80))]  # fmt: skip
    assert list(m.scores) == sorted(m.scores, reverse=True)
    assert len(T.merge_tiles(WINDOWS, [left, right], 100, 160, max_detections=2)) == 2


# --- a dense large image, tiled vs untiled, one translation-equivariant detector ---------------


def components(rgb: np.ndarray) -> T.Detections:
    """Connected components of each colour of non-black pixels: box = tight box,
    class = colour index (1..3), score from the colour: translation-equivariant."""
    h, w = rgb.shape[:2]
    items, regions = [], []
    for cls, colour in enumerate(COLOURS, 1):
        lab, n = ndimage.label((rgb == colour).all(-1))
        for k, sl in enumerate(ndimage.find_objects(lab), 1):
            ys, xs = sl
            regions.append((lab[sl] == k, xs.start, ys.start))
            items.append((cls, 0.3 + 0.2 * cls, xs.start, ys.start, xs.stop, ys.stop))
    boxes = np.array([it[2:] for it in items], np.float32).reshape(-1, 4)
    return T.Detections(boxes, np.array([it[1] for it in items], np.float32),
                        np.array([it[0] for it in items], np.int32),
                        T.CroppedMasks.from_regions(regions, h, w), h, w)


COLOURS = [(255, 0, 0), (0, 255, 0), (40, 80, 255)]


def _scene(h=2048, w=2048, seed=3):
    """300+ non-touching rectangles and discs on black, a few large ones crossing several windows."""
    rng = np.random.default_rng(seed)
    rgb = np.zeros((h, w, 3), np.uint8)
    taken = np.zeros((h, w), bool)
    yy, xx = np.mgrid[0:80, 0:80]
    placed = 0
    for size in [600, 450] + [int(s) for s in rng.integers(12, 70, 2000)]:
        if placed >= 340:
            break
        x0, y0 = int(rng.integers(0, w - size)), int(rng.integers(0, h - size))
        if taken[max(y0 - 3, 0):y0 + size + 3, max(x0 - 3, 0):x0 + size + 3].any():
            continue
        if size <= 80 and rng.random() < 0.5:
            shape = (yy[:size, :size] - size / 2 + 0.5) ** 2 + (xx[:size, :size] - size / 2 + 0.5) ** 2 \
                <= (size / 2) ** 2  # fmt: skip
        else:
            shape = np.ones((size, int(size * 0.6)), bool) if size > 80 else np.ones((size, size), bool)
        sh, sw = shape.shape
        rgb[y0:y0 + sh, x0:x0 + sw][shape] = COLOURS[placed % 3]
        taken[y0:y0 + sh, x0:x0 + sw] = True
        placed += 1
    assert placed >= 300
    return rgb


def test_dense_large_image_tiled_matches_untiled():
    rgb = _scene()
    whole = components(rgb)
    tile, overlap = 512, 128
    calls = []

    def detect_tiles(views):
        calls.append(len(views))
        assert all(v.shape[0] <= tile and v.shape[1] <= tile for v in views)
        return [components(v) for v in views]

    tiled = T.predict_tiled(rgb, detect_tiles, tile, overlap)
    assert calls == [len(T.tile_windows(2048, 2048, tile, overlap))]
    assert len(tiled) == len(whole) >= 300
    windows = T.tile_windows(2048, 2048, tile, overlap)
    # Match each untiled instance to tiled ones by mask IoU.
    key = lambda b: tuple(int(v) for v in b)  # noqa: E731
    crossing = 0
    for i in range(len(whole)):
        x0, y0, x1, y1 = whole.masks.boxes[i].tolist()
        inside_one = any(wx0 <= x0 and wy0 <= y0 and x1 <= wx1 and y1 <= wy1
                         for wx0, wy0, wx1, wy1 in windows.tolist())  # fmt: skip
        tb = tiled.masks.boxes
        near = np.flatnonzero((tb[:, 0] < x1) & (tb[:, 2] > x0) & (tb[:, 1] < y1) & (tb[:, 3] > y0)
                              & (tiled.classes == whole.classes[i]))  # fmt: skip
        hits = [int(j) for j in near if _iou(tiled.masks, j, whole.masks, i) > 0]
        assert len(hits) == 1, (i, whole.masks.boxes[i], hits)
        j = hits[0]
        if inside_one:
            assert key(tiled.masks.boxes[j]) == key(whole.masks.boxes[i])
            np.testing.assert_array_equal(tiled.masks.crops[j], whole.masks.crops[i])
            np.testing.assert_array_equal(tiled.boxes[j], whole.boxes[i])
            assert tiled.scores[j] == whole.scores[i]
        else:
            crossing += 1
            assert _iou(tiled.masks, j, whole.masks, i) > 0.9
    assert crossing >= 2  # the large instances crossed several windows


def _iou(a: T.CroppedMasks, i: int, b: T.CroppedMasks, j: int) -> float:
    x0, y0 = min(a.boxes[i, 0], b.boxes[j, 0]), min(a.boxes[i, 1], b.boxes[j, 1])
    x1, y1 = max(a.boxes[i, 2], b.boxes[j, 2]), max(a.boxes[i, 3], b.boxes[j, 3])
    ra, rb = a.region(i, x0, y0, x1, y1), b.region(j, x0, y0, x1, y1)
    u = (ra | rb).sum()
    return float((ra & rb).sum() / u) if u else 0.0


# --- predict.run with --tile and a micro Mask R-CNN ---------------------------------------------


def test_overlay_from_the_label_map_is_the_blend_of_its_masks():
    from mrcli import predict as P
    from mrcli.data.show import PALETTE, blend

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (40, 50, 3), np.uint8)
    labels = rng.integers(0, 30, (40, 50)).astype(np.uint8)
    masks = [labels == k for k in range(1, 30)]
    colours = [PALETTE[i % len(PALETTE)] for i in range(29)]
    np.testing.assert_array_equal(P._blend_labels(rgb, labels), blend(rgb, masks, colours))


def test_predict_run_tiled_outputs_match_the_untiled_format(tmp_path):
    from mrcli import checkpoints
    from mrcli import config as c
    from mrcli import model as model_lib
    from mrcli import predict as P
    from test_predict import CATEGORIES, MICRO, SCORE, _rgb

    cfg = c.resolve("tiny", MICRO)
    _, state = model_lib.create(cfg.model, seed=1)
    pure = checkpoints._pure(state)
    pred = pure["mask_head"]["predictor"]
    pred["kernel"] = np.zeros_like(pred["kernel"])
    pred["bias"] = np.full_like(pred["bias"], 8.0)  # every mask pixel foreground
    pure["box_head"]["cls"]["kernel"] = pure["box_head"]["cls"]["kernel"] * 4
    ckpt = checkpoints.save(tmp_path / "micro", pure, cfg, CATEGORIES)

    photos = tmp_path / "photos"
    photos.mkdir()
    big = np.concatenate([_rgb(200, 150, 1), _rgb(200, 150, 2)], axis=1)  # 200 x 300
    Image.fromarray(big).save(photos / "big.png")
    Image.fromarray(_rgb(50, 60, 3)).save(photos / "small.png")  # under the tile: one window
    kw = dict(checkpoint=str(ckpt), score=float(SCORE), batch_size=4)
    plain = P.run(photos, tmp_path / "plain", **kw)
    tiled = P.run(photos, tmp_path / "tiled", tile=128, tile_overlap=32, **kw)
    assert (128, 128) in tiled.buckets and (128, 128) not in plain.buckets
    assert tiled.num_images == plain.num_images == 2
    for out in (tmp_path / "plain", tmp_path / "tiled"):
        for stem in ("big", "small"):
            assert (out / "masks" / f"{stem}.png").is_file() and (out / "overlays" / f"{stem}.png").is_file()
    results = json.loads((tmp_path / "tiled" / "detections.json").read_text())
    images = json.loads((tmp_path / "tiled" / "images.json").read_text())
    assert images == json.loads((tmp_path / "plain" / "images.json").read_text())
    plain_results = json.loads((tmp_path / "plain" / "detections.json").read_text())
    small_id = next(i["id"] for i in images if i["file_name"] == "small.png")
    small = [r for r in results if r["image_id"] == small_id]  # one window at its own scale
    assert all(r["segmentation"]["size"] == [50, 60] for r in small)
    big_id = next(i["id"] for i in images if i["file_name"] == "big.png")
    dets = [r for r in results if r["image_id"] == big_id]
    assert dets, "the micro model must detect something at --score " + SCORE
    if plain_results:
        assert set(dets[0]) == set(plain_results[0])
    labels = np.asarray(Image.open(tmp_path / "tiled" / "masks" / "big.png"))
    plain_labels = np.asarray(Image.open(tmp_path / "plain" / "masks" / "big.png"))
    assert labels.shape == plain_labels.shape == (200, 300) and labels.dtype == plain_labels.dtype
    side = json.loads((tmp_path / "tiled" / "masks" / "big.json").read_text())
    plain_side = json.loads((tmp_path / "plain" / "masks" / "big.json").read_text())
    assert set(side) == set(plain_side) and side["height"] == 200 and side["width"] == 300
    assert len(side["instances"]) == len(dets) == int(labels.max())
    for k, (inst, d) in enumerate(zip(side["instances"], dets), 1):
        mask = labels == k
        np.testing.assert_array_equal(mask_util.decode(d["segmentation"]).astype(bool), mask)
        assert d["segmentation"]["size"] == [200, 300]
        assert inst["area"] == int(mask.sum()) > 0 and inst["score"] == d["score"]
        if plain_side["instances"]:
            assert set(inst) == set(plain_side["instances"][0])
    drawn = np.asarray(Image.open(tmp_path / "tiled" / "overlays" / "big.png"))
    assert drawn.shape == (200, 300, 3)


def test_cli_tile_options(capsys, tmp_path):
    from cli_runner import run_cli

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    code, _, err = run_cli(capsys, "predict", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"),
                           "--checkpoint", str(tmp_path / "none"), "--tile", "128",
                           "--tile-overlap", "128")  # fmt: skip
    assert code != 0 and "--tile-overlap" in err


def test_tile_detector_crops_equal_the_full_paste():
    """The Predictor-backed detect_tiles (a stand-in predictor: fixed outputs):
    windows at scale 1, zero padded, each mask crop = paste_masks' full mask."""
    from types import SimpleNamespace

    from mrcli import inference as I
    from mrcli.ops.masks import paste_masks

    rng = np.random.default_rng(2)
    B, D, M, t = 2, 6, 14, 64
    boxes = np.sort(rng.uniform(-10, 70, (B, D, 4)).astype(np.float32).reshape(B, D, 2, 2), axis=2)
    boxes = boxes.transpose(0, 1, 3, 2).reshape(B, D, 4)[..., [0, 2, 1, 3]]  # x0 <= x1, y0 <= y1
    outputs = {"boxes": boxes, "scores": rng.random((B, D)).astype(np.float32),
               "classes": rng.integers(1, 4, (B, D)).astype(np.int32),
               "valid": rng.random((B, D)) > 0.2, "masks": rng.random((B, D, M, M)).astype(np.float32)}  # fmt: skip
    seen = []

    def dispatch(x, info):
        seen.append((x.copy(), info.copy()))
        return outputs

    spec = SimpleNamespace(mean=(1.0, 2.0, 3.0), std=(2.0, 2.0, 2.0), bgr=True)
    cfg = SimpleNamespace(model=SimpleNamespace(keypoint_head=SimpleNamespace(coordinate_offset=0.0)))
    detect = I.tile_detector(SimpleNamespace(spec=spec, batch_size=B, cfg=cfg, dispatch=dispatch), t)
    views = [rng.integers(0, 256, (64, 64, 3), np.uint8), rng.integers(0, 256, (40, 64, 3), np.uint8),
             rng.integers(0, 256, (64, 50, 3), np.uint8)]  # fmt: skip
    dets = detect(views)
    assert len(dets) == 3 and len(seen) == 2
    x, info = seen[0]
    np.testing.assert_array_equal(info[1], [40, 64, 1, 40, 64])
    np.testing.assert_allclose(x[1, :40, :, 0], (views[1][..., 2] - 1.0) / 2.0)  # bgr, then normalised
    assert (x[1, 40:] == 0).all()  # padded, not resized
    for v, d, row in zip(views, dets, [0, 1, 0]):
        keep = np.flatnonzero(outputs["valid"][row])
        h, w = v.shape[:2]
        assert (d.height, d.width) == (h, w)
        full = paste_masks(outputs["masks"][row][keep], d.boxes, h, w)
        for i in range(len(keep)):
            np.testing.assert_array_equal(d.masks.dense(i), full[i])
