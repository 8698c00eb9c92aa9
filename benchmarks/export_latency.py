"""Latency at batch 1: the exported artifact (mrcli.serving) against the native path.

    python benchmarks/export_latency.py [--recipe tiny] [--image-size HxW] [--input HxW]
                                        [--runs 20] [--set key=value ...] [--json]

Native: what `mrcli predict` / `mrcli eval` do per image: the input
pipeline's preprocessing on the host (pipeline.image_input: PIL resize,
normalise, pad), the jitted `Model.detect`, then evaluate.image_detections
(boxes to original pixels, masks pasted into the image on the host).
Exported: `mrcli export` of the same model (stablehlo, cpu), loaded with
`mrcli.serving.load`, called on the raw uint8 image: preprocessing inside
the compiled function, masks pasted on the host by the same paste.

Both are timed end to end from a decoded uint8 image to detections with
pasted masks in original pixels (and, for the export, also without the
paste), median and 90th percentile of `--runs` calls after two warm-up
calls; the compile time of the first call is reported apart. The model is
the recipe freshly initialised (latency does not depend on the weights; the
classifier kernel is scaled so that detections_per_image boxes survive),
the input a smooth random image of `--input` size. Other load on the
machine changes the numbers: compare runs taken together.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def _stats(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90))}


def _size(text: str | None) -> tuple[int, int] | None:
    return None if text is None else tuple(int(v) for v in text.lower().split("x"))  # type: ignore[return-value]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="tiny")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--image-size", help="bucket HxW (default: the recipe's first)")
    ap.add_argument("--input", help="raw image HxW (default: 3/4 of the bucket)")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import jax
    from PIL import Image

    from mrcli import checkpoints, export, parallel, serving
    from mrcli import config as config_lib
    from mrcli import model as model_lib
    from mrcli.data import pipeline
    from mrcli.inference import Predictor
    from mrcli.runs import TrainedModel

    cfg = config_lib.resolve(args.recipe, ["model.inference.score_threshold=0.0", *args.sets])
    t0 = time.perf_counter()
    model, state = model_lib.create(cfg.model, seed=0)
    pure = state.to_pure_dict()
    pure["box_head"]["cls"]["kernel"] = np.asarray(pure["box_head"]["cls"]["kernel"]) * 30.0
    state = checkpoints.restore(state, checkpoints.unflatten(checkpoints.flatten(pure)))
    cats = [{"id": k, "contiguous_id": k, "name": f"c{k}", "supercategory": ""}
            for k in range(1, cfg.model.num_classes + 1)]  # fmt: skip
    trained = TrainedModel(cfg, cats, model, state, "benchmark")
    create_s = time.perf_counter() - t0
    bucket = _size(args.image_size) or tuple(cfg.data.resolved_buckets()[0])
    h, w = _size(args.input) or (bucket[0] * 3 // 4, bucket[1] * 3 // 4)
    yy, xx = np.mgrid[:h, :w]
    rgb = np.clip(127 + 100 * np.sin(xx / 17.0)[..., None] * np.cos(yy / 13.0)[..., None]
                  + np.random.default_rng(0).normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)  # fmt: skip

    # --- native: the Predictor of eval and predict, batch 1 on one device ---
    predictor = Predictor(model, state, cfg, batch_size=1, buckets=[bucket],
                          mesh=parallel.make_mesh(jax.devices()[:1]))  # fmt: skip
    spec = predictor.spec

    def native_once():
        return next(predictor.over_images([(0, rgb)]))[1]

    t0 = time.perf_counter()
    first = native_once()
    native_first_s = time.perf_counter() - t0
    native_once()
    native_times, parts = [], {"preprocess": [], "model": [], "paste": []}
    for _ in range(args.runs):
        # The whole path, then its preprocessing and model alone; paste is the rest.
        t0 = time.perf_counter()
        native_once()
        t1 = time.perf_counter()
        x, info = pipeline.image_input(Image.fromarray(rgb), bucket, spec, cfg.data.image_size)
        t2 = time.perf_counter()
        jax.block_until_ready(predictor.dispatch(x[None], info[None]))
        t3 = time.perf_counter()
        native_times.append(t1 - t0)
        parts["preprocess"].append(t2 - t1)
        parts["model"].append(t3 - t2)
        parts["paste"].append(max(0.0, (t1 - t0) - (t3 - t1)))

    # --- exported ---
    out = tempfile.mkdtemp(prefix="mrcli-bench-export-")
    t0 = time.perf_counter()
    export.export_model(trained, out, image_size=bucket, platforms=("cpu",))
    export_s = time.perf_counter() - t0
    served = serving.load(out)
    t0 = time.perf_counter()
    got = served(rgb)
    exported_first_s = time.perf_counter() - t0
    served(rgb)
    exported_times, no_paste_times = [], []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        served(rgb)
        t1 = time.perf_counter()
        served(rgb, paste=False)
        t2 = time.perf_counter()
        exported_times.append(t1 - t0)
        no_paste_times.append(t2 - t1)

    same = (len(got["scores"]) == len(first.scores)
            and float(np.abs(got["boxes"] - first.boxes).max(initial=0)) <= 0.5)  # fmt: skip
    result = {
        "recipe": args.recipe, "sets": args.sets, "bucket": list(bucket), "input": [h, w],
        "detections": len(first.scores), "agree": bool(same), "runs": args.runs,
        "backend": jax.default_backend(), "cpus": os.cpu_count(),
        "create_s": round(create_s, 2), "export_s": round(export_s, 2),
        "first_call_s": {"native": round(native_first_s, 2), "exported": round(exported_first_s, 2)},
        "native": {**_stats(native_times), **{f"{k}_median_ms": _stats(v)["median_ms"]
                                              for k, v in parts.items()}},
        "exported": _stats(exported_times),
        "exported_no_paste": _stats(no_paste_times),
    }  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.recipe} {' '.join(args.sets)}: bucket {bucket[0]}x{bucket[1]}, input {h}x{w}, "
          f"{result['detections']} detections, {jax.default_backend()} ({os.cpu_count()} cpus), "
          f"outputs agree: {same}")  # fmt: skip
    print(f"  first call (compile): native {native_first_s:.1f} s, exported {exported_first_s:.1f} s "
          f"(export itself {export_s:.1f} s)")  # fmt: skip
    n, e, p = result["native"], result["exported"], result["exported_no_paste"]
    print(f"  native   median {n['median_ms']:8.1f} ms  p90 {n['p90_ms']:8.1f} ms  (preprocess "
          f"{n['preprocess_median_ms']:.1f}, model {n['model_median_ms']:.1f}, paste "
          f"{n['paste_median_ms']:.1f})")  # fmt: skip
    print(f"  exported median {e['median_ms']:8.1f} ms  p90 {e['p90_ms']:8.1f} ms  "
          f"(without the paste: median {p['median_ms']:.1f} ms)")  # fmt: skip


if __name__ == "__main__":
    main()
