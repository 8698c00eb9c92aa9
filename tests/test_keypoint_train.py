"""`mrcli train` of keypoint models: the tiny recipe (micro) on the figures data
trains, evaluates keypoint AP and keeps the best checkpoint by it; the keypoint
count comes from the dataset; the COCO keypoint recipe makes its first step
from the MSRA ImageNet weights it names."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mrcli import config as c
from mrcli import train
from mrcli.data.prepare import prepare_figures
from mrcli.data.store import find_dataset

MICRO = [
    "data.image_size=64", "data.max_size=64", "data.max_instances=4", "data.num_workers=0",
    "data.mask_crop_size=28", "model.backbone.width=8", "model.fpn.channels=16",
    "model.rpn.pre_nms_topk.train=64", "model.rpn.post_nms_topk.train=32",
    "model.rpn.pre_nms_topk.test=64", "model.rpn.post_nms_topk.test=32",
    "model.rpn.batch_per_image=32", "model.roi_heads.batch_per_image=16", "model.box_head.dim=32",
    "model.keypoint_head.convs=1", "model.keypoint_head.dim=8", "model.keypoint_head.fg_slots=4",
    "model.inference.detections_per_image=8", "train.global_batch=4", "train.warmup_steps=1",
    "train.log_every=1", "train.steps=2", "train.eval_every=2", "eval.batch_size=4",
]  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    prepare_figures(data_dir=root, num_train=8, num_val=4, size=64, seed=3)
    return root


def _cli(args, data_dir, cache, env_extra=None):
    env = {**os.environ, "MRCLI_DATA": str(data_dir), "JAX_COMPILATION_CACHE_DIR": str(cache),
           "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
           **(env_extra or {})}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "mrcli.cli", *args], env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip


def test_the_dataset_decides_the_number_of_keypoints(data_dir):
    ds = find_dataset("figures", data_dir)
    cfg = c.resolve("tiny_keypoints", ["model.keypoint_head.num_keypoints=17"])
    assert train.for_dataset(cfg, ds).model.keypoint_head.num_keypoints == 7
    kept = train.for_dataset(cfg, ds, explicit=frozenset({"model.keypoint_head.num_keypoints"}))
    assert kept.model.keypoint_head.num_keypoints == 17  # set on the command line: refused later, not changed


def test_tiny_keypoints_trains_evaluates_and_keeps_the_best_by_keypoint_ap(tmp_path, data_dir):
    run = tmp_path / "run"
    args = ["train", "--recipe", "tiny_keypoints", "--workdir", str(run),
            *[a for s in MICRO for a in ("--set", s)], "--json"]  # fmt: skip
    result = _cli(args, data_dir, tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert out["step"] == 2 and np.isfinite(out["metrics"]["loss_keypoint"]) and out["metrics"]["loss_keypoint"] > 0
    assert "keypoints_AP" in out["eval"] and "keypoint AP" in result.stderr
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("keypoints_AP" in x for x in lines)
    from mrcli import runs

    manager = runs.open_checkpoints(run, keep=1, read_only=True)
    try:  # the kept best is scored by keypoint AP (train.best_metric)
        record = manager.restore(2, args=runs._record_args())["record"]
    finally:
        manager.close()
    assert record["score"] == pytest.approx(out["eval"]["keypoints_AP"])
    result = _cli(["eval", "--workdir", str(run), "--json"], data_dir, tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["keypoints_AP"] == pytest.approx(out["eval"]["keypoints_AP"])


def test_a_keypoint_model_on_a_dataset_without_keypoints_is_one_line(tmp_path, data_dir):
    from mrcli.data.prepare import prepare_shapes

    prepare_shapes(data_dir=data_dir, num_train=8, num_val=2, size=64, name="plain")
    args = ["train", "--recipe", "tiny_keypoints", "--data", "plain", "--workdir", str(tmp_path / "r"),
            *[a for s in MICRO for a in ("--set", s)]]  # fmt: skip
    result = _cli(args, data_dir, tmp_path / "cache")
    assert result.returncode == 2 and "has no keypoints" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_the_coco_keypoint_recipe_starts_from_its_imagenet_weights(tmp_path, data_dir):
    """One compiled train step of keypoint_r50_fpn_1x (ResNet-50, the paper's 8 x 512
    keypoint head) at 128 px on the figures data, from d2-msra-r50-imagenet fetched
    through a mirror: finite keypoint loss, a checkpoint."""
    from weights_helpers import model_config, msra_file

    from mrcli.config import DETECTRON2_NUMERICS

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    profile = {k.removeprefix("model.").replace(".", "__"): v for k, v in DETECTRON2_NUMERICS.items()
               if not k.startswith("model.keypoint_head")}  # fmt: skip
    msra_file(mirror / "R-50.pkl", model_config(backbone__depth=50, **profile))
    sets = ["data.dataset=figures", "data.image_size=128", "data.max_size=128", "data.train_scales=96,128",
            "data.num_workers=0", "data.max_instances=4", "train.global_batch=1", "train.steps=1",
            "train.eval_every=0", "train.log_every=1"]  # fmt: skip
    args = ["train", "--recipe", "keypoint_r50_fpn_1x", "--workdir", str(tmp_path / "kp"),
            *[a for s in sets for a in ("--set", s)], "--json"]  # fmt: skip
    result = _cli(args, data_dir, tmp_path / "cache",
                  {"MRCLI_WEIGHTS_MIRROR": str(mirror), "MRCLI_WEIGHTS": str(tmp_path / "wcache")})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert out["step"] == 1 and np.isfinite(out["metrics"]["loss_keypoint"]) and out["metrics"]["loss_keypoint"] > 0
    assert "d2-msra-r50-imagenet" in " ".join(result.stderr.split())
    record = json.loads((tmp_path / "kp" / "run.json").read_text())
    assert record["config"]["model"]["keypoint_head"]["num_keypoints"] == 7  # from the figures data
