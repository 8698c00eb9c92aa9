"""Image files: inspect (for the checker), normalise to upright 8-bit RGB, decode.

Prepared datasets store every image as upright 8-bit RGB JPEG or PNG bytes:
files that are already so are stored byte for byte; EXIF-rotated, grayscale,
palette, CMYK, 16-bit and alpha images are converted at prepare time
(`upright_rgb`) and stored as lossless PNG. The input pipeline then only
decodes (`decode_rgb`), with JPEG DCT-domain downscaling when the target is
at most half the stored size.

16-bit images (grayscale "I;16"/"I;16B" PNG and TIFF, 16-bit RGB TIFF) become
8-bit by a fixed rule, value >> 8 (`_mode_to_rgb`).

Image size: mrcli opens images with its own limit on the pixel count,
MAX_IMAGE_PIXELS (1e9 pixels, e.g. 31623 x 31623; the environment variable
MRCLI_MAX_IMAGE_PIXELS overrides it), in place of Pillow's
decompression-bomb limit (Image.MAX_IMAGE_PIXELS, about 89M pixels: a warning
above it, an error above twice it), which large microscopy, aerial and
slide images exceed. An image above mrcli's limit is refused (ImageTooLarge,
naming its size, the limit and the variable) from the header alone, before
its pixels are decoded.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mrcli.errors import UserError

# EXIF tag 0x0112: 1 = upright; 2..8 = mirrored and/or rotated.
_ORIENTATION = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}

# mrcli's limit on an image's pixel count (width x height), in place of
# Pillow's decompression-bomb limit; MAX_PIXELS_ENV overrides it. 1e9 pixels is
# a 31623 x 31623 image: 3 GB as 8-bit RGB once decoded.
MAX_IMAGE_PIXELS = 1_000_000_000
MAX_PIXELS_ENV = "MRCLI_MAX_IMAGE_PIXELS"


class ImageTooLarge(ValueError):
    """An image above mrcli's pixel limit; the message names its size, the
    limit and MAX_PIXELS_ENV."""


def max_image_pixels() -> int:
    """The pixel limit in force: MRCLI_MAX_IMAGE_PIXELS if set, else MAX_IMAGE_PIXELS."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return MAX_IMAGE_PIXELS
    try:
        limit = int(text)  # int() accepts 2_000_000_000
    except ValueError:
        limit = 0
    if limit < 1:
        raise UserError(f"{MAX_PIXELS_ENV}={text!r}: expected a positive whole number of "
                        f"pixels (width x height), e.g. {MAX_PIXELS_ENV}=2000000000")  # fmt: skip
    return limit


def _check_pixels(img: Image.Image) -> None:
    w, h = img.size
    limit = max_image_pixels()
    if w * h > limit:
        raise ImageTooLarge(
            f"the image is {w} x {h} = {w * h:,} pixels, above mrcli's limit of {limit:,} "
            f"pixels (a guard against decompression bombs); if the image is genuine and "
            f"the memory is there (about {3 * w * h / 1e9:.1f} GB as RGB), raise the limit "
            f"with the environment variable {MAX_PIXELS_ENV}={w * h}"
        )


_lift_lock = threading.Lock()
_lifts = 0
_pillow_limit: int | None = None


@contextmanager
def _mrcli_limit():
    """Pillow's own decompression-bomb check off (mrcli's _check_pixels stands
    in for it) while mrcli opens and decodes an image; its value is restored
    when the last concurrent user leaves. Pillow checks at open and again at
    some decodes (TIFF tiles, crops), so the whole decode runs inside."""
    global _lifts, _pillow_limit
    with _lift_lock:
        if _lifts == 0:
            _pillow_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        _lifts += 1
    try:
        yield
    finally:
        with _lift_lock:
            _lifts -= 1
            if _lifts == 0:
                Image.MAX_IMAGE_PIXELS = _pillow_limit


@dataclass(frozen=True)
class ImageFacts:
    """What the checker needs to know about one image file."""

    ok: bool
    # Problem kind when not ok: "missing_image_file", "unreadable_image", "truncated_image".
    error_kind: str = ""
    error: str = ""
    # Size of the displayed image (after the EXIF rotation).
    height: int = 0
    width: int = 0
    # Size of the stored pixels (before the EXIF rotation).
    stored_height: int = 0
    stored_width: int = 0
    orientation: int = 1
    mode: str = ""
    format: str = ""
    sha256: str = ""

    @property
    def needs_conversion(self) -> bool:
        """True when the stored bytes are not upright 8-bit RGB JPEG/PNG."""
        return (
            self.orientation not in (0, 1)
            or self.mode != "RGB"
            or self.format not in ("JPEG", "PNG")
        )


def inspect_image(path: Path) -> ImageFacts:
    """Read and fully decode one image file; never raises for a bad file.

    JPEGs are decoded at 1/8 scale (libjpeg still reads every entropy-coded
    byte, so a truncated file is still caught, at a fraction of the cost)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return ImageFacts(False, "missing_image_file", "file not found")
    except OSError as e:
        return ImageFacts(False, "unreadable_image", f"cannot read the file: {e.strerror or e}")
    return inspect_image_bytes(data)


def inspect_image_bytes(data: bytes) -> ImageFacts:
    digest = hashlib.sha256(data).hexdigest()
    with _mrcli_limit():
        return _inspect_opened(data, digest)


def _inspect_opened(data: bytes, digest: str) -> ImageFacts:
    try:
        img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        why = f"not an image PIL can read ({e}){tiff_hint(data)}"
        return ImageFacts(False, "unreadable_image", why)
    try:
        _check_pixels(img)
    except ImageTooLarge as e:
        return ImageFacts(False, "unreadable_image", str(e))
    try:
        fmt, mode = img.format or "", img.mode
        stored_w, stored_h = img.size
        try:
            orientation = int(img.getexif().get(_ORIENTATION, 1) or 1)
        except Exception:  # a broken EXIF block is not worth refusing the image for
            orientation = 1
        if fmt == "JPEG":
            img.draft(img.mode, (max(1, stored_w // 8), max(1, stored_h // 8)))
        img.load()
    except (OSError, SyntaxError, ValueError) as e:
        text = str(e)
        if "truncated" in text or "broken" in text or "EOF" in text:
            return ImageFacts(False, "truncated_image", f"truncated or corrupt image data ({text})")
        why = f"cannot decode the image ({text}){tiff_hint(data)}"
        return ImageFacts(False, "unreadable_image", why)
    h, w = (stored_w, stored_h) if orientation in _SWAPS_AXES else (stored_h, stored_w)
    return ImageFacts(
        True,
        height=h,
        width=w,
        stored_height=stored_h,
        stored_width=stored_w,
        orientation=orientation,
        mode=mode,
        format=fmt,
        sha256=digest,
    )


def displayed_size(source: Path | bytes) -> tuple[int, int] | None:
    """(height, width) of the displayed image (after its EXIF rotation) from
    the file's header only, without decoding the pixels; None when PIL cannot
    open it (the checker then reports why). The formats that give coordinates
    relative to the image size (YOLO) need it before the checker runs."""
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes) else source
        with _mrcli_limit(), Image.open(fp) as img:
            _check_pixels(img)  # too large: None, and the checker says why
            w, h = img.size
            try:
                orientation = int(img.getexif().get(_ORIENTATION, 1) or 1)
            except Exception:  # as inspect_image_bytes: a broken EXIF block counts as upright
                orientation = 1
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    return (w, h) if orientation in _SWAPS_AXES else (h, w)


def tiff_hint(data: bytes) -> str:
    """For a TIFF that Pillow cannot open or decode: what to do about it."""
    if data[:4] not in (b"II*\0", b"MM\0*"):
        return ""
    return ("; it is a TIFF whose pixel layout or compression Pillow cannot decode (Pillow reads "
            "8- and 16-bit grayscale, RGB and RGBA TIFFs, 16-bit RGB included; not, e.g., "
            "16-bit gray+alpha or floating-point samples): convert it to an 8-bit RGB TIFF or "
            "PNG first, e.g. with ImageJ (Image > Type > RGB Color, then save) or "
            "`magick in.tif -depth 8 out.png`")


def _mode_to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. 16/32-bit integer images are scaled down
    (not clipped), alpha is dropped, palettes/CMYK/grayscale are converted.

    16-bit -> 8-bit is the fixed rule v >> 8 (v // 256: 0..65535 onto 0..255,
    the high byte), whatever the image holds. Pillow already decodes 16-bit
    RGB TIFFs to 8-bit RGB so (it keeps the high byte), and a fixed rule maps
    the same sensor value to the same 8-bit value in every image, and in
    prepare (training) as in predict. A per-image min-max stretch (ImageJ's
    auto display range) would instead make one image's brightness depend on
    its brightest pixel. The cost: data that uses only part of the 16 bits
    (12-bit cameras: 0..4095) comes out dark (0..15); stretch such images to
    8 bits before mrcli (ImageJ: Image > Type > 8-bit, with "Scale when
    converting"). Mode "I" (32-bit) is read as 8-bit data if no value is
    above 255, else as 16-bit (round(v * 255 / 65535), values clipped to 0..65535)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img)
        if img.mode == "I":
            top = 65535 if arr.max(initial=0) > 255 else 255
            arr = np.clip(arr, 0, top).astype(np.float64) * (255.0 / top)
            arr = np.round(arr).astype(np.uint8)
        else:
            arr = (arr >> 8).astype(np.uint8)  # uint16 (either byte order) -> high byte
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "F":
        arr = np.clip(np.asarray(img), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    return img.convert("RGB")


def upright_rgb(data: bytes) -> np.ndarray:
    """Decode with the EXIF rotation applied and the mode converted: [H,W,3] uint8.
    Raises ImageTooLarge above max_image_pixels()."""
    with _mrcli_limit():
        img = Image.open(io.BytesIO(data))
        _check_pixels(img)
        img = ImageOps.exif_transpose(img) or img
        return np.asarray(_mode_to_rgb(img))


def to_stored_bytes(data: bytes, facts: ImageFacts) -> bytes:
    """The bytes a prepared dataset stores: the file itself when it is already
    upright 8-bit RGB JPEG/PNG, else the converted image as lossless PNG."""
    if not facts.needs_conversion:
        return data
    return encode_png(upright_rgb(data))


def encode_png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_rgb(data: bytes | Image.Image, size: tuple[int, int] | None = None) -> Image.Image:
    """Stored bytes (or an opened PIL image) -> an RGB PIL image, resized to
    `size` = (h, w) if given (bilinear with PIL's antialiasing). JPEGs are
    decoded at a reduced DCT scale first when the target is at most half
    their size. Raises ImageTooLarge above max_image_pixels()."""
    with _mrcli_limit():
        return _decode_rgb(data, size)


def _decode_rgb(data: bytes | Image.Image, size: tuple[int, int] | None) -> Image.Image:
    img = data if isinstance(data, Image.Image) else Image.open(io.BytesIO(data))
    _check_pixels(img)
    if size is not None and img.format == "JPEG":
        h, w = size
        if 2 * h <= img.size[1] and 2 * w <= img.size[0]:
            img.draft("RGB", (w, h))
    img = _mode_to_rgb(img)  # a no-op for prepared data; kept for safety
    if size is not None and (img.size[1], img.size[0]) != tuple(size):
        img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return img
