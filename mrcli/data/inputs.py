"""Image files as people give them: a folder (searched recursively), one file,
or a glob; decoded upright RGB, or a reason why not.

`mrcli predict` reads its INPUT with these, and `mrcli export --verify-images`
its images. JPEG, PNG, BMP, WebP and TIFF files are read, anything else is
ignored. Images are decoded upright (EXIF orientation) and converted to 8-bit
RGB (grayscale, palette, RGBA, CMYK, 16-bit by v >> 8:
mrcli.data.images.upright_rgb). Images above mrcli's pixel limit (1e9 pixels;
the environment variable MRCLI_MAX_IMAGE_PIXELS sets another) are refused with
a reason; below it, Pillow's smaller decompression-bomb limit does not apply.

Folders holding predict outputs are not searched: one with the MARKER file,
and with OUT = INPUT the MASKS_DIR and OVERLAYS_DIR folders of OUT.
"""

from __future__ import annotations

import glob as globlib
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import UnidentifiedImageError

from mrcli.data import images as imagelib
from mrcli.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# The layout of a predict output folder (mrcli.predict), which input scans skip.
MASKS_DIR = "masks"
OVERLAYS_DIR = "overlays"
# Marks a predict output folder, so that a later run over a tree holding it skips it.
MARKER = ".mrcli-predict"


@dataclass(frozen=True)
class InputImage:
    path: Path  # the file as found
    rel: PurePosixPath  # its path below the input root, mirrored under OUT


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _skipped_dir(d: Path, out: Path | None) -> bool:
    """Hidden folders, the output folder and (earlier) predict outputs are not
    searched; with OUT = INPUT, that is OUT/masks and OUT/overlays."""
    if _hidden(d.name) or (d / MARKER).is_file() or (out is not None and d.resolve() == out):
        return True
    return d.name in (MASKS_DIR, OVERLAYS_DIR) and (
        (d.parent / MARKER).is_file() or (out is not None and d.parent.resolve() == out)
    )


def find_images(input: str | os.PathLike[str],
                exclude: str | os.PathLike[str] | None = None) -> list[InputImage]:
    """The image files of a folder (recursive), a file, or a glob, sorted by
    REL. Non-image and hidden files are ignored; hidden folders, `exclude`
    (the output folder) and folders holding a predict output (MARKER) are not
    searched. A name that finds no image is a UserError."""
    text = os.fspath(input)
    path = Path(text).expanduser()
    skip = Path(exclude).expanduser().resolve() if exclude is not None else None
    if path.is_dir():
        found = []
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not _skipped_dir(Path(root) / d, skip))
            for name in files:
                p = Path(root) / name
                if not _hidden(name) and _is_image(p):
                    found.append(InputImage(p, PurePosixPath(p.relative_to(path).as_posix())))
        if not found:
            raise UserError(f"{text}: no image files in this folder or below "
                            f"(looked for {', '.join(IMAGE_SUFFIXES)})")  # fmt: skip
        return sorted(found, key=lambda i: i.rel.as_posix())
    if path.is_file():
        if not _is_image(path):
            raise UserError(f"{text}: not an image file by its name (expected one of "
                            f"{', '.join(IMAGE_SUFFIXES)})")  # fmt: skip
        return [InputImage(path, PurePosixPath(path.name))]
    if globlib.has_magic(text):
        parts = Path(text).expanduser().parts
        fixed = [p for p in parts[: next(i for i, p in enumerate(parts) if globlib.has_magic(p))]]
        base = Path(*fixed) if fixed else Path(".")
        found = []
        for name in globlib.glob(os.path.expanduser(text), recursive=True):
            p = Path(name)
            if p.is_file() and _is_image(p) and not _hidden(p.name) and not any(
                _skipped_dir(d, skip) for d in p.parents[: len(p.parents) - len(base.parents) - 1]
            ):
                found.append(InputImage(p, PurePosixPath(p.relative_to(base).as_posix())))
        if not found:
            raise UserError(f"{text}: the pattern matches no image files (quote it so that the "
                            "shell does not expand it; ** matches folders recursively)")  # fmt: skip
        return sorted(found, key=lambda i: i.rel.as_posix())
    raise UserError(f"{text}: no such file or folder (INPUT is an image, a folder or a glob)")


class UnreadableImage(Exception):
    """An input file that is not a readable image; the message says why."""


def read_image(path: Path) -> np.ndarray:
    """An image file -> [h, w, 3] uint8, upright RGB. Raises UnreadableImage."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UnreadableImage(f"cannot read the file ({e.strerror or e})") from None
    try:
        rgb = imagelib.upright_rgb(data)
    except imagelib.ImageTooLarge as e:
        raise UnreadableImage(str(e)) from None
    except UnidentifiedImageError:
        raise UnreadableImage("not an image PIL can read (unknown format)"
                              + imagelib.tiff_hint(data)) from None
    except UserError:  # a bad MRCLI_MAX_IMAGE_PIXELS: the run's fault, not this file's
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure of an untrusted file
        facts = imagelib.inspect_image_bytes(data)
        raise UnreadableImage(facts.error or f"cannot decode the image ({e})") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise UnreadableImage(f"decodes to an array of shape {rgb.shape}, not an RGB image")
    return rgb
