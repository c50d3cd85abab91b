"""PSNR and SSIM with the BasicSR / SR-literature conventions.

- computed on the [0, 255] scale in float64;
- `crop_border` pixels are removed from each side before anything else;
- `y_channel=True` uses the Y of MATLAB `rgb2ycbcr` (16-235; 65.481/128.553/24.966), unrounded;
- SSIM: 11x11 Gaussian window (sigma 1.5), 'valid' filtering, C1 = (0.01*255)^2, C2 = (0.03*255)^2,
  the mean SSIM map per channel, then the mean over channels (BasicSR `calculate_ssim`, which matches
  the authors' MATLAB `ssim_index`).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import FewstepError
from ._image import crop, rgb_to_y, to_hwc255


def _pair(img, ref, crop_border: int, y_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    a = to_hwc255(img, "image")
    b = to_hwc255(ref, "reference")
    if a.shape != b.shape:
        raise FewstepError(f"image and reference differ in shape: {a.shape[:2]}x{a.shape[2]} vs {b.shape[:2]}x{b.shape[2]}")
    a = crop(a, crop_border, "image")
    b = crop(b, crop_border, "reference")
    if y_channel:
        if a.shape[2] != 3:
            raise FewstepError("y_channel=True needs RGB images, got a gray image")
        a = rgb_to_y(a)[:, :, None]
        b = rgb_to_y(b)[:, :, None]
    return a, b


def psnr(img, ref, crop_border: int = 0, y_channel: bool = False) -> float:
    """PSNR in dB with peak 255; `inf` for identical images."""
    a, b = _pair(img, ref, crop_border, y_channel)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(255.0 * 255.0 / mse)


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def _ssim_channel(a: np.ndarray, b: np.ndarray) -> float:
    import cv2

    c1 = (0.01 * 255.0) ** 2
    c2 = (0.03 * 255.0) ** 2
    g = _gaussian_1d()
    r = len(g) // 2

    # The window is separable, so two 1-D passes in float64; the border mode is irrelevant because
    # the 'valid' crop drops every pixel whose window touches the border.
    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.sepFilter2D(x, cv2.CV_64F, g, g, borderType=cv2.BORDER_REFLECT_101)[r:-r, r:-r]

    mu1, mu2 = blur(a), blur(b)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = blur(a * a) - mu1_sq
    s2 = blur(b * b) - mu2_sq
    s12 = blur(a * b) - mu12
    ssim_map = ((2 * mu12 + c1) * (2 * s12 + c2)) / ((mu1_sq + mu2_sq + c1) * (s1 + s2 + c2))
    return float(ssim_map.mean())


def ssim(img, ref, crop_border: int = 0, y_channel: bool = False) -> float:
    """Mean SSIM (1.0 for identical images), averaged over channels."""
    a, b = _pair(img, ref, crop_border, y_channel)
    if a.shape[0] < 11 or a.shape[1] < 11:
        raise FewstepError(f"SSIM needs images of at least 11x11 px after cropping, got {a.shape[0]}x{a.shape[1]}")
    chans = [_ssim_channel(np.ascontiguousarray(a[:, :, c]), np.ascontiguousarray(b[:, :, c])) for c in range(a.shape[2])]
    return float(np.mean(chans))
