"""Robust image reading, writing and listing for the CLI and the Python API.

Reading goes through Pillow (EXIF orientation, palettes, CMYK, gray, 16-bit gray, float TIFF);
16-bit colour PNG/TIFF, which Pillow can only decode to 8 bits, is decoded again with OpenCV so
that the full precision survives. Every problem a user can cause (missing, empty, truncated,
oversized or non-image files) is an `ImageReadError` whose message is one line "PATH: reason", so
a batch run can report the file and move on.

Writing is atomic (temporary file in the target folder, then `os.replace`), refuses to overwrite
unless asked, keeps alpha where the format can store it and writes 16-bit PNG/TIFF on request.
"""

from __future__ import annotations

import io
import os
import struct
import threading
import uuid
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import FewstepError, ImageReadError

# The one list of file extensions that fewstep treats as images when it scans a folder (upscale,
# eval, datasets, make-testset all go through `list_images` / `list_folder`). Every one of them is
# readable by `read_image`; WRITE_EXTENSIONS are the ones `write_image` can produce.
IMAGE_EXTENSIONS: tuple[str, ...] = ("png", "jpg", "jpeg", "bmp", "webp", "tif", "tiff", "ppm", "pgm")

# Formats Pillow may try when opening. Deliberately excludes formats whose decoders run external
# programs or are rarely images (EPS -> Ghostscript, WMF, FITS, ...): inputs may be untrusted.
_READ_FORMATS = (
    "PNG", "JPEG", "BMP", "DIB", "WEBP", "TIFF", "GIF", "PPM", "TGA", "QOI", "SGI", "PCX",
    "AVIF", "JPEG2000",
)

_WRITE_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "bmp": "BMP", "webp": "WEBP",
                  "tif": "TIFF", "tiff": "TIFF"}
WRITE_EXTENSIONS: tuple[str, ...] = tuple(_WRITE_FORMATS)

_ORIENTATION_TAG = 0x0112

# Pillow's decompression-bomb limit and truncated-image switch are module globals; we change them
# only for the duration of our own open/load, under a lock so concurrent readers cannot interleave
# the save/restore and leave a wrong value behind.
_PIL_GLOBALS_LOCK = threading.Lock()


@dataclass
class LoadedImage:
    """A decoded image.

    rgb:         float32 HxWx3 in [0, 1] (gray images are replicated to 3 channels).
    alpha:       float32 HxW in [0, 1], or None when the file has no transparency.
    bit_depth:   8 or 16 (16 for 16-bit and float sources): the precision worth writing back.
    path:        the file it came from (None when built in memory).
    mode:        the original Pillow mode ("RGB", "P", "I;16", "CMYK", ...).
    icc_profile: the embedded ICC profile when it describes RGB data, else None.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None = None
    bit_depth: int = 8
    path: Path | None = None
    mode: str = "RGB"
    icc_profile: bytes | None = None

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


# --------------------------------------------------------------------------------------- reading


def _open_pil(p: Path):
    """Image.open with our own size policy (Pillow's bomb check disabled; the caller checks)."""
    from PIL import Image, ImageFile

    Image.init()
    # Pillow raises KeyError for a format name it does not know (AVIF before 11.2, say).
    formats = [f for f in _READ_FORMATS if f in Image.OPEN]
    with _PIL_GLOBALS_LOCK:
        saved = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
        Image.MAX_IMAGE_PIXELS = None
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            return Image.open(p, formats=formats)
        finally:
            Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _load_strict(im, pixels: int) -> None:
    """Decode every pixel: fail on truncated data even if someone enabled LOAD_TRUNCATED_IMAGES,
    and let sizes we already accepted pass Pillow's own bomb check (some plugins repeat it)."""
    from PIL import Image, ImageFile

    limit = Image.MAX_IMAGE_PIXELS
    if not ImageFile.LOAD_TRUNCATED_IMAGES and (limit is None or pixels <= limit):
        im.load()  # the common case needs no change of Pillow's globals, hence no lock
        return
    with _PIL_GLOBALS_LOCK:
        saved = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
        Image.MAX_IMAGE_PIXELS = None
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            im.load()
        finally:
            Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _rawmode(im) -> str:
    """The decoder's raw mode of the first tile ("RGB;16B" for 16-bit RGB PNG), or ""."""
    try:
        args = im.tile[0][3]
    except (IndexError, TypeError, AttributeError):
        return ""
    if isinstance(args, tuple):
        args = args[0] if args else ""
    return args if isinstance(args, str) else ""


def _rgb_icc(profile) -> bytes | None:
    """Keep an ICC profile only if its data colour space is RGB (bytes 16..20 of the header):
    a CMYK or gray profile would mislabel the RGB pixels we return."""
    if isinstance(profile, (bytes, bytearray)) and len(profile) >= 20 and profile[16:20] == b"RGB ":
        return bytes(profile)
    return None


def _apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Numpy equivalent of PIL.ImageOps.exif_transpose for the 8 EXIF orientations (HxW[xC])."""
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1]
    if orientation == 5:
        return arr.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(arr, -1)
    if orientation == 7:
        return arr[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(arr, 1)
    return arr


def _tiff_orientation_reset(data: bytes) -> bytes:
    """Copy of a TIFF with the first IFD's Orientation set to 1.

    Hand-written because OpenCV applies TIFF orientation itself and fails outright on the rotating
    ones (5-8); we rotate afterwards exactly as Pillow does for every other format.
    """
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None or len(data) < 16:
        return data
    out = bytearray(data)
    magic = struct.unpack_from(order + "H", data, 2)[0]
    if magic == 42:
        ifd = struct.unpack_from(order + "I", data, 4)[0]
        if ifd + 2 > len(data):
            return data
        count, start, size, value_at = struct.unpack_from(order + "H", data, ifd)[0], ifd + 2, 12, 8
    elif magic == 43:  # BigTIFF
        ifd = struct.unpack_from(order + "Q", data, 8)[0]
        if ifd + 8 > len(data):
            return data
        count, start, size, value_at = struct.unpack_from(order + "Q", data, ifd)[0], ifd + 8, 20, 12
    else:
        return data
    for i in range(count):
        entry = start + i * size
        if entry + size > len(data):
            break
        if struct.unpack_from(order + "H", data, entry)[0] == 274:
            struct.pack_into(order + "H", out, entry + value_at, 1)
            break
    return bytes(out)


def _decode_16bit_color(p: Path, fmt: str) -> np.ndarray:
    """uint16 HxWx3 or HxWx4 (RGB[A]) decoded by OpenCV, in the file's stored orientation."""
    import cv2

    data = p.read_bytes()
    if fmt == "TIFF":
        data = _tiff_orientation_reset(data)
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError("OpenCV could not decode the 16-bit data")
    return arr[..., [2, 1, 0, 3]] if arr.shape[2] == 4 else arr[..., ::-1]


def _unit8(values: np.ndarray) -> np.ndarray:
    """uint8 -> float32 v/255 (a true division: multiplying by 1/255 is off by one ulp)."""
    return values.astype(np.float32) / np.float32(255.0)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def read_image(path: str | os.PathLike, *, max_pixels: int = 200_000_000) -> LoadedImage:
    """Read an image file into float RGB [0, 1] (+ alpha), upright according to its EXIF tag.

    Raises ImageReadError("PATH: reason") for a missing, empty, non-image, truncated/corrupt or
    oversized (width*height > max_pixels, checked from the header before decoding) file, or a
    pixel mode we cannot convert faithfully.
    """
    p = Path(path)

    def fail(reason: str) -> ImageReadError:
        return ImageReadError(f"{p}: {reason}")

    if not p.exists():
        raise fail("no such file")
    if p.is_dir():
        raise fail("is a folder, not an image file")
    try:
        nbytes = p.stat().st_size
    except OSError as exc:
        raise fail(f"cannot read ({_one_line(exc)})") from None
    if nbytes == 0:
        raise fail("empty file (0 bytes)")

    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        im = _open_pil(p)
    except UnidentifiedImageError:
        raise fail("not an image file (or a format that cannot be read)") from None
    except Image.DecompressionBombError as exc:
        raise fail(f"image too large ({_one_line(exc)})") from None
    except Exception as exc:  # any decoder error is a property of the file, not a bug of ours
        raise fail(f"cannot open image ({_one_line(exc)})") from None

    with im:
        width, height = im.size
        if width <= 0 or height <= 0:
            raise fail(f"invalid image size {width}x{height}")
        if width * height > max_pixels:
            raise fail(f"image is {width}x{height} = {width * height} pixels, above the limit of "
                       f"{max_pixels} (max_pixels)")
        fmt = im.format or ""
        src_mode = im.mode
        needs_16bit_color = src_mode in ("RGB", "RGBA") and ";16" in _rawmode(im)
        # Pillow >= 11 applies (and then deletes) the TIFF orientation while loading, so the
        # file's own tag is read from the header first; other formats keep it after loading.
        tiff_orientation = getattr(im, "tag_v2", {}).get(_ORIENTATION_TAG) if fmt == "TIFF" else None
        try:
            _load_strict(im, width * height)
        except Image.DecompressionBombError as exc:
            raise fail(f"image too large ({_one_line(exc)})") from None
        except MemoryError:
            raise fail(f"not enough memory to decode a {width}x{height} image") from None
        except Exception as exc:
            raise fail(f"truncated or corrupt image data ({_one_line(exc)})") from None

        icc = _rgb_icc(im.info.get("icc_profile"))
        try:
            orientation = tiff_orientation if fmt == "TIFF" else im.getexif().get(_ORIENTATION_TAG)
            orientation = int(orientation or 1)
            upright = ImageOps.exif_transpose(im)
        except Exception as exc:
            warnings.warn(f"{p}: unreadable EXIF data ignored, orientation not applied "
                          f"({_one_line(exc)})", stacklevel=2)
            orientation, upright = 1, im
        if orientation not in range(1, 9):
            orientation = 1

        if needs_16bit_color:
            try:
                arr16 = _decode_16bit_color(p, fmt)
                arr16 = np.ascontiguousarray(_apply_orientation(arr16, orientation))
                pil8 = np.asarray(upright)
                if src_mode == "RGBA" and arr16.shape[2] != 4:
                    raise ValueError("OpenCV lost the alpha channel")
                # Pillow's 8-bit decode is the high byte of each sample: a cheap proof that
                # OpenCV read the same pixels and that we turned them the same way.
                if arr16.shape[:2] != pil8.shape[:2] or not np.array_equal(
                        (arr16[..., : pil8.shape[2]] >> 8).astype(np.uint8), pil8):
                    raise ValueError("16-bit decode disagrees with the 8-bit one")
                key = im.info.get("transparency") if src_mode == "RGB" else None
                if arr16.shape[2] == 3 and isinstance(key, tuple) and len(key) == 3:
                    # RGB colour key (tRNS) that OpenCV did not expand into alpha
                    opaque = np.any(arr16 != np.asarray(key, np.uint16), axis=2)
                    arr16 = np.dstack([arr16, opaque.astype(np.uint16) * np.uint16(65535)])
                elif arr16.shape[2] == 4 and src_mode == "RGB" and key is None:
                    arr16 = arr16[..., :3]
            except Exception as exc:
                warnings.warn(f"{p}: 16-bit colour could not be kept, read as 8-bit "
                              f"({_one_line(exc)})", stacklevel=2)
            else:
                scaled = arr16.astype(np.float32) / np.float32(65535.0)
                alpha = scaled[..., 3].copy() if scaled.shape[2] == 4 else None
                return LoadedImage(np.ascontiguousarray(scaled[..., :3]), alpha, 16, p, src_mode, icc)

        im = upright
        try:
            rgb, alpha, bits = _pixels_from_pil(im, src_mode, p)
        except ImageReadError:
            raise
        except Exception as exc:
            raise fail(f"cannot convert pixel mode {src_mode} ({_one_line(exc)})") from None
    return LoadedImage(rgb, alpha, bits, p, src_mode, icc)


def _pixels_from_pil(im, src_mode: str, p: Path) -> tuple[np.ndarray, np.ndarray | None, int]:
    """(rgb float32 HxWx3, alpha float32 HxW | None, bit depth) from a loaded, upright PIL image."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        raw = np.asarray(im)
        if mode == "I":
            lo, hi = (int(raw.min()), int(raw.max())) if raw.size else (0, 0)
            if lo < 0 or hi > 65535:
                raise ImageReadError(f"{p}: 32-bit integer pixels outside 0..65535 "
                                     f"(found {lo}..{hi}) are not supported")
        gray = raw.astype(np.float32) / np.float32(65535.0)
        alpha = None
        key = im.info.get("transparency")
        if isinstance(key, int):  # 16-bit gray PNG with a tRNS colour key
            alpha = (raw != key).astype(np.float32)
        return _gray_to_rgb(gray), alpha, 16
    if mode == "F":
        gray = np.asarray(im, dtype=np.float32)
        if not np.isfinite(gray).all():
            raise ImageReadError(f"{p}: float image contains NaN or infinite values")
        lo, hi = (float(gray.min()), float(gray.max())) if gray.size else (0.0, 0.0)
        if lo < 0.0 or hi > 1.0:
            warnings.warn(f"{p}: float pixels in [{lo:g}, {hi:g}] clipped to [0, 1]", stacklevel=3)
            gray = np.clip(gray, 0.0, 1.0)
        return _gray_to_rgb(gray), None, 16
    if mode in ("1", "L"):
        if im.has_transparency_data:
            la = np.asarray(im.convert("LA"))
            return _gray_to_rgb(_unit8(la[..., 0])), _unit8(la[..., 1]), 8
        return _gray_to_rgb(_unit8(np.asarray(im.convert("L")))), None, 8
    if mode in ("LA", "La"):
        la = np.asarray(im.convert("LA") if mode == "La" else im)
        return _gray_to_rgb(_unit8(la[..., 0])), _unit8(la[..., 1]), 8
    if mode in ("RGBA", "RGBa", "PA") or (mode in ("P", "RGB") and im.has_transparency_data):
        rgba = np.asarray(im if mode == "RGBA" else im.convert("RGBA"))
        return _unit8(rgba[..., :3]), _unit8(rgba[..., 3]), 8
    if mode in ("RGB", "RGBX", "P", "CMYK", "YCbCr", "HSV"):
        rgb = np.asarray(im if mode == "RGB" else im.convert("RGB"))
        return _unit8(rgb), None, 8
    raise ImageReadError(f"{p}: unsupported pixel mode {src_mode}")


def read_rgb8(path: str | os.PathLike) -> np.ndarray:
    """`read_image` as HxWx3 uint8 RGB (16-bit inputs rounded to 8 bits; alpha dropped), for
    code that works in 8-bit such as metrics and degradations."""
    return np.round(read_image(path).rgb * 255.0).astype(np.uint8)


def read_mask(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read an inpainting mask as bool HxW, True = hole.

    A mask with transparency uses its alpha (painted = opaque = hole); otherwise white (luminance
    > 0.5) is the hole. `size` is the image's (height, width); a different mask size is an error.
    """
    img = read_image(path)
    if img.alpha is not None and float(img.alpha.min()) < 1.0:
        mask = img.alpha > 0.5
    else:
        lum = img.rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        mask = lum > 0.5
    if size is not None:
        h, w = int(size[0]), int(size[1])
        if mask.shape != (h, w):
            raise FewstepError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but the "
                               f"image is {w}x{h}; they must be the same size")
    return mask


# --------------------------------------------------------------------------------------- writing


def _to_uint(arr: np.ndarray, bits: int, what: str, path: Path) -> np.ndarray:
    """float [0, 1] / uint8 / uint16 -> uint8 or uint16 (rounding half to even)."""
    arr = np.asarray(arr)
    top = 255 if bits == 8 else 65535
    if arr.dtype == np.uint8:
        return arr if bits == 8 else arr.astype(np.uint16) * np.uint16(257)
    if arr.dtype == np.uint16:
        if bits == 16:
            return arr
        return np.round(arr.astype(np.float32) / np.float32(257.0)).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise FewstepError(f"{path}: {what} contains NaN or infinite values")
        scaled = np.clip(arr, 0.0, 1.0).astype(np.float32) * np.float32(top)
        return np.round(scaled).astype(np.uint8 if bits == 8 else np.uint16)
    raise FewstepError(f"{path}: {what} has dtype {arr.dtype}; expected float in [0, 1], uint8 "
                       "or uint16")


def _png_with_icc(png: bytes, profile: bytes) -> bytes:
    """Insert an iCCP chunk right after IHDR (which is always the first chunk: 8 + 25 bytes).

    Hand-written because neither Pillow nor OpenCV can write a 16-bit RGB PNG with a profile.
    """
    body = b"icc\x00\x00" + zlib.compress(profile)
    chunk = struct.pack(">I", len(body)) + b"iCCP" + body
    chunk += struct.pack(">I", zlib.crc32(b"iCCP" + body) & 0xFFFFFFFF)
    return png[:33] + chunk + png[33:]


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename over it: readers never see half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FewstepError(f"{path}: cannot create folder {path.parent} "
                           f"({exc.strerror or _one_line(exc)})") from None
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        # os.open with 0o666 honours the umask, unlike mkstemp's 0o600.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise FewstepError(f"{path}: cannot write ({exc.strerror or _one_line(exc)})") from None


def write_image(
    path: str | os.PathLike,
    rgb: np.ndarray,
    *,
    alpha: np.ndarray | None = None,
    bit_depth: int = 8,
    overwrite: bool = False,
    quality: int = 95,
    icc_profile: bytes | None = None,
) -> Path:
    """Write an HxWx3 RGB image (float [0, 1], uint8 or uint16) to `path`; returns the path.

    The format comes from the extension. bit_depth=16 writes 16-bit PNG/TIFF (other formats are
    8-bit only: a warning is given). Alpha (HxW, same dtypes) is stored for png/webp/tif and dropped
    with a warning for jpg/bmp. JPEG uses `quality` and 4:4:4 chroma (restored detail would be lost
    to subsampling); WebP uses `quality` (lossy); TIFF is LZW-compressed. An existing file is only
    replaced with overwrite=True; the write is atomic and creates missing folders.
    """
    p = Path(path)
    ext = p.suffix.lower().lstrip(".")
    fmt = _WRITE_FORMATS.get(ext)
    if fmt is None:
        raise FewstepError(f"{p}: unknown image extension {p.suffix or '(none)'!r}; use one of "
                           f"{', '.join('.' + e for e in WRITE_EXTENSIONS)}")
    if bit_depth not in (8, 16):
        raise FewstepError(f"{p}: bit_depth must be 8 or 16, got {bit_depth}")
    if p.is_dir():
        raise FewstepError(f"{p}: is a folder, cannot write an image there")
    if not overwrite and (p.exists() or p.is_symlink()):
        raise FewstepError(f"{p}: already exists; pass --overwrite to replace it")

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise FewstepError(f"{p}: expected an HxWx3 RGB array, got shape {rgb.shape}")
    if alpha is not None:
        alpha = np.asarray(alpha)
        if alpha.shape != rgb.shape[:2]:
            raise FewstepError(f"{p}: alpha shape {alpha.shape} does not match the image "
                               f"{rgb.shape[:2]}")
        if fmt in ("JPEG", "BMP"):
            warnings.warn(f"{p}: {fmt} cannot store transparency; alpha channel dropped",
                          stacklevel=2)
            alpha = None
    if bit_depth == 16 and fmt not in ("PNG", "TIFF"):
        warnings.warn(f"{p}: {fmt} is 8-bit only; writing 8 bits per channel", stacklevel=2)
        bit_depth = 8

    pix = _to_uint(rgb, bit_depth, "image", p)
    if alpha is not None:
        pix = np.concatenate([pix, _to_uint(alpha, bit_depth, "alpha", p)[..., None]], axis=2)
    pix = np.ascontiguousarray(pix)

    if bit_depth == 16:
        import cv2

        # Pillow has no 16-bit RGB(A) mode, so 16-bit colour files are encoded by OpenCV (BGR[A]).
        bgr = pix[..., [2, 1, 0, 3]] if pix.shape[2] == 4 else pix[..., ::-1]
        params = [cv2.IMWRITE_PNG_COMPRESSION, 6] if fmt == "PNG" else []
        ok, buf = cv2.imencode(".png" if fmt == "PNG" else ".tif", np.ascontiguousarray(bgr), params)
        if not ok:
            raise FewstepError(f"{p}: OpenCV could not encode the 16-bit image")
        data = buf.tobytes()
        if icc_profile:
            if fmt == "PNG":
                data = _png_with_icc(data, icc_profile)
            else:
                warnings.warn(f"{p}: ICC profile not stored in 16-bit TIFF", stacklevel=2)
    else:
        from PIL import Image

        im = Image.fromarray(pix, "RGBA" if pix.shape[2] == 4 else "RGB")
        opts: dict = {}
        if icc_profile and fmt != "BMP":
            opts["icc_profile"] = icc_profile
        if fmt == "JPEG":
            opts.update(quality=int(quality), subsampling=0)
        elif fmt == "WEBP":
            opts.update(quality=int(quality))
        elif fmt == "TIFF":
            opts.update(compression="tiff_lzw")
        buf = io.BytesIO()
        try:
            im.save(buf, format=fmt, **opts)
        except (OSError, ValueError) as exc:
            raise FewstepError(f"{p}: cannot encode {fmt} ({_one_line(exc)})") from None
        data = buf.getvalue()

    _atomic_write(p, data)
    return p


def resize_alpha(alpha: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an HxW alpha channel to size=(height, width) with bicubic, clipped to [0, 1]."""
    import cv2

    a = np.asarray(alpha, dtype=np.float32)
    h, w = int(size[0]), int(size[1])
    if a.shape == (h, w):
        return a.copy()
    out = cv2.resize(a, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(out, 0.0, 1.0)


# --------------------------------------------------------------------------------------- listing


def _is_image_name(name: str) -> bool:
    return "." in name and name.rsplit(".", 1)[1].lower() in IMAGE_EXTENSIONS


def list_images(inputs: Sequence[str | os.PathLike], recursive: bool = True, *,
                exclude: Sequence[str | os.PathLike] = ()) -> list[tuple[Path, Path]]:
    """(file, root) pairs for the given files and folders.

    A file given explicitly is taken whatever its extension (root = its parent folder); a folder is
    scanned (recursively unless recursive=False) for IMAGE_EXTENSIONS in any letter case, skipping
    hidden files and folders and any folder in `exclude` (e.g. the output folder of a batch, so a
    rerun never reads its own results back). Inputs keep their order; files within a folder are
    sorted by relative path. A file reached twice is listed once (first occurrence wins).
    """
    out: list[tuple[Path, Path]] = []
    seen: set[str] = set()
    skip = {os.path.realpath(e) for e in exclude}

    def add(file: Path, root: Path) -> None:
        key = os.path.realpath(file)
        if key not in seen:
            seen.add(key)
            out.append((file, root))

    for item in inputs:
        src = Path(item)
        if src.is_dir():
            found: list[tuple[str, ...]] = []
            visited: set[str] = set(skip)
            # Symlinked sub-folders are followed (datasets are often assembled from links);
            # `visited` stops link cycles.
            for dirpath, dirnames, filenames in os.walk(src, followlinks=True):
                real = os.path.realpath(dirpath)
                if real in visited:
                    dirnames[:] = []
                    continue
                visited.add(real)
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                if not recursive:
                    dirnames[:] = []
                rel = Path(dirpath).relative_to(src).parts
                found.extend(rel + (f,) for f in filenames
                             if not f.startswith(".") and _is_image_name(f))
            for parts in sorted(found):
                add(src.joinpath(*parts), src)
        elif src.exists():
            add(src, src.parent)
        else:
            raise FewstepError(f"{src}: no such file or folder")
    return out


def list_folder(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """The image files in one folder (not its sub-folders unless recursive), sorted: the form
    datasets, `fewstep eval` and `make-testset` use."""
    d = Path(folder)
    if not d.is_dir():
        raise FewstepError(f"{d}: not a folder")
    return [f for f, _ in list_images([d], recursive=recursive)]


def output_path(file: Path, root: Path, out_dir: Path, *, suffix: str = "",
                ext: str | None = None) -> Path:
    """Where the result for `file` (found under `root`) goes in `out_dir`, keeping sub-folders.

    Name: stem + "_" + suffix (if any) + "." + ext (if given, else the original extension in lower
    case).
    """
    file, root, out_dir = Path(file), Path(root), Path(out_dir)
    try:
        sub = file.parent.relative_to(root)
    except ValueError:
        sub = Path()
    new_ext = ext.lstrip(".").lower() if ext else file.suffix.lstrip(".").lower()
    name = file.stem + (f"_{suffix}" if suffix else "") + (f".{new_ext}" if new_ext else "")
    return out_dir / sub / name
