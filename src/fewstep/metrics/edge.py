"""Edge recovery: how much of the reference's strongest edges the restored image reproduces.

At the pixels where the reference's Sobel gradient magnitude is in its top 10 %, the restored
image's gradient is projected onto the reference gradient's direction; the mean projection is
divided by the mean reference magnitude there (both on the MATLAB YCbCr Y channel).

- a perfect output gives 1; blur shrinks the projection, so it lowers the score;
- noise uncorrelated with the reference adds zero-mean terms to the projection, so it leaves the
  score unchanged on average (unlike NIQE, which rewards grain);
- a constant output has no gradient and scores 0; overshoot (sharpening halos) can exceed 1.

No library computes this (it is defined by fewstep issue #10), hence the few lines here.
"""

from __future__ import annotations

import numpy as np

from ..errors import FewstepError
from ._image import crop, rgb_to_y, to_hwc255

TOP_FRACTION = 0.10  # the share of reference pixels, by gradient magnitude, that count as edges


def _sobel(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    # 3x3 Sobel in float64; reflected borders (the default) so the frame adds no false edges
    return cv2.Sobel(y, cv2.CV_64F, 1, 0, ksize=3), cv2.Sobel(y, cv2.CV_64F, 0, 1, ksize=3)


def _luma(arr: np.ndarray) -> np.ndarray:
    return rgb_to_y(arr) if arr.shape[2] == 3 else arr[:, :, 0]


def edge_recovery(img, ref, crop_border: int = 0) -> float:
    """Edge recovery of `img` against the reference `ref` (same size); 1 = edges fully kept."""
    a = to_hwc255(img, "image")
    b = to_hwc255(ref, "reference")
    if a.shape != b.shape:
        raise FewstepError(f"image and reference differ in shape: {a.shape[:2]}x{a.shape[2]} vs {b.shape[:2]}x{b.shape[2]}")
    a = _luma(crop(a, crop_border, "image"))
    b = _luma(crop(b, crop_border, "reference"))
    gxa, gya = _sobel(a)
    gxb, gyb = _sobel(b)
    mag = np.hypot(gxb, gyb)
    threshold = np.quantile(mag, 1.0 - TOP_FRACTION)
    edges = (mag >= threshold) & (mag > 0)
    if not edges.any():
        raise FewstepError("edge_recovery: the reference has no edges (it is constant)")
    m = mag[edges]
    projection = (gxa[edges] * gxb[edges] + gya[edges] * gyb[edges]) / m
    return float(projection.mean() / m.mean())
