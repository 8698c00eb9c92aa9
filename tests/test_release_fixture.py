"""What mrcli 0.1 wrote still works: its training run resumes, evaluates,
predicts and exports, and its checkpoint directory loads, predicts and
initialises training (tests/fixtures/release_0_1: flat model config records,
migrated when read)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_runner import run_cli
from PIL import Image
from test_train import MICRO

from mrcli import checkpoints
from mrcli.coco import STAT_NAMES
from mrcli.data.prepare import prepare_shapes
from mrcli.runs import load_trained

FIXTURES = Path(__file__).parent / "fixtures" / "release_0_1"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    prepare_shapes(data_dir=root, num_train=24, num_val=8, size=64, seed=3)  # as the fixture's
    return root


@pytest.fixture
def old_run(tmp_path):
    shutil.copytree(FIXTURES / "run", tmp_path / "run")
    return tmp_path / "run"


def test_the_fixtures_are_in_the_old_format():
    for record in (FIXTURES / "run" / "run.json", FIXTURES / "checkpoint" / "mrcli.json"):
        model = json.loads(record.read_text())["config"]["model"]
        assert model["depth"] == 14 and model["rpn_pre_nms_topk_train"] == 64, record


def test_an_old_run_loads_with_its_config_migrated(old_run):
    trained = load_trained(old_run, "last")
    m = trained.config.model
    assert trained.step == 1
    assert (m.backbone.depth, m.backbone.width, m.fpn.channels) == (14, 8, 16)
    assert (m.rpn.pre_nms_topk.train, m.rpn.post_nms_topk.test) == (64, 32)
    assert m.mask_head.fg_slots == 4 and m.roi_align.aligned and m.inference.detections_per_image == 8
    assert trained.categories[0]["name"] == "circle"


def test_an_old_run_evaluates_predicts_exports_and_resumes(old_run, data_dir, tmp_path, capsys,
                                                            monkeypatch):  # fmt: skip
    monkeypatch.setenv("MRCLI_DATA", str(data_dir))
    code, out, err = run_cli(capsys, "eval", "--workdir", str(old_run), "--checkpoint", "1", "--no-plots",
                             "--json")  # fmt: skip
    assert code == 0, err
    numbers = json.loads(out)
    assert numbers["num_images"] == 8 and numbers["plots"] is None
    assert (old_run / "eval" / "segm.json").is_file() and not (old_run / "eval" / "plots").exists()
    assert all(0.0 <= numbers[f"segm_{k}"] <= 1.0 or numbers[f"segm_{k}"] == -1.0 for k in STAT_NAMES)

    images = tmp_path / "images"
    images.mkdir()
    for k in range(3):
        Image.fromarray(np.full((48, 64, 3), 40 * k, np.uint8)).save(images / f"{k}.png")
    code, out, err = run_cli(capsys, "predict", str(images), "--out", str(tmp_path / "pred"),
                             "--workdir", str(old_run), "--checkpoint", "1", "--score", "0.0",
                             "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["num_images"] == 3
    assert len(list((tmp_path / "pred" / "masks").glob("*.png"))) == 3

    code, out, err = run_cli(capsys, "export", "--workdir", str(old_run), "--checkpoint", "1",
                             "--out", str(tmp_path / "exported"), "--platforms", "cpu", "--verify",
                             "--data-dir", str(data_dir), "--max-images", "2", "--json")  # fmt: skip
    assert code == 0, err
    exported = json.loads(out)
    assert exported["verify"]["ok"] and len(exported["verify"]["images"]) == 2
    assert exported["record"]["detections_per_image"] == 8

    # Then it resumes, on this machine's devices, from its step-1 checkpoint.
    code, out, err = run_cli(capsys, "train", "--workdir", str(old_run), "--set", "train.steps=2",
                             "--json")  # fmt: skip
    assert code == 0, err
    assert "resumed" in err and "at step 1" in err
    result = json.loads(out)
    assert result["step"] == 2 and result["reason"] == "done"
    assert (old_run / "checkpoints" / "2").is_dir()
    # The resumed run's record is written in the current form, with the same config.
    record = json.loads((old_run / "run.json").read_text())["config"]
    assert record["model"]["backbone"]["depth"] == 14 and record["train"]["steps"] == 2
    # Its curves (metrics of 0.1 then of now) are drawn, and it compares.
    curves = json.loads((old_run / "plots" / "curves.json").read_text())
    assert curves["train_step"] == [1, 2]
    code, out, err = run_cli(capsys, "compare", str(old_run), "--out", str(tmp_path / "cmp"), "--json")
    assert code == 0, err
    (summary,) = json.loads(out)["runs"]
    assert summary["step"] == 2 and summary["dataset"] == "shapes" and summary["recipe"] == "tiny"


def test_an_old_checkpoint_directory_predicts_and_initialises_training(data_dir, tmp_path, capsys,
                                                                         monkeypatch):  # fmt: skip
    monkeypatch.setenv("MRCLI_DATA", str(data_dir))
    ckpt = FIXTURES / "checkpoint"
    trained = load_trained(None, str(ckpt))
    assert trained.config.model.backbone.width == 8 and trained.config.model.mask_head.convs == 1

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(images / "grey.png")
    code, out, err = run_cli(capsys, "predict", str(images), "--out", str(tmp_path / "pred"),
                             "--checkpoint", str(ckpt), "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["num_images"] == 1

    # The settings the fixture's run was made with (its model), for one step.
    sets = [*MICRO, "train.steps=1"]
    code, _, err = run_cli(capsys, "train", "--recipe", "tiny", "--workdir", str(tmp_path / "ft"),
                           "--init-from", str(ckpt), *[a for s in sets for a in ("--set", s)])  # fmt: skip
    assert code == 0, err
    n = len(checkpoints.flatten(trained.state.to_pure_dict()))
    assert f"--init-from: {n} arrays from {ckpt.resolve()}" in " ".join(err.split())
    assert "of another shape" not in err
