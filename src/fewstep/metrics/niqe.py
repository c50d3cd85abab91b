"""NIQE (Mittal, Soundararajan & Bovik, "Making a 'completely blind' image quality analyzer", 2013).

Three flavours of the same algorithm, which differ only in arithmetic details (docs/metrics.md):
- `flavour="matlab"` (default): the authors' MATLAB `niqe` (niqe_release `computequality.m`):
  gray = MATLAB `rgb2gray` (its own coefficients, rounded half up to uint8); the half-scale image is
  `imresize(im, 0.5)` on the 0-255 values; and where the 7x7 neighbourhood is constant the MSCN
  coefficient is exactly 0, as it is in exact arithmetic (see `_mscn`).
- `flavour="pyiqa"`: pyiqa's `niqe` (the numbers most papers quote): 0.299/0.587/0.114 in float32
  on [0, 1] values, rounded half to even; a float32-rounded Gaussian window; sqrt(var + eps);
  resize on [0, 1] values.
- `flavour="basicsr"`: BasicSR 1.4.2 `calculate_niqe` (0.299/0.587/0.114 or YCbCr Y, np.round,
  resize on [0, 1] values).
Common to all: the image is cropped to whole 96x96 blocks; at two scales (full, then MATLAB-bicubic
half size) MSCN coefficients with a 7x7 Gaussian (sigma 7/6, replicate borders), then per block an
AGGD fit of the MSCN values (2 features) and of the four neighbour products (H, V, D1, D2; 4 features
each) -> 18 features per scale, 36 in all; the blocks' features are fitted by a Gaussian (mean,
covariance) and compared with the pristine model (`niqe_pris_params.npz`, vendored from the basicsr
sdist, Apache-2.0; the authors' modelparameters.mat):
sqrt((mu_p - mu_d)^T pinv((S_p + S_d)/2) (mu_p - mu_d)). Lower is better.

Why hand-written: BasicSR cannot be imported without torchvision, pyiqa downloads its model, and
neither reproduces MATLAB. Everything is vectorised over blocks in numpy float64.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import FewstepError
from ._image import crop, rgb2gray_matlab, rgb2ycbcr_y_matlab, to_luma, to_uint8

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "metrics"
STANDARD_PARAMS = DATA_DIR / "niqe_pris_params.npz"
N_FEATURES = 36
FLAVOURS = ("matlab", "pyiqa", "basicsr")
# local max - min at or below this (on the 0-255 scale) is a constant neighbourhood: real differences
# are >= 1 at full scale (integers) and >= ~1e-4 after the half-scale resize, round-off is ~1e-13
_CONST_TOL = 1e-9


@dataclass(frozen=True)
class NiqeModel:
    """A pristine multivariate-Gaussian model of the 36 NIQE features for blocks of `block_size`."""

    mu: np.ndarray  # (36,)
    cov: np.ndarray  # (36, 36)
    block_size: int = 96

    def __post_init__(self):
        mu = np.asarray(self.mu, dtype=np.float64).reshape(-1)
        cov = np.asarray(self.cov, dtype=np.float64)
        if mu.shape != (N_FEATURES,) or cov.shape != (N_FEATURES, N_FEATURES):
            raise FewstepError(f"NIQE model must have mu (36,) and cov (36, 36), got {mu.shape} and {cov.shape}")
        if int(self.block_size) < 8 or int(self.block_size) % 2:
            raise FewstepError(f"NIQE block_size must be an even number >= 8, got {self.block_size}")
        object.__setattr__(self, "mu", mu)
        object.__setattr__(self, "cov", cov)
        object.__setattr__(self, "block_size", int(self.block_size))

    @classmethod
    def standard(cls) -> "NiqeModel":
        """The authors' pristine model (96x96 blocks), as shipped by BasicSR."""
        return _standard_model()

    def save(self, path: str | Path) -> None:
        """Write the model as an .npz (BasicSR key names plus `block_size`)."""
        np.savez(Path(path), mu_pris_param=self.mu[None, :], cov_pris_param=self.cov,
                 block_size=np.int64(self.block_size))

    @classmethod
    def load(cls, path: str | Path) -> "NiqeModel":
        """Read a model written by `save` (or BasicSR's npz, which implies 96-px blocks)."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as d:
                mu, cov = d["mu_pris_param"], d["cov_pris_param"]
                block = int(d["block_size"]) if "block_size" in d.files else 96
        except FileNotFoundError:
            raise FewstepError(f"NIQE model file not found: {path}") from None
        except (KeyError, ValueError, OSError) as e:
            raise FewstepError(f"{path}: not a NIQE model npz ({e.__class__.__name__}: {e})") from None
        return cls(mu=mu, cov=cov, block_size=block)


@functools.lru_cache(maxsize=1)
def _standard_model() -> NiqeModel:
    with np.load(STANDARD_PARAMS, allow_pickle=False) as d:
        return NiqeModel(mu=d["mu_pris_param"], cov=d["cov_pris_param"], block_size=96)


@functools.lru_cache(maxsize=1)
def _gauss_window() -> np.ndarray:
    # 7x7 Gaussian, sigma 7/6, normalised: equal (to 1e-17) to the npz's `gaussian_window`.
    x = np.arange(7, dtype=np.float64) - 3.0
    g = np.exp(-(x * x) / (2.0 * (7.0 / 6.0) ** 2))
    w = np.outer(g, g)
    return w / w.sum()


@functools.lru_cache(maxsize=1)
def _gauss_window_f32() -> np.ndarray:
    # pyiqa builds the window in float64 and stores it as float32 before filtering float64 images:
    # its weights then sum to 1 only to ~1e-8, which is what makes flat areas non-zero there
    return _gauss_window().astype(np.float32).astype(np.float64)


@functools.lru_cache(maxsize=1)
def _gamma_grid() -> tuple[np.ndarray, np.ndarray]:
    from scipy.special import gamma

    gam = np.arange(0.2, 10.001, 0.001)
    r_gam = gamma(2.0 / gam) ** 2 / (gamma(1.0 / gam) * gamma(3.0 / gam))
    return gam, r_gam  # r_gam is strictly increasing on this grid


def _aggd(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Moment-matching AGGD fit of each row of x (n, m): (alpha, beta_l, beta_r), each (n,).

    Grid search over alpha in 0.2:0.001:10 exactly as the reference; rows without negative or
    positive values give NaN betas (and alpha = 0.2, as the reference's argmin over NaN does).
    """
    from scipy.special import gamma

    alpha, left, right = aggd_std(x)
    k = np.sqrt(gamma(1.0 / alpha) / gamma(3.0 / alpha))
    return alpha, left * k, right * k


def aggd_std(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MATLAB `estimateaggdparam` on each row of x (n, m): (alpha, left std, right std), each (n,).

    Zeros count in the moments but on neither side; that is why exact zeros matter (see `_mscn`).
    """
    gam, r_gam = _gamma_grid()
    neg, pos = x < 0, x > 0
    sq = x * x
    with np.errstate(invalid="ignore", divide="ignore"):
        left = np.sqrt((sq * neg).sum(1) / neg.sum(1))
        right = np.sqrt((sq * pos).sum(1) / pos.sum(1))
        gh = left / right
        rhat = np.abs(x).mean(1) ** 2 / sq.mean(1)
        rnorm = rhat * (gh**3 + 1) * (gh + 1) / (gh**2 + 1) ** 2
    # nearest grid point (ties to the lower index, like argmin)
    hi = np.clip(np.searchsorted(r_gam, np.nan_to_num(rnorm, nan=-np.inf)), 1, len(r_gam) - 1)
    lo = hi - 1
    take_hi = (r_gam[hi] - rnorm) ** 2 < (r_gam[lo] - rnorm) ** 2
    idx = np.where(take_hi, hi, lo)
    idx = np.where(np.isnan(rnorm), 0, idx)
    return gam[idx], left, right


def _block_features(blocks: np.ndarray) -> np.ndarray:
    """(n, bh, bw) MSCN blocks -> (n, 18) NIQE features of one scale."""
    from scipy.special import gamma

    n = blocks.shape[0]
    flat = blocks.reshape(n, -1)
    alpha, bl, br = _aggd(flat)
    feats = [alpha, (bl + br) / 2]
    # products with the neighbour; the reference rolls circularly inside each block
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
        prod = (blocks * np.roll(blocks, shift, axis=(1, 2))).reshape(n, -1)
        alpha, bl, br = _aggd(prod)
        mean = (br - bl) * (gamma(2.0 / alpha) / gamma(1.0 / alpha))
        feats += [alpha, mean, bl, br]
    return np.stack(feats, axis=1)


def _mscn(img: np.ndarray, flavour: str = "matlab") -> tuple[np.ndarray, np.ndarray]:
    """MSCN coefficients (I - mu) / (sigma + 1) and sigma, 7x7 Gaussian, replicate borders."""
    from scipy.ndimage import convolve, maximum_filter, minimum_filter

    w = _gauss_window_f32() if flavour == "pyiqa" else _gauss_window()
    mu = convolve(img, w, mode="nearest")
    var = np.abs(convolve(img * img, w, mode="nearest") - mu * mu)
    if flavour == "pyiqa":
        var = var + np.finfo(np.float64).eps  # pyiqa's safe_sqrt
    sigma = np.sqrt(var)
    mscn = (img - mu) / (sigma + 1.0)
    if flavour == "matlab":
        # Where the 7x7 neighbourhood is constant, I - mu and sigma are 0 in exact arithmetic; in
        # floating point they come out as ~1e-13 of either sign, which the AGGD fits count as left
        # or right samples (a posterised image has ~30 % such pixels and moves by ~4 %). Detect the
        # flat neighbourhoods exactly (local max == min) and make their coefficients 0.
        flat = (maximum_filter(img, 7, mode="nearest") - minimum_filter(img, 7, mode="nearest")) <= _CONST_TOL
        mscn[flat] = 0.0
        sigma[flat] = 0.0
    return mscn, sigma


def _blocks(img: np.ndarray, bh: int, bw: int) -> np.ndarray:
    nh, nw = img.shape[0] // bh, img.shape[1] // bw
    v = img[: nh * bh, : nw * bw].reshape(nh, bh, nw, bw)
    return v.transpose(0, 2, 1, 3).reshape(nh * nw, bh, bw)


def _half(img: np.ndarray, flavour: str = "matlab") -> np.ndarray:
    from ..degrade.resize import imresize

    if flavour == "matlab":
        # computequality.m: imresize(im, 0.5) on the 0-255 doubles (bicubic, antialiased); the
        # /255, x255 round trip of BasicSR/pyiqa differs from it by round-off only (~1e-13)
        return imresize(img, 0.5, antialias=True)
    # BasicSR and pyiqa resize the [0, 1] image and scale back
    return imresize(img / 255.0, 0.5, antialias=True) * 255.0


def niqe_features(gray: np.ndarray, block_size: int = 96, *, return_sharpness: bool = False,
                  flavour: str = "matlab"):
    """(n_blocks, 36) features of a rounded single-channel [0, 255] float image (cropped to blocks).

    With `return_sharpness`, also the mean local sigma of each block at full scale (used to select
    sharp pristine patches when fitting a model).
    """
    bs = int(block_size)
    h, w = gray.shape
    nh, nw = h // bs, w // bs
    img = np.ascontiguousarray(gray[: nh * bs, : nw * bs], dtype=np.float64)
    per_scale = []
    sharp = None
    for scale in (1, 2):
        mscn, sigma = _mscn(img, flavour)
        b = bs // scale
        per_scale.append(_block_features(_blocks(mscn, b, b)))
        if scale == 1:
            sharp = _blocks(sigma, b, b).mean(axis=(1, 2))
            img = _half(img, flavour)
    feats = np.concatenate(per_scale, axis=1)
    return (feats, sharp) if return_sharpness else feats


def _check_flavour(flavour: str) -> str:
    if flavour not in FLAVOURS:
        raise FewstepError(f"NIQE flavour must be one of {', '.join(FLAVOURS)}, got {flavour!r}")
    return flavour


def _prepare(img, convert_to: str, crop_border: int, what: str = "image", flavour: str = "matlab") -> np.ndarray:
    """The rounded single-channel [0, 255] float64 image NIQE works on."""
    # NIQE is defined on 8-bit images (the reference reads PNGs): float inputs are quantised first,
    # so a tensor and the uint8 image it came from score the same.
    u8 = crop(to_uint8(img, what), crop_border, what)
    if convert_to not in ("gray", "y"):
        raise FewstepError(f"convert_to must be 'y' or 'gray', got {convert_to!r}")
    if u8.shape[2] == 1:
        return u8[:, :, 0].astype(np.float64)
    arr = u8.astype(np.float64)
    if flavour == "matlab":
        # MATLAB rgb2gray / rgb2ycbcr on uint8 return uint8: rounded half up
        return rgb2gray_matlab(arr) if convert_to == "gray" else rgb2ycbcr_y_matlab(arr)
    if flavour == "pyiqa":
        # pyiqa: float32 tensor in [0, 1] -> float32 Y -> x255 -> torch.round (half to even)
        x = u8.astype(np.float32) / np.float32(255.0)
        if convert_to == "gray":
            y = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        else:
            y = (x @ np.array([65.481, 128.553, 24.966], dtype=np.float32) + np.float32(16.0)) / np.float32(255.0)
        return np.round(y.astype(np.float32) * np.float32(255.0)).astype(np.float64)
    # BasicSR rounds the unrounded float64 gray / Y "to be consistent with MATLAB" with np.round
    return np.round(to_luma(arr, convert_to))


def niqe(img, model: NiqeModel | None = None, *, convert_to: str = "gray", crop_border: int = 0,
         flavour: str = "matlab") -> float:
    """NIQE of one image (lower is better); `model=None` uses the standard pristine model.

    img: HxWx3 uint8 RGB (or HxW gray) array, or a float tensor in [0, 1] (3,H,W)/(1,3,H,W)
    (rounded to 8 bits first).
    convert_to: 'gray' (MATLAB `niqe` on rgb2gray, pyiqa `niqe`) or 'y' (MATLAB YCbCr Y, BasicSR's
    default, SkipDiff's).
    flavour: 'matlab' (the authors' MATLAB code), 'pyiqa' or 'basicsr' (their Python ports).
    """
    _check_flavour(flavour)
    model = model if model is not None else _standard_model()
    gray = _prepare(img, convert_to, crop_border, flavour=flavour)
    bs = model.block_size
    h, w = gray.shape
    if h < 2 * bs or w < 2 * bs:
        raise FewstepError(
            f"NIQE with {bs}-px blocks needs an image of at least {2 * bs}x{2 * bs} px, got {h}x{w}; "
            f"use a model with smaller blocks (fewstep.metrics.fit_niqe_model(images, block_size={_suggest(h, w)}))")
    feats = niqe_features(gray, bs, flavour=flavour)
    return _mvg_distance(feats, model)


def _suggest(h: int, w: int) -> int:
    b = max(8, (min(h, w) // 4) // 2 * 2)  # about 4 blocks per side
    return min(b, 96)


def _mvg_distance(feats: np.ndarray, model: NiqeModel) -> float:
    valid = feats[~np.isnan(feats).any(axis=1)]
    if valid.shape[0] < 2:
        raise FewstepError(f"NIQE: only {valid.shape[0]} of {feats.shape[0]} blocks have usable statistics "
                           "(is the image flat?)")
    mu_d = np.nanmean(feats, axis=0)
    cov_d = np.cov(valid, rowvar=False)
    diff = model.mu - mu_d
    try:
        inv = np.linalg.pinv((model.cov + cov_d) / 2.0)
    except np.linalg.LinAlgError as e:
        raise FewstepError(f"NIQE: covariance pseudo-inverse failed ({e})") from None
    q = float(diff @ inv @ diff)
    return math.sqrt(max(q, 0.0))


def _load_image(item):
    if isinstance(item, (str, Path)):
        from ..imageio import read_rgb8

        return read_rgb8(item)
    return item


def fit_niqe_model(images: Iterable, block_size: int = 96, sharpness_threshold: float = 0.75, *,
                   convert_to: str = "gray", quiet: bool = False, flavour: str = "matlab") -> NiqeModel:
    """Fit a pristine NIQE model on clean HR images, as the NIQE paper and MATLAB `fitniqe` do.

    For each image: the 36 features of every `block_size` block, keeping only blocks whose sharpness
    (mean local sigma at full scale) exceeds `sharpness_threshold` x the image's sharpest block.
    The kept features of all images give the model's mean and covariance (NaN rows dropped).
    Images are arrays/tensors as for `niqe`, or paths. Use smaller blocks (e.g. 32) to score small
    images; the model is only comparable with scores computed with the same model (and `flavour`,
    default 'matlab' as MATLAB `fitniqe`).
    """
    from tqdm import tqdm

    bs = int(block_size)
    if bs < 8 or bs % 2:
        raise FewstepError(f"fit_niqe_model: block_size must be an even number >= 8, got {block_size}")
    if not 0.0 <= sharpness_threshold < 1.0:
        raise FewstepError(f"fit_niqe_model: sharpness_threshold must be in [0, 1), got {sharpness_threshold}")
    _check_flavour(flavour)
    images = list(images)
    kept = []
    for i, item in enumerate(tqdm(images, desc="fit NIQE", unit="img", disable=quiet)):
        gray = _prepare(_load_image(item), convert_to, 0, f"image {i}", flavour)
        if gray.shape[0] < bs or gray.shape[1] < bs:
            continue  # smaller than one block: contributes nothing
        feats, sharp = niqe_features(gray, bs, return_sharpness=True, flavour=flavour)
        kept.append(feats[sharp > sharpness_threshold * sharp.max()])
    if not kept:
        raise FewstepError(f"fit_niqe_model: no image is at least {bs}x{bs} px")
    allf = np.concatenate(kept, axis=0)
    valid = allf[~np.isnan(allf).any(axis=1)]
    if valid.shape[0] < 2:
        raise FewstepError(f"fit_niqe_model: only {valid.shape[0]} usable sharp blocks; give more or larger images")
    return NiqeModel(mu=np.nanmean(allf, axis=0), cov=np.cov(valid, rowvar=False), block_size=bs)
