"""Weights by name: downloaded, verified, imported once, reused.

    checkpoint_dir = fetch("tv-maskrcnn-r50-fpn-coco")   # an mrcli checkpoint directory
    checkpoint_dir = resolve("weights.pth")              # a name, a file or a directory

The cache (`$MRCLI_WEIGHTS`, default ~/.cache/mrcli/weights)::

    CACHE/NAME/FILE            the publisher's file, verified
    CACHE/NAME/FILE.part       a download under way (resumed from its length)
    CACHE/NAME/download.json   where it came from, its SHA-256 and size
    CACHE/NAME/checkpoint/     the file imported (mrcli.checkpoints), once
    CACHE/files/SHA16/checkpoint/   a file given by path, imported once

Downloads stream in 1 MB chunks with progress, resume an interrupted download
with an HTTP Range request, are verified before use (the publisher's checksum,
or for files published without one the SHA-256 of their first download) and
are renamed into place only when verified. `$MRCLI_WEIGHTS_MIRROR` replaces
the publishers' hosts: a base URL or a local folder holding the catalogue's
file names (BASE/FILE). Without a network the error says the URL, the file
name and where to put the file by hand (`mrcli weights get NAME --file F`).
Loading never runs code from a file (mrcli.weights.importers).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mrcli import checkpoints
from mrcli.errors import Failure, UserError
from mrcli.files import write_json_atomic
from mrcli.progress import Report, silent
from mrcli.weights import catalogue, importers
from mrcli.weights.catalogue import Entry

CHUNK = 1 << 20
TIMEOUT_S = 30
RECORD = "download.json"
CHECKPOINT = "checkpoint"


def cache_dir() -> Path:
    """`$MRCLI_WEIGHTS`, else ~/.cache/mrcli/weights."""
    env = os.environ.get("MRCLI_WEIGHTS")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mrcli" / "weights"


def source_of(entry: Entry) -> str:
    """Where `entry` is downloaded from: the publisher's URL, or the mirror's."""
    mirror = os.environ.get("MRCLI_WEIGHTS_MIRROR", "").strip()
    if not mirror:
        return entry.url
    if "://" in mirror:
        return mirror.rstrip("/") + "/" + entry.file
    return str(Path(mirror).expanduser() / entry.file)


def is_cached(entry: Entry) -> bool:
    return (cache_dir() / entry.name / CHECKPOINT / checkpoints.RECORD).is_file()


def _digests(path: Path) -> dict[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
            md5.update(chunk)
    return {"sha256": sha.hexdigest(), "md5": md5.hexdigest()}


def _verify(entry: Entry, path: Path, known_sha256: str | None) -> dict[str, str]:
    """The file's digests, or a Failure (the file removed) where they are not
    the catalogue's (or, without a published checksum, the first download's)."""
    digests = _digests(path)
    want, got = None, None
    if entry.algorithm is not None:
        want, got = entry.digest_prefix, digests[entry.algorithm]
        ok = got.startswith(want)
    else:
        ok = known_sha256 is None or digests["sha256"] == known_sha256
        want, got = known_sha256, digests["sha256"]
    if not ok:
        path.unlink(missing_ok=True)
        raise Failure(f"{entry.file} from {source_of(entry)} is not the published file: its "
                      f"{entry.algorithm or 'sha256'} is {got[:16]}..., the catalogue's is "
                      f"{want[:16]}...; it was removed. Download it again (a transfer fault), or "
                      "check $MRCLI_WEIGHTS_MIRROR")  # fmt: skip
    return digests


def _offline(entry: Entry, source: str, reason: Any) -> Failure:
    target = cache_dir() / entry.name / entry.file
    return Failure(f"cannot download {entry.name} from {source} ({reason}). Download {entry.file} "
                   f"from {entry.url} on a machine with a network and run `mrcli weights get "
                   f"{entry.name} --file {entry.file}`, or put it at {target}")  # fmt: skip


def _download(entry: Entry, source: str, part: Path, report: Report) -> None:
    """Stream `source` into `part`, continuing from part's length (HTTP Range)."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(source, headers={"User-Agent": "mrcli"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)  # noqa: S310 - https or a mirror
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the part is already whole
            return
        raise _offline(entry, source, f"HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise _offline(entry, source, getattr(e, "reason", e)) from None
    with response:
        if have and response.status != 206:  # the server ignored the Range: start over
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else int(entry.size_mb * 1e6)
        report.task(f"download {entry.name} (MB)", total=max(1, round(total / 1e6)), done=round(have / 1e6))
        done = have
        with open(part, "ab" if have else "wb") as f:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except (OSError, http.client.HTTPException) as e:  # the part is kept for resuming
                    raise _offline(entry, source, f"interrupted after {done / 1e6:.1f} MB: {e}; run "
                                                  "the command again to resume") from None  # fmt: skip
                if not chunk:
                    break
                f.write(chunk)
                done += len(chunk)
                report.advance(round(done / 1e6))
        report.end()
    if length is not None and done < total:
        raise _offline(entry, source, f"interrupted after {done / 1e6:.1f} of {total / 1e6:.1f} MB; "
                                      "run the command again to resume")  # fmt: skip


def download(entry: Entry, *, file: str | os.PathLike[str] | None = None,
             report: Report | None = None) -> Path:  # fmt: skip
    """The verified publisher's file of `entry` in the cache: already there, copied
    from `file` (downloaded by hand), from the mirror folder, or downloaded."""
    report = silent(report)
    folder = cache_dir() / entry.name
    folder.mkdir(parents=True, exist_ok=True)
    target, part, record_path = folder / entry.file, folder / (entry.file + ".part"), folder / RECORD
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    if target.is_file() and file is None:
        return target
    source = source_of(entry)
    if file is not None:
        given = Path(file).expanduser()
        if not given.is_file():
            raise UserError(f"--file {file}: no such file")
        shutil.copyfile(given, part)
        source = str(given)
    elif "://" not in source:  # a mirror folder
        if not Path(source).is_file():
            raise _offline(entry, source, "not in the mirror folder $MRCLI_WEIGHTS_MIRROR")
        shutil.copyfile(source, part)
    else:
        _download(entry, source, part, report)
    digests = _verify(entry, part, record.get("sha256"))
    os.replace(part, target)
    write_json_atomic(record_path, {"name": entry.name, "url": entry.url, "from": source,
                                    "file": entry.file, "size": target.stat().st_size, **digests})  # fmt: skip
    return target


def fetch(name: str, *, file: str | os.PathLike[str] | None = None,
          report: Report | None = None) -> Path:  # fmt: skip
    """The mrcli checkpoint directory of catalogue entry `name`: imported once
    from its verified file and reused (no request when it is cached)."""
    report = silent(report)
    entry = catalogue.get(name)
    out = cache_dir() / entry.name / CHECKPOINT
    if file is None and (out / checkpoints.RECORD).is_file():
        return out
    path = download(entry, file=file, report=report)
    report.say(f"importing {entry.file} ({entry.format}) into {out}", "detail")
    importers.import_weights(entry.format, path, out)
    return out


def listing() -> list[dict[str, Any]]:
    """`mrcli weights list`: every catalogue entry with where it comes from and
    whether it is cached here."""
    return [
        {"name": e.name, "kind": e.kind, "what": e.what, "format": e.format, "url": e.url,
         "size_mb": e.size_mb, "size_exact": e.size_exact, "coco_box_ap": e.coco_box_ap,
         "coco_mask_ap": e.coco_mask_ap, "coco_keypoint_ap": e.coco_keypoint_ap, "imagenet_top1": e.imagenet_top1, "licence": e.licence,
         "checksum": e.checksum or None, "cached": is_cached(e),
         "path": str(cache_dir() / e.name / CHECKPOINT)}
        for e in catalogue.entries().values()
    ]  # fmt: skip


def resolve(spec: str, *, report: Report | None = None) -> Path:
    """A checkpoint directory for `spec`: a catalogue name (fetched), a checkpoint
    directory (itself), or a .pth/.pkl file (its format recognised, imported
    once into CACHE/files/)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        checkpoints.read_record(path)  # a UserError naming what it is not
        return path
    if path.is_file():
        digest = _digests(path)["sha256"][:16]
        out = cache_dir() / "files" / digest / CHECKPOINT
        if not (out / checkpoints.RECORD).is_file():
            silent(report).say(f"importing {path} into {out}", "detail")
            importers.import_weights("auto", path, out)
        return out
    if spec in catalogue.entries():
        return fetch(spec, report=report)
    raise UserError(f"{spec!r} is neither a weights name (`mrcli weights list`: "
                    f"{', '.join(catalogue.entries())}), a file, nor a directory")  # fmt: skip
