"""Download the wheels a GPU machine without network lacks for the suite, into .whl/.

    python benchmarks/gpu/wheels.py              # on a connected machine, in the repository root
    python benchmarks/gpu/wheels.py --dry-run    # print the pip commands only
    python benchmarks/gpu/wheels.py --with-tested flax,optax,orbax-checkpoint

For Python 3.12 on manylinux x86_64 (the device machines: /work/.library/
device/README.md), each package of MISSING at the version installed here
(what the suite was tested with), without dependencies (`--no-deps`: the
list is closed by hand):

    pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
        --platform manylinux_2_28_x86_64 ... -d .whl NAME==VERSION

MISSING is what mrcli and the suite import (a --tiny run records it) less
what the device image already holds (device_packages.txt);
tests/test_gpu_suite.py checks both ways that it is exactly that. A package
with no wheel on PyPI (SDIST_ONLY: pure Python) is built into one here with
`pip wheel`. `--with-tested` also brings packages the device has, at the
versions tested here, should its own versions not run mrcli (one version of
each in .whl: the folder's old wheels are removed first).

On the GPU machine (benchmarks/gpu/README.md):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WHEELS = ROOT / ".whl"

# Imported by mrcli or the suite, absent from the device image. Why each:
MISSING = {
    "pycocotools": "mrcli.coco, mrcli.data.masks (module level)",
    "grain": "the input pipeline's workers (mrcli.data.pipeline)",
    "array-record": "grain and tensorflow-datasets read/write ArrayRecord shards",
    "tensorboardx": "mrcli.train writes TensorBoard events (module level)",
    "tensorflow-datasets": "mrcli.data.store writes the prepared shapes data",
    "tensorflow-metadata": "imported by tensorflow-datasets",
    "googleapis-common-protos": "imported by tensorflow-metadata",
    "dm-tree": "imported by tensorflow-datasets",
    "immutabledict": "imported by tensorflow-datasets",
    "promise": "imported by tensorflow-datasets",
    "toml": "imported by tensorflow-datasets",
    "importlib-resources": "imported by tensorflow-datasets (mrcli's pyproject names it)",
    "portpicker": "imported by grain",
}
# No wheel on PyPI: built here from the sdist (pure Python, any platform).
SDIST_ONLY = {"promise"}
# Imported here only because they are installed (optional dependencies); the
# device runs without them.
OPTIONAL_HERE = {"optree": "torch.utils._cxx_pytree imports it where it is installed"}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")  # fmt: skip


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def device_packages() -> set[str]:
    """The device image's distributions (device_packages.txt), canonical names."""
    lines = (Path(__file__).with_name("device_packages.txt")).read_text().splitlines()
    return {canonical(x.strip()) for x in lines if x.strip() and not x.startswith("#")}


def local_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        raise SystemExit(f"{name} is not installed here: install mrcli with its extras "
                         "(pip install -e '.[test]') so that its versions are the tested ones")  # noqa: B904


def commands(names: list[str], dest: Path = WHEELS, python: str = sys.executable) -> list[list[str]]:
    """The pip command for each package at its version here."""
    out = []
    for name in names:
        spec = f"{name}=={local_version(name)}"
        if name in SDIST_ONLY:
            out.append([python, "-m", "pip", "wheel", "--no-deps", "--no-binary=:all:", "-w", str(dest), spec])
            continue
        cmd = [python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
               "--implementation", "cp"]  # fmt: skip
        for plat in PLATFORMS:
            cmd += ["--platform", plat]
        out.append([*cmd, "-d", str(dest), spec])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--dest", type=Path, default=WHEELS, help="where the wheels go (default: .whl/)")
    p.add_argument("--with-tested", default="", help="comma-separated packages the device has, brought "
                                                     "at the versions installed here as well")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="print the commands, download nothing")
    args = p.parse_args(argv)
    names = sorted(MISSING) + [canonical(n) for n in args.with_tested.split(",") if n.strip()]
    cmds = commands(names, args.dest)
    if args.dry_run:
        for cmd in cmds:
            print(shlex.join(cmd))
        return 0
    args.dest.mkdir(parents=True, exist_ok=True)
    for old in args.dest.glob("*.whl"):
        old.unlink()
    for cmd in cmds:
        print(shlex.join(cmd), flush=True)
        if subprocess.run(cmd).returncode != 0:
            print(f"failed: {cmd[-1]}", file=sys.stderr)
            return 1
    wheels = sorted(args.dest.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels) / 2**20
    print(f"{len(wheels)} wheels, {size:.1f} MiB in {args.dest} (the device tool carries at most 64 MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
