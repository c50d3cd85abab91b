"""BRISQUE (Mittal, Moorthy & Bovik, "No-reference image quality assessment in the spatial domain", 2012).

Two flavours (docs/metrics.md says how each was checked):

`flavour="official"` (default): the authors' release (LIVE BRISQUE_release: `brisquescore.m`,
`brisque_feature.m`, libsvm `svm-scale -r allrange`, `svm-predict -b 1 ... allmodel`), the values
pyiqa's calibration table and MATLAB-era papers quote:
- 8-bit RGB -> MATLAB `rgb2gray` (uint8, rounded half up) -> double on 0-255;
- two scales: the image, then MATLAB `imresize(im, 0.5)` (bicubic, antialiased) on the doubles;
- MSCN: (I - mu) / (sigma + 1) with `filter2` (correlation, zero padding outside the image) of a 7x7
  Gaussian (sigma 7/6); where the 7x7 neighbourhood (padding included) is constant the coefficient is
  exactly 0, as in exact arithmetic (the NIQE docs explain why that matters for the AGGD fits);
- per scale: a symmetric GGD fit of the MSCN (shape, variance), and AGGD fits of the products with
  the `circshift`ed map (wrapping around the image; shifts [0 1; 1 0; 1 1; -1 1]): shape, mean, left
  and right variance -> 18 per scale, 36 in all;
- the features are written with `%f` (6 decimals), scaled to [-1, 1] by `svm-scale` with `allrange`
  and written with `%g` (6 significant digits): the same rounding is applied here;
- the RBF epsilon-SVR `allmodel` (774 support vectors, gamma 0.05, rho -153.591):
  sum_i coef_i exp(-gamma |x - sv_i|^2) - rho, not clamped (good images can score below 0).

`flavour="opencv"`: OpenCV-contrib's `cv2.quality.QualityBRISQUE` with its own LIVE-trained model
(Debian `opencv-data`: brisque_model_live.yml + brisque_range_live.yml, converted to
`brisque_live.npz`); its features differ from the release's (cv2 gray, cv2 INTER_CUBIC half size
without antialiasing, replicate borders, an AGGD instead of a GGD fit of the MSCN, zero-filled
instead of wrapped neighbour products) and so does its SVR, so its scores differ by up to ~10 points:
- 8-bit RGB -> 8-bit gray (cv2 BT.601 weights), then float32 in [0, 1];
- MSCN: (I - mu) / (sigma + 1/255) with a 7x7 Gaussian (sigma 7/6, replicate borders), in float32;
- features scaled with the model's per-feature range, scored by its RBF SVR, clamped to [0, 100].

Why hand-written: the release needs MATLAB and libsvm binaries, OpenCV's version lives only in
opencv-contrib (not a fewstep dependency); the vendored models are data (see data/metrics/LICENSES.md).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from ..errors import FewstepError
from ._image import rgb2gray_matlab, to_uint8

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "metrics"
MODEL_FILE = DATA_DIR / "brisque_live.npz"  # OpenCV's model
OFFICIAL_MODEL_FILE = DATA_DIR / "brisque_official_live.npz"  # the release's allmodel + allrange
FLAVOURS = ("official", "opencv")
_CONST_TOL = 1e-9  # as in niqe.py: a flat 7x7 neighbourhood (padding included) on the 0-255 scale


@functools.lru_cache(maxsize=1)
def _model() -> dict:
    with np.load(MODEL_FILE, allow_pickle=False) as d:
        return {k: d[k] for k in d.files}


@functools.lru_cache(maxsize=1)
def _official_model() -> dict:
    with np.load(OFFICIAL_MODEL_FILE, allow_pickle=False) as d:
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


@functools.lru_cache(maxsize=1)
def _ggd_grid() -> tuple[np.ndarray, np.ndarray]:
    from scipy.special import gamma

    gam = np.arange(0.2, 10.0005, 0.001)  # 0.2:0.001:10
    return gam, gamma(1.0 / gam) * gamma(3.0 / gam) / gamma(2.0 / gam) ** 2


def _ggd_fit(x: np.ndarray) -> tuple[float, float]:
    """The release's `estimateggdparam`: (shape, variance) of a zero-mean GGD by moment matching."""
    gam, r_gam = _ggd_grid()
    sigma_sq = float(np.mean(x * x))
    e = float(np.mean(np.abs(x)))
    if e == 0.0:
        raise FewstepError("BRISQUE: the image has no texture (a flat image has no MSCN statistics)")
    rho = sigma_sq / e**2
    return float(gam[int(np.argmin(np.abs(rho - r_gam)))]), sigma_sq


def _mscn_official(img: np.ndarray, exact_flat: bool = True) -> np.ndarray:
    from scipy.ndimage import correlate, maximum_filter, minimum_filter

    from .niqe import _gauss_window

    w = _gauss_window()
    # filter2(w, I, 'same'): correlation with zeros outside the image
    mu = correlate(img, w, mode="constant", cval=0.0)
    sigma = np.sqrt(np.abs(correlate(img * img, w, mode="constant", cval=0.0) - mu * mu))
    mscn = (img - mu) / (sigma + 1.0)
    if not exact_flat:
        return mscn  # keeps the ~1e-14 round-off of flat areas (what any floating-point code gets)
    # flat neighbourhoods (the zero padding counts as part of the neighbourhood) are exactly 0
    rng = maximum_filter(img, 7, mode="constant", cval=0.0) - minimum_filter(img, 7, mode="constant", cval=0.0)
    mscn[rng <= _CONST_TOL] = 0.0
    return mscn


def brisque_features_official(gray: np.ndarray, *, exact_flat: bool = True) -> np.ndarray:
    """The release's 36 features (float64) of a single-channel image on the 0-255 scale.

    exact_flat=False keeps floating-point round-off in flat areas instead of exact zeros (only to
    show how much the published values depend on it; docs/metrics.md).
    """
    from scipy.special import gamma

    from ..degrade.resize import imresize
    from .niqe import aggd_std

    img = np.ascontiguousarray(gray, dtype=np.float64)
    feats: list[float] = []
    for scale in (1, 2):
        mscn = _mscn_official(img, exact_flat)
        a, var = _ggd_fit(mscn)
        feats += [a, var]
        for shift in ((0, 1), (1, 0), (1, 1), (-1, 1)):
            pair = (mscn * np.roll(mscn, shift, axis=(0, 1))).reshape(1, -1)  # circshift
            alpha, lstd, rstd = (float(v[0]) for v in aggd_std(pair))
            if not (np.isfinite(lstd) and np.isfinite(rstd)):
                raise FewstepError("BRISQUE: the image has no texture (a flat image has no MSCN statistics)")
            const = np.sqrt(gamma(1 / alpha)) / np.sqrt(gamma(3 / alpha))
            mean = (rstd - lstd) * (gamma(2 / alpha) / gamma(1 / alpha)) * const
            feats += [alpha, float(mean), lstd * lstd, rstd * rstd]
        if scale == 1:
            img = imresize(img, 0.5, antialias=True)
    return np.asarray(feats, dtype=np.float64)


def _predict_official(feats: np.ndarray) -> float:
    m = _official_model()
    # brisquescore.m writes the features with '%f'; svm-scale maps them to [lower, upper] and writes
    # '%g' (6 significant digits): reproduce both roundings (they move the score by up to ~5e-4)
    f = np.array([float(f"{v:f}") for v in feats])
    lo, hi = m["feature_min"], m["feature_max"]
    lower, upper = float(m["scale_lower"]), float(m["scale_upper"])
    x = np.where(f == lo, lower, np.where(f == hi, upper, lower + (upper - lower) * (f - lo) / (hi - lo)))
    x = np.array([float(f"{v:g}") for v in x])
    d2 = ((m["support_vectors"] - x[None, :]) ** 2).sum(1)
    return float(m["sv_coef"] @ np.exp(-float(m["gamma"]) * d2) - float(m["rho"]))


def brisque(img, *, flavour: str = "official") -> float:
    """BRISQUE score (lower is better): the authors' release by default, or OpenCV's (`flavour="opencv"`).

    img: HxWx3 uint8 RGB (or HxW gray) array, or a float tensor in [0, 1] (3,H,W)/(1,3,H,W), which
    is rounded to 8 bits first as the references work on 8-bit images. The official score is
    typically in 0..100 and not clamped; OpenCV's is clamped to [0, 100].
    """
    if flavour not in FLAVOURS:
        raise FewstepError(f"BRISQUE flavour must be one of {', '.join(FLAVOURS)}, got {flavour!r}")
    u8 = to_uint8(img)
    if u8.shape[0] < 16 or u8.shape[1] < 16:
        raise FewstepError(f"BRISQUE needs an image of at least 16x16 px, got {u8.shape[0]}x{u8.shape[1]}")
    if flavour == "official":
        gray = u8[:, :, 0].astype(np.float64) if u8.shape[2] == 1 else rgb2gray_matlab(u8.astype(np.float64))
        return _predict_official(brisque_features_official(gray))
    return _brisque_opencv(u8)


def _brisque_opencv(u8: np.ndarray) -> float:
    import cv2

    gray = u8[:, :, 0] if u8.shape[2] == 1 else cv2.cvtColor(np.ascontiguousarray(u8), cv2.COLOR_RGB2GRAY)
    gray01 = (gray.astype(np.float32) * np.float32(1.0 / 255.0)).astype(np.float32)
    return _predict(brisque_features(gray01))
