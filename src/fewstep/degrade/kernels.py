"""Blur kernels of the Real-ESRGAN degradation model (Wang et al., ICCV-W 2021; Apache-2.0 method).

All kernels are float64 numpy arrays of odd size k×k, normalised to sum 1. Coordinates follow the
Real-ESRGAN convention: x is the column offset from the centre, y the row offset, and a rotation θ
turns the first principal axis (σ_x) from +x towards +y.

Written here with numpy/scipy because basicsr cannot be imported beside torchvision-free torch
(offline-resources.md §4.6).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import FewstepError

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")


def _check_size(size: int) -> int:
    size = int(size)
    if size < 1 or size % 2 == 0:
        raise FewstepError(f"blur kernel size must be a positive odd number, got {size}")
    return size


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    x, y = np.meshgrid(r, r, indexing="xy")  # x varies along columns, y along rows
    return x, y


def _mahalanobis2(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """d^T Σ^{-1} d on the grid, Σ = R diag(σx², σy²) R^T."""
    if sigma_x <= 0 or sigma_y <= 0:
        raise FewstepError(f"kernel sigmas must be > 0, got ({sigma_x}, {sigma_y})")
    x, y = _grid(size)
    c, s = math.cos(theta), math.sin(theta)
    # coordinates in the kernel's principal frame (rotate by -θ)
    u = c * x + s * y
    v = -s * x + c * y
    return (u / sigma_x) ** 2 + (v / sigma_y) ** 2


def _normalise(k: np.ndarray) -> np.ndarray:
    return k / k.sum()


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0) -> np.ndarray:
    """Bivariate Gaussian; isotropic when sigma_y is None (or equal to sigma_x)."""
    size = _check_size(size)
    sigma_y = sigma_x if sigma_y is None else sigma_y
    return _normalise(np.exp(-0.5 * _mahalanobis2(size, sigma_x, sigma_y, theta)))


def generalized_gaussian_kernel(
    size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0, beta: float = 1.0
) -> np.ndarray:
    """exp(-½ (dᵀΣ⁻¹d)^β): β = 1 is the Gaussian, β < 1 heavier tails, β > 1 flatter top."""
    size = _check_size(size)
    sigma_y = sigma_x if sigma_y is None else sigma_y
    return _normalise(np.exp(-0.5 * np.power(_mahalanobis2(size, sigma_x, sigma_y, theta), beta)))


def plateau_kernel(
    size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0, beta: float = 1.0
) -> np.ndarray:
    """1 / (1 + (dᵀΣ⁻¹d)^β): a flat-topped kernel with polynomial tails."""
    size = _check_size(size)
    sigma_y = sigma_x if sigma_y is None else sigma_y
    return _normalise(1.0 / (1.0 + np.power(_mahalanobis2(size, sigma_x, sigma_y, theta), beta)))


def sinc_kernel(size: int, cutoff: float) -> np.ndarray:
    """2-D circular low-pass (ideal filter with radius `cutoff` rad/pixel), truncated to size×size.

    h(r) = ω J1(ω r) / (2π r), with the limit ω²/(4π) at r = 0.
    """
    from scipy.special import j1

    size = _check_size(size)
    if not 0 < cutoff <= math.pi:
        raise FewstepError(f"sinc cutoff must be in (0, pi], got {cutoff}")
    x, y = _grid(size)
    r = np.hypot(x, y)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = cutoff * j1(cutoff * r) / (2.0 * math.pi * r)
    k[r == 0] = cutoff**2 / (4.0 * math.pi)
    return _normalise(k)


def pad_kernel(kernel: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad a k×k kernel to size×size (both odd), keeping it centred."""
    k = kernel.shape[0]
    if size < k or (size - k) % 2:
        raise FewstepError(f"cannot pad a {k}x{k} kernel to {size}x{size}")
    p = (size - k) // 2
    return np.pad(kernel, p)


def _beta(rng: np.random.Generator, lo: float, hi: float) -> float:
    # Real-ESRGAN draws β below or above 1 with equal probability, so that both shapes are common.
    if rng.uniform() < 0.5:
        return float(rng.uniform(lo, 1.0)) if lo < 1.0 else float(lo)
    return float(rng.uniform(1.0, hi)) if hi > 1.0 else float(hi)


def random_kernel(
    rng: np.random.Generator,
    size: int,
    kernel_list: tuple[str, ...] | list[str],
    kernel_prob: tuple[float, ...] | list[float],
    sigma_range: tuple[float, float],
    betag_range: tuple[float, float] = (0.5, 4.0),
    betap_range: tuple[float, float] = (1.0, 2.0),
    rotation_range: tuple[float, float] = (-math.pi, math.pi),
) -> tuple[np.ndarray, dict]:
    """One kernel drawn like Real-ESRGAN's `random_mixed_kernels`; returns (kernel, parameters)."""
    probs = np.asarray(kernel_prob, dtype=np.float64)
    if len(probs) != len(kernel_list) or probs.sum() <= 0:
        raise FewstepError("kernel_list and kernel_prob must have the same length and a positive sum")
    kind = str(kernel_list[int(rng.choice(len(kernel_list), p=probs / probs.sum()))])
    if kind not in KERNEL_TYPES:
        raise FewstepError(f"unknown kernel type {kind!r}; expected one of {', '.join(KERNEL_TYPES)}")
    iso = kind.endswith("iso") and not kind.endswith("aniso")
    sx = float(rng.uniform(*sigma_range))
    if iso:
        sy, theta = sx, 0.0
    else:
        sy = float(rng.uniform(*sigma_range))
        theta = float(rng.uniform(*rotation_range))
    params = {"type": kind, "size": size, "sigma_x": sx, "sigma_y": sy, "theta": theta}
    if kind.startswith("generalized"):
        beta = _beta(rng, *betag_range)
        params["beta"] = beta
        return generalized_gaussian_kernel(size, sx, sy, theta, beta), params
    if kind.startswith("plateau"):
        beta = _beta(rng, *betap_range)
        params["beta"] = beta
        return plateau_kernel(size, sx, sy, theta, beta), params
    return gaussian_kernel(size, sx, sy, theta), params


def random_blur_or_sinc(
    rng: np.random.Generator,
    sizes: tuple[int, ...] | list[int],
    sinc_prob: float,
    kernel_list,
    kernel_prob,
    sigma_range,
    betag_range,
    betap_range,
) -> tuple[np.ndarray, dict]:
    """Real-ESRGAN's per-stage kernel: a sinc with probability `sinc_prob`, else a mixed kernel.

    Sinc cutoffs follow Real-ESRGAN: U(π/3, π) for sizes < 13, U(π/5, π) otherwise (a larger
    support can represent a lower cutoff without excessive truncation ringing).
    """
    size = int(sizes[int(rng.integers(len(sizes)))])
    if rng.uniform() < sinc_prob:
        lo = math.pi / 3 if size < 13 else math.pi / 5
        cutoff = float(rng.uniform(lo, math.pi))
        return sinc_kernel(size, cutoff), {"type": "sinc", "size": size, "cutoff": cutoff}
    return random_kernel(rng, size, kernel_list, kernel_prob, sigma_range, betag_range, betap_range)
