"""Weights by name: the shipped catalogue is well formed; downloads from a
publisher's host (a local HTTP server on 127.0.0.1, through
$MRCLI_WEIGHTS_MIRROR) are streamed, resumed after an interruption, verified,
imported once and reused; a corrupt file, a missing network and a malicious
pickle are refused with one line; MSRA's ImageNet files import."""

from __future__ import annotations

import os
import pickle
import shutil

import numpy as np
import pytest
from cli_runner import run_cli
from weights_helpers import Host, detectron2_file, initial_arrays, model_config, msra_file, torchvision_state

import torchvision_ref
from mrcli import checkpoints
from mrcli.errors import Failure, UserError
from mrcli.weights import cache, catalogue, importers
from mrcli.weights.catalogue import Entry

TINY = model_config(backbone__depth=14, backbone__width=8, fpn__channels=8, box_head__dim=16,
                    mask_head__dim=8, mask_head__convs=1, num_classes=3)  # fmt: skip


def test_the_shipped_catalogue_is_well_formed():
    entries = catalogue.entries()
    assert catalogue.problems(entries) == []
    assert len(entries) >= 8 and all(e.url.startswith("https://") for e in entries.values())
    names = {e.name for e in entries.values()}
    assert {"tv-maskrcnn-r50-fpn-coco", "d2-msra-r50-imagenet", "d2-maskrcnn-r50-fpn-3x-coco"} <= names
    # torchvision's names carry the SHA-256 prefix, Detectron2's model zoo an md5 prefix.
    assert entries["tv-resnet50-imagenet"].checksum == "sha256:0676ba61"
    assert entries["d2-maskrcnn-r50-fpn-1x-coco"].checksum == "md5:a54504"
    assert entries["d2-msra-r50-imagenet"].checksum == "" and entries["d2-msra-r50-imagenet"].checksum_note


def test_catalogue_problems_are_found():
    good = catalogue.get("tv-resnet50-imagenet")
    bad = {
        "a": Entry(**{**good.__dict__, "name": "a", "url": "http://x/a.pth", "file": "a.pth"}),
        "b": Entry(**{**good.__dict__, "name": "b", "checksum": "crc:1", "file": "resnet50-0676ba61.pth"}),
        "c": Entry(**{**good.__dict__, "name": "c", "checksum": "", "checksum_note": "",
                      "url": "https://x/c.pth", "file": "c.pth", "format": "caffe"}),
    }  # fmt: skip
    text = "\n".join(catalogue.problems(bad))
    for words in ("a: the url is not https", "b: checksum 'crc:1'", "c: no checksum and no checksum_note",
                  "c: format 'caffe'"):  # fmt: skip
        assert words in text, text


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A host serving a tiny MSRA backbone (checksum in the catalogue: its SHA-256
    prefix), a tiny Detectron2 detector (md5 prefix) and a file published without
    checksum; the catalogue replaced by theirs, the cache in tmp_path."""
    backbone, _ = msra_file(tmp_path / "R-14.pkl", TINY)
    detector = detectron2_file(tmp_path / "d2.pkl", torchvision_state(initial_arrays(TINY), 14))
    import hashlib

    sha, md5 = hashlib.sha256(backbone).hexdigest(), hashlib.md5(detector).hexdigest()
    files = {f"R-14-{sha[:8]}.pkl": backbone, f"model_final_{md5[:6]}.pkl": detector,
             "R-14-unsigned.pkl": backbone}  # fmt: skip
    base = catalogue.get("d2-msra-r50-imagenet").__dict__
    entries = {
        "tiny-backbone": Entry(**{**base, "name": "tiny-backbone", "depth": 14, "file": f"R-14-{sha[:8]}.pkl",
                                  "url": f"https://example.org/R-14-{sha[:8]}.pkl", "checksum": f"sha256:{sha[:8]}"}),
        "tiny-detector": Entry(**{**base, "name": "tiny-detector", "kind": "detector", "depth": 14,
                                  "file": f"model_final_{md5[:6]}.pkl", "checksum": f"md5:{md5[:6]}",
                                  "url": f"https://example.org/model_final_{md5[:6]}.pkl",
                                  "coco_box_ap": 1.0, "coco_mask_ap": 1.0}),
        "tiny-unsigned": Entry(**{**base, "name": "tiny-unsigned", "depth": 14, "file": "R-14-unsigned.pkl",
                                  "url": "https://example.org/R-14-unsigned.pkl"}),
    }  # fmt: skip
    monkeypatch.setattr(catalogue, "entries", lambda: entries)
    monkeypatch.setenv("MRCLI_WEIGHTS", str(tmp_path / "cache"))
    with Host(files) as h:
        monkeypatch.setenv("MRCLI_WEIGHTS_MIRROR", h.url)
        yield h, entries


def test_download_verify_import_and_reuse(host, capsys):
    h, entries = host
    code, out, err = run_cli(capsys, "weights", "get", "tiny-backbone")
    assert code == 0, err
    path = cache.cache_dir() / "tiny-backbone" / "checkpoint"
    assert out.strip() == str(path)
    ckpt = checkpoints.load(path)
    assert ckpt.partial and ckpt.config.model.backbone.width == 8
    assert ckpt.config.model.input.pixel_order == "bgr" and ckpt.config.model.backbone.stride_in_1x1
    assert len(h.requests) == 1
    # The second call uses the cache: no request at all.
    assert cache.fetch("tiny-backbone") == path and len(h.requests) == 1
    rows = {r["name"]: r for r in cache.listing()}
    assert rows["tiny-backbone"]["cached"] and not rows["tiny-detector"]["cached"]


def test_an_interrupted_download_resumes(host):
    h, entries = host
    h.cut_after = 1000
    with pytest.raises(Failure, match="interrupted after .* run the command again to resume"):
        cache.fetch("tiny-detector")
    part = cache.cache_dir() / "tiny-detector" / (entries["tiny-detector"].file + ".part")
    assert part.stat().st_size == 1000
    path = cache.fetch("tiny-detector")
    assert h.requests[-1][1] == "bytes=1000-"  # the second request asked for the rest only
    assert not part.exists()
    ckpt = checkpoints.load(path)
    assert not ckpt.partial and ckpt.config.model.num_classes == 3
    assert ckpt.config.model.mask_head.dim == 8  # read from the file, as the width and depth


def test_a_corrupt_file_is_refused_and_removed(host, capsys):
    h, entries = host
    name = entries["tiny-detector"].file
    h.files[name] = h.files[name][:-10] + b"0123456789"
    code, _, err = run_cli(capsys, "weights", "get", "tiny-detector")
    assert code == 1 and "Traceback" not in err
    assert "is not the published file" in err and "md5" in err
    folder = cache.cache_dir() / "tiny-detector"
    assert not (folder / name).exists() and not (folder / (name + ".part")).exists()


def test_without_checksum_the_first_download_is_kept_and_checked(host):
    h, entries = host
    cache.download(entries["tiny-unsigned"])
    record = (cache.cache_dir() / "tiny-unsigned" / cache.RECORD).read_text()
    (cache.cache_dir() / "tiny-unsigned" / entries["tiny-unsigned"].file).unlink()
    h.files["R-14-unsigned.pkl"] = b"x" + h.files["R-14-unsigned.pkl"]  # the host now serves another file
    with pytest.raises(Failure, match="not the published file"):
        cache.download(entries["tiny-unsigned"])
    assert '"sha256"' in record


def test_offline_names_the_url_the_file_and_where_to_put_it(host, monkeypatch, capsys, tmp_path):
    h, entries = host
    monkeypatch.setenv("MRCLI_WEIGHTS_MIRROR", "http://127.0.0.1:9")  # nothing listens there
    code, _, err = run_cli(capsys, "weights", "get", "tiny-backbone")
    line = " ".join(err.split())
    assert code == 1 and "Traceback" not in err
    e = entries["tiny-backbone"]
    assert f"cannot download tiny-backbone from http://127.0.0.1:9/{e.file}" in line
    assert e.url in line and f"mrcli weights get tiny-backbone --file {e.file}" in line
    # ... which then works, with the file downloaded by hand.
    given = tmp_path / e.file
    given.write_bytes(h.files[e.file])
    code, out, err = run_cli(capsys, "weights", "get", "tiny-backbone", "--file", str(given))
    assert code == 0, err
    assert checkpoints.load(out.strip()).partial


def test_a_mirror_folder_replaces_the_host(host, monkeypatch, tmp_path):
    h, entries = host
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name, data in h.files.items():
        (mirror / name).write_bytes(data)
    monkeypatch.setenv("MRCLI_WEIGHTS_MIRROR", str(mirror))
    assert checkpoints.load(cache.fetch("tiny-backbone")).partial
    assert h.requests == []


def test_a_malicious_pickle_is_refused_even_with_its_checksum(host, tmp_path, capsys):
    import hashlib

    h, entries = host
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"conv1_w": np.ones(1), "x": _Evil(marker)})
    md5 = hashlib.md5(evil).hexdigest()
    name = f"model_final_{md5[:6]}.pkl"
    h.files[name] = evil
    entries["evil"] = Entry(**{**entries["tiny-detector"].__dict__, "name": "evil", "file": name,
                               "checksum": f"md5:{md5[:6]}"})  # fmt: skip
    code, _, err = run_cli(capsys, "weights", "get", "evil")
    assert code == 2 and "refusing to load" in err and "system" in err
    assert not marker.exists()


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_msra_files_import_to_the_same_arrays(tmp_path):
    _, flat = msra_file(tmp_path / "R-14.pkl", TINY)
    state, cfg, categories, partial = importers.convert("auto", tmp_path / "R-14.pkl")
    got = checkpoints.flatten(state)
    assert partial and categories is None
    assert (cfg.backbone.depth, cfg.backbone.width, cfg.backbone.stride_in_1x1) == (14, 8, True)
    assert cfg.input.pixel_order == "bgr" and cfg.input.pixel_std == (1.0, 1.0, 1.0)
    backbone = {k: v for k, v in flat.items() if k[0] == "backbone"}
    assert set(got) == set(backbone)
    for k, v in backbone.items():
        np.testing.assert_array_equal(got[k], v, err_msg=str(k))


@pytest.mark.skipif(torchvision_ref.load() is None, reason="torch not installed")
def test_torchvision_files_through_the_mirror(host, tmp_path):
    """A torchvision-format detector (torch.save) downloaded, imported, used by name."""
    import hashlib

    import torch

    h, entries = host
    sd = torchvision_state(initial_arrays(TINY), 14)
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, tmp_path / "tv.pth")
    data = (tmp_path / "tv.pth").read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    name = f"maskrcnn_tiny-{sha[:8]}.pth"
    h.files[name] = data
    entries["tiny-tv"] = Entry(**{**entries["tiny-detector"].__dict__,
                                  "name": "tiny-tv", "format": "torchvision", "file": name,
                                  "checksum": f"sha256:{sha[:8]}"})  # fmt: skip
    ckpt = checkpoints.load(cache.fetch("tiny-tv"))
    assert ckpt.config.model.input.resize == "torchvision" and ckpt.config.model.num_classes == 3
    flat = initial_arrays(TINY)
    got = checkpoints.flatten(ckpt.state)
    np.testing.assert_allclose(got[("box_head", "fc6", "kernel")], flat[("box_head", "fc6", "kernel")])


def test_resolve_takes_a_file_a_directory_or_a_name(host, tmp_path):
    h, entries = host
    shutil.copy(tmp_path / "R-14.pkl", tmp_path / "mine.pkl")
    from_file = cache.resolve(str(tmp_path / "mine.pkl"))
    assert from_file.parent.parent.name == "files" and checkpoints.load(from_file).partial
    assert cache.resolve(str(tmp_path / "mine.pkl")) == from_file  # imported once
    assert cache.resolve(str(from_file)) == from_file
    assert cache.resolve("tiny-backbone").name == "checkpoint"
    with pytest.raises(UserError, match="neither a weights name"):
        cache.resolve("no-such-weights")


def test_weights_list_is_a_table_on_stdout(capsys):
    code, out, err = run_cli(capsys, "weights", "list")
    assert code == 0, err
    assert "tv-maskrcnn-r50-fpn-coco" in out and "d2-msra-r101-imagenet" in out and "CC-BY-SA-3.0" in out
    code, out, _ = run_cli(capsys, "weights", "list", "--json")
    import json

    rows = json.loads(out)
    assert {r["name"] for r in rows} == set(catalogue.entries())
    assert all(r["url"].startswith("https://") for r in rows)
