"""Input normalisation shared by all metrics.

Metrics accept the two image forms used in fewstep:
- numpy arrays HxWx3 (RGB) or HxW (gray); uint8 in [0, 255], or float already on the [0, 255] scale
  (the BasicSR convention for numpy images);
- torch float tensors in [0, 1], shaped (3, H, W) or (1, 3, H, W) (also (1, H, W) / (1, 1, H, W)).
Everything is converted to a float64 HxWxC array on the [0, 255] scale (no rounding, so a tensor
made from uint8/255 gives back the same numbers up to float error).
"""

from __future__ import annotations

import numpy as np

from ..errors import FewstepError

# MATLAB rgb2ycbcr luma row (ITU-R BT.601, studio range 16-235), the SR-literature Y channel.
_YCBCR_Y = np.array([65.481, 128.553, 24.966]) / 255.0
# BT.601 luma without offset: cv2 RGB2GRAY / pyiqa's 'yiq' Y / BasicSR's 'gray'.
_GRAY = np.array([0.299, 0.587, 0.114])
# MATLAB rgb2gray: the first row of inv([1 0.956 0.621; 1 -0.272 -0.647; 1 -1.106 1.703]), i.e. the Y
# row of MATLAB's YIQ, to the digits MATLAB's rgb2gray uses (not the rounded 0.299/0.587/0.114).
_GRAY_MATLAB = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])


def _is_tensor(x) -> bool:
    mod = type(x).__module__
    return mod.startswith("torch") and hasattr(x, "detach")


def to_hwc255(img, what: str = "image") -> np.ndarray:
    """Return `img` as a float64 HxWxC array (C = 1 or 3) on the [0, 255] scale."""
    if _is_tensor(img):
        t = img.detach()
        if not t.is_floating_point():
            raise FewstepError(f"{what}: tensors must be float in [0, 1], got dtype {t.dtype}")
        if t.ndim == 4:
            if t.shape[0] != 1:
                raise FewstepError(f"{what}: expected a single image (1, C, H, W), got batch shape {tuple(t.shape)}")
            t = t[0]
        if t.ndim != 3 or t.shape[0] not in (1, 3):
            raise FewstepError(f"{what}: expected a tensor (3, H, W) or (1, 3, H, W), got shape {tuple(t.shape)}")
        arr = t.to("cpu").double().numpy().transpose(1, 2, 0) * 255.0
    else:
        arr = np.asarray(img)
        if arr.dtype == np.uint8:
            arr = arr.astype(np.float64)
        elif np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer):
            arr = arr.astype(np.float64)
        else:
            raise FewstepError(f"{what}: unsupported array dtype {arr.dtype} (use uint8 RGB)")
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 3):
            raise FewstepError(f"{what}: expected an HxWx3 RGB or HxW gray array, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise FewstepError(f"{what}: empty image of shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise FewstepError(f"{what}: contains NaN or infinite values")
    return arr


def to_uint8(img, what: str = "image") -> np.ndarray:
    """HxWxC uint8 (round half up, saturate): for metrics whose reference takes 8-bit images."""
    arr = np.asarray(img)
    if not _is_tensor(img) and arr.dtype == np.uint8:
        return arr[:, :, None] if arr.ndim == 2 else arr
    return np.clip(np.floor(to_hwc255(img, what) + 0.5), 0, 255).astype(np.uint8)


def rgb_to_y(arr: np.ndarray) -> np.ndarray:
    """HxWx3 [0,255] RGB -> HxW Y of MATLAB rgb2ycbcr (16-235), unrounded float64."""
    return arr @ _YCBCR_Y + 16.0


def rgb_to_gray(arr: np.ndarray) -> np.ndarray:
    """HxWx3 [0,255] RGB -> HxW 0.299R + 0.587G + 0.114B, unrounded float64."""
    return arr @ _GRAY


def round_half_up(a: np.ndarray) -> np.ndarray:
    """MATLAB's conversion of non-negative doubles to uint8: round half away from zero, saturate."""
    return np.clip(np.floor(a + 0.5), 0, 255)


def rgb2gray_matlab(arr: np.ndarray) -> np.ndarray:
    """HxWx3 [0,255] RGB (8-bit values) -> HxW of MATLAB `rgb2gray(uint8)`: integer-valued float64.

    MATLAB weights the channels with its own coefficients and returns uint8, so the result is
    rounded half up (np.round would round halves to even).
    """
    return round_half_up(arr @ _GRAY_MATLAB)


def rgb2ycbcr_y_matlab(arr: np.ndarray) -> np.ndarray:
    """HxWx3 [0,255] RGB (8-bit values) -> HxW Y of MATLAB `rgb2ycbcr(uint8)`: rounded half up."""
    return round_half_up(rgb_to_y(arr))


def to_luma(arr: np.ndarray, convert_to: str) -> np.ndarray:
    """HxWxC [0,255] -> HxW; gray inputs pass through. convert_to: 'y' (YCbCr) or 'gray'."""
    if arr.shape[2] == 1:
        return arr[:, :, 0]
    if convert_to == "y":
        return rgb_to_y(arr)
    if convert_to == "gray":
        return rgb_to_gray(arr)
    raise FewstepError(f"convert_to must be 'y' or 'gray', got {convert_to!r}")


def crop(arr: np.ndarray, crop_border: int, what: str = "image") -> np.ndarray:
    if crop_border < 0:
        raise FewstepError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border == 0:
        return arr
    if arr.shape[0] <= 2 * crop_border or arr.shape[1] <= 2 * crop_border:
        raise FewstepError(f"{what}: crop_border={crop_border} removes the whole {arr.shape[0]}x{arr.shape[1]} image")
    return arr[crop_border:-crop_border, crop_border:-crop_border]
