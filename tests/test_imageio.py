"""fewstep.imageio: every test image is generated here (Pillow / OpenCV / hand-built bytes)."""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms, ImageFile, ImageOps

from fewstep.errors import FewstepError, ImageReadError
from fewstep.imageio import (
    IMAGE_EXTENSIONS,
    LoadedImage,
    _apply_orientation,
    list_images,
    output_path,
    read_image,
    read_mask,
    resize_alpha,
    write_image,
)

RNG = np.random.default_rng(1234)


def _noise(h: int, w: int, c: int = 3) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, c), dtype=np.uint8)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _exif(orientation: int) -> Image.Exif:
    ex = Image.Exif()
    ex[0x0112] = orientation
    return ex


def _tiff16(arr: np.ndarray, orientation: int) -> bytes:
    """Minimal uncompressed little-endian 16-bit RGB TIFF with an Orientation tag (Pillow cannot
    write 16-bit RGB and OpenCV writes no orientation)."""
    h, w, c = arr.shape
    data = arr.astype("<u2").tobytes()
    tags = [(256, 4, w), (257, 4, h), (258, 3, None), (259, 3, 1), (262, 3, 2), (273, 4, None),
            (274, 3, orientation), (277, 3, c), (278, 4, h), (279, 4, len(data)), (284, 3, 1)]
    bits_at = 8 + 2 + 12 * len(tags) + 4
    data_at = bits_at + 2 * c
    out = bytearray(b"II*\x00" + struct.pack("<IH", 8, len(tags)))
    for tag, kind, value in tags:
        if tag == 258:
            out += struct.pack("<HHII", tag, 3, c, bits_at)
        elif tag == 273:
            out += struct.pack("<HHII", tag, 4, 1, data_at)
        elif kind == 3:
            out += struct.pack("<HHIHH", tag, 3, 1, value, 0)
        else:
            out += struct.pack("<HHII", tag, 4, 1, value)
    out += struct.pack("<I", 0) + struct.pack("<" + "H" * c, *([16] * c)) + data
    return bytes(out)


# ------------------------------------------------------------------------------ bad inputs


def _assert_read_error(path: Path, *words: str, **kwargs) -> str:
    with pytest.raises(ImageReadError) as info:
        read_image(path, **kwargs)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ")
    assert path.name in msg and "\n" not in msg
    for word in words:
        assert word in msg
    return msg


def test_truncated_png_and_jpeg(tmp_path):
    for ext, fmt in (("png", "PNG"), ("jpg", "JPEG")):
        buf = io.BytesIO()
        Image.fromarray(_noise(64, 64)).save(buf, fmt)
        data = buf.getvalue()
        for cut in (len(data) // 2, len(data) - 30):
            path = tmp_path / f"cut{cut}.{ext}"
            path.write_bytes(data[:cut])
            _assert_read_error(path, "truncated")


def test_truncated_rejected_even_if_pillow_told_to_accept(tmp_path, monkeypatch):
    buf = io.BytesIO()
    Image.fromarray(_noise(64, 64)).save(buf, "JPEG")
    path = tmp_path / "half.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    _assert_read_error(path, "truncated")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the global is restored


def test_corrupt_png_data(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_noise(64, 64)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[len(data) // 2] ^= 0xFF
    path = tmp_path / "flipped.png"
    path.write_bytes(bytes(data))
    _assert_read_error(path, "corrupt")


def test_zero_bytes_text_missing_and_folder(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    _assert_read_error(empty, "empty")
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n")
    _assert_read_error(text, "not an image")
    eps = tmp_path / "script.png"  # Pillow knows EPS but would run Ghostscript: never tried
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    _assert_read_error(eps, "not an image")
    _assert_read_error(tmp_path / "nowhere.jpg", "no such file")
    (tmp_path / "dir.png").mkdir()
    _assert_read_error(tmp_path / "dir.png", "folder")


def test_huge_declared_dimensions_rejected_before_decoding(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_noise(8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    # IHDR data starts at byte 16 (8 signature + 4 length + 4 type); CRC covers type + 13 bytes.
    struct.pack_into(">II", data, 16, 100_000, 100_000)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path = tmp_path / "bomb.png"
    path.write_bytes(bytes(data))
    _assert_read_error(path, "100000x100000", "max_pixels")

    small = tmp_path / "small.png"
    Image.fromarray(_noise(20, 30)).save(small)
    _assert_read_error(small, "30x20", max_pixels=599)
    assert read_image(small, max_pixels=600).rgb.shape == (20, 30, 3)


def test_limit_above_pillow_default_is_ours(tmp_path, monkeypatch):
    # Pillow's own bomb check (2 * MAX_IMAGE_PIXELS) must not override a larger max_pixels.
    path = tmp_path / "img.png"
    Image.fromarray(_noise(40, 50)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert read_image(path).rgb.shape == (40, 50, 3)
    assert Image.MAX_IMAGE_PIXELS == 100


# ------------------------------------------------------------------------------ good inputs


def test_16bit_gray_png_keeps_full_precision(tmp_path):
    values = (np.arange(12 * 20, dtype=np.uint32).reshape(12, 20) * 271 + 3).astype(np.uint16)
    assert np.any(values % 257 != 0)  # not representable in 8 bits
    path = tmp_path / "g16.png"
    Image.fromarray(values).save(path)
    img = read_image(path)
    assert img.bit_depth == 16 and img.alpha is None and img.mode.startswith("I")
    assert img.rgb.dtype == np.float32 and img.rgb.shape == (12, 20, 3)
    for c in range(3):
        np.testing.assert_allclose(img.rgb[..., c], values / 65535.0, rtol=0, atol=1e-6)


def test_16bit_color_png_rgb_and_rgba(tmp_path):
    rgb = RNG.integers(0, 65536, (9, 7, 3), dtype=np.uint16)
    alpha = RNG.integers(0, 65536, (9, 7), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "c16.png"), rgb[..., ::-1])
    cv2.imwrite(str(tmp_path / "c16a.png"), np.dstack([rgb[..., ::-1], alpha]))
    img = read_image(tmp_path / "c16.png")
    assert img.bit_depth == 16 and img.alpha is None
    np.testing.assert_allclose(img.rgb, rgb / 65535.0, rtol=0, atol=1e-6)
    img = read_image(tmp_path / "c16a.png")
    assert img.bit_depth == 16
    np.testing.assert_allclose(img.rgb, rgb / 65535.0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(img.alpha, alpha / 65535.0, rtol=0, atol=1e-6)


def test_16bit_gray_alpha_png(tmp_path):
    # Gray+alpha 16-bit (colour type 4): built by hand, no common writer produces it.
    h, w = 3, 5
    ga = RNG.integers(0, 65536, (h, w, 2), dtype=np.uint16)
    raw = b"".join(b"\x00" + ga[y].astype(">u2").tobytes() for y in range(h))
    png = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 4, 0, 0, 0))
           + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))
    path = tmp_path / "ga16.png"
    path.write_bytes(png)
    img = read_image(path)
    assert img.bit_depth == 16
    for c in range(3):
        np.testing.assert_allclose(img.rgb[..., c], ga[..., 0] / 65535.0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(img.alpha, ga[..., 1] / 65535.0, rtol=0, atol=1e-6)


def test_16bit_tiff_with_rotating_orientation(tmp_path):
    rgb = RNG.integers(0, 65536, (4, 6, 3), dtype=np.uint16)
    for orientation, expected in ((1, rgb), (3, rgb[::-1, ::-1]), (6, np.rot90(rgb, -1)),
                                  (8, np.rot90(rgb, 1))):
        path = tmp_path / f"o{orientation}.tif"
        path.write_bytes(_tiff16(rgb, orientation))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # falling back to 8 bits would warn
            img = read_image(path)
        assert img.bit_depth == 16 and img.rgb.shape == expected.shape
        np.testing.assert_allclose(img.rgb, expected / 65535.0, rtol=0, atol=1e-6)


def test_16bit_png_with_exif_orientation(tmp_path):
    rgb = RNG.integers(0, 65536, (4, 6, 3), dtype=np.uint16)
    ok, buf = cv2.imencode(".png", rgb[..., ::-1])
    exif = _exif(6).tobytes()
    exif = exif[6:] if exif.startswith(b"Exif\x00\x00") else exif
    data = buf.tobytes()
    path = tmp_path / "o6.png"
    path.write_bytes(data[:33] + _png_chunk(b"eXIf", exif) + data[33:])
    img = read_image(path)
    assert img.bit_depth == 16 and img.rgb.shape == (6, 4, 3)
    np.testing.assert_allclose(img.rgb, np.rot90(rgb, -1) / 65535.0, rtol=0, atol=1e-6)


def test_16bit_rgb_png_colour_key_becomes_alpha(tmp_path):
    rgb = RNG.integers(0, 65536, (3, 4, 3), dtype=np.uint16)
    rgb[1, 2] = (1, 2, 3)
    ok, buf = cv2.imencode(".png", rgb[..., ::-1])
    data = buf.tobytes()
    path = tmp_path / "key.png"
    path.write_bytes(data[:33] + _png_chunk(b"tRNS", struct.pack(">HHH", 1, 2, 3)) + data[33:])
    img = read_image(path)
    assert img.bit_depth == 16
    np.testing.assert_allclose(img.rgb, rgb / 65535.0, rtol=0, atol=1e-6)
    expected = np.ones((3, 4), np.float32)
    expected[1, 2] = 0
    np.testing.assert_array_equal(img.alpha, expected)


def test_16bit_gray_with_orientation(tmp_path):
    values = RNG.integers(0, 65536, (4, 6), dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g.png", exif=_exif(8))
    img = read_image(tmp_path / "g.png")
    assert img.bit_depth == 16 and img.rgb.shape == (6, 4, 3)
    np.testing.assert_allclose(img.rgb[..., 0], np.rot90(values, 1) / 65535.0, rtol=0, atol=1e-6)


def test_gray_l_and_la(tmp_path):
    gray = _noise(10, 12, 1)[..., 0]
    alpha = _noise(10, 12, 1)[..., 0]
    Image.fromarray(gray, "L").save(tmp_path / "l.png")
    Image.fromarray(np.dstack([gray, alpha]), "LA").save(tmp_path / "la.png")
    img = read_image(tmp_path / "l.png")
    assert img.mode == "L" and img.bit_depth == 8 and img.alpha is None
    for c in range(3):
        np.testing.assert_array_equal(img.rgb[..., c], gray.astype(np.float32) / np.float32(255))
    img = read_image(tmp_path / "la.png")
    assert img.mode == "LA"
    np.testing.assert_allclose(img.rgb[..., 1], gray / 255.0, rtol=0, atol=1e-7)
    np.testing.assert_allclose(img.alpha, alpha / 255.0, rtol=0, atol=1e-7)


def test_palette_with_and_without_transparency(tmp_path):
    palette = np.array([[255, 0, 0], [0, 128, 255], [10, 20, 30], [200, 200, 0]], np.uint8)
    index = RNG.integers(0, 4, (8, 9)).astype(np.uint8)
    im = Image.fromarray(index, "P")
    im.putpalette(palette.ravel().tolist())
    im.save(tmp_path / "p.png")
    im.save(tmp_path / "pt.png", transparency=2)
    img = read_image(tmp_path / "p.png")
    assert img.mode == "P" and img.alpha is None
    np.testing.assert_allclose(img.rgb, palette[index] / 255.0, rtol=0, atol=1e-7)
    img = read_image(tmp_path / "pt.png")
    np.testing.assert_allclose(img.rgb, palette[index] / 255.0, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(img.alpha, (index != 2).astype(np.float32))


def test_rgba_alpha_round_trips_exactly_through_png(tmp_path):
    rgba = _noise(11, 13, 4)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "in.png")
    img = read_image(tmp_path / "in.png")
    assert img.mode == "RGBA" and img.alpha is not None
    out = write_image(tmp_path / "out.png", img.rgb, alpha=img.alpha)
    back = Image.open(out)
    assert back.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(back), rgba)


def test_cmyk_jpeg(tmp_path):
    cmyk = np.zeros((16, 24, 4), np.uint8)
    cmyk[:, :8] = (0, 255, 255, 0)  # red
    cmyk[:, 8:16] = (255, 0, 255, 0)  # green
    cmyk[:, 16:] = (0, 0, 0, 128)  # gray
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(cmyk, "CMYK").save(path, quality=95)
    img = read_image(path)
    assert img.mode == "CMYK" and img.alpha is None and img.rgb.shape == (16, 24, 3)
    ref = np.asarray(Image.open(path).convert("RGB")) / 255.0
    np.testing.assert_allclose(img.rgb, ref, rtol=0, atol=1e-6)
    ideal = np.asarray(Image.fromarray(cmyk, "CMYK").convert("RGB")) / 255.0
    assert np.abs(img.rgb - ideal).mean() < 4 / 255  # JPEG tolerance
    np.testing.assert_allclose(img.rgb[8, 4], [1, 0, 0], atol=0.05)
    np.testing.assert_allclose(img.rgb[8, 12], [0, 1, 0], atol=0.05)


def test_float_tiff(tmp_path):
    values = RNG.random((5, 7)).astype(np.float32)
    Image.fromarray(values, "F").save(tmp_path / "f.tif")
    img = read_image(tmp_path / "f.tif")
    assert img.mode == "F" and img.bit_depth == 16
    np.testing.assert_array_equal(img.rgb[..., 2], values)
    Image.fromarray(values * 2, "F").save(tmp_path / "f2.tif")
    with pytest.warns(UserWarning, match="clipped"):
        img = read_image(tmp_path / "f2.tif")
    np.testing.assert_array_equal(img.rgb[..., 0], np.clip(values * 2, 0, 1))


def _quadrants(h: int, w: int) -> np.ndarray:
    """Four flat colour blocks (survive JPEG): red TL, green TR, blue BL, white BR."""
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2, : w // 2] = (255, 0, 0)
    img[: h // 2, w // 2:] = (0, 255, 0)
    img[h // 2:, : w // 2] = (0, 0, 255)
    img[h // 2:, w // 2:] = (255, 255, 255)
    return img


def test_exif_orientation_6_and_3_jpeg(tmp_path):
    red, green, blue, white = (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1)
    src = _quadrants(32, 48)  # stored 48 wide, 32 high
    for orientation in (6, 3):
        path = tmp_path / f"o{orientation}.jpg"
        Image.fromarray(src).save(path, quality=95, exif=_exif(orientation))
        img = read_image(path).rgb
        if orientation == 6:  # displayed rotated 90 degrees clockwise: 32 wide, 48 high
            assert img.shape == (48, 32, 3)
            corners = {(8, 8): blue, (8, 24): red, (40, 8): white, (40, 24): green}
        else:  # rotated 180 degrees
            assert img.shape == (32, 48, 3)
            corners = {(8, 8): white, (8, 40): blue, (24, 8): green, (24, 40): red}
        for (y, x), colour in corners.items():
            np.testing.assert_allclose(img[y, x], colour, atol=0.05)


def test_numpy_orientation_matches_pillow():
    src = _noise(3, 5)
    for orientation in range(1, 9):
        im = Image.fromarray(src)
        im.getexif()[0x0112] = orientation
        ref = np.asarray(ImageOps.exif_transpose(im))
        np.testing.assert_array_equal(_apply_orientation(src, orientation), ref)


def test_icc_profile_kept_and_written(tmp_path):
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(_noise(6, 6)).save(tmp_path / "icc.png", icc_profile=srgb)
    img = read_image(tmp_path / "icc.png")
    assert img.icc_profile == srgb
    for bits in (8, 16):
        out = write_image(tmp_path / f"out{bits}.png", img.rgb, bit_depth=bits, icc_profile=srgb)
        assert Image.open(out).info.get("icc_profile") == srgb
        assert read_image(out).icc_profile == srgb


# ------------------------------------------------------------------------------ writing


def test_write_refuses_to_overwrite(tmp_path):
    path = tmp_path / "x.png"
    rgb = _noise(4, 4)
    write_image(path, rgb)
    before = path.read_bytes()
    with pytest.raises(FewstepError, match="--overwrite") as info:
        write_image(path, np.zeros((4, 4, 3), np.uint8))
    assert str(path) in str(info.value)
    assert path.read_bytes() == before
    write_image(path, np.zeros((4, 4, 3), np.uint8), overwrite=True)
    assert np.asarray(Image.open(path)).max() == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]  # no temp files left


def test_write_16bit_round_trip_exact(tmp_path):
    rgb = RNG.integers(0, 65536, (7, 9, 3), dtype=np.uint16)
    alpha = RNG.integers(0, 65536, (7, 9), dtype=np.uint16)
    for ext in ("png", "tif"):
        out = write_image(tmp_path / "deep" / f"r16.{ext}", rgb, alpha=alpha, bit_depth=16)
        img = read_image(out)
        assert img.bit_depth == 16
        np.testing.assert_array_equal(np.round(img.rgb * 65535).astype(np.uint16), rgb)
        np.testing.assert_array_equal(np.round(img.alpha * 65535).astype(np.uint16), alpha)
        # and the float result written back gives the same integers again
        out2 = write_image(tmp_path / f"again.{ext}", img.rgb, alpha=img.alpha, bit_depth=16)
        raw = cv2.imread(str(out2), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(raw[..., [2, 1, 0]], rgb)
        np.testing.assert_array_equal(raw[..., 3], alpha)


def test_write_8bit_rounding_and_conversions(tmp_path):
    k = np.arange(0, 255, dtype=np.float32)
    rgb = np.stack([(k + 0.49) / 255, (k + 0.51) / 255, k / 255], axis=1)[None]  # 1x255x3
    out = np.asarray(Image.open(write_image(tmp_path / "r.png", rgb))).astype(int)
    np.testing.assert_array_equal(out[0, :, 0], k)
    np.testing.assert_array_equal(out[0, :, 1], k + 1)
    np.testing.assert_array_equal(out[0, :, 2], k)
    # half-way goes to even: 0.5 * 255 = 127.5 -> 128, 0.5 * 65535 = 32767.5 -> 32768
    assert np.asarray(Image.open(write_image(tmp_path / "h.png", np.full((1, 1, 3), 0.5))))[0, 0, 0] == 128
    # uint16 input written as 8-bit, uint8 input written as 16-bit
    u16 = np.array([[[0, 257 * 3 + 128, 65535]]], np.uint16)
    np.testing.assert_array_equal(np.asarray(Image.open(write_image(tmp_path / "a.png", u16)))[0, 0], [0, 3, 255])
    u8 = np.array([[[0, 1, 255]]], np.uint8)
    raw = cv2.imread(str(write_image(tmp_path / "b.png", u8, bit_depth=16)), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(raw[0, 0, ::-1], [0, 257, 65535])


def test_write_alpha_dropped_for_jpeg_and_kept_for_webp_tif(tmp_path):
    rgb = _noise(8, 8)
    alpha = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    for ext in ("jpg", "bmp"):
        with pytest.warns(UserWarning, match="alpha"):
            out = write_image(tmp_path / f"a.{ext}", rgb, alpha=alpha)
        assert Image.open(out).mode == "RGB"
    for ext in ("webp", "tif", "png"):
        out = write_image(tmp_path / f"a.{ext}", rgb, alpha=alpha)
        back = read_image(out)
        np.testing.assert_array_equal(np.round(back.alpha * 255), np.round(alpha * 255))
    with pytest.warns(UserWarning, match="8-bit only"):
        write_image(tmp_path / "deep.jpg", rgb, bit_depth=16)


def test_write_rejects_bad_extension_and_nan(tmp_path):
    with pytest.raises(FewstepError, match="unknown image extension"):
        write_image(tmp_path / "x.gifx", _noise(2, 2))
    with pytest.raises(FewstepError, match="unknown image extension"):
        write_image(tmp_path / "noext", _noise(2, 2))
    bad = np.full((2, 2, 3), np.nan, np.float32)
    with pytest.raises(FewstepError, match="NaN"):
        write_image(tmp_path / "nan.png", bad)
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------ masks, alpha


def test_read_mask_luminance_alpha_and_size(tmp_path):
    lum = np.zeros((6, 10), np.uint8)
    lum[2:4, 3:8] = 255
    lum[0, 0] = 120  # below half: not a hole
    lum[5, 9] = 140  # above half: a hole
    Image.fromarray(lum, "L").save(tmp_path / "m.png")
    expected = lum > 127
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), expected)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", size=(6, 10)), expected)
    with pytest.raises(FewstepError, match="10x6") as info:
        read_mask(tmp_path / "m.png", size=(8, 10))
    assert "10x8" in str(info.value) and "m.png" in str(info.value)
    # painted strokes on a transparent layer: alpha decides, colour does not
    rgba = np.zeros((6, 10, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[1:3, 1:3, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "ma.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "ma.png"), rgba[..., 3] > 127)


def test_resize_alpha_bicubic_and_clipped():
    alpha = np.zeros((8, 8), np.float32)
    alpha[:, 4:] = 1.0  # a hard edge overshoots under bicubic
    up = resize_alpha(alpha, (32, 24))
    assert up.shape == (32, 24) and up.dtype == np.float32
    assert up.min() == 0.0 and up.max() == 1.0
    raw = cv2.resize(alpha, (24, 32), interpolation=cv2.INTER_CUBIC)
    assert raw.max() > 1.0 and raw.min() < 0.0
    np.testing.assert_array_equal(up, np.clip(raw, 0, 1))
    np.testing.assert_allclose(resize_alpha(np.full((3, 5), 0.25, np.float32), (12, 20)), 0.25, atol=1e-6)


# ------------------------------------------------------------------------------ listing


def test_list_images_mixed_case_nested_hidden_and_duplicates(tmp_path):
    root = tmp_path / "in"
    files = ["B.PNG", "a.JpG", "sub/c.tiff", "sub/deeper/d.WebP", "sub/e.Jpeg", "z.bmp",
             ".hidden.png", ".cache/x.png", "sub/.git/y.png", "notes.txt", "sub/f.TIF"]
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    odd = tmp_path / "single.dat"
    odd.write_bytes(b"x")

    found = list_images([root, odd, root / "a.JpG", str(root / "sub")])
    expected = [root / n for n in ["B.PNG", "a.JpG", "sub/c.tiff", "sub/deeper/d.WebP",
                                   "sub/e.Jpeg", "sub/f.TIF", "z.bmp"]]
    assert [f for f, _ in found] == expected + [odd]
    assert all(r == root for _, r in found[:-1]) and found[-1][1] == tmp_path
    assert list_images([root]) == list_images([root])

    flat = list_images([root], recursive=False)
    assert [f.name for f, _ in flat] == ["B.PNG", "a.JpG", "z.bmp"]
    assert set(IMAGE_EXTENSIONS) == {"png", "jpg", "jpeg", "bmp", "webp", "tif", "tiff", "ppm", "pgm"}

    with pytest.raises(FewstepError, match="missing_dir"):
        list_images([root, tmp_path / "missing_dir"])


def test_list_images_follows_folder_links_without_looping(tmp_path):
    root = tmp_path / "in"
    (root / "real").mkdir(parents=True)
    (root / "real" / "a.png").write_bytes(b"x")
    os.symlink(tmp_path / "in", root / "real" / "loop")  # a cycle back to the top
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "b.PNG").write_bytes(b"x")
    os.symlink(outside, root / "linked")
    found = [f.relative_to(root).as_posix() for f, _ in list_images([root])]
    assert found == ["linked/b.PNG", "real/a.png"]


def test_output_path():
    root, out = Path("/data/in"), Path("/data/out")
    assert output_path(Path("/data/in/a/b/img.JPG"), root, out) == Path("/data/out/a/b/img.jpg")
    assert output_path(Path("/data/in/img.png"), root, out, suffix="x4", ext="webp") == Path("/data/out/img_x4.webp")
    assert output_path(Path("/data/in/img.png"), root, out, ext=".TIF") == Path("/data/out/img.tif")
    # a file given directly (root = its parent) lands at the top of out_dir
    f = Path("/elsewhere/p.bmp")
    assert output_path(f, f.parent, out, suffix="sr") == Path("/data/out/p_sr.bmp")


def test_loaded_image_dataclass_fields(tmp_path):
    Image.fromarray(_noise(5, 6)).save(tmp_path / "x.png")
    img = read_image(str(tmp_path / "x.png"))
    assert isinstance(img, LoadedImage) and img.path == tmp_path / "x.png"
    assert (img.height, img.width, img.bit_depth, img.mode) == (5, 6, 8, "RGB")
    assert img.rgb.flags.c_contiguous and 0.0 <= img.rgb.min() and img.rgb.max() <= 1.0
    assert os.path.exists(img.path)


def test_one_lister_for_the_project_and_excluded_output_folders(tmp_path):
    from fewstep import datasets
    from fewstep.eval import datasets as evaluate
    from fewstep.imageio import list_folder

    root = tmp_path / "photos"
    (root / "out").mkdir(parents=True)
    for name in ("b.PNG", "a.jpeg", "c.ppm", "out/a.png", ".hidden.png", "notes.txt"):
        (root / name).write_bytes(b"x")
    found = [f.relative_to(root).as_posix() for f, _ in list_images([root], exclude=[root / "out"])]
    assert found == ["a.jpeg", "b.PNG", "c.ppm"]
    flat = [p.name for p in list_folder(root)]
    assert flat == ["a.jpeg", "b.PNG", "c.ppm"]
    assert [p.name for p in datasets.list_images(root)] == flat == [p.name for p in evaluate.list_images(root)]
    assert set(evaluate.IMAGE_EXTS) == {"." + e for e in IMAGE_EXTENSIONS}
