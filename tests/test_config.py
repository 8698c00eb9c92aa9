"""Config: typed overrides, round trips, and a smoke test for every recipe."""

import dataclasses

import pytest

from mrcli import config as c
from mrcli.errors import UserError


def test_defaults_are_the_paper_baseline():
    cfg = c.Config()
    assert cfg.model.backbone.depth == 50 and cfg.model.fpn.channels == 256
    assert cfg.model.anchors.sizes == (32, 64, 128, 256, 512)
    assert cfg.train.base_lr == 0.02 and cfg.train.global_batch == 16
    assert cfg.data.resolved_buckets() == ((800, 1344), (1344, 800))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.backbone.depth = 101  # type: ignore[misc]


def test_parse_sets_typed_values():
    updates = c.parse_sets(
        [
            "train.global_batch=32",
            "train.base_lr=0.04",
            "model.roi_align.aligned=true",
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
    assert cfg.model.roi_align.aligned is True and cfg.model.masks is False
    assert cfg.train.decay_steps == (210000, 250000)
    assert cfg.data.train_scales == (640,)
    assert cfg.data.buckets == ((128, 128), (128, 256))
    assert cfg.model.dtype == "bfloat16" and cfg.data.dataset == "my-data"


@pytest.mark.parametrize(
    "pair, words",
    [
        ("model.nope=1", ["model.nope", "no field"]),
        ("nope.depth=1", ["nope.depth", "section"]),
        ("model.backbone.depth=51", ["model.backbone.depth", "14, 26, 50, 101"]),
        ("train.global_batch=1.5", ["train.global_batch", "int"]),
        ("model.roi_align.aligned=maybe", ["model.roi_align.aligned", "bool"]),
        ("model.dtype=float16", ["model.dtype", "bfloat16"]),
        ("model.box_head.coder_weights=1,2", ["model.box_head.coder_weights"]),
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
    # Short against the ~80 fields: the CPU recipes, which change sizes,
    # sampling counts and the schedule, are the longest: tiny at 32, and
    # tiny_keypoints (tiny with a keypoint head instead of masks) at 39.
    assert len(c.diff(recipe.config)) <= 40
    assert c.from_dict(c.to_dict(recipe.config)) == recipe.config
    buckets = recipe.config.data.resolved_buckets()
    assert all(h % 32 == 0 and w % 32 == 0 for h, w in buckets)


def test_recipes_match_the_model_zoo():
    r101 = c.load_recipe("r101_fpn").config
    r50_3x = c.load_recipe("r50_fpn_3x").config
    assert r101.model.backbone.depth == 101 and r50_3x.model.backbone.depth == 50
    assert r101.data == r50_3x.data
    assert dataclasses.replace(r101.train, init_from="") == dataclasses.replace(r50_3x.train, init_from="")
    assert r50_3x.train.steps == 270_000 and r50_3x.train.decay_steps == (210_000, 250_000)
    r50_1x = c.load_recipe("r50_fpn_1x").config
    assert r50_1x.train.steps == 90_000
    # Detectron2's setup: MSRA's ImageNet backbones, its numerics, multi-scale training.
    assert r50_1x.train.init_from == r50_3x.train.init_from == "d2-msra-r50-imagenet"
    assert r101.train.init_from == "d2-msra-r101-imagenet"
    for cfg in (r50_1x, r50_3x, r101):
        assert all(c.flatten(c.to_dict(cfg))[k] == (list(v) if isinstance(v, tuple) else v)
                   for k, v in c.DETECTRON2_NUMERICS.items())
        assert cfg.data.train_scales == (640, 672, 704, 736, 768, 800)


def test_every_recipe_names_weights_it_can_train_from():
    """A recipe with frozen layers names pretrained weights of its own numerics;
    a recipe without any trains from scratch (GroupNorm, nothing frozen)."""
    from mrcli.weights import catalogue

    for name in c.recipe_names():
        cfg = c.load_recipe(name).config
        b = cfg.model.backbone
        if not cfg.train.init_from:
            assert b.freeze_at == 0 and b.norm == "group_norm", name
            continue
        entry = catalogue.get(cfg.train.init_from)
        assert entry.depth == b.depth, name
        assert (entry.format == "detectron2") == (cfg.model.input.pixel_order == "bgr"), name


def test_cityscapes_recipe_is_detectron2s():
    """configs/Cityscapes/mask_rcnn_R_50_FPN.yaml: 8 classes, MIN_SIZE_TRAIN 800..1024
    (choice), MIN_SIZE_TEST 1024, MAX_SIZE 2048, 24k iterations at 8 images, LR 0.01,
    decay at 18k, eval every 8k."""
    cfg = c.load_recipe("cityscapes_r50_fpn").config
    assert cfg.data.dataset == "cityscapes" and cfg.model.num_classes == 8
    assert cfg.data.train_scales == tuple(range(800, 1025, 32))
    assert (cfg.data.image_size, cfg.data.max_size) == (1024, 2048)
    assert cfg.data.resolved_buckets() == ((1024, 2048), (2048, 1024))
    t = cfg.train
    assert (t.global_batch, t.steps, t.decay_steps, t.eval_every) == (8, 24_000, (18_000,), 8_000)
    assert t.base_lr * t.global_batch / t.lr_reference_batch == pytest.approx(0.01)
    assert cfg.model.backbone.depth == 50


def test_train_and_test_values_are_one_field_chosen_in_one_place():
    from mrcli.model.rpn import proposal_counts

    cfg = c.resolve(None, ["model.rpn.pre_nms_topk.train=512", "model.rpn.post_nms_topk.test=64"])
    assert cfg.model.rpn.pre_nms_topk == c.TrainTest(train=512, test=1000)
    assert proposal_counts(cfg.model.rpn, training=True) == (512, 2000)
    assert proposal_counts(cfg.model.rpn, training=False) == (1000, 64)
    with pytest.raises(UserError, match="group of fields.*model.rpn.pre_nms_topk.train"):
        c.resolve(None, ["model.rpn.pre_nms_topk=5"])


def test_a_config_of_mrcli_0_1_is_migrated():
    """The flat model fields of mrcli 0.1, as its run.json holds them, read into
    the scoped config; every old key has a new place; an old --set key names it."""
    flat = {"depth": 101, "fpn_channels": 128, "rpn_pre_nms_topk_train": 512,
            "rpn_post_nms_topk_test": 64, "smooth_l1_beta": 0.0, "mask_head": "unet",
            "aligned": True, "detection_pre_nms_topk": 300, "pixel_order": "bgr"}
    cfg = c.from_dict({"model": flat, "train": {"steps": 7}})
    m = cfg.model
    assert m.backbone.depth == 101 and m.fpn.channels == 128 and m.mask_head.kind == "unet"
    assert m.rpn.pre_nms_topk.train == 512 and m.rpn.post_nms_topk.test == 64
    assert m.rpn.smooth_l1_beta == 0.0 and m.box_head.smooth_l1_beta == 0.0
    assert m.roi_align.aligned and m.inference.pre_nms_topk == 300
    assert m.input.pixel_order == "bgr" and cfg.train.steps == 7
    keys = set(c.leaf_keys())
    assert all(set(new) <= keys for new in c.RENAMED.values())
    with pytest.raises(UserError, match="renamed: use model.rpn.smooth_l1_beta and "
                                        "model.box_head.smooth_l1_beta"):
        c.parse_sets(["model.smooth_l1_beta=0"])


def test_keypoint_recipe_is_detectron2s():
    """configs/COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml on Base-Keypoint-RCNN-FPN.yaml:
    KEYPOINT_ON (no masks), one class, ROI_BOX_HEAD.SMOOTH_L1_BETA 0.5,
    RPN.POST_NMS_TOPK_TRAIN 1500, the paper's keypoint head (8 x 512, 14 x 14 RoIs,
    56 x 56 heatmaps, loss over the visible keypoints), MIN_KEYPOINTS_PER_IMAGE 1,
    Detectron2's numerics (keypoints at pixel centres) and the 1x schedule."""
    cfg = c.load_recipe("keypoint_r50_fpn_1x").config
    m = cfg.model
    assert (m.keypoints, m.masks, m.num_classes) == (True, False, 1)
    assert m.box_head.smooth_l1_beta == 0.5 and m.rpn.post_nms_topk.train == 1500
    kh = m.keypoint_head
    assert (kh.convs, kh.dim, kh.pool_size, kh.heatmap_size, kh.num_keypoints) == (8, 512, 14, 56, 17)
    assert kh.loss_normalization == "visible" and kh.coordinate_offset == 0.5
    assert cfg.data.min_keypoints_per_image == 1 and cfg.data.dataset == "coco_person"
    assert cfg.train.steps == 90_000 and cfg.train.init_from == "d2-msra-r50-imagenet"
    assert cfg.train.best_metric == "keypoints_AP"
    assert "53.6" in c.load_recipe("keypoint_r50_fpn_1x").doc and "64.0" in c.load_recipe("keypoint_r50_fpn_1x").doc
