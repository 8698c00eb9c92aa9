"""TIFF inputs (8/16-bit, gray/RGB) and images above Pillow's decompression-bomb
limit: mrcli.data.inputs (predict's reader) and mrcli.data.images (prepare's)."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from mrcli.data import images as imagelib
from mrcli.data.inputs import UnreadableImage, find_images, read_image
from mrcli.errors import UserError


def _tiff16(arr: np.ndarray, photometric: int = 2, extra: int | None = None) -> bytes:
    """A minimal uncompressed little-endian TIFF with 16-bit samples
    ([h, w, samples]); Pillow cannot write 16-bit multi-sample TIFFs."""
    h, w, spp = arr.shape
    pix = arr.astype("<u2").tobytes()
    bps_off, pix_off = 8, 8 + 2 * spp
    ifd_off = pix_off + len(pix)
    entries = [(256, 3, 1, w), (257, 3, 1, h), (258, 3, spp, bps_off), (259, 3, 1, 1),
               (262, 3, 1, photometric), (273, 4, 1, pix_off), (277, 3, 1, spp),
               (278, 3, 1, h), (279, 4, 1, len(pix)), (284, 3, 1, 1)]  # fmt: skip
    if extra is not None:
        entries.append((338, 3, 1, extra))
    out = b"II" + struct.pack("<HI", 42, ifd_off) + struct.pack(f"<{spp}H", *[16] * spp) + pix
    out += struct.pack("<H", len(entries))
    for tag, typ, count, val in entries:
        if typ == 3 and count == 1:
            out += struct.pack("<HHIHH", tag, typ, count, val, 0)
        else:
            out += struct.pack("<HHII", tag, typ, count, val)
    return out + struct.pack("<I", 0)


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_find_images_picks_tif_and_tiff(tmp_path):
    for name in ("a.tif", "b.TIFF", "sub/c.tiff", "d.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        if name.endswith("txt"):
            (tmp_path / name).write_text("x")
        else:
            Image.fromarray(_rgb(4, 5)).save(tmp_path / name, format="TIFF")
    assert [i.rel.as_posix() for i in find_images(tmp_path)] == ["a.tif", "b.TIFF", "sub/c.tiff"]
    assert [i.rel.as_posix() for i in find_images(tmp_path / "a.tif")] == ["a.tif"]
    assert len(find_images(str(tmp_path / "**" / "*.tif*"))) == 2  # glob is case-sensitive


def test_gray8_tiff(tmp_path):
    gray = np.arange(6 * 7, dtype=np.uint8).reshape(6, 7) * 6
    Image.fromarray(gray, "L").save(tmp_path / "g.tif")
    rgb = read_image(tmp_path / "g.tif")
    assert rgb.dtype == np.uint8 and rgb.shape == (6, 7, 3)
    np.testing.assert_array_equal(rgb, np.repeat(gray[..., None], 3, axis=2))


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_gray16_tiff_is_shifted_by_8(tmp_path, mode):
    # 12-bit-style and full-range values: the rule is v >> 8 whatever the image holds.
    gray16 = np.array([[0, 255, 256, 4095], [32767, 32768, 65280, 65535]], np.uint16)
    img = Image.new(mode, (4, 2))
    img.frombytes(gray16.astype("<u2" if mode == "I;16" else ">u2").tobytes())
    img.save(tmp_path / "g16.tiff")
    assert Image.open(tmp_path / "g16.tiff").mode == mode
    rgb = read_image(tmp_path / "g16.tiff")
    want = np.array([[0, 0, 1, 15], [127, 128, 255, 255]], np.uint8)
    np.testing.assert_array_equal(rgb, np.repeat(want[..., None], 3, axis=2))


def test_gray32_I_tiff(tmp_path):
    # Mode "I": read as 16-bit data when any value is above 255.
    vals = np.array([[0, 257, 65535, 70000]], np.int32)
    Image.fromarray(vals, "I").save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    np.testing.assert_array_equal(read_image(tmp_path / "i.tif")[..., 0], [[0, 1, 255, 255]])


def test_rgb8_tiff(tmp_path):
    rgb = _rgb(9, 11)
    Image.fromarray(rgb).save(tmp_path / "c.tif", compression="tiff_lzw")
    np.testing.assert_array_equal(read_image(tmp_path / "c.tif"), rgb)


def test_rgb16_tiff_same_rule(tmp_path):
    rgb16 = np.random.default_rng(1).integers(0, 65536, (5, 6, 3), dtype=np.uint16)
    (tmp_path / "c16.tif").write_bytes(_tiff16(rgb16))
    np.testing.assert_array_equal(read_image(tmp_path / "c16.tif"), (rgb16 >> 8).astype(np.uint8))


def test_undecodable_tiff_says_what_to_do(tmp_path):
    # 16-bit gray + alpha: a TIFF layout Pillow cannot read.
    (tmp_path / "ga16.tif").write_bytes(_tiff16(np.zeros((3, 4, 2), np.uint16), 1, extra=2))
    with pytest.raises(UnreadableImage, match=r"TIFF .*convert it to an 8-bit RGB"):
        read_image(tmp_path / "ga16.tif")
    facts = imagelib.inspect_image(tmp_path / "ga16.tif")
    assert not facts.ok and "convert it to an 8-bit RGB" in facts.error


@pytest.fixture
def small_pillow_limit(monkeypatch):
    """Pillow's decompression-bomb limit lowered to 100 pixels, so that a
    40 x 30 image (1200 px, above 2x the limit) counts as a huge one."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    monkeypatch.delenv(imagelib.MAX_PIXELS_ENV, raising=False)


def test_above_pillow_limit_opens(tmp_path, small_pillow_limit):
    rgb = _rgb(30, 40)
    Image.fromarray(rgb).save(tmp_path / "big.png")
    Image.fromarray(rgb).save(tmp_path / "big.tif")
    with pytest.raises(Image.DecompressionBombError):  # Pillow alone refuses it
        Image.open(tmp_path / "big.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning either
        for name in ("big.png", "big.tif"):
            np.testing.assert_array_equal(read_image(tmp_path / name), rgb)
        # prepare's path: the checker, the conversion and the decoder
        data = (tmp_path / "big.tif").read_bytes()
        facts = imagelib.inspect_image_bytes(data)
        assert facts.ok and (facts.height, facts.width) == (30, 40)
        assert imagelib.displayed_size(data) == (30, 40)
        stored = imagelib.to_stored_bytes(data, facts)
        np.testing.assert_array_equal(np.asarray(imagelib.decode_rgb(stored)), rgb)
        assert imagelib.decode_rgb(stored, (15, 20)).size == (20, 15)
    assert Image.MAX_IMAGE_PIXELS == 100  # Pillow's own limit is restored


def test_mrcli_limit_governs(tmp_path, small_pillow_limit, monkeypatch):
    Image.fromarray(_rgb(30, 40)).save(tmp_path / "big.tif")
    monkeypatch.setenv(imagelib.MAX_PIXELS_ENV, "1199")
    with pytest.raises(UnreadableImage) as err:
        read_image(tmp_path / "big.tif")
    msg = str(err.value)
    assert "40 x 30 = 1,200 pixels" in msg and "1,199" in msg
    assert "MRCLI_MAX_IMAGE_PIXELS=1200" in msg
    facts = imagelib.inspect_image(tmp_path / "big.tif")
    assert not facts.ok and "MRCLI_MAX_IMAGE_PIXELS" in facts.error
    assert imagelib.displayed_size(tmp_path / "big.tif") is None
    with pytest.raises(imagelib.ImageTooLarge):
        imagelib.upright_rgb((tmp_path / "big.tif").read_bytes())
    monkeypatch.setenv(imagelib.MAX_PIXELS_ENV, "1_200")  # exactly the size: allowed
    assert read_image(tmp_path / "big.tif").shape == (30, 40, 3)
    assert Image.MAX_IMAGE_PIXELS == 100


def test_default_limit_is_1e9(monkeypatch):
    monkeypatch.delenv(imagelib.MAX_PIXELS_ENV, raising=False)
    assert imagelib.max_image_pixels() == imagelib.MAX_IMAGE_PIXELS == 1_000_000_000
    assert imagelib.MAX_IMAGE_PIXELS > Image.MAX_IMAGE_PIXELS * 2  # above Pillow's error limit


@pytest.mark.parametrize("text", ["lots", "0", "-5"])
def test_bad_limit_variable_is_a_user_error(tmp_path, monkeypatch, text):
    Image.fromarray(_rgb(4, 5)).save(tmp_path / "a.tif")
    monkeypatch.setenv(imagelib.MAX_PIXELS_ENV, text)
    with pytest.raises(UserError, match="MRCLI_MAX_IMAGE_PIXELS"):
        read_image(tmp_path / "a.tif")


def test_header_only_refusal_is_cheap(monkeypatch):
    # A 100000 x 100000 PNG header (10^10 px) is refused before any decoding.
    monkeypatch.delenv(imagelib.MAX_PIXELS_ENV, raising=False)
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", 100_000, 100_000)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # IHDR's CRC
    facts = imagelib.inspect_image_bytes(bytes(data))
    assert not facts.ok and "10,000,000,000 pixels" in facts.error
