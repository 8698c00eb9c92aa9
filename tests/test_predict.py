"""`mrcli predict`: every input case, mirrored outputs, no silent overwrite,
and label maps that re-encode to the run's COCO RLEs and match the side files.

The model is a micro Mask R-CNN whose mask head is set to predict "all
foreground" (its predictor's kernel 0, bias +8): each instance's mask is its
box, so overlapping detections exercise the disjoint label maps. All runs use
one bucket (64 x 64), one batch size and one --score, so detect compiles once.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from mrcli import checkpoints
from mrcli import config as c
from mrcli import predict as P
from mrcli.errors import UserError
from mrcli.progress import Report

from cli_runner import run_cli

MICRO = [
    "data.image_size=64", "data.max_size=64",
    "model.backbone.width=8", "model.fpn.channels=16", "model.anchors.sizes=8,16,32,64,128",
    "model.rpn.pre_nms_topk.test=64", "model.rpn.post_nms_topk.test=32",
    "model.box_head.dim=32", "model.mask_head.dim=8", "model.mask_head.convs=1",
    "model.inference.detections_per_image=8",
]  # fmt: skip
# Dataset category ids are not the contiguous ones.
CATEGORIES = [
    {"id": i, "contiguous_id": k + 1, "name": n, "supercategory": "shape"}
    for k, (i, n) in enumerate([(3, "circle"), (7, "square"), (8, "triangle"), (12, "star")])
]
SCORE = "0.1"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    from mrcli import model as model_lib

    cfg = c.resolve("tiny", MICRO)
    _, state = model_lib.create(cfg.model, seed=1)
    pure = checkpoints._pure(state)
    pred = pure["mask_head"]["predictor"]
    pred["kernel"] = np.zeros_like(pred["kernel"])
    pred["bias"] = np.full_like(pred["bias"], 8.0)  # every mask pixel foreground
    cls = pure["box_head"]["cls"]
    cls["kernel"] = cls["kernel"] * 4  # spread the scores
    return checkpoints.save(tmp_path_factory.mktemp("ckpt") / "micro", pure, cfg, CATEGORIES)


def _rgb(h, w, seed):
    """Smooth colour blobs (random noise makes a dull test image)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.float32)
    for _ in range(4):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(6, 20)
        img[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
    return img.astype(np.uint8)


def _exif_jpeg(path: Path, stored: np.ndarray, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, format="JPEG", quality=95, exif=exif.tobytes())


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """Every input kind, in nested folders, with unreadable and non-image files."""
    root = tmp_path_factory.mktemp("photos")
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".cache").mkdir()
    Image.fromarray(_rgb(48, 64, 0)).save(root / "a.jpg", quality=95)
    Image.fromarray(_rgb(64, 40, 1)).save(root / "sub" / "b.png")
    Image.fromarray(_rgb(30, 50, 2)).save(root / "sub" / "deeper" / "c.bmp")
    Image.fromarray(_rgb(40, 40, 3)).save(root / "sub" / "d.webp", lossless=True)
    Image.fromarray(_rgb(50, 60, 4)[..., 0]).save(root / "gray.png")  # L
    rgba = np.dstack([_rgb(44, 52, 5), np.full((44, 52), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(root / "rgba.png")
    Image.fromarray(_rgb(36, 48, 6)[..., 1].astype(np.uint16) * 257).save(root / "deep16.png")  # I;16
    _exif_jpeg(root / "sub" / "exif.jpg", _rgb(40, 70, 7), orientation=6)  # shown 70 x 40
    Image.fromarray(_rgb(32, 32, 8)).save(root / "same.jpg")  # same stem, two kinds
    Image.fromarray(_rgb(32, 48, 9)).save(root / "same.png")
    (root / "sub" / "broken.jpg").write_bytes(b"\xff\xd8 this is no jpeg")
    png = io.BytesIO()
    Image.fromarray(_rgb(40, 40, 10)).save(png, format="PNG")
    (root / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    (root / "notes.txt").write_text("not an image")
    (root / "sub" / "labels.json").write_text("{}")
    Image.fromarray(_rgb(20, 20, 11)).save(root / ".hidden.png")
    Image.fromarray(_rgb(20, 20, 12)).save(root / ".cache" / "x.png")
    return root


READABLE = {  # REL -> (height, width) upright
    "a.jpg": (48, 64), "sub/b.png": (64, 40), "sub/deeper/c.bmp": (30, 50), "sub/d.webp": (40, 40),
    "gray.png": (50, 60), "rgba.png": (44, 52), "deep16.png": (36, 48), "sub/exif.jpg": (70, 40),
    "same.jpg": (32, 32), "same.png": (32, 48),
}  # fmt: skip
STEMS = {"a.jpg": "a", "sub/b.png": "sub/b", "sub/deeper/c.bmp": "sub/deeper/c", "sub/d.webp": "sub/d",
         "gray.png": "gray", "rgba.png": "rgba", "deep16.png": "deep16", "sub/exif.jpg": "sub/exif",
         "same.jpg": "same.jpg", "same.png": "same.png"}  # fmt: skip
UNREADABLE = {"sub/broken.jpg", "truncated.png"}


@pytest.fixture(scope="module")
def folder_run(ckpt, tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("pred") / "out"
    events = _Events()
    result = P.run(tree, out, checkpoint=str(ckpt), score=float(SCORE), batch_size=4,
                   report=events)  # fmt: skip
    return result, out, events


class _Events(Report):
    """What predict reports: its warning lines and each progress count."""

    def __init__(self):
        self.warnings, self.done = [], []

    def say(self, text, kind="info"):
        if kind == "warning":
            self.warnings.append(text)

    def advance(self, done, **numbers):
        self.done.append(done)


def _load(out: Path):
    results = json.loads((out / "detections.json").read_text())
    images = json.loads((out / "images.json").read_text())
    return results, images


def test_folder_recursion_every_input_kind_and_mirrored_outputs(folder_run, tree):
    result, out, events = folder_run
    assert result.num_inputs == len(READABLE) + len(UNREADABLE)  # no .txt/.json/hidden files
    assert result.num_images == len(READABLE)
    skipped = {Path(f).relative_to(tree).as_posix(): reason for f, reason in result.skipped}
    assert set(skipped) == UNREADABLE
    assert "unknown format" in skipped["sub/broken.jpg"]
    assert "truncated" in skipped["truncated.png"]
    assert len(events.warnings) == len(result.skipped)
    for line, (f, reason) in zip(events.warnings, result.skipped):
        assert line == f"skipped {f}: {reason}"
    assert events.done[-1] == result.num_inputs
    assert result.buckets == [(64, 64)] and result.batch_size % 4 == 0
    _, images = _load(out)
    assert sorted(i["file_name"] for i in images) == sorted(READABLE)
    # An image's id is its position among the input files (sorted paths); an
    # unreadable file's id is left unused, so ids do not depend on who reads what.
    position = {r: k for k, r in enumerate(sorted([*READABLE, *UNREADABLE]), 1)}
    assert sorted(i["id"] for i in images) == sorted(position[r] for r in READABLE)
    by_name = {i["file_name"]: i for i in images}
    for rel, (h, w) in READABLE.items():
        stem = STEMS[rel]
        labels = np.asarray(Image.open(out / "masks" / f"{stem}.png"))
        assert labels.shape == (h, w) and labels.dtype == np.uint8, rel
        overlay = np.asarray(Image.open(out / "overlays" / f"{stem}.png"))
        assert overlay.shape == (h, w, 3), rel
        side = json.loads((out / "masks" / f"{stem}.json").read_text())
        assert side["file_name"] == rel and side["label_map"] == Path(stem).name + ".png"
        assert (side["height"], side["width"]) == (h, w) == (by_name[rel]["height"], by_name[rel]["width"])
        assert side["image_id"] == by_name[rel]["id"]
    assert all(by_name[r]["id"] == position[r] for r in READABLE)
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    expected = {"detections.json", "images.json", P.MARKER} | {
        f"{d}/{STEMS[r]}.{e}" for r in READABLE for d, e in (("masks", "png"), ("masks", "json"), ("overlays", "png"))
    }  # fmt: skip
    assert written == expected  # nothing for skipped or ignored files, no temp files left


def test_label_maps_reencode_to_the_coco_rles_and_side_files_match(folder_run):
    _, out, _ = folder_run
    results, images = _load(out)
    assert results, "the micro model must detect something at --score " + SCORE
    per_image: dict[int, list] = {}
    for r in results:
        per_image.setdefault(r["image_id"], []).append(r)
    names = {c["id"]: c["name"] for c in CATEGORIES}
    occluded = 0
    for image in images:
        stem = STEMS[image["file_name"]]
        labels = np.asarray(Image.open(out / "masks" / f"{stem}.png"))
        side = json.loads((out / "masks" / f"{stem}.json").read_text())
        dets = per_image.get(image["id"], [])
        inst = side["instances"]
        assert len(inst) == len(dets) == int(labels.max())
        assert [i["label"] for i in inst] == list(range(1, len(inst) + 1))
        assert [i["score"] for i in inst] == sorted((i["score"] for i in inst), reverse=True)
        for k, (i, d) in enumerate(zip(inst, dets), 1):
            mask = labels == k
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            assert rle["counts"].decode() == d["segmentation"]["counts"]
            assert rle["size"] == d["segmentation"]["size"] == [image["height"], image["width"]]
            assert i["class_id"] == d["category_id"] and i["class"] == names[d["category_id"]]
            assert i["score"] == d["score"] and i["score"] > float(SCORE)
            assert i["area"] == int(mask.sum()) > 0
            x1, y1, x2, y2 = i["box_xyxy"]
            assert np.allclose(d["bbox"], [x1, y1, x2 - x1, y2 - y1], atol=2e-3)
            assert 0 <= x1 < x2 <= image["width"] + 1e-3 and 0 <= y1 < y2 <= image["height"] + 1e-3
            # The mask is the box (the micro model's mask head) less better instances' pixels.
            ys, xs = np.nonzero(mask)
            assert xs.min() >= np.floor(x1) - 1 and xs.max() <= np.ceil(x2) and ys.min() >= np.floor(y1) - 1
            occluded += int(mask.sum() < 0.8 * (x2 - x1) * (y2 - y1))
    assert occluded, "no overlapping instances: the disjoint label maps were not exercised"


def test_read_image_converts_every_kind(tree):
    gray = P.read_image(tree / "gray.png")
    assert gray.shape == (50, 60, 3) and (gray[..., 0] == gray[..., 1]).all()
    np.testing.assert_array_equal(gray[..., 0], np.asarray(Image.open(tree / "gray.png")))
    rgba = P.read_image(tree / "rgba.png")
    np.testing.assert_array_equal(rgba, np.asarray(Image.open(tree / "rgba.png"))[..., :3])
    deep = P.read_image(tree / "deep16.png")
    np.testing.assert_array_equal(deep[..., 0], _rgb(36, 48, 6)[..., 1])  # 16-bit scaled, not clipped
    exif = P.read_image(tree / "sub" / "exif.jpg")
    stored = np.asarray(Image.open(tree / "sub" / "exif.jpg").convert("RGB"))
    np.testing.assert_array_equal(exif, np.rot90(stored, k=-1))  # orientation 6: 90 degrees clockwise
    with pytest.raises(P.UnreadableImage, match="unknown format"):
        P.read_image(tree / "sub" / "broken.jpg")


def test_glob_and_single_file(ckpt, tree, tmp_path):
    r = P.run(str(tree / "**" / "*.png"), tmp_path / "g", checkpoint=str(ckpt), score=float(SCORE),
              batch_size=4, formats="png,json")  # fmt: skip
    _, images = _load(tmp_path / "g")
    pngs = {k for k in READABLE if k.endswith(".png")}
    assert {i["file_name"] for i in images} == pngs and r.num_images == len(pngs)
    assert [f for f, _ in r.skipped] == [str(tree / "truncated.png")]
    assert (tmp_path / "g" / "masks" / "sub" / "b.png").is_file()
    assert not (tmp_path / "g" / "overlays").exists()  # not asked for
    r = P.run(str(tree / "sub" / "exif.jpg"), tmp_path / "one", checkpoint=str(ckpt),
              score=float(SCORE), batch_size=4, formats=["overlay"])  # fmt: skip
    assert r.num_images == 1 and r.results_path is None
    assert sorted(p.name for p in (tmp_path / "one").rglob("*") if p.is_file()) == [P.MARKER, "exif.png"]
    assert Image.open(tmp_path / "one" / "overlays" / "exif.png").size == (40, 70)


def test_output_folder_inside_the_input_is_not_read(ckpt, tmp_path):
    Image.fromarray(_rgb(32, 32, 0)).save(tmp_path / "x.png")
    P.run(tmp_path, tmp_path / "pred", checkpoint=str(ckpt), score=float(SCORE), batch_size=4)
    r = P.run(tmp_path, tmp_path / "pred2", checkpoint=str(ckpt), score=float(SCORE), batch_size=4)
    assert r.num_inputs == 1  # not pred/masks/x.png (an earlier output) nor pred2/ (the output)
    r = P.run(str(tmp_path / "**" / "*.png"), tmp_path / "pred3", checkpoint=str(ckpt),
              score=float(SCORE), batch_size=4)  # fmt: skip
    assert r.num_inputs == 1
    for _ in range(2):  # OUT = INPUT: its masks/ and overlays/ are outputs, not inputs
        r = P.run(tmp_path, tmp_path, checkpoint=str(ckpt), score=float(SCORE), batch_size=4,
                  overwrite=True)  # fmt: skip
        assert r.num_inputs == 1 and (tmp_path / "masks" / "x.json").is_file()


def test_user_errors(ckpt, tree, tmp_path):
    def refused(match, *args, **kwargs):
        kwargs = {"checkpoint": str(ckpt), "score": float(SCORE), **kwargs}
        with pytest.raises(UserError, match=match):
            P.run(*args, **kwargs)

    refused("no such file or folder", tmp_path / "nope", tmp_path / "o")
    refused("matches no image files", str(tree / "*.tif"), tmp_path / "o")
    refused("not an image file by its name", tree / "notes.txt", tmp_path / "o")
    (tmp_path / "empty").mkdir()
    refused("no image files in this folder", tmp_path / "empty", tmp_path / "o")
    refused("unknown format 'pdf'", tree, tmp_path / "o", formats="png,pdf")
    refused("--score", tree, tmp_path / "o", score=1.5)
    refused("--workdir", tree, tmp_path / "o", checkpoint=None)
    (tmp_path / "file").write_text("")
    refused("not a folder", tree, tmp_path / "file")
    assert not (tmp_path / "o").exists()
    with pytest.raises(UserError, match="no mask head"):
        P.parse_formats("png", masks=False)
    assert P.parse_formats(None, masks=False) == ("json", "overlay")




def test_cli_refuses_to_overwrite_then_overwrites(ckpt, tree, tmp_path, capsys, monkeypatch):
    import mrcli.cli.core

    # (the persistent compilation cache is process-wide JAX config: leave it off here)
    monkeypatch.setattr(mrcli.cli.core, "use_compilation_cache", lambda: None)
    out = tmp_path / "out"
    args = ["predict", str(tree / "sub"), "--out", str(out), "--checkpoint", str(ckpt),
            "--score", SCORE, "--batch-size", "4"]  # fmt: skip
    code, stdout, err = run_cli(capsys, *args, "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["num_images"] == 4 and summary["num_skipped"] == 1
    assert summary["skipped"][0]["file"].endswith("broken.jpg") and summary["images_per_s"] > 0
    assert "skipped 1 unreadable file(s)" in err and "images/s" in err and "broken.jpg" in err
    label_map = out / "masks" / "b.png"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    code, stdout, err = run_cli(capsys, *args)
    assert code == 2 and stdout == "" and "Traceback" not in err
    assert "already exists" in err and "--overwrite" in err and str(out) in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    code, _, err = run_cli(capsys, *args, "--overwrite", "--format", "png")
    assert code == 0, err
    assert label_map.stat().st_mtime_ns > before[label_map]
    assert (out / "masks" / "exif.json").stat().st_mtime_ns == before[out / "masks" / "exif.json"]


def test_label_map_is_disjoint_best_first_and_16_bit_past_255(tmp_path):
    from mrcli.data.show import write_png

    m = np.zeros((3, 4, 6), bool)
    m[0, :, :3] = True  # best
    m[1, :, 2:5] = True  # loses column 2 to mask 0
    m[2, :, :3] = True  # entirely under mask 0: dropped
    labels, kept = P.label_map(m)
    assert kept.tolist() == [0, 1] and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels[0], [1, 1, 1, 2, 2, 0])
    many = np.zeros((300, 20, 15), bool)
    many[np.arange(300), np.arange(300) // 15, np.arange(300) % 15] = True  # one pixel each
    labels, kept = P.label_map(many)
    assert labels.dtype == np.uint16 and len(kept) == 300 and labels.max() == 300
    write_png(tmp_path / "l.png", labels)
    back = Image.open(tmp_path / "l.png")
    assert back.mode.startswith("I")
    np.testing.assert_array_equal(np.asarray(back), labels)


def test_image_input_is_the_pipelines_preprocessing():
    """A decoded image and its stored bytes give the same model input row."""
    from mrcli.data import pipeline

    cfg = c.resolve("tiny", MICRO)
    spec = pipeline.Spec.from_config(cfg)
    rgb = _rgb(50, 30, 0)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    a, info_a = pipeline.image_input(Image.fromarray(rgb), (64, 64), spec, 64)
    b, info_b = pipeline.image_input(buf.getvalue(), (64, 64), spec, 64)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(info_a, info_b)
    assert info_a.tolist() == [50, 30, pytest.approx(64 / 50), 64, 38]
    assert not a[:, 38:].any() and a[:, :38].any()  # zero padded on the right


def test_overlay_draws_scores_and_boxes_under_a_pixel():
    from mrcli.data.show import overlay

    rgb = np.zeros((20, 30, 3), np.uint8)
    boxes = np.array([[2, 2, 12, 10], [5.2, 5.1, 5.6, 5.4]], np.float32)  # the second < 1 px
    masks = [np.zeros((20, 30), bool), np.zeros((20, 30), bool)]
    masks[0][3:8, 3:10] = True
    with_scores = overlay(rgb, boxes, masks, ["a", "b"], scores=[0.9, 0.5])
    without = overlay(rgb, boxes, masks, ["a", "b"])
    assert with_scores.shape == rgb.shape and (with_scores != without).any()


def test_weights_names_the_model_instead_of_a_workdir(ckpt, tree, tmp_path, capsys, monkeypatch):
    """--weights takes a checkpoint directory (or a file, or a catalogue name:
    tests/test_weights_catalogue.py); with --workdir as well it is refused."""
    import mrcli.cli.core

    monkeypatch.setattr(mrcli.cli.core, "use_compilation_cache", lambda: None)
    args = ["predict", str(tree / "sub" / "b.png"), "--out", str(tmp_path / "out"), "--score", SCORE]
    code, stdout, err = run_cli(capsys, *args, "--weights", str(ckpt), "--json")
    assert code == 0, err
    assert json.loads(stdout)["num_images"] == 1
    code, _, err = run_cli(capsys, *args, "--weights", str(ckpt), "--workdir", str(tmp_path))
    assert code == 2 and "name one model: --weights, or --workdir/--checkpoint, not both" in err
