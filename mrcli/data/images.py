"""Image files: inspect (for the checker), normalise to upright 8-bit RGB, decode.

Prepared datasets store every image as upright 8-bit RGB JPEG or PNG bytes:
files that are already so are stored byte for byte; EXIF-rotated, grayscale,
palette, CMYK, 16-bit and alpha images are converted at prepare time
(`upright_rgb`) and stored as lossless PNG. The input pipeline then only
decodes (`decode_rgb`), with JPEG DCT-domain downscaling when the target is
at most half the stored size.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# EXIF tag 0x0112: 1 = upright; 2..8 = mirrored and/or rotated.
_ORIENTATION = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}


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
    try:
        img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        return ImageFacts(False, "unreadable_image", f"not an image PIL can read ({e})")
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
        return ImageFacts(False, "unreadable_image", f"cannot decode the image ({text})")
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
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            w, h = img.size
            try:
                orientation = int(img.getexif().get(_ORIENTATION, 1) or 1)
            except Exception:  # as inspect_image_bytes: a broken EXIF block counts as upright
                orientation = 1
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    return (w, h) if orientation in _SWAPS_AXES else (h, w)


def _mode_to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. 16/32-bit integer images are scaled down
    (not clipped), alpha is dropped, palettes/CMYK/grayscale are converted."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img)
        if img.mode == "I":
            top = 65535 if arr.max(initial=0) > 255 else 255
            arr = np.clip(arr, 0, top).astype(np.float64) * (255.0 / top)
            arr = np.round(arr).astype(np.uint8)
        else:
            arr = (arr.astype(np.uint32) >> 8).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "F":
        arr = np.clip(np.asarray(img), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    return img.convert("RGB")


def upright_rgb(data: bytes) -> np.ndarray:
    """Decode with the EXIF rotation applied and the mode converted: [H,W,3] uint8."""
    img = Image.open(io.BytesIO(data))
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
    their size."""
    img = data if isinstance(data, Image.Image) else Image.open(io.BytesIO(data))
    if size is not None and img.format == "JPEG":
        h, w = size
        if 2 * h <= img.size[1] and 2 * w <= img.size[0]:
            img.draft("RGB", (w, h))
    img = _mode_to_rgb(img)  # a no-op for prepared data; kept for safety
    if size is not None and (img.size[1], img.size[0]) != tuple(size):
        img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return img
