"""The pretrained weights mrcli knows by name: catalogue.toml, read and checked.

    entry = catalogue.get("tv-maskrcnn-r50-fpn-coco")
    entry.url, entry.file, entry.checksum, entry.coco_mask_ap

The catalogue is data shipped in the package (catalogue.toml says what each
field means and where the numbers come from); `problems()` lists what is wrong
with it (tests/test_weights_catalogue.py runs it on the shipped file).
"""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

from mrcli.errors import UserError

CATALOGUE = Path(__file__).with_name("catalogue.toml")
FORMATS = ("torchvision", "detectron2")  # the importers (mrcli.weights.importers.convert)
KINDS = ("backbone", "detector")
CHECKSUMS = {"sha256": 64, "md5": 32}  # algorithm -> hex digits of a whole digest


@dataclass(frozen=True)
class Entry:
    name: str
    what: str
    format: Literal["torchvision", "detectron2"]
    kind: Literal["backbone", "detector"]
    depth: int
    url: str
    file: str
    size_mb: float
    size_exact: bool
    checksum: str  # "sha256:PREFIX" | "md5:PREFIX" | "" (see checksum_note)
    licence: str
    source: str
    checksum_note: str = ""
    imagenet_top1: float | None = None
    coco_box_ap: float | None = None
    coco_mask_ap: float | None = None
    coco_keypoint_ap: float | None = None  # COCO person keypoint AP (OKS), keypoint models

    @property
    def algorithm(self) -> str | None:
        """"sha256" | "md5", or None where the publisher gives no checksum."""
        return self.checksum.partition(":")[0] or None

    @property
    def digest_prefix(self) -> str:
        return self.checksum.partition(":")[2].lower()



def read(path: Path = CATALOGUE) -> dict[str, Entry]:
    """name -> Entry of a catalogue file (TOML, [[weights]] tables)."""
    data = tomllib.loads(path.read_text())
    known = {f.name for f in fields(Entry)}
    out: dict[str, Entry] = {}
    for raw in data.get("weights", []):
        extra = set(raw) - known
        if extra:
            raise ValueError(f"{path}: {raw.get('name')}: unknown fields {sorted(extra)}")
        entry = Entry(**raw)
        if entry.name in out:
            raise ValueError(f"{path}: the name {entry.name!r} appears twice")
        out[entry.name] = entry
    return out


@functools.lru_cache(maxsize=1)
def entries() -> dict[str, Entry]:
    """The shipped catalogue."""
    return read(CATALOGUE)


def get(name: str) -> Entry:
    """The catalogue entry `name`; a UserError listing the names otherwise."""
    found = entries().get(name)
    if found is None:
        raise UserError(f"no weights named {name!r} in the catalogue; `mrcli weights list` shows "
                        f"them: {', '.join(entries())}")  # fmt: skip
    return found


def problems(catalogue: dict[str, Entry]) -> list[str]:
    """What is wrong with a catalogue: every URL https; a checksum of a known
    algorithm and a hex prefix, or a note saying why there is none; names and
    file names unique; an importer format and a kind that exist."""
    out: list[str] = []
    files: dict[str, str] = {}
    for e in catalogue.values():
        where = f"{e.name}:"
        if not e.url.startswith("https://"):
            out.append(f"{where} the url is not https ({e.url})")
        if not e.url.endswith("/" + e.file):
            out.append(f"{where} the url does not end with the file name {e.file!r}")
        if e.file in files:
            out.append(f"{where} the file name {e.file!r} is also {files[e.file]}'s")
        files[e.file] = e.name
        if e.checksum:
            algorithm, prefix = e.algorithm, e.digest_prefix
            if algorithm not in CHECKSUMS or not prefix or len(prefix) > CHECKSUMS[algorithm] or any(
                c not in "0123456789abcdef" for c in prefix
            ):
                out.append(f"{where} checksum {e.checksum!r} is not sha256:HEX or md5:HEX")
            elif prefix not in e.file:
                out.append(f"{where} the checksum prefix {prefix} is not in the file name {e.file}")
        elif not e.checksum_note:
            out.append(f"{where} no checksum and no checksum_note saying why")
        if e.format not in FORMATS:
            out.append(f"{where} format {e.format!r} is not one of {FORMATS}")
        if e.kind not in KINDS:
            out.append(f"{where} kind {e.kind!r} is not one of {KINDS}")
        if e.depth not in (50, 101):
            out.append(f"{where} depth {e.depth} is not a ResNet depth the importers read (50, 101)")
        if not e.size_mb > 0:
            out.append(f"{where} size_mb must be positive")
        if (e.coco_box_ap if e.kind == "detector" else e.imagenet_top1) is None:
            out.append(f"{where} no published accuracy (coco_box_ap for a detector, "
                       "imagenet_top1 for a backbone)")
        if not e.licence or not e.source:
            out.append(f"{where} licence and source must be given")
    return out
