"""`mrcli quickstart` end to end on a micro config: prepare (reused), train, eval,
predict, the summary it prints. The real run (tiny recipe, about 8 minutes on
2 cores) is measured in the tiny recipe's docstring and BENCHMARKS.md."""

import json

from cli_runner import run_cli
from test_train import MICRO

from mrcli.data.prepare import prepare_shapes
from mrcli.coco import STAT_NAMES


def test_quickstart_runs_the_whole_workflow(tmp_path, capsys, monkeypatch):
    data_dir = tmp_path / "data"
    prepare_shapes(data_dir=data_dir, num_train=24, num_val=8, size=64, seed=3)
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "cache"))
    workdir = tmp_path / "qs"
    sets = [a for s in [*MICRO, "train.steps=2", "train.checkpoint_every=2"] for a in ("--set", s)]
    code, out, err = run_cli(capsys, "quickstart", "--workdir", str(workdir), "--data-dir",
                             str(data_dir), "--json", *sets)  # fmt: skip
    assert code == 0, err
    assert "using the prepared 'shapes' dataset" in err  # prepared data is reused
    assert "mask AP" in err and "box AP" in err
    result = json.loads(out)
    assert set(result["seconds"]) == {"prepare", "train", "eval", "predict"}
    for name in STAT_NAMES:
        assert 0.0 <= result[f"segm_{name}"] <= 1.0 or result[f"segm_{name}"] == -1.0
    overlays = sorted((workdir / "predictions" / "overlays").rglob("*.png"))
    assert result["overlays"] == str(workdir / "predictions" / "overlays")
    assert len(overlays) == 8  # the val split's 8 images, predicted
    assert (workdir / "eval" / "segm.json").is_file()
    assert (workdir / "checkpoints" / "2").is_dir()
    # It says where its pictures are, and they are there.
    curves, eval_plots = workdir / "plots" / "curves.png", workdir / "eval" / "plots"
    assert result["curves"] == str(curves) and result["eval_plots"] == str(eval_plots)
    assert f"plots: {curves} (training curves), {eval_plots}/" in " ".join(err.split())
    assert json.loads(curves.with_suffix(".json").read_text())["train_step"] == [1, 2]
    assert {p.name for p in eval_plots.glob("*.png")} == {
        "pr_bbox.png", "pr_segm.png", "ap_by_size_bbox.png", "ap_by_size_segm.png", "confusion_matrix.png",
        "confusion_matrix_normalised.png", "worst_images.png"}  # fmt: skip
    assert json.loads((workdir / "eval" / "eval.json").read_text())["step"] == 2
