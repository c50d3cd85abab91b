"""BRISQUE (Mittal, Moorthy & Bovik, "No-reference image quality assessment in the spatial domain", 2012).

Reproduces OpenCV-contrib's `cv2.quality.QualityBRISQUE` with its LIVE-trained model (Debian
`opencv-data`: brisque_model_live.yml + brisque_range_live.yml, converted to `brisque_live.npz`):
- 8-bit RGB -> 8-bit gray (cv2 BT.601 weights), then float32 in [0, 1];
- two scales: the image, and a cv2 INTER_CUBIC resize to half size (no antialiasing);
- MSCN: (I - mu) / (sigma + 1/255) with a 7x7 Gaussian (sigma 7/6, replicate borders), in float32;
- features per scale: an AGGD fit of the MSCN (shape, mean of the two variances), and of the four
  neighbour products (H, V, D1, D2; zero-filled at the image edge): shape, mean, left and right
  variance -> 18 per scale, 36 in all;
- features are scaled to [-1, 1] with the model's per-feature range, and scored by the RBF
  epsilon-SVR (sum_i alpha_i exp(-gamma |x - sv_i|^2) - rho), clamped to [0, 100]. Lower is better.

Why hand-written: the reference lives only in opencv-contrib (not a fewstep dependency); the image
operations themselves use the plain cv2 functions the reference uses, so results agree closely.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from ..errors import FewstepError
from ._image import to_uint8

MODEL_FILE = Path(__file__).resolve().parent.parent / "data" / "metrics" / "brisque_live.npz"


@functools.lru_cache(maxsize=1)
def _model() -> dict:
    with np.load(MODEL_FILE, allow_pickle=False) as d:
        return {k: d[k] for k in d.files}


@functools.lru_cache(maxsize=1)
def _gamma_grid() -> tuple[np.ndarray, np.ndarray]:
    from scipy.special import gamma

    # The reference walks gam = 0.2, 0.2 + 0.001, ... (accumulated in double) while gam < 10;
    # cumsum reproduces the same accumulated values.
    steps = np.full(9801, 0.001)
    steps[0] = 0.2
    gam = np.cumsum(steps)
    gam = gam[gam < 10]
    r_gam = gamma(2.0 / gam) ** 2 / (gamma(1.0 / gam) * gamma(3.0 / gam))
    return gam, r_gam


def _aggd_fit(x: np.ndarray) -> tuple[float, float, float]:
    """(gamma, left sigma, right sigma) of one float32 map, as OpenCV's AGGDfit."""
    gam, r_gam = _gamma_grid()
    xd = x.astype(np.float64)
    pos, neg = xd > 0, xd < 0
    pos_sq = float((xd[pos] ** 2).sum())
    neg_sq = float((xd[neg] ** 2).sum())
    npos, nneg = int(pos.sum()), int(neg.sum())
    if npos == 0 or nneg == 0:
        raise FewstepError("BRISQUE: the image has no texture (a flat image has no MSCN statistics)")
    lsig = (neg_sq / nneg) ** 0.5
    rsig = (pos_sq / npos) ** 0.5
    gh = lsig / rsig
    total = xd.size
    rhat = (float(np.abs(xd).sum()) / total) ** 2 / ((neg_sq + pos_sq) / total)
    rnorm = rhat * (gh**3 + 1) * (gh + 1) / (gh**2 + 1) ** 2
    diff = np.abs(r_gam - rnorm)
    # the reference stops at the first increase of |r_gam - rnorm|
    up = np.nonzero(diff[1:] > diff[:-1])[0]
    best = gam[up[0]] if up.size else gam[-1]
    return float(best), lsig, rsig


def _mscn(img: np.ndarray) -> np.ndarray:
    import cv2

    mu = cv2.GaussianBlur(img, (7, 7), 7.0 / 6.0, sigmaY=0.0, borderType=cv2.BORDER_REPLICATE)
    sq = cv2.GaussianBlur(img * img, (7, 7), 7.0 / 6.0, sigmaY=0.0, borderType=cv2.BORDER_REPLICATE)
    var = sq - mu * mu
    with np.errstate(invalid="ignore"):
        mscn = ((img - mu) / (np.sqrt(var) + np.float32(1.0 / 255.0))).astype(np.float32)
    # In flat areas float32 round-off makes `var` slightly negative. The reference takes
    # cv::pow(var, 0.5), a plain sqrt, so those pixels become NaN, and its AGGD fit then counts them
    # as zeros (cv::max/min map NaN to 0; they stay in the total count). Zeroing them here
    # reproduces that (and their neighbour products, NaN there too, become 0 as well).
    # Taking sqrt(|var|) instead shifts the variance features by ~0.2% on photos with sky.
    return np.where(var < 0, np.float32(0.0), mscn)


def _shifted(m: np.ndarray, di: int, dj: int) -> np.ndarray:
    """out[i, j] = m[i + di, j + dj], zero where that falls outside the image."""
    h, w = m.shape
    out = np.zeros_like(m)
    out[max(0, -di):h - max(0, di), max(0, -dj):w - max(0, dj)] = \
        m[max(0, di):h - max(0, -di), max(0, dj):w - max(0, -dj)]
    return out


def brisque_features(gray01: np.ndarray) -> np.ndarray:
    """The 36 BRISQUE features (float32) of a single-channel float32 image in [0, 1]."""
    import cv2
    from scipy.special import gamma

    feats: list[float] = []
    h, w = gray01.shape
    for scale in (1, 2):
        img = gray01 if scale == 1 else cv2.resize(gray01, (w // 2, h // 2), interpolation=cv2.INTER_CUBIC)
        mscn = _mscn(np.ascontiguousarray(img, dtype=np.float32))
        g, ls, rs = _aggd_fit(mscn)
        feats += [g, (ls * ls + rs * rs) / 2]
        for di, dj in ((0, 1), (1, 0), (1, 1), (-1, 1)):
            prod = mscn * _shifted(mscn, di, dj)
            g, ls, rs = _aggd_fit(prod)
            const = np.sqrt(gamma(1 / g)) / np.sqrt(gamma(3 / g))
            mean = (rs - ls) * (gamma(2 / g) / gamma(1 / g)) * const
            feats += [g, mean, ls * ls, rs * rs]
    return np.asarray(feats, dtype=np.float32)


def _predict(feats: np.ndarray) -> float:
    m = _model()
    lo, hi = m["feature_range"][0].astype(np.float64), m["feature_range"][1].astype(np.float64)
    x = (-1.0 + 2.0 * (feats.astype(np.float64) - lo) / (hi - lo)).astype(np.float32).astype(np.float64)
    d2 = ((m["support_vectors"].astype(np.float64) - x[None, :]) ** 2).sum(1)
    score = float(m["alpha"] @ np.exp(-float(m["gamma"]) * d2) - float(m["rho"]))
    return min(max(score, 0.0), 100.0)


def brisque(img) -> float:
    """BRISQUE score in [0, 100] (lower is better) with OpenCV's LIVE model.

    img: HxWx3 uint8 RGB (or HxW gray) array, or a float tensor in [0, 1] (3,H,W)/(1,3,H,W), which
    is rounded to 8 bits first as the reference works on 8-bit images.
    """
    import cv2

    u8 = to_uint8(img)
    if u8.shape[0] < 16 or u8.shape[1] < 16:
        raise FewstepError(f"BRISQUE needs an image of at least 16x16 px, got {u8.shape[0]}x{u8.shape[1]}")
    gray = u8[:, :, 0] if u8.shape[2] == 1 else cv2.cvtColor(np.ascontiguousarray(u8), cv2.COLOR_RGB2GRAY)
    gray01 = (gray.astype(np.float32) * np.float32(1.0 / 255.0)).astype(np.float32)
    return _predict(brisque_features(gray01))
