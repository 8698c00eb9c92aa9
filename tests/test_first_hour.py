"""Issue 19, the first hour on your own data: every mistake a newcomer makes is
refused before step 1 with the fix named, and the fix then works in the same
workdir; prepare names the likely cause of a wrong --images and the empty
categories of labelme2coco; messages keep their square brackets; eval says what
it scored and shows no nan; inference fields take --set on eval, predict and
export.

(The progress line is tests/test_display.py and test_train.py's plain lines;
Ctrl-C is test_train.py; exports that take the model's own photos are
test_export.py; `mrcli datasets`, `info` and --help at 80 columns are test_cli.py.)
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_runner import run_cli
from PIL import Image
from test_train import MICRO, _cli, _wait

FIXTURES = Path(__file__).parent / "fixtures" / "release_0_1"


def _coco_folder(root: Path, n: int = 8, *, prefix: str = "", background: bool = False,
                 annotations: bool = True) -> Path:  # fmt: skip
    """`n` 64x64 photos with one or two squares each, as a COCO file a user exports:
    root/ann.json, images under root/images/PREFIX."""
    rng = np.random.default_rng(0)
    (root / "images" / prefix).mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(1, n + 1):
        img = rng.integers(0, 60, (64, 64, 3), dtype=np.uint8)
        for j in range(1 + i % 2):
            x, y, s = 4 + 30 * j, 6 + 3 * (i % 5), 18 + i % 7
            img[y:y + s, x:x + s] = (220, 40 + 20 * j, 40)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1, "iscrowd": 0,
                         "segmentation": [[x, y, x + s, y, x + s, y + s, x, y + s]],
                         "bbox": [x, y, s, s], "area": s * s})  # fmt: skip
        name = f"{prefix}photo_{i}.png"
        Image.fromarray(img).save(root / "images" / name)
        images.append({"id": i, "file_name": name, "height": 64, "width": 64})
    cats = [{"id": 1, "name": "box"}]
    if background:  # what labelme2coco writes
        cats = [{"id": 0, "name": "_background_"}, *cats]
    data = {"images": images, "categories": cats}
    if annotations:
        data["annotations"] = anns
    (root / "ann.json").write_text(json.dumps(data))
    return root


def _prepare(capsys, root: Path, data_dir: Path, name: str, *extra: str):
    return run_cli(capsys, "prepare", "coco-json", "--annotations", str(root / "ann.json"),
                   "--images", str(root / "images"), "--name", name, "--data-dir", str(data_dir),
                   *extra)  # fmt: skip


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("jax-cache")


# --- 1, 2: refused before compiling, then the fix runs in the same workdir -----------------


@pytest.mark.slow
def test_no_val_split_fails_before_compiling_then_the_fix_runs(tmp_path, capsys, cache_dir):
    data_dir = tmp_path / "data"
    code, _, err = _prepare(capsys, _coco_folder(tmp_path / "src"), data_dir, "noval")
    assert code == 0, err
    workdir = tmp_path / "run"
    sets = [*MICRO, "train.steps=2", "train.eval_every=2", "train.checkpoint_every=2"]
    args = ["train", "--recipe", "tiny", "--data", "noval", "--workdir", str(workdir),
            *[a for s in sets for a in ("--set", s)]]  # fmt: skip
    rc, _, err = _wait(_cli(args, data_dir, cache_dir))
    assert rc == 2, err
    assert "no split 'val'" in err and "--val-fraction" in err
    assert "data.eval_split=train" in err and "train.eval_every=0" in err
    assert "compiled the train step" not in err and "Traceback" not in err
    assert not workdir.exists() or not (workdir / "run.json").exists()

    rc, _, err = _wait(_cli([*args, "--set", "data.eval_split=train"], data_dir, cache_dir))
    assert rc == 0, err
    assert "measures how well the model fits the data it trains on" in err
    assert (workdir / "checkpoints" / "2").is_dir()


@pytest.mark.parametrize("sets, words", [
    (["model.anchors.sizes=16,32"], ["model.anchors.sizes=16,32", "one positive size per FPN level",
                                     "5 sizes"]),
    (["model.rpn.fg_iou=0.3", "model.rpn.bg_iou=0.5"], ["model.rpn.bg_iou=0.5", "fg_iou=0.3"]),
    (["train.global_batch=4"], ["train.global_batch=4", "8 devices", "--set train.global_batch=8"]),
])  # fmt: skip
def test_settings_that_would_train_a_wrong_model_are_refused_first(tmp_path, capsys, sets, words):
    """Refused before anything compiles or is written (8 simulated devices here)."""
    from mrcli.data.prepare import prepare_shapes

    prepare_shapes(data_dir=tmp_path / "data", num_train=8, num_val=2, size=64)
    workdir = tmp_path / "run"
    args = [*MICRO, *sets]
    code, _, err = run_cli(capsys, "train", "--recipe", "tiny", "--workdir", str(workdir),
                           "--data-dir", str(tmp_path / "data"),
                           *[a for s in args for a in ("--set", s)])  # fmt: skip
    assert code == 2, err
    assert "compiled" not in err
    line = [ln for ln in err.splitlines() if ln.startswith("error:")][0]
    for word in words:
        assert word in line, line
    assert not (workdir / "run.json").exists()


def test_a_coco_file_without_annotations_is_refused_and_one_without_instances_trains_nothing(
    tmp_path, capsys
):
    data_dir = tmp_path / "data"
    code, _, err = _prepare(capsys, _coco_folder(tmp_path / "a", annotations=False), data_dir, "x")
    assert code == 2
    assert "no 'annotations' list" in err and '"annotations": []' in err
    root = _coco_folder(tmp_path / "b")
    data = json.loads((root / "ann.json").read_text())
    (root / "ann.json").write_text(json.dumps({**data, "annotations": []}))
    code, _, err = _prepare(capsys, root, data_dir, "unlabeled")
    assert code == 0, err
    code, _, err = run_cli(capsys, "train", "--recipe", "tiny", "--data", "unlabeled",
                           "--data-dir", str(data_dir), "--workdir", str(tmp_path / "run"),
                           *[a for s in MICRO for a in ("--set", s)])  # fmt: skip
    assert code == 2
    assert "has no instances, nothing to learn from" in err


# --- 5, 7: prepare's smaller traps -----------------------------------------------------------


def test_labelme2coco_background_is_named_and_can_be_dropped(tmp_path, capsys):
    root = _coco_folder(tmp_path / "src", n=4, background=True)
    code, _, err = _prepare(capsys, root, tmp_path / "d1", "kept")
    assert code == 0, err
    assert "'_background_' has no instance" in " ".join(err.split()) and "labelme2coco" in err
    assert "--drop-empty-categories" in err
    kept = json.loads((tmp_path / "d1" / "kept" / "1.0.0" / "metadata.json").read_text())
    code, out, err = _prepare(capsys, root, tmp_path / "d2", "dropped", "--drop-empty-categories",
                              "--json")  # fmt: skip
    assert code == 0, err
    record = json.loads(out)["record"]
    assert [c["name"] for c in record["categories"]] == ["box"]
    assert record["categories"][0]["contiguous_id"] == 1
    assert record["splits"]["train"]["instances"] == 6  # 2 + 1 + 2 + 1 squares
    assert [c["name"] for c in kept["categories"]] == ["_background_", "box"]


def test_images_folder_one_level_too_deep_is_named_as_the_cause(tmp_path, capsys):
    root = _coco_folder(tmp_path / "voc", n=4, prefix="JPEGImages/")
    code, _, err = run_cli(capsys, "prepare", "coco-json", "--annotations", str(root / "ann.json"),
                           "--images", str(root / "images" / "JPEGImages"), "--name", "voc",
                           "--data-dir", str(tmp_path / "d"))  # fmt: skip
    assert code == 2
    text = " ".join(err.split()).split("error: ", 1)[1]
    assert "already start with 'JPEGImages/'" in text and f"pass --images {root / 'images'}" in text
    assert "--on-error skip" not in text  # which would drop every image


def test_messages_keep_their_square_brackets(tmp_path, capsys):
    code, _, err = run_cli(capsys, "prepare", "coco-json", "--annotations",
                           str(tmp_path / "ann[v2].json"), "--images", str(tmp_path),
                           "--name", "x", "--data-dir", str(tmp_path / "d"))  # fmt: skip
    assert code == 2
    assert "ann[v2].json" in err


def test_paths_with_square_brackets_are_printed_as_given(tmp_path, capsys):
    """What prepare and show say they wrote names the folders as the user typed them."""
    data_dir, out = tmp_path / "data[v2]", tmp_path / "look[1]"
    code, _, err = run_cli(capsys, "prepare", "shapes", "--num-train", "2", "--num-val", "1",
                           "--size", "48", "--data-dir", str(data_dir))  # fmt: skip
    assert code == 0, err
    assert str(data_dir) in err.replace("\n", "")
    code, _, err = run_cli(capsys, "show", "shapes", "--num", "1", "--out", str(out),
                           "--data-dir", str(data_dir))  # fmt: skip
    assert code == 0, err
    assert str(out) in err.replace("\n", "")


# --- 7: eval's table, --set on eval / predict / export ---------------------------------------


@pytest.fixture
def old_run(tmp_path):
    shutil.copytree(FIXTURES / "run", tmp_path / "run")
    return tmp_path / "run"


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    from mrcli.data.prepare import prepare_shapes

    root = tmp_path_factory.mktemp("data")
    prepare_shapes(data_dir=root, num_train=24, num_val=8, size=64, seed=3)  # the fixture's data
    return root


@pytest.mark.slow
def test_eval_says_what_it_scored_without_nan_and_inference_sets(old_run, shapes_dir, tmp_path, capsys,
                                                                  monkeypatch):  # fmt: skip
    monkeypatch.setenv("MRCLI_DATA", str(shapes_dir))
    code, out, err = run_cli(capsys, "eval", "--workdir", str(old_run), "--checkpoint", "1",
                             "--max-images", "1", "--no-plots",
                             "--set", "model.inference.detections_per_image=3")  # fmt: skip
    assert code == 0, err
    assert f"COCO eval of {old_run} step 1 on shapes/val, 1 images" in out
    assert "nan" not in out
    assert any(line.count("-") >= 1 and "(" in line for line in out.splitlines())  # a class without data
    with open(old_run / "eval" / "detections.json") as f:
        detections = json.load(f)
    assert 0 < len(detections) <= 3  # the --set took effect

    code, _, err = run_cli(capsys, "eval", "--workdir", str(old_run), "--checkpoint", "1",
                           "--set", "model.backbone.depth=50")  # fmt: skip
    assert code == 2 and "what it was trained with" in err

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(images / "a.png")
    code, out, err = run_cli(capsys, "predict", str(images), "--out", str(tmp_path / "pred"),
                             "--workdir", str(old_run), "--checkpoint", "1", "--score", "0.0",
                             "--set", "model.inference.detections_per_image=1", "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["num_instances"] <= 1

    code, out, err = run_cli(capsys, "export", "--workdir", str(old_run), "--checkpoint", "1",
                             "--out", str(tmp_path / "exp"), "--platforms", "cpu",
                             "--set", "model.inference.detections_per_image=2", "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["record"]["detections_per_image"] == 2
