"""`mrcli prepare cityscapes|yolo|labelme` on small hand-made datasets: the
prepared instances equal the expected masks, boxes and classes; each malformed
input is one line naming the file and the line or shape, exit 2, nothing
written; YOLO and COCO-json give the same instances; --val-fraction."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from data_helpers import leftovers, noise_rgb, run_cli
from format_helpers import (
    CS_SIZE,
    LABELME_SIZE,
    YOLO_IMAGES,
    YOLO_NAMES,
    cityscapes_ids,
    cs_paths,
    disc,
    iou,
    labelme_mask_patch,
    labelme_shapes,
    star_polygon,
    write_cityscapes,
    write_labelme,
    write_yolo,
    yolo_pixel_polygon,
)
from PIL import Image

from mrcli.data import masks as masklib
from mrcli.data.check import KINDS, READER_KINDS
from mrcli.data.prepare import prepare_cityscapes, prepare_coco_json, prepare_labelme, prepare_yolo
from mrcli.data.split import hold_out
from mrcli.data.store import Example, find_dataset
from mrcli.errors import UserError


def _records(ds, split):
    src = ds.source(split)
    return {src[k]["file_name"].decode(): src[k] for k in range(len(src))}


def _polygon_mask(polys, h, w):
    return masklib.decode(masklib.polygon_to_rle(polys, h, w), h, w)


def _problem_lines(err: str, kind: str) -> list[str]:
    return [line for line in err.splitlines() if f"[{kind}]" in line]


def _refused_with_one_line(capsys, data_dir, args, kind, file, where):
    """`mrcli prepare ARGS` exits 2 with one line of `kind` naming FILE (WHERE),
    no traceback, and writes nothing."""
    code, out, err = run_cli(capsys, "prepare", *args, "--data-dir", str(data_dir))
    assert code == 2, err
    (line,) = _problem_lines(err, kind)
    assert file in line
    if where:
        assert f"({where})" in line
    assert "Traceback" not in err and "nothing written" in err
    assert leftovers(data_dir) == []


# --- YOLO -------------------------------------------------------------------------------------


@pytest.mark.parametrize("names_form", ["list", "dict"])
def test_yolo_instances_equal_the_labels(tmp_path, names_form):
    data = write_yolo(tmp_path / "src", names_form)
    result = prepare_yolo(data=data, name="parts", data_dir=tmp_path / "d")
    assert result.written and result.record["source"]["kind"] == "yolo"
    ds = find_dataset("parts", tmp_path / "d")
    assert [c["name"] for c in ds.categories] == YOLO_NAMES
    assert [c["id"] for c in ds.categories] == [1, 2, 3]  # class index + 1
    for split in ("train", "val"):
        recs = _records(ds, split)
        want = [im for im in YOLO_IMAGES if im[0] == split]
        assert sorted(recs) == sorted(f"images/{split}/{name}" for _, name, _, _ in want)
        for _, name, (h, w), lines in want:
            rec = recs[f"images/{split}/{name}"]
            assert (int(rec["height"]), int(rec["width"])) == (h, w)
            lines = lines or []
            assert rec["classes"].tolist() == [c + 1 for c, _ in lines]
            assert not rec["crowd"].any()
            for j, (_, poly) in enumerate(lines):
                pixels = yolo_pixel_polygon([float(f"{v:.6f}") for v in poly], h, w)
                np.testing.assert_array_equal(masklib.decode(rec["rles"][j], h, w),
                                              _polygon_mask([pixels], h, w))
                xs, ys = pixels[0::2], pixels[1::2]
                np.testing.assert_allclose(rec["boxes"][j], [min(xs), min(ys), max(xs), max(ys)], atol=1e-4)
    assert ds.record["splits"]["train"]["empty_images"] == 1  # c.png has no label file


def test_yolo_and_coco_json_prepare_the_same_instances(tmp_path):
    """The same polygons as COCO-json (pixels) and as YOLO labels (normalised,
    6 decimals): same images, classes and crowd flags; masks IoU > 0.99."""
    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    coco = {"images": [], "annotations": [], "categories": [{"id": k + 1, "name": n} for k, n in enumerate(YOLO_NAMES)]}
    yolo_images = []
    for k in range(4):
        h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
        lines = []
        for j in range(3):
            cx, cy, r = rng.uniform(15, w - 15), rng.uniform(15, h - 15), rng.uniform(6, 14)
            pixels = star_polygon(cx, cy, r)
            cls = int(rng.integers(0, 3))
            xs, ys = pixels[0::2], pixels[1::2]
            coco["annotations"].append({"id": 10 * k + j + 1, "image_id": k + 1, "category_id": cls + 1,
                                        "segmentation": [pixels], "iscrowd": 0,
                                        "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]})
            lines.append((cls, [v / (w if i % 2 == 0 else h) for i, v in enumerate(pixels)]))
        yolo_images.append(("train", f"im{k}.png", (h, w), lines))
        coco["images"].append({"id": k + 1, "file_name": f"im{k}.png", "height": h, "width": w})
    data = write_yolo(src / "yolo", images=yolo_images, val=False)
    shutil.copytree(src / "yolo" / "images" / "train", src / "coco_images")
    (src / "coco.json").write_text(json.dumps(coco))
    prepare_yolo(data=data, name="y", data_dir=tmp_path / "d")
    prepare_coco_json(annotations=src / "coco.json", images=src / "coco_images", name="c", data_dir=tmp_path / "d")
    y = _records(find_dataset("y", tmp_path / "d"), "train")
    c = _records(find_dataset("c", tmp_path / "d"), "train")
    assert sorted(c) == sorted(Path(n).name for n in y)
    for name, rec in y.items():
        other = c[Path(name).name]
        assert rec["image"] == other["image"]
        assert rec["classes"].tolist() == other["classes"].tolist()
        assert rec["crowd"].tolist() == other["crowd"].tolist()
        h, w = int(rec["height"]), int(rec["width"])
        for a, b in zip(rec["rles"], other["rles"]):
            assert iou(masklib.decode(a, h, w), masklib.decode(b, h, w)) > 0.99
        np.testing.assert_allclose(rec["boxes"], other["boxes"], atol=1e-3)


def _yolo_case(mutate):
    def setup(root):
        data = write_yolo(root)
        mutate(root)
        return data
    return setup


def _edit_line(path, lineno, text):
    def mutate(root):
        p = root / path
        lines = p.read_text().splitlines()
        lines[lineno - 1] = text
        p.write_text("\n".join(lines) + "\n")
    return mutate


def _image_list(root, names):
    """train: a .txt list of images (relative to the list's folder)."""
    (root / "images/train/list.txt").write_text("".join(f"{n}\n" for n in names))
    (root / "data.yaml").write_text(yaml.safe_dump({"train": "images/train/list.txt", "names": YOLO_NAMES}))


# (kind, mutation of the dataset under ROOT, file named, where)
YOLO_CASES = [
    ("unknown_category", _edit_line("labels/train/a.txt", 2, "3 0.1 0.1 0.5 0.1 0.3 0.5"), "labels/train/a.txt", "line 2"),
    ("polygon_too_few_points", _edit_line("labels/train/a.txt", 1, "0 0.1 0.1 0.5 0.1 0.3"), "labels/train/a.txt", "line 1"),
    ("polygon_too_few_points", _edit_line("labels/val/d.txt", 2, "0 0.1 0.1 0.5 0.1"), "labels/val/d.txt", "line 2"),
    ("coordinates_out_of_range", _edit_line("labels/train/sub/b.txt", 1, "1 0.1 0.1 1.2 0.1 0.3 0.5"), "labels/train/sub/b.txt", "line 1"),
    ("malformed_shape", _edit_line("labels/train/a.txt", 1, "0 0.1 zero 0.5 0.1 0.3 0.5"), "labels/train/a.txt", "line 1"),
    ("label_without_image", lambda root: (root / "images/train/a.png").unlink(), "labels/train/a.txt", ""),
    ("missing_image_file", lambda root: _image_list(root, ["a.png", "nope.png"]), "nope.png", ""),
    ("malformed_label_file", lambda root: (root / "labels/train/a.txt").write_bytes(b"\xff\xfe\x00bad"),
     "labels/train/a.txt", ""),
]


@pytest.mark.parametrize("kind,mutate,file,where", YOLO_CASES, ids=[f"{c[0]}-{c[2]}" for c in YOLO_CASES])
def test_yolo_problem_is_one_line_with_file_and_line(tmp_path, capsys, kind, mutate, file, where):
    data = _yolo_case(mutate)(tmp_path / "src")
    _refused_with_one_line(capsys, tmp_path / "d", ["yolo", "--data", str(data), "--name", "y"],
                           kind, file, where)


def test_yolo_errors_in_data_yaml_name_the_fix(tmp_path, capsys):
    data = write_yolo(tmp_path / "src")
    cfg = yaml.safe_load(data.read_text())
    for change, words in [({"names": {0: "a", 2: "b"}}, "class ids must be 0..1"),
                          ({"names": ["a", "a", "b"]}, "'a' more than once"),
                          ({"nc": 5}, "nc is 5 but names has 3"),
                          ({"train": "nope/images"}, "train: nope/images not found")]:
        data.write_text(yaml.safe_dump({**cfg, **change}))
        code, _, err = run_cli(capsys, "prepare", "yolo", "--data", str(data), "--name", "y",
                               "--data-dir", str(tmp_path / "d"))
        assert code == 2 and words in err and "Traceback" not in err, err


def test_yolo_roboflow_paths_and_val_fraction(tmp_path, capsys):
    """Roboflow's `train: ../train/images` (resolved without the ../ as Ultralytics
    does) and --val-fraction for a data.yaml without val."""
    root = tmp_path / "rf"
    images = [("train", f"im{k}.png", (32, 32), [(k % 3, [0.1, 0.1, 0.6, 0.1, 0.4, 0.7])]) for k in range(10)]
    write_yolo(root, images=images, val=False)
    (root / "train").mkdir()
    (root / "images" / "train").rename(root / "train" / "images")
    (root / "labels" / "train").rename(root / "train" / "labels")
    (root / "data.yaml").write_text(yaml.safe_dump({"train": "../train/images", "nc": 3, "names": YOLO_NAMES}))
    code, out, err = run_cli(capsys, "prepare", "yolo", "--data", str(root / "data.yaml"), "--name", "rf",
                             "--val-fraction", "0.2", "--data-dir", str(tmp_path / "d"), "--json")
    assert code == 0, err
    splits = json.loads(out)["record"]["splits"]
    assert splits["train"]["images"] == 8 and splits["val"]["images"] == 2
    assert json.loads(out)["record"]["source"]["val_fraction"] == 0.2
    code, _, err = run_cli(capsys, "prepare", "yolo", "--data", str(write_yolo(tmp_path / "v")), "--name", "v",
                           "--val-fraction", "0.2", "--data-dir", str(tmp_path / "d"))
    assert code == 2 and "already gives a val split" in err


# --- labelme ----------------------------------------------------------------------------------


def test_labelme_instances_equal_the_shapes(tmp_path, capsys):
    folder = write_labelme(tmp_path / "src")
    code, out, err = run_cli(capsys, "prepare", "labelme", "--folder", str(folder), "--name", "lm",
                             "--data-dir", str(tmp_path / "d"), "--json")
    assert code == 0, err
    assert "[shape_not_a_region]" in err and "a.json (shapes[6])" in err
    ds = find_dataset("lm", tmp_path / "d")
    assert [c["name"] for c in ds.categories] == ["cat", "dog", "person"]  # labels seen, sorted
    recs = _records(ds, "train")
    assert sorted(recs) == ["../images/a.png", "sub/b.png"]  # relative to the folder
    h, w = LABELME_SIZE
    a = recs["../images/a.png"]
    assert a["image"] == (tmp_path / "src" / "images" / "a.png").read_bytes()
    masks = [masklib.decode(r, h, w) for r in a["rles"]]
    assert a["classes"].tolist() == [1, 2, 2, 1, 3]
    shapes = labelme_shapes()
    flat = lambda pts: [float(v) for p in pts for v in p]  # noqa: E731
    np.testing.assert_array_equal(masks[0], _polygon_mask([flat(shapes[0]["points"])], h, w))
    np.testing.assert_array_equal(masks[1], _polygon_mask([[30, 30, 40, 30, 40, 44, 30, 44]], h, w))
    assert iou(masks[2], disc(h, w, 50, 12, 8)) > 0.95
    want = np.zeros((h, w), np.uint8)
    want[30:40, 2:14] = labelme_mask_patch()
    np.testing.assert_array_equal(masks[3], want)
    np.testing.assert_array_equal(masks[4], _polygon_mask([flat(shapes[4]["points"]), flat(shapes[5]["points"])], h, w))
    np.testing.assert_allclose(a["boxes"][4], [22, 26, 36, 40])  # both parts of group 1
    np.testing.assert_array_equal(a["boxes"][3], masklib.tight_box(a["rles"][3], h, w))
    # The embedded image (imageData) is stored as it was embedded.
    b = recs["sub/b.png"]
    raw = json.loads((folder / "sub" / "b.json").read_text())["imageData"]
    import base64

    assert b["image"] == base64.b64decode(raw)
    assert b["classes"].tolist() == [2]
    # mrcli show draws it like any dataset.
    code, out, err = run_cli(capsys, "show", "lm", "--data-dir", str(tmp_path / "d"), "--out",
                             str(tmp_path / "o"), "--num", "2", "--json")
    assert code == 0 and len(json.loads(out)) == 2


def test_circle_polygon_matches_the_disc():
    from mrcli.data.labelme import circle_polygon

    for r in (3.0, 10.0, 40.0):
        got = _polygon_mask([circle_polygon(50.0, 50.0, r)], 100, 100)
        assert iou(got, disc(100, 100, 50.0, 50.0, r)) > (0.9 if r < 5 else 0.97)


def test_labelme_classes_file_and_val_fraction(tmp_path, capsys):
    folder = write_labelme(tmp_path / "src", embed_b=False)
    classes = tmp_path / "labels.txt"
    classes.write_text("__ignore__\n_background_\nperson\ndog\ncat\n")
    result = prepare_labelme(folder=folder, name="lm", classes=classes, val_fraction=0.5, data_dir=tmp_path / "d")
    assert [(c["id"], c["name"]) for c in result.record["categories"]] == [(1, "person"), (2, "dog"), (3, "cat")]
    assert result.record["splits"]["train"]["images"] == 1 and result.record["splits"]["val"]["images"] == 1
    again = prepare_labelme(folder=folder, name="lm2", classes=classes, val_fraction=0.5,
                            data_dir=tmp_path / "d", check_only=True)
    assert again.record["fingerprint"] == result.record["fingerprint"]


def _shape(k, **change):
    def mutate(folder, shapes):
        shapes[k].update(change)
    return mutate


# (kind, mutation of a.json's shapes (or the folder), file named, where)
LABELME_CASES = [
    ("polygon_too_few_points", _shape(0, points=[[4, 4], [20, 6]]), "a.json", "shapes[0]"),
    ("malformed_shape", _shape(1, points=[[30, 30], [40, 44], [1, 1]]), "a.json", "shapes[1]"),
    ("malformed_shape", _shape(2, shape_type="ellipse"), "a.json", "shapes[2]"),
    ("malformed_shape", _shape(3, mask="not base64!"), "a.json", "shapes[3]"),
    ("malformed_shape", _shape(0, points=[[4, "x"], [20, 6], [1, 2]]), "a.json", "shapes[0]"),
    ("box_outside_image", _shape(0, points=[[4, 4], [90, 6], [12, 22]]), "a.json", "shapes[0]"),
    ("box_zero_area", _shape(1, points=[[30, 30], [30, 44]]), "a.json", "shapes[1]"),
    ("missing_image_file", lambda folder, shapes: (folder.parent / "images" / "a.png").unlink(), "a.json",
     "imagePath '../images/a.png'"),
    ("image_size_mismatch", lambda folder, shapes: Image.fromarray(noise_rgb(40, 64, 1)).save(
        folder.parent / "images" / "a.png"), "a.json", "imagePath '../images/a.png'"),
    ("malformed_label_file", lambda folder, shapes: (folder / "other.json").write_text("[1, 2]"), "other.json", ""),
]


@pytest.mark.parametrize("kind,mutate,file,where", LABELME_CASES, ids=[f"{c[0]}-{c[3]}" for c in LABELME_CASES])
def test_labelme_problem_is_one_line_with_file_and_shape(tmp_path, capsys, kind, mutate, file, where):
    shapes = labelme_shapes()
    folder = write_labelme(tmp_path / "src")
    mutate(folder, shapes)
    a = json.loads((folder / "a.json").read_text())
    a["shapes"] = shapes
    (folder / "a.json").write_text(json.dumps(a))
    _refused_with_one_line(capsys, tmp_path / "d", ["labelme", "--folder", str(folder), "--name", "lm"],
                           kind, file, where)


def test_labelme_unknown_label_with_classes_file(tmp_path, capsys):
    folder = write_labelme(tmp_path / "src")
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n")
    code, _, err = run_cli(capsys, "prepare", "labelme", "--folder", str(folder), "--name", "lm",
                           "--classes", str(classes), "--data-dir", str(tmp_path / "d"))
    assert code == 2
    lines = _problem_lines(err, "unknown_category")
    assert len(lines) == 2  # both parts of the person
    assert "a.json (shapes[4])" in lines[0] and "'person' is not in classes.txt" in lines[0]
    code, out, err = run_cli(capsys, "prepare", "labelme", "--folder", str(folder), "--name", "lm",
                             "--classes", str(classes), "--data-dir", str(tmp_path / "d"),
                             "--on-error", "skip", "--json")
    assert code == 0, err
    rec = json.loads(out)["record"]
    assert rec["skipped"] == {"images": 0, "annotations": 1}  # the two-part person
    assert rec["splits"]["train"]["instances"] == 5


# --- Cityscapes -------------------------------------------------------------------------------


def test_cityscapes_instances_and_crowd_regions(tmp_path, capsys):
    root = write_cityscapes(tmp_path / "cs")
    code, out, err = run_cli(capsys, "prepare", "cityscapes", "--manual-dir", str(root),
                             "--data-dir", str(tmp_path / "d"), "--json")
    assert code == 0, err
    ds = find_dataset("cityscapes", tmp_path / "d")
    assert [(c["id"], c["name"]) for c in ds.categories] == [
        (24, "person"), (25, "rider"), (26, "car"), (27, "truck"), (28, "bus"), (31, "train"),
        (32, "motorcycle"), (33, "bicycle")]
    assert ds.splits == ["train", "val"]
    contiguous = {c["id"]: c["contiguous_id"] for c in ds.categories}
    h, w = CS_SIZE
    for split, k in (("train", 0), ("train", 1), ("val", 0)):
        image, _ = cs_paths(root, split, k)
        rec = _records(ds, split)[image.relative_to(root).as_posix()]
        ids = cityscapes_ids(k if split == "train" else 2)
        # The 8 classes' instances and the car group (26, crowd); road, sky and the caravan left out.
        want = [26, 24000, 24001, 25000, 26000]
        assert rec["classes"].tolist() == [contiguous[v if v < 1000 else v // 1000] for v in want]
        assert rec["crowd"].tolist() == [True, False, False, False, False]
        for j, v in enumerate(want):
            mask = (ids == v).astype(np.uint8)
            np.testing.assert_array_equal(masklib.decode(rec["rles"][j], h, w), mask)
            ys, xs = np.nonzero(mask)
            np.testing.assert_array_equal(rec["boxes"][j], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        assert rec["image"] == image.read_bytes()
    assert ds.record["splits"]["train"]["crowd"] == 2


def test_cityscapes_problems_name_the_gt_file(tmp_path, capsys):
    root = write_cityscapes(tmp_path / "cs")
    _, gt = cs_paths(root, "train", 0)
    ids = cityscapes_ids(0)
    ids[0:3, 0:3] = 45001
    Image.fromarray(ids.astype(np.uint16)).save(gt)
    _, gt1 = cs_paths(root, "train", 1)
    gt1.unlink()
    code, _, err = run_cli(capsys, "prepare", "cityscapes", "--manual-dir", str(root),
                           "--data-dir", str(tmp_path / "d"))
    assert code == 2
    (line,) = _problem_lines(err, "unknown_category")
    assert gt.name in line and "(instance id 45001)" in line
    (line,) = _problem_lines(err, "missing_label_file")
    assert gt1.name in line
    assert leftovers(tmp_path / "d") == []
    shutil.rmtree(root / "gtFine")
    code, _, err = run_cli(capsys, "prepare", "cityscapes", "--manual-dir", str(root),
                           "--data-dir", str(tmp_path / "d"))
    assert code == 2 and "needs a login" in err and "gtFine/train" in err


def test_every_reader_kind_has_a_case():
    cases = {c[0] for c in YOLO_CASES + LABELME_CASES} | {"missing_label_file", "shape_not_a_region"}
    assert {k for k in READER_KINDS if KINDS[k].severity == "fatal"} <= cases
    assert READER_KINDS <= set(KINDS)


# --- --val-fraction ---------------------------------------------------------------------------


def _example(iid, classes):
    return Example(image_id=iid, file_name=f"im{iid}.png", height=8, width=8, load=lambda: b"",
                   ann_ids=np.arange(len(classes)), classes=np.array(classes, np.int32),
                   crowd=np.zeros(len(classes), bool), boxes=np.zeros((len(classes), 4), np.float32))


def test_hold_out_is_deterministic_exact_and_stratified():
    # 20 images of class 1, 10 of class 2 (5 of them with class 1 too), 5 empty, 1 of class 3.
    examples = ([_example(k, [1]) for k in range(20)] + [_example(20 + k, [2] + ([1] if k < 5 else []))
                                                       for k in range(10)]
                + [_example(30 + k, []) for k in range(5)] + [_example(40, [3])])
    train, val = hold_out(examples, 0.2)
    assert len(val) == round(0.2 * len(examples)) == 7 and len(train) + len(val) == len(examples)
    has = lambda exs, c: sum(c in ex.classes.tolist() for ex in exs)  # noqa: E731
    assert has(val, 1) >= 4 - 1 and has(val, 2) == 2  # class 2 is the stratum of its 10 images
    assert has(val, 3) == 0  # a class of one image stays in train
    assert sum(len(ex.classes) == 0 for ex in val) == 1
    shuffled = list(reversed(examples))
    _, val2 = hold_out(shuffled, 0.2)
    assert sorted(ex.image_id for ex in val2) == sorted(ex.image_id for ex in val)
    assert [ex.image_id for ex in train] == sorted(ex.image_id for ex in train)  # order kept
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(UserError, match="--val-fraction"):
            hold_out(examples, bad)
    with pytest.raises(UserError, match="cannot make both"):
        hold_out(examples[:1], 0.5)


def test_coco_json_val_fraction(coco_fixture, tmp_path, capsys):
    code, out, err = run_cli(capsys, "prepare", "coco-json", "--annotations", str(coco_fixture["train"]),
                             "--images", str(coco_fixture["images"]), "--name", "p", "--val-fraction", "0.25",
                             "--data-dir", str(tmp_path / "d"), "--json")
    assert code == 0, err
    splits = json.loads(out)["record"]["splits"]
    assert splits["train"]["images"] == 3 and splits["val"]["images"] == 1
    code, _, err = run_cli(capsys, "prepare", "coco-json", "--annotations", str(coco_fixture["train"]),
                           "--images", str(coco_fixture["images"]), "--name", "q", "--val-fraction", "0.25",
                           "--val-annotations", str(coco_fixture["val"]), "--data-dir", str(tmp_path / "d"))
    assert code == 2 and "--val-annotations already gives a val split" in err


# --- the Cityscapes AP in `mrcli eval` --------------------------------------------------------


def _cityscapes_eval(tmp_path, drop_class=None):
    """Perfect detections (the val ground truth, crowd left out, `drop_class`
    removed) scored by coco.score and then with_dataset_metric, as `mrcli eval` does."""
    from mrcli import coco
    from mrcli.evaluate import with_dataset_metric

    root = write_cityscapes(tmp_path / "cs")
    prepare_cityscapes(manual_dir=root, data_dir=tmp_path / "d")
    ds = find_dataset("cityscapes", tmp_path / "d")
    gt = ds.coco_ground_truth("val")
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9,
                "segmentation": a["segmentation"]} for a in gt["annotations"]
               if not a["iscrowd"] and a["category_id"] != drop_class]
    path = tmp_path / "eval" / "detections.json"
    path.parent.mkdir()
    path.write_text(json.dumps(results))
    names = {c["id"]: c["name"] for c in ds.categories}
    result = coco.score(gt, path, [im["id"] for im in gt["images"]], masks=True, category_names=names)
    return with_dataset_metric(result, ds, "val", tmp_path / "eval")


def test_cityscapes_official_ap_beside_coco(tmp_path):
    pytest.importorskip("cityscapesscripts")
    perfect = _cityscapes_eval(tmp_path / "a")
    assert perfect.segm.stats["AP"] == pytest.approx(1.0)
    metric = perfect.official
    assert metric.name == "Cityscapes instance-level AP (cityscapesScripts)"
    assert metric.stats == {"AP": pytest.approx(1.0), "AP50": pytest.approx(1.0)}
    assert {k: v for k, v in metric.per_class_ap.items() if not np.isnan(v)} == {24: 1.0, 25: 1.0, 26: 1.0}
    assert perfect.summary()["cityscapes_AP"] == pytest.approx(1.0)
    assert json.loads((tmp_path / "a" / "eval" / "cityscapes.json").read_text())["AP"] == pytest.approx(1.0)
    # Without the rider's detection: its AP is 0, the mean over the 3 classes present 2/3.
    missing = _cityscapes_eval(tmp_path / "b", drop_class=25)
    assert missing.official.per_class_ap[25] == 0.0
    assert missing.official.stats["AP"] == pytest.approx(2 / 3)


def test_cityscapes_without_cityscapesscripts_says_the_coco_ap_is_printed(tmp_path, monkeypatch):
    from mrcli.data import cityscapes

    monkeypatch.setattr(cityscapes, "official_eval_available", lambda: False)
    result = _cityscapes_eval(tmp_path)
    assert result.official is None
    (note,) = result.notes
    assert "printed: the COCO AP" in note and 'pip install "mrcli[cityscapes]"' in note


def test_eval_prints_the_cityscapes_table():
    from rich.console import Console

    from mrcli.cli.evaluate import _print_tables
    from mrcli.coco import STAT_NAMES, DatasetEval, DatasetMetric, EvalResult

    stats = {k: 0.5 for k in STAT_NAMES}
    coco_result = EvalResult("segm", stats, {24: 0.5})
    metric = DatasetMetric("Cityscapes instance-level AP (cityscapesScripts)", "cityscapes",
                           {"AP": 0.365, "AP50": 0.62}, {24: 0.331})
    result = DatasetEval(bbox=EvalResult("bbox", stats, {24: 0.5}), segm=coco_result, num_images=500,
                         results_path=Path("d.json"), category_names={24: "person"}, official=metric)
    console = Console(record=True, width=100)
    _print_tables(result, console)
    text = console.export_text()
    assert "COCO eval, 500 images" in text and "Cityscapes instance-level AP (cityscapesScripts), 500 images" in text
    assert "0.365" in text and "person (24)" in text and "0.331" in text
