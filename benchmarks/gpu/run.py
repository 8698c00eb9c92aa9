"""The GPU benchmark suite: one command, one JSON and one markdown table, inside 9 minutes.

    python benchmarks/gpu/run.py --out DIR                 # a CUDA GPU (benchmarks/gpu/README.md)
    python benchmarks/gpu/run.py --out DIR --tiny          # this CPU, small shapes (the test)
    python benchmarks/gpu/run.py --out DIR --only r50_b8,torchvision --budget 300

Writes DIR/results.json ({"meta": versions, device, date; "rows": [...]}) and
DIR/results.md (the tables for BENCHMARKS.md), rewritten after every case,
so a run cut short still leaves what it measured.

Cases, in priority order; each runs in its own process (its own GPU memory,
a timeout, a crash costs only that case), started only while the time budget
(--budget, 540 s) leaves room for it; a case that does not fit is recorded as
skipped:

  r50_b8         R50-FPN training step, bfloat16, batch 8 at 800x1344: compile
                 seconds, median step, images/s (benchmarks/train.py bench_step:
                 mrcli.train.make_train_step, state donated)
  torchvision    torchvision's maskrcnn_resnet50_fpn (FrozenBN, trainable
                 layers 3) training step under AMP at batch 8 and 16, and
                 inference at batch 1 and 8: the peer, same GPU, same run
  detect_r50     Model.detect through mrcli.inference.Predictor, bfloat16,
                 batch 1 and 8
  nms            benchmarks/nms.py: greedy loop, blocked form (tiles 512, one
                 tile), vmapped, against torchvision's CUDA nms
  r50_b16        as r50_b8 at batch 16
  nms_in_model   r50_b8's step and detect at batch 1 with the greedy NMS
                 (model.rpn.nms / inference.nms = greedy; the rows above run
                 "auto", the blocked form on a GPU): the NMS before/after
  pipeline       the train loop's inner part on the synthetic shapes data
                 (prepared here) resized to 800x1344: grain workers, sharding,
                 step (benchmarks/train.py bench_pipeline), R50-FPN batch 8
  r101_b8        R101-FPN training step, bfloat16, batch 8
  r101_b16       R101-FPN, batch 16
  detect_r101    R101-FPN detect, batch 1 and 8
  roi_align      benchmarks/roi_align.py variants at 512 RoIs, P2-P5 of 800x1344

--tiny runs every case at small shapes (a stand-in smaller than the tiny
recipe's model at 64x64, float32, batch 1-2, few steps; torchvision at 128x128
with few proposals) so that the whole suite runs end to end on a CPU in a
minute or two (tests/test_gpu_suite.py); its numbers mean nothing. The R50 and
R101 cases share the stand-in (the second loads it from the compilation
cache), and each still resolves its real recipe with the suite's settings, so
a renamed recipe or field fails the CPU test and not the GPU run.

Each case also records the Python distributions it imported and their
versions (meta "packages"): what a GPU machine must have, which
benchmarks/gpu/wheels.py brings where it is missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
ROOT = BENCH.parent
ROWS = "rows.jsonl"

# Case name -> seconds it needs on an H100 to be worth starting (a compile plus
# timed steps, estimated; --tiny scales them by 0.1).
CASES: dict[str, int] = {
    "r50_b8": 60,
    "torchvision": 40,
    "detect_r50": 40,
    "nms": 30,
    "r50_b16": 60,
    "nms_in_model": 60,
    "pipeline": 60,
    "r101_b8": 70,
    "r101_b16": 70,
    "detect_r101": 40,
    "roi_align": 30,
}
GPU_SIZE = (800, 1344)
TINY_SIZE = (64, 64)


def _bench_module(name: str):
    """benchmarks/NAME.py as a module (benchmarks/ is not a package)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the cases (each in its own process) --------------------------------------------


class Case:
    """What a case process knows: its mode and where its rows go."""

    def __init__(self, name: str, out: Path, tiny: bool):
        self.name, self.out, self.tiny = name, out, tiny
        self.size = TINY_SIZE if tiny else GPU_SIZE
        self.steps = 2 if tiny else 10

    def emit(self, **row) -> None:
        row = {"case": self.name, **row}
        with open(self.out / ROWS, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    def attempt(self, fn, **row) -> None:
        """Run fn() -> dict of numbers and emit it with `row`; an exception
        (out of memory, say) becomes the row's error and the case goes on."""
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            result = {"error": f"{type(e).__name__}: {e}"[:300]}
        self.emit(**row, **result)

    def config(self, depth: int, sets=()):
        from mrcli import config as config_lib

        # bfloat16 on the GPU (the suite's point); float32 in --tiny, where a CPU
        # only checks that the suite runs (CPU bfloat16 compiles and runs slowly).
        dtype = "float32" if self.tiny else "bfloat16"
        h, w = self.size
        common = [f"model.dtype={dtype}", f"data.buckets=[[{h},{w}]]", f"data.image_size={min(h, w)}",
                  f"data.max_size={max(h, w)}", f"data.train_scales={min(h, w)}", *sets]  # fmt: skip
        recipe = "r50_fpn_1x" if depth == 50 else "r101_fpn"
        real = config_lib.resolve(recipe, common)  # --tiny too: the GPU run's recipe and --set keys
        if self.tiny:
            # One small stand-in for both depths: the cases compile it once and
            # load it from the compilation cache after that.
            return config_lib.resolve("tiny", [*_bench_module("common").MICRO_SETS, "data.num_workers=0", *common])
        return real

    def model_name(self, depth: int) -> str:
        return f"R{depth}-FPN" + (" (tiny stand-in)" if self.tiny else "")

    # --- training and inference rows --------------------------------------------

    def train(self, depth: int, batch: int, sets=(), what="train step") -> None:
        from mrcli import config as config_lib

        train_bench = _bench_module("train")
        batch = 2 if self.tiny else batch
        cfg = config_lib.override(self.config(depth, sets=sets), {"train.global_batch": batch})
        self.attempt(lambda: train_bench.bench_step(cfg, self.size, self.steps), what=what,
                     model=self.model_name(depth), impl=f"mrcli {cfg.model.dtype}", batch=batch,
                     size=_size(self.size), nms=cfg.model.rpn.nms)  # fmt: skip

    def detect(self, depth: int, batches=(1, 8), sets=()) -> None:
        model_bench = _bench_module("model")
        cfg = self.config(depth, sets=sets)
        for b in batches:
            b = min(b, 2) if self.tiny else b
            self.attempt(lambda: model_bench.bench_detect(cfg, b, self.size, self.steps), what="inference",  # noqa: B023
                         model=self.model_name(depth), impl=f"mrcli {cfg.model.dtype}", batch=b,
                         size=_size(self.size), nms=cfg.model.inference.nms)  # fmt: skip


def _size(hw) -> str:
    return f"{hw[0]}x{hw[1]}"


def case_r50_b8(c: Case):
    c.train(50, 8)


def case_r50_b16(c: Case):
    c.train(50, 16)


def case_r101_b8(c: Case):
    c.train(101, 8)


def case_r101_b16(c: Case):
    c.train(101, 16)


def case_detect_r50(c: Case):
    c.detect(50)


def case_detect_r101(c: Case):
    c.detect(101)


def case_nms_in_model(c: Case):
    """The other NMS form than "auto" picks on this backend: greedy on a GPU
    (before/after the blocked form), blocked on a CPU (--tiny)."""
    import jax

    other = "blocked" if jax.default_backend() == "cpu" else "greedy"
    sets = [f"model.rpn.nms={other}", f"model.inference.nms={other}"]
    c.train(50, 8, sets=sets, what=f"train step, {other} NMS")
    c.detect(50, batches=(1,), sets=sets)


def case_pipeline(c: Case):
    from mrcli import config as config_lib
    from mrcli.data.prepare import prepare_shapes

    train_bench = _bench_module("train")
    data_dir = c.out / "data"
    if not (data_dir / "shapes").exists():
        t = time.perf_counter()
        prepare_shapes(data_dir=data_dir, num_train=64 if c.tiny else 512, num_val=8)
        print(f"prepared the shapes data in {time.perf_counter() - t:.1f} s", flush=True)
    batch = 2 if c.tiny else 8
    workers = 1 if c.tiny else max(1, min(12, (os.cpu_count() or 2) - 2))
    cfg = config_lib.override(c.config(50), {"data.dataset": "shapes", "model.num_classes": 4,
                                             "train.global_batch": batch, "data.num_workers": workers})  # fmt: skip
    steps = 4 if c.tiny else 50
    c.attempt(lambda: train_bench.bench_pipeline(cfg, str(data_dir), steps),
              what=f"train loop: pipeline ({workers} workers) + step", model=c.model_name(50),
              impl=f"mrcli {cfg.model.dtype}", batch=batch, size=_size(c.size), nms=cfg.model.rpn.nms)  # fmt: skip


def case_torchvision(c: Case):
    # This process runs torch only: JAX (imported by the helpers) must not take
    # its default 75% of the GPU's memory should anything initialise it.
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    common = _bench_module("common")
    train_bench = _bench_module("train")
    model_bench = _bench_module("model")
    if common.torchvision() is None:
        c.emit(what="torchvision", error="torchvision is not installed")
        return
    import torch

    torch.backends.cudnn.benchmark = True
    precision = "amp float16" if torch.cuda.is_available() else "float32"
    # torchvision's own transform resizes to min_size: at least 128 px in --tiny.
    size = (128, 128) if c.tiny else c.size
    steps = 1 if c.tiny else c.steps
    for batch in (2,) if c.tiny else (8, 16):
        def train(batch=batch):
            r = train_bench.bench_torchvision(50, batch, *size, steps, 4 if c.tiny else 10)
            r.pop("precision", None)
            return r

        c.attempt(train, what="train step", model="R50-FPN", impl=f"torchvision {precision}", batch=batch,
                  size=_size(size))  # fmt: skip
    # --tiny: few proposals, so that the RoIAlign fallback of a CPU-only torch runs in seconds.
    small = dict(rpn_pre_nms_top_n_test=64, rpn_post_nms_top_n_test=16, box_detections_per_img=4) if c.tiny else {}
    for batch in (1,) if c.tiny else (1, 8):
        c.attempt(lambda: model_bench.bench_torchvision(50, batch, steps, size, **small), what="inference",  # noqa: B023
                  model="R50-FPN", impl="torchvision float32", batch=batch, size=_size(size))  # fmt: skip


def case_nms(c: Case):
    nms_bench = _bench_module("nms")
    if c.tiny:
        runs = [("uniform", (200,), 100)]
    else:
        runs = [("uniform", (1000, 4000, 20000), 1000), ("clustered", (2000,), 2000)]
    for kind, sizes, max_output in runs:
        try:
            rows = nms_bench.measure(sizes, max_output, 0.7, 2 if c.tiny else 10, kind,
                                     tiles=(512, 0), log=print)  # fmt: skip
        except BaseException as e:  # noqa: BLE001 - SystemExit on a mismatch too
            c.emit(what="nms", boxes=kind, error=f"{type(e).__name__}: {e}"[:300])
            continue
        for r in rows:
            c.emit(what="nms", boxes=kind, max_output=max_output, **r)


def case_roi_align(c: Case):
    roi_bench = _bench_module("roi_align")
    kw = dict(rois=32, channels=8, image=(64, 64), sizes=(7,), repeat=1) if c.tiny else dict(repeat=10)
    for r in roi_bench.measure(**kw, log=print):
        c.emit(what="roi_align", rois=kw.get("rois", 512), **r)


def case_env(c: Case):
    """Versions and the device, for the JSON's meta."""
    import jax

    from mrcli import system

    info = system.system_info()
    dev = jax.devices()[0]
    meta = {"device": dev.device_kind, "platform": dev.platform, "device_count": jax.device_count(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), **{k: info[k] for k in (
                "mrcli", "jax", "jaxlib", "flax", "backend", "bf16_fast")}}  # fmt: skip
    try:
        stats = dev.memory_stats() or {}
        meta["device_memory_gb"] = round(stats.get("bytes_limit", 0) / 2**30, 1)
    except Exception:  # noqa: BLE001 - not every backend has them
        pass
    try:
        meta["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    c.emit(what="env", **meta)


CASE_FUNCTIONS = {name: globals()[f"case_{name}"] for name in ["env", *CASES]}


def _distributions() -> dict[str, str]:
    """The installed distributions (and versions) of the modules this process imported."""
    from importlib import metadata

    top = {name.split(".")[0] for name in list(sys.modules)}
    owners = metadata.packages_distributions()
    out = {}
    for module in sorted(top - set(sys.stdlib_module_names)):
        for dist in owners.get(module, ()):
            try:
                out[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                pass
    return out


def run_case(name: str, out: Path, tiny: bool) -> None:
    if tiny:
        # torchvision's RoIAlign fallback on a CPU-only torch is torch.compile'd
        # on first use (~40 s on a 2-core CPU); eager is enough for a smoke run.
        os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    import jax

    # Compiled programs persist in OUT/jax_cache: a case that compiles a program
    # an earlier case (or an earlier run, e.g. with --only) compiled loads it.
    jax.config.update("jax_compilation_cache_dir", str(out / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    c = Case(name, out, tiny)
    try:
        CASE_FUNCTIONS[name](c)
    finally:
        c.emit(what="imports", packages=_distributions())


# --- the driver ----------------------------------------------------------------------


def _read_rows(out: Path) -> list[dict]:
    path = out / ROWS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _fmt(v, scale=1.0, digits=1) -> str:
    return "" if v is None else f"{v * scale:.{digits}f}"


def markdown(meta: dict, rows: list[dict]) -> str:
    env = meta.get("env", {})
    lines = [f"GPU suite, {meta.get('date', '')}: {env.get('device', '?')} ({env.get('platform', '?')}), "
             f"jax {env.get('jax', '?')}, flax {env.get('flax', '?')}, torch {meta.get('packages', {}).get('torch', '-')}, "
             f"torchvision {meta.get('packages', {}).get('torchvision', '-')}; {meta.get('wall_s', 0):.0f} s"
             + (" (--tiny: CPU smoke run, not a measurement)" if meta.get("tiny") else ""), "",
             "| what | model | impl | batch | size | NMS | compile / first call (s) | step (ms) | images/s |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if r.get("what") in ("env", "imports") or ("n" in r or "variant" in r):
            continue  # the NMS and RoIAlign tables below
        if "error" in r or "skipped" in r:
            note = r.get("error") or r.get("skipped")
            lines.append(f"| {r.get('what', r['case'])} | {r.get('model', '')} | {r.get('impl', '')} | "
                         f"{r.get('batch', '')} | {r.get('size', '')} | {r.get('nms', '')} | {note} | | |")  # fmt: skip
            continue
        lines.append(f"| {r['what']} | {r['model']} | {r['impl']} | {r['batch']} | {r['size']} | {r.get('nms', '')} | "
                     f"{_fmt(r.get('compile_s'))} | {_fmt(r.get('step_s'), 1e3)} | {_fmt(r.get('images_per_s'))} |")  # fmt: skip
    nms = [r for r in rows if r.get("what") == "nms" and ("n" in r or "error" in r)]
    if nms:
        lines += ["", "| NMS boxes | N | max_output | implementation | first call (ms) | run (ms) | kept | iterations |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in nms:
            if "error" in r:
                lines.append(f"| {r.get('boxes', '')} | | | error: {r['error']} | | | | |")
                continue
            iterations = "" if r["iterations"] is None else r["iterations"]
            lines.append(f"| {r['boxes']} | {r['n']} | {r['max_output']} | {r['impl']} | {_fmt(r['first_ms'])} | "
                         f"{_fmt(r['run_ms'], digits=2)} | {r['kept']} | {iterations} |")  # fmt: skip
    ra = [r for r in rows if r.get("what") == "roi_align" and ("variant" in r or "error" in r)]
    if ra:
        lines += ["", "| RoIAlign variant | output | ms | first call (s) | max abs diff |", "|---|---|---|---|---|"]
        for r in ra:
            if "error" in r:
                lines.append(f"| error: {r['error']} | | | | |")
                continue
            diff = "" if r["max_diff"] is None else f"{r['max_diff']:.1e}"
            lines.append(f"| {r['variant']} | {r['out'] or ''} | {_fmt(r['ms'], digits=2)} | "
                         f"{_fmt(r['first_s'])} | {diff} |")  # fmt: skip

    return "\n".join(lines) + "\n"


def write_reports(out: Path, meta: dict) -> tuple[Path, Path]:
    rows = _read_rows(out)
    packages: dict[str, str] = {}
    for r in rows:
        if r.get("what") == "imports":
            packages.update(r["packages"])
        if r.get("what") == "env":
            meta["env"] = {k: v for k, v in r.items() if k not in ("case", "what")}
    meta["packages"] = dict(sorted(packages.items()))
    table_rows = [r for r in rows if r.get("what") not in ("env", "imports")]
    json_path, md_path = out / "results.json", out / "results.md"
    json_path.write_text(json.dumps({"meta": meta, "rows": table_rows}, indent=2) + "\n")
    md_path.write_text(markdown(meta, table_rows))
    return json_path, md_path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--out", required=True, help="folder for results.json, results.md and the logs")
    p.add_argument("--tiny", action="store_true", help="small shapes on any backend (the CPU test)")
    p.add_argument("--budget", type=float, default=None, help="seconds for the whole run (default 540; --tiny 170)")
    p.add_argument("--only", help="comma-separated cases (default: all, in priority order)")
    p.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # mrcli from this checkout, also in the case processes and their workers.
    sys.path.insert(0, str(ROOT))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    if args.tiny:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if args.case:
        run_case(args.case, out, args.tiny)
        return 0

    t0 = time.perf_counter()
    budget = args.budget if args.budget is not None else (170.0 if args.tiny else 540.0)
    names = args.only.split(",") if args.only else list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        p.error(f"unknown case(s) {', '.join(unknown)}; cases: {', '.join(CASES)}")
    (out / ROWS).unlink(missing_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "tiny": args.tiny, "budget_s": budget,
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "cases": {}}  # fmt: skip
    try:
        meta["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                     text=True, timeout=10).stdout.strip() or None  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        meta["git"] = None
    for name in ["env", *names]:
        left = budget - (time.perf_counter() - t0)
        need = 5 if name == "env" else CASES[name] * (0.1 if args.tiny else 1)
        if left < need:
            with open(out / ROWS, "a") as f:
                f.write(json.dumps({"case": name, "what": name, "skipped": f"time budget: {left:.0f} s left, "
                                    f"needs ~{need:.0f} s"}) + "\n")  # fmt: skip
            meta["cases"][name] = {"status": "skipped"}
            continue
        cmd = [sys.executable, str(Path(__file__).resolve()), "--case", name, "--out", str(out)]
        if args.tiny:
            cmd.append("--tiny")
        start = time.perf_counter()
        print(f"[{time.perf_counter() - t0:5.0f} s] {name} (up to {left - 2:.0f} s)", flush=True)
        with open(out / f"{name}.log", "w") as log:
            try:
                rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=max(1.0, left - 2)).returncode
                status = "ok" if rc == 0 else f"exit {rc}"
            except subprocess.TimeoutExpired:
                status = "timeout"
        seconds = time.perf_counter() - start
        meta["cases"][name] = {"status": status, "seconds": round(seconds, 1)}
        if status != "ok":
            with open(out / ROWS, "a") as f:
                f.write(json.dumps({"case": name, "what": name, "error": f"case {status} after {seconds:.0f} s "
                                    f"(see {name}.log)"}) + "\n")  # fmt: skip
        print(f"        {status} in {seconds:.0f} s", flush=True)
        meta["wall_s"] = time.perf_counter() - t0
        write_reports(out, meta)
    meta["wall_s"] = time.perf_counter() - t0
    json_path, md_path = write_reports(out, meta)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
