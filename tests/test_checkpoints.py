"""Model checkpoint directories: round trip, atomic replacement, clear errors."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from mrcli import checkpoints, model
from mrcli.config import load_recipe
from mrcli.errors import UserError

CATS = [{"id": 7, "contiguous_id": 1, "name": "disc", "supercategory": "shape"}]


@pytest.fixture(scope="module")
def tiny():
    cfg = load_recipe("tiny").config
    m, state = model.create(cfg.model, seed=3)
    return cfg, m, state


def test_round_trip(tmp_path, tiny):
    cfg, _, state = tiny
    path = checkpoints.save(tmp_path / "ckpt", state, cfg, CATS, source={"kind": "test"})
    assert sorted(p.name for p in path.iterdir()) == ["mrcli.json", "state"]
    ckpt = checkpoints.load(path)
    assert ckpt.config == cfg and ckpt.categories == CATS and not ckpt.partial
    assert ckpt.source == {"kind": "test"}
    _, shapes = model.abstract(cfg.model)
    restored = checkpoints.restore(shapes, ckpt.state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert jax.tree.structure(state) == jax.tree.structure(restored)


def test_save_replaces_atomically(tmp_path, tiny):
    cfg, _, state = tiny
    target = tmp_path / "ckpt"
    checkpoints.save(target, state, cfg, CATS)
    zeros = jax.tree.map(np.zeros_like, state)
    checkpoints.save(target, zeros, cfg, None)
    ckpt = checkpoints.load(target)
    assert ckpt.categories is None
    assert all(not np.any(v) for v in checkpoints.flatten(ckpt.state).values())
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporaries left


def test_refuses_to_overwrite_other_directories(tmp_path, tiny):
    cfg, _, state = tiny
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    with pytest.raises(UserError, match="not an mrcli checkpoint"):
        checkpoints.save(tmp_path / "photos", state, cfg)
    assert (tmp_path / "photos" / "a.jpg").exists()


def test_clear_errors(tmp_path, tiny):
    cfg, _, state = tiny
    with pytest.raises(UserError, match="no mrcli.json"):
        checkpoints.load(tmp_path)
    path = checkpoints.save(tmp_path / "ckpt", state, cfg, CATS)
    record = json.loads((path / "mrcli.json").read_text())
    (path / "mrcli.json").write_text(json.dumps({**record, "format": "other/9"}))
    with pytest.raises(UserError, match="format"):
        checkpoints.load(path)
    # A checkpoint of another architecture names the mismatch.
    other = dataclasses.replace(cfg.model, num_classes=7)
    _, shapes = model.abstract(other)
    with pytest.raises(UserError, match=r"box_head\.cls\.bias has shape \(5,\), the model expects \(8,\)"):
        checkpoints.restore(shapes, checkpoints._pure(state))
    _, shapes = model.abstract(dataclasses.replace(cfg.model, masks=False))
    with pytest.raises(UserError, match="the model lacks"):
        checkpoints.restore(shapes, checkpoints._pure(state))
