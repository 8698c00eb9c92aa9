"""Keypoint data: COCO keypoint files prepared (names, skeleton, flip pairs,
sigmas with the category map; x, y, v triplets per instance), the pipeline's
gt_keypoints (resized, flipped with left and right swapped), the training
filter, and the synthetic figures set."""

from __future__ import annotations

import json

import numpy as np
import pytest
from data_helpers import run_cli, small_coco

from mrcli import config, keypoint_sets
from mrcli.data import pipeline
from mrcli.data.prepare import prepare_coco_json, prepare_figures
from mrcli.data.store import find_dataset
from mrcli.errors import UserError

NAMES = ["nose", "left_eye", "right_eye", "left_foot", "right_foot"]


def _keypoint_coco(root):
    """small_coco with category 1 a 5-keypoint set; annotation 1 (image 1, 32 x 32)
    has labelled, hidden and unlabelled points; annotation 2 is of category 2."""
    data = small_coco(root)
    data["categories"][0].update(keypoints=NAMES, skeleton=[[1, 2], [1, 3], [2, 4], [3, 5]])
    data["annotations"][0].update(num_keypoints=4,
                                  keypoints=[10, 4, 2, 6, 8, 2, 14, 8, 1, 4, 20, 2, 0, 0, 0])  # fmt: skip
    (root / "ann.json").write_text(json.dumps(data))
    return root / "ann.json", root / "imgs"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("kp")
    ann, imgs = _keypoint_coco(root / "src")
    prepare_coco_json(annotations=ann, images=imgs, val_annotations=ann, name="kp", data_dir=root / "data")
    return find_dataset("kp", root / "data")


def test_prepare_keeps_the_keypoint_set_and_triplets(prepared):
    ds = prepared
    kset = ds.keypoint_set
    assert kset.names == tuple(NAMES) and kset.category_ids == (1,)
    assert kset.flip_pairs == ((2, 3), (4, 5))  # from the names
    assert kset.sigmas == (keypoint_sets.DEFAULT_SIGMA,) * 5  # none given, not COCO's names
    cat = ds.categories[0]
    assert cat["skeleton"] == [[1, 2], [1, 3], [2, 4], [3, 5]] and "none given" in cat["keypoint_sigmas_from"]
    assert "keypoints" not in ds.categories[1]
    rec = ds.source("train")[0]
    np.testing.assert_allclose(rec["keypoints"][0], [[10, 4, 2], [6, 8, 2], [14, 8, 1], [4, 20, 2], [0, 0, 0]])
    assert ds.keypoint_counts("train").tolist() == [4, 0]
    gt = ds.coco_ground_truth("val")
    assert gt["annotations"][0]["num_keypoints"] == 4 and len(gt["annotations"][0]["keypoints"]) == 15
    assert gt["annotations"][1]["num_keypoints"] == 0  # category 2: zeros
    assert gt["categories"][0]["keypoints"] == NAMES
    assert ds.record["splits"]["train"]["keypoints"] == 4


def test_given_sigmas_and_pairs_are_kept_and_bad_ones_refused(tmp_path, capsys):
    ann, imgs = _keypoint_coco(tmp_path / "src")
    data = json.loads(ann.read_text())
    data["categories"][0].update(keypoint_sigmas=[0.1, 0.2, 0.2, 0.3, 0.3], flip_pairs=[[4, 5]])
    ann.write_text(json.dumps(data))
    prepare_coco_json(annotations=ann, images=imgs, name="given", data_dir=tmp_path / "data")
    kset = find_dataset("given", tmp_path / "data").keypoint_set
    assert kset.sigmas == (0.1, 0.2, 0.2, 0.3, 0.3) and kset.flip_pairs == ((4, 5),)
    for bad, words in (({"keypoint_sigmas": [0.1, 0.2]}, "5 positive numbers"),
                       ({"flip_pairs": [[1, 6]]}, "numbered 1..5"),
                       ({"flip_pairs": [[2, 3], [3, 4]]}, "uses a keypoint twice"),
                       ({"skeleton": [[1, 1]]}, "two different keypoints")):  # fmt: skip
        data["categories"][0] = {**data["categories"][0], "flip_pairs": None, **bad}
        ann.write_text(json.dumps(data))
        code, _, err = run_cli(capsys, "prepare", "coco-json", "--annotations", str(ann), "--images", str(imgs),
                               "--name", "bad", "--data-dir", str(tmp_path / "bad"))  # fmt: skip
        lines = [line for line in err.splitlines() if "[keypoint_set_invalid]" in line]
        assert code == 2 and len(lines) == 1 and words in lines[0] and "category 1" in lines[0], err


def test_num_keypoints_that_disagrees_is_counted_and_reported(tmp_path, capsys):
    ann, imgs = _keypoint_coco(tmp_path / "src")
    data = json.loads(ann.read_text())
    data["annotations"][0]["num_keypoints"] = 7
    ann.write_text(json.dumps(data))
    code, _, err = run_cli(capsys, "prepare", "coco-json", "--annotations", str(ann), "--images", str(imgs),
                           "--name", "n", "--data-dir", str(tmp_path / "data"))  # fmt: skip
    assert code == 0 and "[num_keypoints_mismatch]" in err and "using 4" in err
    assert find_dataset("n", tmp_path / "data").keypoint_counts("train").tolist() == [4, 0]


def _kp_config(**sets):
    return config.override(config.Config(), {
        "model.keypoints": True, "model.keypoint_head.num_keypoints": 5, "data.image_size": 64,
        "data.max_size": 64, "data.max_instances": 4, "data.mask_crop_size": 8, **sets})  # fmt: skip


def test_flip_mirrors_keypoints_and_swaps_left_and_right(prepared):
    """The 32 x 32 image at 64 x 64: x, y doubled; flipped, x -> 64 - x and each
    left keypoint takes its right partner's place; unlabelled points stay zeros."""
    cfg = _kp_config()
    plain = pipeline.example_batch(cfg, prepared, "train", [0], flip=False)
    flipped = pipeline.example_batch(cfg, prepared, "train", [0], flip=True)
    a, b = plain["gt_keypoints"][0, 0], flipped["gt_keypoints"][0, 0]
    assert plain["gt_keypoints"].shape == (1, 4, 5, 3)
    np.testing.assert_allclose(a, [[20, 8, 2], [12, 16, 2], [28, 16, 1], [8, 40, 2], [0, 0, 0]])
    # nose stays; left_eye <- right_eye mirrored (64 - 28 = 36); right_eye <- left_eye;
    # left_foot <- the unlabelled right_foot; right_foot <- left_foot.
    np.testing.assert_allclose(b, [[44, 8, 2], [36, 16, 1], [52, 16, 2], [0, 0, 0], [56, 40, 2]])
    # Keypoints travel with their box.
    box = flipped["gt_boxes"][0, 0]
    assert box[0] <= b[2, 0] <= box[2]


def test_coordinate_offset_shifts_gt_keypoints(prepared):
    batch = pipeline.example_batch(_kp_config(**{"model.keypoint_head.coordinate_offset": 0.5}),
                                   prepared, "train", [0], flip=False)  # fmt: skip
    np.testing.assert_allclose(batch["gt_keypoints"][0, 0, 0], [21, 9, 2])  # (10.5, 4.5) * 2


def test_batches_without_a_keypoint_model_have_no_keypoints(prepared):
    cfg = config.override(_kp_config(), {"model.keypoints": False})
    batch = pipeline.example_batch(cfg, prepared, "train", [0])
    assert batch["gt_keypoints"].shape == (1, 4, 0, 3)
    shapes = pipeline.batch_shapes(_kp_config(), 2, (64, 64))
    assert shapes["gt_keypoints"] == ((2, 4, 5, 3), np.dtype(np.float32))


def test_training_skips_images_with_too_few_keypoints(prepared):
    """Detectron2's MIN_KEYPOINTS_PER_IMAGE: image 2 has no keypoints, so a keypoint
    model trains on image 1 only; a box model, or the filter at 0, on both."""
    assert pipeline.training_images(_kp_config(), prepared, "train").tolist() == [0]
    assert pipeline.training_images(_kp_config(**{"data.min_keypoints_per_image": 0}), prepared, "train") is None
    with pytest.raises(UserError, match="min_keypoints_per_image=5"):
        pipeline.training_images(_kp_config(**{"data.min_keypoints_per_image": 5}), prepared, "train")
    cfg = config.override(_kp_config(), {"train.global_batch": 1, "data.num_workers": 0})
    with pipeline.train_batches(cfg, prepared, num_steps=4, process_index=0, process_count=1) as it:
        assert [int(b["image_id"][0]) for b in it] == [1, 1, 1, 1]


def test_a_keypoint_model_needs_a_keypoint_dataset_of_its_size(prepared, tmp_path):
    with pytest.raises(UserError, match="num_keypoints=5"):
        prepared.check_num_keypoints(17)
    data = small_coco(tmp_path / "plain")
    (tmp_path / "plain" / "a.json").write_text(json.dumps(data))
    prepare_coco_json(annotations=tmp_path / "plain" / "a.json", images=tmp_path / "plain" / "imgs", name="plain",
                      data_dir=tmp_path / "data")  # fmt: skip
    with pytest.raises(UserError, match="has no keypoints"):
        find_dataset("plain", tmp_path / "data").check_num_keypoints(5)


def test_figures_are_named_points_with_left_on_the_image_right(tmp_path):
    result = prepare_figures(data_dir=tmp_path, num_train=12, num_val=3, seed=1)
    ds = find_dataset("figures", tmp_path)
    kset = ds.keypoint_set
    assert kset.names[2:4] == ("left_hand", "right_hand") and kset.flip_pairs == ((3, 4), (6, 7))
    assert result.record["splits"]["train"]["keypoint_instances"] == result.record["splits"]["train"]["instances"]
    seen = set()
    for k in range(12):
        rec = ds.source("train")[k]
        kp = np.asarray(rec["keypoints"])  # [n, 7, 3]
        seen |= set(kp[..., 2].ravel().tolist())
        for fig in kp:
            if fig[2, 2] and fig[3, 2]:  # the figure's left hand is on the image's right
                assert fig[2, 0] > fig[3, 0]
            if fig[0, 2] and fig[4, 2]:  # head above hip
                assert fig[0, 1] < fig[4, 1]
    assert {1.0, 2.0} <= seen <= {0.0, 1.0, 2.0}
    again = prepare_figures(data_dir=tmp_path / "again", num_train=12, num_val=3, seed=1)
    assert again.record["fingerprint"] == result.record["fingerprint"]


def test_a_keypoint_annotation_without_segmentation_is_its_box(tmp_path, capsys):
    """Pose tools export keypoints with an empty segmentation: the box becomes the
    mask (reported), for box + keypoint models; other categories still need masks."""
    ann, imgs = _keypoint_coco(tmp_path / "src")
    data = json.loads(ann.read_text())
    data["annotations"][0]["segmentation"] = []
    ann.write_text(json.dumps(data))
    code, _, err = run_cli(capsys, "prepare", "coco-json", "--annotations", str(ann), "--images", str(imgs),
                           "--name", "boxes", "--data-dir", str(tmp_path / "data"))  # fmt: skip
    assert code == 0 and "[mask_from_box]" in err and "model.masks=false" in err, err
    ds = find_dataset("boxes", tmp_path / "data")
    gt = ds.coco_ground_truth("train")
    assert gt["annotations"][0]["area"] == 162.0  # the given area is kept
    from mrcli.data import masks as masklib

    mask = masklib.decode(ds.source("train")[0]["rles"][0], 32, 32)
    assert mask[2:20, 2:20].all() and mask.sum() == 18 * 18
    data["annotations"][1]["segmentation"] = []  # category 2 has no keypoints
    ann.write_text(json.dumps(data))
    code, _, err = run_cli(capsys, "prepare", "coco-json", "--annotations", str(ann), "--images", str(imgs),
                           "--name", "boxes2", "--data-dir", str(tmp_path / "data"))  # fmt: skip
    assert code == 2 and "[segmentation_missing]" in err


def test_empty_keypoint_lists_mean_no_keypoints(tmp_path):
    """Exports that write "keypoints": [] for every category and annotation are plain
    instance datasets, not malformed keypoint files."""
    data = small_coco(tmp_path / "src")
    for cat in data["categories"]:
        cat["keypoints"] = []
    for ann in data["annotations"]:
        ann["keypoints"], ann["num_keypoints"] = [], 0
    (tmp_path / "src" / "a.json").write_text(json.dumps(data))
    result = prepare_coco_json(annotations=tmp_path / "src" / "a.json", images=tmp_path / "src" / "imgs",
                               name="empty", data_dir=tmp_path / "data")  # fmt: skip
    assert not result.report.problems
    assert find_dataset("empty", tmp_path / "data").keypoint_set is None
