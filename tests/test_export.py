"""mrcli export: the artifact carries preprocessing, model and post-processing,
runs in a fresh process with jax alone (or TensorFlow alone), and agrees with
the native model; --verify catches a real mismatch.

The model is the tiny recipe made narrower (a few RoIs, 10 detections), its
classifier kernel scaled so that the random weights give confident, distinct
detections, saved with mrcli.checkpoints.save and exported with --checkpoint.
It runs at a 64x96 bucket on raw images up to 120x150, so some images shrink
and some grow. The heavy runs are subprocesses sharing a persistent JAX
compilation cache (each program compiles once in the module).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

SETS = [
    "model.backbone.width=8", "model.fpn.channels=16", "model.box_head.dim=32", "model.mask_head.dim=16",
    "model.rpn.pre_nms_topk.test=64", "model.rpn.post_nms_topk.test=32",
    "model.inference.detections_per_image=10", "model.inference.score_threshold=0.0",
    "data.image_size=64", "data.max_size=96", "data.buckets=[[64,96]]",
]  # fmt: skip
BUCKET = "64x96"
CAPACITY = "120x150"
# (h, w): shrunk (both axes, height much more: Pillow 13's vertical-first order),
# grown, thin, exactly the capacity, exactly the bucket.
SIZES = [(100, 150), (30, 20), (120, 40), (120, 150), (64, 96), (9, 140)]
NAMES = ["circle", "square", "triangle", "star"]
HAS_TF = importlib.util.find_spec("tensorflow") is not None


def _env(cache: Path) -> dict[str, str]:
    """Subprocesses share a compilation cache and compile with XLA's cheaper CPU
    code generation (the programs are compared with each other, all compiled so)."""
    env = dict(os.environ)
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def _python(code: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                            text=True, env=env, cwd=cwd)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _mrcli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mrcli.cli", *args], capture_output=True,
                          text=True, env=env, cwd=cwd)  # fmt: skip


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A checkpoint, test images (PNG) and a compilation cache."""
    from PIL import Image

    from mrcli import checkpoints, config
    from mrcli import model as model_lib

    root = tmp_path_factory.mktemp("export")
    cfg = config.resolve("tiny", SETS)
    _, state = model_lib.create(cfg.model, seed=0)
    pure = state.to_pure_dict()
    kernel = pure["box_head"]["cls"]["kernel"]
    pure["box_head"]["cls"]["kernel"] = np.asarray(kernel) * 30.0
    cats = [{"id": 10 * k, "contiguous_id": k, "name": n, "supercategory": "shape"}
            for k, n in enumerate(NAMES, 1)]  # fmt: skip
    checkpoints.save(root / "ckpt", pure, cfg, cats)
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    for i, (h, w) in enumerate(SIZES):
        # Smooth blobs on noise: something for a random detector to respond to.
        yy, xx = np.mgrid[:h, :w]
        base = 127 + 100 * np.sin(xx / 7.0 + i)[..., None] * np.cos(yy / 5.0)[..., None]
        img = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"im{i}_{h}x{w}.png")
    return root, _env(root / "jax_cache")


@pytest.fixture(scope="module")
def exported(work):
    """`mrcli export ... --verify-images IMAGES --json` (stablehlo): the export and its verification."""
    root, env = work
    result = _mrcli("export", "--checkpoint", "ckpt", "--out", "out", "--image-size", BUCKET,
                    "--max-input-size", CAPACITY, "--verify-images", "images", "--json",
                    env=env, cwd=root)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "out", json.loads(result.stdout), result.stderr


@pytest.fixture(scope="module")
def native(work, exported):
    """The native model (pipeline.image_input -> Model.detect -> inference.to_original) on
    the images, in its own process: {image name: arrays}."""
    root, env = work
    _python("""
        import numpy as np
        from pathlib import Path
        from PIL import Image
        from mrcli.export import native_detections
        from mrcli.runs import load_trained
        trained = load_trained(None, "ckpt")
        paths = sorted(Path("images").iterdir())
        dets = native_detections(trained, (64, 96), [np.asarray(Image.open(p)) for p in paths])
        out = {}
        for p, d in zip(paths, dets):
            for k in ("boxes", "scores", "classes", "masks"):
                out[p.name + "/" + k] = getattr(d, k)
        np.savez("native.npz", **out)
    """, env, root)  # fmt: skip
    with np.load(root / "native.npz") as z:
        flat = {k: z[k] for k in z.files}
    return {name: {k: flat[f"{name}/{k}"] for k in ("boxes", "scores", "classes", "masks")}
            for name in {k.split("/")[0] for k in flat}}  # fmt: skip


def _assert_agree(native: dict, got: dict) -> None:
    """Issue 7's bar: same detections and classes, boxes within 0.5 px, mask IoU > 0.99."""
    assert len(got["scores"]) == len(native["scores"]) > 0
    np.testing.assert_array_equal(got["classes"], native["classes"])
    diff = np.abs(got["boxes"] - native["boxes"]).max()
    assert diff <= 0.5, diff
    inter = (got["masks"] & native["masks"]).reshape(len(got["masks"]), -1).sum(1)
    union = (got["masks"] | native["masks"]).reshape(len(got["masks"]), -1).sum(1)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    assert iou.min() > 0.99, iou.min()
    np.testing.assert_allclose(got["scores"], native["scores"], atol=1e-3)


# --- preprocessing: one rule, two implementations ---------------------------------------------


def test_resize_is_pil_bilinear_bit_for_bit():
    import jax
    from PIL import Image

    from mrcli.export import _pillow_vertical_first
    from mrcli.ops.resize import resize_bilinear_uint8

    rule = _pillow_vertical_first()
    cap, out = (48, 64), (72, 72)
    fn = jax.jit(lambda im, a, b: resize_bilinear_uint8(im, a, b, out, 4.0, rule))
    rng = np.random.default_rng(1)
    # shrink / grow per axis, height shrinking by far more than width (pass order),
    # single-axis resizes and identity.
    cases = [(48, 64, 10, 60), (40, 10, 72, 30), (5, 64, 72, 16), (48, 30, 48, 70),
             (33, 64, 20, 64), (21, 17, 21, 17), (1, 1, 3, 2), (48, 64, 12, 16)]  # fmt: skip
    for h, w, rh, rw in cases + [tuple(int(v) for v in rng.integers(1, 48, 4)) for _ in range(6)]:
        rh, rw = max(rh, -(-h // 4)), max(rw, -(-w // 4))  # within the 4x taps
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        want = np.asarray(Image.fromarray(img).resize((rw, rh), Image.Resampling.BILINEAR))
        buf = rng.integers(0, 256, (*cap, 3), dtype=np.uint8)  # garbage outside the image
        buf[:h, :w] = img
        got = np.asarray(fn(buf, np.array([h, w], np.int32), np.array([rh, rw], np.int32)))
        np.testing.assert_array_equal(got[:rh, :rw], want, err_msg=str((h, w, rh, rw)))
        assert not got[rh:].any() and not got[:, rw:].any()


@pytest.mark.parametrize("bgr", [False, True])
def test_device_input_is_the_pipeline_input(bgr):
    """device_input.model_input (inside the export) == pipeline.image_input (the
    input pipeline, mrcli predict / eval) for the same pixels, bit for bit."""
    import jax
    from PIL import Image

    from mrcli.data import pipeline
    from mrcli.data.device_input import InputSpec, model_input
    from mrcli.export import _pillow_vertical_first

    bucket, cap, short, max_size = (64, 96), (150, 120), 56, 90
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    spec = pipeline.Spec(buckets=(bucket,), max_size=max_size, max_instances=1, mask_size=8,
                         bgr=bgr, mean=mean, std=std)  # fmt: skip
    ispec = InputSpec(cap, bucket, short, max_size, bgr, mean, std, _pillow_vertical_first())
    fn = jax.jit(lambda im, hw: model_input(im, hw, ispec))
    rng = np.random.default_rng(2)
    sizes = [(1, 1), cap, (150, 3), (2, 120), (64, 96), (97, 61), (150, 20)]
    sizes += [tuple(int(v) for v in rng.integers(1, 121, 2)) for _ in range(25)]
    for h, w in sizes:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        want, want_info = pipeline.image_input(Image.fromarray(img), bucket, spec, short)
        buf = rng.integers(0, 256, (1, *cap, 3), dtype=np.uint8)
        buf[0, :h, :w] = img
        got, info = fn(buf, np.array([[h, w]], np.int32))
        np.testing.assert_array_equal(np.asarray(info[0]), want_info, err_msg=str((h, w)))
        np.testing.assert_array_equal(np.asarray(got[0]), want, err_msg=str((h, w)))


# --- stablehlo -----------------------------------------------------------------------------


def test_export_writes_the_artifact_and_verify_passes(exported):
    out, data, stderr = exported
    assert {p.name for p in out.iterdir()} == {"export.json", "model.stablehlo", "weights.npz"}
    record = json.loads((out / "export.json").read_text())
    assert record == data["record"]
    assert record["artifact"] == "stablehlo" and record["platforms"] == ["cpu", "cuda"]
    assert [i["name"] for i in record["inputs"]] == ["images", "image_sizes"]
    assert record["inputs"][0]["shape"] == [1, 120, 150, 3] and record["inputs"][0]["dtype"] == "uint8"
    outputs = {o["name"]: (o["shape"], o["dtype"]) for o in record["outputs"]}
    assert outputs == {"boxes": ([1, 10, 4], "float32"), "scores": ([1, 10], "float32"),
                       "classes": ([1, 10], "int32"), "masks": ([1, 10, 28, 28], "float32"),
                       "num_detections": ([1], "int32")}  # fmt: skip
    assert [c["name"] for c in record["categories"]] == NAMES
    assert record["bucket"] == [64, 96] and record["max_input_size"] == [120, 150]
    assert record["pixel_profile"]["order"] == "rgb" and len(record["pixel_profile"]["mean"]) == 3
    assert record["versions"]["mrcli"] and record["versions"]["jax"]
    verify = data["verify"]
    assert verify["ok"] and len(verify["images"]) == len(SIZES)
    assert all(r["native"] == r["exported"] > 0 for r in verify["images"])
    assert "verify" in stderr and "FAIL" not in stderr


def test_round_trip_in_a_fresh_process_with_jax_alone(work, exported, native):
    """Load with mrcli.serving in a new process (which must not import flax, optax,
    orbax, TensorFlow, PIL (images within the capacity need no shrinking) or the
    rest of mrcli but its standard-library-only config), run, compare with native
    inference."""
    root, env = work
    _write_raw(root)
    result = _python("""
        import json, sys
        from pathlib import Path
        import numpy as np
        from mrcli import serving
        model = serving.load("out")
        names = sorted(p.name for p in Path("images").iterdir())
        # The images as a server gets them: decoded elsewhere (raw RGB arrays).
        images = [np.load("raw.npz")[n] for n in names]
        dets = model.predict(images, score_threshold=0.0)  # all, as native inference
        assert model(images[0], score_threshold=0.0)["scores"].tolist() == dets[0]["scores"].tolist()
        out = {}
        for n, d in zip(names, dets):
            for k in ("boxes", "scores", "classes", "masks", "category_ids"):
                out[n + "/" + k] = d[k]
            out[n + "/names"] = np.array(d["names"])
        np.savez("served.npz", **out)
        print(json.dumps(sorted(sys.modules)))
    """, env, root)
    modules = json.loads(result.stdout.strip().splitlines()[-1])
    heavy = [m for m in modules if m.split(".")[0] in
             ("flax", "optax", "orbax", "tensorflow", "PIL", "grain", "tensorflow_datasets")
             or (m.startswith("mrcli.") and m not in
                 ("mrcli.serving", "mrcli.ops", "mrcli.ops.masks", "mrcli.ops.roi_align",
                 "mrcli.ops.keypoints", "mrcli.config", "mrcli.errors"))]  # fmt: skip
    assert heavy == [], heavy
    with np.load(root / "served.npz") as z:
        served = {k: z[k] for k in z.files}
    for name, want in native.items():
        got = {k: served[f"{name}/{k}"] for k in ("boxes", "scores", "classes", "masks")}
        _assert_agree(want, got)
        ids = served[f"{name}/category_ids"]
        np.testing.assert_array_equal(ids, 10 * got["classes"])
        assert list(served[f"{name}/names"]) == [NAMES[c - 1] for c in got["classes"]]


def _write_raw(root: Path) -> None:
    """The test images as decoded RGB arrays (what a server receives)."""
    from PIL import Image

    np.savez(root / "raw.npz", **{p.name: np.asarray(Image.open(p))
                                  for p in sorted((root / "images").iterdir())})  # fmt: skip


def test_verify_catches_a_corrupted_weight(work, exported):
    root, env = work
    out, _, _ = exported
    bad = root / "corrupted"
    shutil.copytree(out, bad)
    with np.load(bad / "weights.npz") as z:
        weights = {k: z[k] for k in z.files}
    key = "box_head/cls/bias"
    weights[key] = weights[key] + np.array([0, 0, 3.0, 0, 0], np.float32)  # favour class 2
    np.savez(bad / "weights.npz", **weights)
    result = _mrcli("export", "--checkpoint", "ckpt", "--out", "corrupted", "--verify-only",
                    "--verify-images", "images", "--json", env=env, cwd=root)  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    data = json.loads(result.stdout)
    assert "record" not in data and not data["verify"]["ok"]
    assert any(not r["ok"] for r in data["verify"]["images"])
    assert "FAIL" in result.stderr and "verify failed" in result.stderr
    # --verify-only wrote nothing.
    assert sorted(p.name for p in bad.iterdir()) == ["export.json", "model.stablehlo", "weights.npz"]


def test_verify_without_images_uses_the_model_datasets_eval_split(work, exported):
    """--verify alone: the model's dataset (here a small shapes dataset, as the tiny
    recipe's) eval split; --verify-only checks the export already there."""
    from mrcli.data.prepare import prepare_shapes

    root, env = work
    prepare_shapes(data_dir=root / "data", num_train=2, num_val=3, size=96)
    result = _mrcli("export", "--checkpoint", "ckpt", "--out", "out", "--verify-only", "--verify",
                    "--data-dir", "data", "--json", env=env, cwd=root)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(result.stdout)["verify"]["images"]
    assert [r["name"].rsplit("/", 1)[0] for r in rows] == ["shapes/val"] * 3
    assert all(r["ok"] for r in rows)


def test_default_capacity_covers_the_datasets_images_and_out_is_not_replaced_silently(work):
    """Without --max-input-size the export takes the model dataset's largest
    image as it is (issue 19: a tiny export refused the model's own 120x160
    photos), so --verify on that dataset passes; a second export to the same
    --out is refused unless --overwrite."""
    from mrcli.data.prepare import prepare_shapes

    root, env = work
    prepare_shapes(data_dir=root / "data_big", num_train=2, num_val=2, size=200)
    args = ["export", "--checkpoint", "ckpt", "--out", "out_default", "--platforms", "cpu",
            "--data-dir", "data_big"]  # fmt: skip
    result = _mrcli(*args, "--verify", "--json", env=env, cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(result.stdout)
    assert data["record"]["max_input_size"] == [200, 200] and data["record"]["bucket"] == [64, 96]
    assert "input capacity 200x200: the largest image of dataset 'shapes'" in result.stderr
    assert data["verify"]["ok"] and len(data["verify"]["images"]) == 2
    again = _mrcli(*args, env=env, cwd=root)
    assert again.returncode == 2 and "--overwrite" in again.stderr, again.stderr[-2000:]
    assert "Traceback" not in again.stderr
    replaced = _mrcli(*args, "--overwrite", "--max-input-size", "100x100", env=env, cwd=root)
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    assert json.loads((root / "out_default" / "export.json").read_text())["max_input_size"] == [100, 100]


def test_serving_takes_an_image_twice_the_capacity_in_original_pixels(exported):
    """An image beyond the capacity is shrunk on the host (serving.fit) and its
    detections come back in its own pixels; the default score threshold is
    predict's (0.5)."""
    from mrcli import serving

    out, _, _ = exported
    model = serving.load(out)
    Hc, Wc = model.max_input_size
    h, w = 2 * Hc, 2 * Wc
    yy, xx = np.mgrid[:h, :w]
    base = 127 + 100 * np.sin(xx / 14.0)[..., None] * np.cos(yy / 10.0)[..., None]
    big = np.clip(base + np.random.default_rng(3).normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    fitted = serving.fit(big, (Hc, Wc))
    assert fitted.shape == (Hc, Wc, 3)
    got = model(big, score_threshold=0.0)
    ref = model(fitted, score_threshold=0.0)
    assert (got["height"], got["width"]) == (h, w) and len(got["scores"]) == len(ref["scores"]) > 0
    np.testing.assert_array_equal(got["classes"], ref["classes"])
    np.testing.assert_allclose(got["boxes"], ref["boxes"] * 2.0, rtol=1e-6)
    assert got["masks"].shape == (len(got["scores"]), h, w)
    assert got["boxes"][:, [2, 3]].max() > max(Hc, Wc) * 1.05  # beyond the capacity: original pixels
    kept = model(big)
    assert len(kept["scores"]) == int((got["scores"] >= 0.5).sum())
    np.testing.assert_array_equal(kept["boxes"], got["boxes"][: len(kept["scores"])])


# --- savedmodel ----------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_TF, reason="TensorFlow not installed (pip install 'mrcli[tf]')")
def test_savedmodel_round_trip_with_tensorflow_alone(work, native):
    """--format savedmodel, then a fresh process with TensorFlow alone (no mrcli)
    runs the serving signature; same detections as the native model."""
    root, env = work
    result = _mrcli("export", "--checkpoint", "ckpt", "--out", "out_tf", "--format", "savedmodel",
                    "--image-size", BUCKET, "--max-input-size", CAPACITY, "--platforms", "cpu",
                    env=env, cwd=root)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((root / "out_tf" / "export.json").read_text())
    assert record["artifact"] == "savedmodel" and record["versions"]["tensorflow"]
    _write_raw(root)
    _python("""
        import sys
        import numpy as np
        import tensorflow as tf
        fn = tf.saved_model.load("out_tf/savedmodel").signatures["serving_default"]
        raw = np.load("raw.npz")
        out = {}
        for name in sorted(raw.files):
            img = raw[name]
            buf = np.zeros((1, 120, 150, 3), np.uint8)
            buf[0, :img.shape[0], :img.shape[1]] = img
            res = fn(images=tf.constant(buf), image_sizes=tf.constant([img.shape[:2]], tf.int32))
            for k, v in res.items():
                out[name + "/" + k] = v.numpy()
        np.savez("tf_out.npz", **out)
        # (TensorFlow itself may import jax when it is installed: Keras 3 looks for it.)
        assert not any(m.split(".")[0] in ("mrcli", "flax") for m in sys.modules)
    """, env, root)  # fmt: skip
    from mrcli import serving

    with np.load(root / "tf_out.npz") as z:
        flat = {k: z[k] for k in z.files}
    raw = np.load(root / "raw.npz")
    for name, want in native.items():
        outputs = {k: flat[f"{name}/{k}"] for k in ("boxes", "scores", "classes", "masks",
                                                    "num_detections")}  # fmt: skip
        outputs["_image_sizes"] = np.array([raw[name].shape[:2]], np.int32)
        got = serving.image_detections(outputs, 0, record)
        _assert_agree(want, got)


def test_savedmodel_without_tensorflow_is_one_clear_line(monkeypatch, tmp_path):
    from mrcli import export
    from mrcli.errors import UserError

    monkeypatch.setitem(sys.modules, "tensorflow", None)  # import tensorflow -> ImportError
    with pytest.raises(UserError, match=r"needs TensorFlow.*mrcli\[tf\]"):
        export.run(str(tmp_path / "out"), checkpoint=str(tmp_path), format="savedmodel")


# --- usage errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, words",
    [
        (["--image-size", "65x96"], ["--image-size 65x96", "multiples", "size_divisor"]),
        (["--image-size", "big"], ["HEIGHTxWIDTH"]),
        (["--format", "onnx"], ["--format 'onnx'", "stablehlo"]),
        (["--platforms", "cpu,metal"], ["--platforms", "cuda"]),
        (["--verify-only"], ["--verify-only", "export.json"]),
    ],
)
def test_usage_errors_exit_2_with_one_line(work, capsys, args, words):
    from mrcli.cli import app

    root, _ = work
    with pytest.raises(SystemExit) as exit_:
        app(["export", "--checkpoint", str(root / "ckpt"), "--out", str(root / "unused"), *args],
            prog_name="mrcli")  # fmt: skip
    assert exit_.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    for word in words:
        assert word in lines[0]
    assert not (root / "unused").exists()


def test_serving_refuses_an_image_beyond_the_capacity(exported):
    from mrcli import serving

    out, _, _ = exported
    record = serving.read_record(out)
    with pytest.raises(ValueError, match="--max-input-size 121x150"):
        serving.pack([np.zeros((121, 10, 3), np.uint8)], 1, tuple(record["max_input_size"]))
    with pytest.raises(ValueError, match=r"\[h, w, 3\] uint8"):
        serving.pack([np.zeros((10, 10), np.uint8)], 1, (120, 150))


def test_an_export_for_another_platform_is_refused_with_the_fix(work, tmp_path):
    """The library API (export_model) lowers for CUDA without a GPU; loading that
    artifact on this CPU names the --platforms to export with."""
    from mrcli import export, serving
    from mrcli.runs import load_trained

    root, _ = work
    trained = load_trained(None, str(root / "ckpt"))
    result = export.export_model(trained, tmp_path / "gpu", platforms=("cuda",))
    assert result.record["platforms"] == ["cuda"] and result.record["bucket"] == [64, 96]
    with pytest.raises(ValueError, match="--platforms cpu"):
        serving.load(tmp_path / "gpu")


def test_device_input_is_the_pipeline_input_with_torchvisions_resize():
    """The torchvision profile (model.input.resize) inside the export: the same
    sizes as pipeline.image_input, the same pixels to float rounding."""
    import jax
    from PIL import Image

    from mrcli.data import pipeline
    from mrcli.data.device_input import InputSpec, model_input

    bucket, cap, short, max_size = (64, 96), (150, 120), 56, 90
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    spec = pipeline.Spec(buckets=(bucket,), max_size=max_size, max_instances=1, mask_size=8,
                         bgr=False, mean=mean, std=std, resize="torchvision")  # fmt: skip
    ispec = InputSpec(cap, bucket, short, max_size, False, mean, std, resize="torchvision")
    fn = jax.jit(lambda im, hw: model_input(im, hw, ispec))
    rng = np.random.default_rng(3)
    sizes = [(1, 1), cap, (150, 3), (2, 120), (64, 96), (97, 61), (150, 20), (56, 90)]
    sizes += [tuple(int(v) for v in rng.integers(1, 121, 2)) for _ in range(20)]
    for h, w in sizes:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        want, want_info = pipeline.image_input(Image.fromarray(img), bucket, spec, short)
        buf = rng.integers(0, 256, (1, *cap, 3), dtype=np.uint8)
        buf[0, :h, :w] = img
        got, info = fn(buf, np.array([[h, w]], np.int32))
        np.testing.assert_array_equal(np.asarray(info[0])[3:], want_info[3:], err_msg=str((h, w)))
        np.testing.assert_allclose(np.asarray(info[0]), want_info, rtol=1e-6, err_msg=str((h, w)))
        np.testing.assert_allclose(np.asarray(got[0]), want, atol=1e-4, err_msg=str((h, w)))
