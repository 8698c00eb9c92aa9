"""Config: typed overrides, round trips, and a smoke test for every recipe."""

import dataclasses

import pytest

from mrcli import config as c
from mrcli.errors import UserError


def test_defaults_are_the_paper_baseline():
    cfg = c.Config()
    assert cfg.model.depth == 50 and cfg.model.fpn_channels == 256
    assert cfg.model.anchor_sizes == (32, 64, 128, 256, 512)
    assert cfg.train.base_lr == 0.02 and cfg.train.global_batch == 16
    assert cfg.data.resolved_buckets() == ((800, 1344), (1344, 800))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.depth = 101  # type: ignore[misc]


def test_parse_sets_typed_values():
    updates = c.parse_sets(
        [
            "train.global_batch=32",
            "train.base_lr=0.04",
            "model.aligned=true",
            "model.masks=no",
            "train.decay_steps=210000,250000",
            "data.train_scales=640",
            "data.buckets=[[128,128],[128,256]]",
            "model.dtype=bfloat16",
            "data.dataset=my-data",
        ]
    )
    cfg = c.override(c.Config(), updates)
    assert cfg.train.global_batch == 32 and cfg.train.base_lr == 0.04
    assert cfg.model.aligned is True and cfg.model.masks is False
    assert cfg.train.decay_steps == (210000, 250000)
    assert cfg.data.train_scales == (640,)
    assert cfg.data.buckets == ((128, 128), (128, 256))
    assert cfg.model.dtype == "bfloat16" and cfg.data.dataset == "my-data"


@pytest.mark.parametrize(
    "pair, words",
    [
        ("model.nope=1", ["model.nope", "no field"]),
        ("nope.depth=1", ["nope.depth", "section"]),
        ("model.depth=51", ["model.depth", "14, 26, 50, 101"]),
        ("train.global_batch=1.5", ["train.global_batch", "int"]),
        ("model.aligned=maybe", ["model.aligned", "bool"]),
        ("model.dtype=float16", ["model.dtype", "bfloat16"]),
        ("model.box_coder_weights=1,2", ["model.box_coder_weights"]),
        ("train.steps", ["key=value"]),
    ],
)
def test_bad_overrides_name_the_key(pair, words):
    with pytest.raises(UserError) as info:
        c.resolve(None, [pair])
    for word in words:
        assert word in str(info.value)


def test_round_trip_and_diff():
    cfg = c.resolve("tiny", ["model.dtype=bfloat16"])
    assert c.from_dict(c.to_dict(cfg)) == cfg
    assert c.diff(cfg)["model.dtype"] == "bfloat16"
    assert c.diff(c.Config()) == {}


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(UserError) as info:
        c.load_recipe("nope")
    for name in ("tiny", "r50_fpn_1x", "r50_fpn_3x", "r101_fpn"):
        assert name in str(info.value)


@pytest.mark.parametrize("name", c.recipe_names())
def test_recipe_smoke(name):
    """Every recipe resolves, is a short diff, and documents its command and result."""
    recipe = c.load_recipe(name)
    assert f"--recipe {name}" in recipe.doc
    assert "Expected" in recipe.doc
    # Short against the ~70 fields: the CPU recipe, which changes sizes,
    # sampling counts and the schedule, is the longest at 32.
    assert len(c.diff(recipe.config)) <= 35
    assert c.from_dict(c.to_dict(recipe.config)) == recipe.config
    buckets = recipe.config.data.resolved_buckets()
    assert all(h % 32 == 0 and w % 32 == 0 for h, w in buckets)


def test_recipes_match_the_model_zoo():
    r101 = c.load_recipe("r101_fpn").config
    r50_3x = c.load_recipe("r50_fpn_3x").config
    assert r101.model.depth == 101 and r50_3x.model.depth == 50
    assert r101.train == r50_3x.train and r101.data == r50_3x.data
    assert r50_3x.train.steps == 270_000 and r50_3x.train.decay_steps == (210_000, 250_000)
    assert c.load_recipe("r50_fpn_1x").config.train.steps == 90_000
