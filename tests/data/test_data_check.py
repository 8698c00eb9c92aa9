"""The dataset checker, through `mrcli prepare coco-json` as a user runs it:
one test per problem kind. Each asserts that the message names the file, the
ids and the problem, the exit code, and that nothing (half-)written is left."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from data_helpers import leftovers, noise_rgb, run_cli, small_coco
from PIL import Image, ImageOps

from mrcli.data import masks as masklib
from mrcli.data.check import KINDS, READER_KINDS, polygon_self_intersects
from mrcli.data.store import find_dataset


def _setup(tmp_path, mutate=None):
    src = tmp_path / "src"
    data = small_coco(src)
    if mutate is not None:
        mutate(data, src)
    ann = src / "ann.json"
    ann.write_text(json.dumps(data))
    return ann, src / "imgs", tmp_path / "data"


def _prepare(capsys, ann, imgs, data_dir, *extra):
    return run_cli(capsys, "prepare", "coco-json", "--annotations", str(ann), "--images", str(imgs),
                   "--name", "t", "--data-dir", str(data_dir), *extra)


def _ann(i):
    return lambda d: d["annotations"][i]


def _write_truncated_jpeg(src):
    buf = io.BytesIO()
    Image.fromarray(noise_rgb(64, 64, 0)).save(buf, format="JPEG", quality=95)
    (src / "imgs" / "im1.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


def _set(getter, key, value):
    def mutate(d, src):
        getter(d)[key] = value
    return mutate


def _pop(getter, key):
    def mutate(d, src):
        getter(d).pop(key)
    return mutate


def _keypoints(i, values, names=("left_p", "right_p")):
    """Category 1 names keypoints; annotation i gives `values` as its keypoints."""
    def mutate(d, src):
        d["categories"][0].update(keypoints=list(names), skeleton=[[1, 2]])
        d["annotations"][i]["keypoints"] = values
    return mutate


# (kind, mutation, file named in the message, annotation id or None, image id or None)
FATAL_CASES = [
    ("malformed_category", lambda d, s: d["categories"].append({"id": "x", "name": "c"}), "ann.json", None, None),
    ("duplicate_category_id", lambda d, s: d["categories"].append({"id": 2, "name": "again"}), "ann.json", None, None),
    ("malformed_image", lambda d, s: d["images"].append({"id": 9}), "ann.json", None, None),
    ("duplicate_image_id", lambda d, s: d["images"].append(dict(d["images"][0], file_name="im2.png")), "ann.json", None, 1),
    ("missing_image_file", lambda d, s: (s / "imgs" / "im1.png").unlink(), "im1.png", None, 1),
    ("unreadable_image", lambda d, s: (s / "imgs" / "im1.png").write_bytes(b"not an image"), "im1.png", None, 1),
    ("truncated_image", lambda d, s: _write_truncated_jpeg(s), "im1.png", None, 1),
    ("image_size_mismatch", lambda d, s: d["images"][0].update(width=40), "im1.png", None, 1),
    ("malformed_annotation", _pop(_ann(0), "category_id"), "ann.json", None, None),
    ("duplicate_annotation_id", lambda d, s: d["annotations"].append(dict(d["annotations"][0])), "ann.json", 1, 1),
    ("missing_image_ref", _set(_ann(0), "image_id", 77), "ann.json", 1, 77),
    ("unknown_category", _set(_ann(0), "category_id", 99), "ann.json", 1, 1),
    ("box_invalid", _set(_ann(0), "bbox", [1, 2, 3]), "ann.json", 1, 1),
    ("box_zero_area", _set(_ann(0), "bbox", [4.0, 4.0, 0.0, 6.0]), "ann.json", 1, 1),
    ("box_outside_image", _set(_ann(0), "bbox", [20.0, 20.0, 30.0, 5.0]), "ann.json", 1, 1),
    ("segmentation_missing", _set(_ann(0), "segmentation", []), "ann.json", 1, 1),
    ("polygon_too_few_points", _set(_ann(0), "segmentation", [[1.0, 1.0, 9.0, 9.0]]), "ann.json", 1, 1),
    ("rle_size_mismatch", _set(_ann(0), "segmentation", {"size": [16, 32], "counts": [512]}), "ann.json", 1, 1),
    ("rle_invalid", _set(_ann(0), "segmentation", {"size": [32, 32], "counts": [5, 5]}), "ann.json", 1, 1),
    ("keypoint_set_invalid", _keypoints(0, [4, 4, 2, 9, 9, 2], names=("p", "p")), "ann.json", None, None),
    ("keypoints_invalid", _keypoints(0, [4, 4, 2, 9, 9]), "ann.json", 1, 1),
    ("keypoint_visibility_invalid", _keypoints(0, [4, 4, 2, 9, 9, 3]), "ann.json", 1, 1),
    ("keypoint_outside_image", _keypoints(0, [4, 4, 2, 40, 9, 1]), "ann.json", 1, 1),
    ("keypoints_without_names", _keypoints(1, [4, 4, 2, 9, 9, 2]), "ann.json", 2, 2),
]


def test_every_fatal_kind_has_a_case():
    fatal = {k for k, v in KINDS.items() if v.severity == "fatal"} - READER_KINDS
    assert fatal == {c[0] for c in FATAL_CASES}


@pytest.mark.parametrize("kind,mutate,file,ann_id,image_id", FATAL_CASES, ids=[c[0] for c in FATAL_CASES])
def test_fatal_problem_refuses_and_writes_nothing(tmp_path, capsys, kind, mutate, file, ann_id, image_id):
    ann, imgs, data_dir = _setup(tmp_path, mutate)
    code, out, err = _prepare(capsys, ann, imgs, data_dir)
    assert code == 2, err
    lines = [line for line in err.splitlines() if f"[{kind}]" in line]
    assert lines, err
    line = lines[0]
    assert file in line
    if ann_id is not None:
        assert f"annotation {ann_id}" in line
    if image_id is not None:
        assert f"image {image_id}" in line
    assert "nothing written" in err and "--on-error skip" in err
    assert leftovers(data_dir) == []


def test_fatal_problem_json_output(tmp_path, capsys):
    ann, imgs, data_dir = _setup(tmp_path, _set(_ann(1), "category_id", 5))
    code, out, err = _prepare(capsys, ann, imgs, data_dir, "--json")
    assert code == 2
    data = json.loads(out)
    assert data["written"] is False
    assert data["problems"]["counts"] == {"unknown_category": 1}
    (p,) = data["problems"]["problems"]
    assert p["ann_id"] == 2 and p["image_id"] == 2 and p["file"].endswith("ann.json")


def test_check_only_reports_and_writes_nothing(tmp_path, capsys):
    ann, imgs, data_dir = _setup(tmp_path)
    code, out, err = _prepare(capsys, ann, imgs, data_dir, "--check")
    assert code == 0 and "checked only" in err
    assert leftovers(data_dir) == []
    ann, imgs, data_dir = _setup(tmp_path / "bad", _set(_ann(0), "bbox", [0.0, 0.0, 0.0, 0.0]))
    code, out, err = _prepare(capsys, ann, imgs, data_dir, "--check")
    assert code == 2 and "[box_zero_area]" in err and "checked only" in err


def test_on_error_skip_leaves_out_bad_items(tmp_path, capsys):
    def mutate(d, src):
        Image.fromarray(noise_rgb(32, 32, 5)).save(src / "imgs" / "im3.png")
        d["images"].append({"id": 3, "file_name": "im3.png", "height": 32, "width": 32})
        d["annotations"].append(dict(d["annotations"][1], id=3, image_id=3))
        d["annotations"][0]["category_id"] = 42  # bad annotation on image 1
        (src / "imgs" / "im2.png").unlink()  # image 2 (and its annotation) skipped

    ann, imgs, data_dir = _setup(tmp_path, mutate)
    code, out, err = _prepare(capsys, ann, imgs, data_dir, "--on-error", "skip", "--json")
    assert code == 0, err
    assert "skipped 1 image(s) and 2 annotation(s)" in err
    result = json.loads(out)
    assert result["written"] and result["record"]["skipped"] == {"images": 1, "annotations": 2}
    # category 'a' lost its one annotation: a class without instances, reported
    assert result["record"]["problems"] == {"missing_image_file": 1, "unknown_category": 1,
                                            "empty_category": 1}  # fmt: skip
    ds = find_dataset("t", data_dir)
    assert ds.index("train")["image_id"].tolist() == [1, 3]
    assert ds.index("train")["num_instances"].tolist() == [0, 1]
    assert (ds.path / "problems.json").is_file()


def test_on_error_skip_with_nothing_left_is_an_error(tmp_path, capsys):
    def mutate(d, src):
        for k in (1, 2):
            (src / "imgs" / f"im{k}.png").unlink()

    ann, imgs, data_dir = _setup(tmp_path, mutate)
    code, out, err = _prepare(capsys, ann, imgs, data_dir, "--on-error", "skip")
    assert code == 2 and "no images left" in err
    assert leftovers(data_dir) == []


def test_bad_json_and_paths_are_one_line_errors(tmp_path, capsys):
    ann, imgs, data_dir = _setup(tmp_path)
    code, _, err = _prepare(capsys, tmp_path / "nope.json", imgs, data_dir)
    assert code == 2 and "annotation file not found" in err and "Traceback" not in err
    ann.write_text("{not json")
    code, _, err = _prepare(capsys, ann, imgs, data_dir)
    assert code == 2 and "not valid JSON" in err
    ann.write_text(json.dumps({"foo": 1}))
    code, _, err = _prepare(capsys, ann, imgs, data_dir)
    assert code == 2 and "not a COCO annotation file" in err
    ann.write_text(json.dumps(small_coco(tmp_path / "x")))
    code, _, err = _prepare(capsys, ann, tmp_path / "no_images", data_dir)
    assert code == 2 and "images directory not found" in err


# --- fixed kinds and notes: exit 0, written, and what was done is right ------------------


def _stored_image(data_dir, image_id):
    ds = find_dataset("t", data_dir)
    src = ds.source("train")
    for k in range(len(src)):
        if int(src[k]["image_id"]) == image_id:
            return src[k]
    raise KeyError(image_id)


def test_exif_rotation_is_applied(tmp_path, capsys):
    raw = noise_rgb(30, 20, 7)  # stored 20 wide, 30 high

    def mutate(d, src):
        exif = Image.Exif()
        exif[0x0112] = 6  # displayed rotated by 90 degrees: 30 wide, 20 high
        Image.fromarray(raw).save(src / "imgs" / "im1.jpg", exif=exif, quality=95)
        d["images"][0].update(file_name="im1.jpg", width=30, height=20)
        d["annotations"][0].update(segmentation=[[2.0, 2.0, 25.0, 2.0, 10.0, 18.0]], bbox=[2.0, 2.0, 23.0, 16.0])

    ann, imgs, data_dir = _setup(tmp_path, mutate)
    code, out, err = _prepare(capsys, ann, imgs, data_dir)
    assert code == 0, err
    line = next(ln for ln in err.splitlines() if "[exif_rotated]" in ln)
    assert "im1.jpg" in line and "image 1" in line and "rotation applied" in line
    rec = _stored_image(data_dir, 1)
    want = np.asarray(ImageOps.exif_transpose(Image.open(imgs / "im1.jpg")))
    got = np.asarray(Image.open(io.BytesIO(rec["image"])))
    assert got.shape == (20, 30, 3)
    np.testing.assert_array_equal(got, want)
    assert masklib.decode(rec["rles"][0], 20, 30).shape == (20, 30)


def test_exif_size_in_json_of_the_stored_pixels_is_explained(tmp_path, capsys):
    def mutate(d, src):
        exif = Image.Exif()
        exif[0x0112] = 8
        Image.fromarray(noise_rgb(30, 20, 7)).save(src / "imgs" / "im1.jpg", exif=exif)
        d["images"][0].update(file_name="im1.jpg", width=20, height=30)

    ann, imgs, data_dir = _setup(tmp_path, mutate)
    code, out, err = _prepare(capsys, ann, imgs, data_dir)
    assert code == 2 and "[image_size_mismatch]" in err and "EXIF" in err


@pytest.mark.parametrize("mode", ["L", "I;16", "RGBA", "P", "CMYK"])
def test_images_are_converted_to_8bit_rgb(tmp_path, capsys, mode):
    rgb = noise_rgb(32, 32, 8)
    if mode == "I;16":
        gray16 = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 64)
        img = Image.fromarray(gray16)
        want = np.repeat((gray16 >> 8).astype(np.uint8)[..., None], 3, axis=2)
        fname = "im1.png"
    elif mode == "CMYK":
        img = Image.fromarray(rgb).convert("CMYK")
        fname = "im1.jpg"
        want = None
    else:
        img = Image.fromarray(rgb).convert(mode)
        want = np.asarray(img.convert("RGBA").convert("RGB") if mode == "P" else img.convert("RGB"))
        fname = "im1.png"

    def mutate(d, src):
        img.save(src / "imgs" / fname)
        d["images"][0]["file_name"] = fname

    ann, imgs, data_dir = _setup(tmp_path, mutate)
    code, out, err = _prepare(capsys, ann, imgs, data_dir)
    assert code == 0, err
    line = next(ln for ln in err.splitlines() if "[converted_to_rgb]" in ln)
    assert fname in line and mode.split(";")[0] in line
    got = Image.open(io.BytesIO(_stored_image(data_dir, 1)["image"]))
    assert got.mode == "RGB" and got.size == (32, 32)
    if want is not None:
        np.testing.assert_array_equal(np.asarray(got), want)


def test_missing_bbox_is_computed_from_the_mask(tmp_path, capsys):
    ann, imgs, data_dir = _setup(tmp_path, _pop(_ann(1), "bbox"))
    code, out, err = _prepare(capsys, ann, imgs, data_dir)
    assert code == 0, err
    assert any("[box_from_mask]" in ln and "annotation 2" in ln for ln in err.splitlines())
    rec = _stored_image(data_dir, 2)
    np.testing.assert_array_equal(rec["boxes"][0], masklib.tight_box(rec["rles"][0], 32, 32))


def test_self_intersecting_polygon_is_kept_and_noted(tmp_path, capsys):
    bowtie = [2.0, 2.0, 20.0, 20.0, 20.0, 2.0, 2.0, 20.0]
    ann, imgs, data_dir = _setup(tmp_path, _set(_ann(0), "segmentation", [bowtie]))
    code, out, err = _prepare(capsys, ann, imgs, data_dir)
    assert code == 0, err
    assert any("[polygon_self_intersecting]" in ln and "annotation 1" in ln for ln in err.splitlines())
    assert find_dataset("t", data_dir).index("train")["num_instances"].tolist() == [1, 1]


def test_polygon_self_intersection_geometry():
    assert polygon_self_intersects([0, 0, 10, 10, 10, 0, 0, 10])
    assert not polygon_self_intersects([0, 0, 10, 0, 10, 10, 0, 10])
    assert not polygon_self_intersects([0, 0, 10, 0, 5, 8])
    # A concave (non-crossing) polygon.
    assert not polygon_self_intersects([0, 0, 10, 0, 10, 10, 5, 3, 0, 10])


def test_box_overhang_within_tolerance_is_clipped(tmp_path, capsys):
    ann, imgs, data_dir = _setup(tmp_path, _set(_ann(1), "bbox", [5.0, 5.0, 27.5, 20.0]))
    code, out, err = _prepare(capsys, ann, imgs, data_dir)
    assert code == 0, err
    np.testing.assert_array_equal(_stored_image(data_dir, 2)["boxes"][0], [5, 5, 32, 25])


def test_annotations_of_a_missing_image_are_still_checked(tmp_path, capsys):
    """One run lists everything: a missing file does not hide its annotations' problems."""
    def mutate(d, src):
        (src / "imgs" / "im2.png").unlink()
        d["annotations"][1]["bbox"] = [30.0, 30.0, 10.0, 10.0]

    ann, imgs, data_dir = _setup(tmp_path, mutate)
    code, out, err = _prepare(capsys, ann, imgs, data_dir, "--json")
    assert code == 2
    assert json.loads(out)["problems"]["counts"] == {"missing_image_file": 1, "box_outside_image": 1}
    assert "leave out the 1 bad image(s) and 1 bad annotation(s)" in err
