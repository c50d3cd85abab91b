"""GFPGAN-style blind-face degradation (`FFHQDegradationDataset`; resshift.md §7.2 faceir).

blur (iso/aniso Gaussian, 41×41, σ ∈ [0.1, 15]) → bilinear downsample by U(0.8, 32) → Gaussian
noise σ ∈ [0, 20] → JPEG q ∈ [30, 100] → bilinear resize back to the input size; with probability
0.01 the result is made gray. Runs on the CPU with OpenCV like the original (float32, BGR-agnostic
because every step acts per channel except JPEG, which gets RGB→BGR handled in `jpeg_uint8`).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import FewstepError
from .jpeg import jpeg_uint8
from .kernels import random_kernel
from .presets import FacePreset


def _face_float(img: np.ndarray, p: FacePreset, seed: int, log: dict) -> np.ndarray:
    import cv2

    rng = np.random.Generator(np.random.PCG64(int(seed)))
    h, w = img.shape[:2]
    kernel, kp = random_kernel(rng, p.kernel_size, p.kernel_list, p.kernel_prob, p.blur_sigma)
    x = cv2.filter2D(img, -1, kernel.astype(np.float32), borderType=cv2.BORDER_REFLECT_101)
    s = float(rng.uniform(*p.downsample_range))
    x = cv2.resize(x, (max(1, int(w // s)), max(1, int(h // s))), interpolation=cv2.INTER_LINEAR)
    sigma = float(rng.uniform(*p.noise_range))
    x = np.clip(x + rng.standard_normal(x.shape).astype(np.float32) * (sigma / 255.0), 0, 1)
    q = int(rng.uniform(*p.jpeg_range))
    q = min(max(q, 1), 100)
    x = jpeg_uint8(np.round(x * 255.0).astype(np.uint8), q).astype(np.float32) / 255.0
    x = cv2.resize(x, (w, h), interpolation=cv2.INTER_LINEAR)
    gray = bool(rng.uniform() < p.gray_prob)
    if gray:
        y = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        x = np.repeat(y[..., None], 3, axis=2)
    log.update(kernel=kp, downsample=s, sigma=sigma, jpeg=q, gray=gray)
    return np.clip(x, 0, 1)


def degrade_face(hr: np.ndarray, preset: FacePreset, seed: int = 0, log: dict | None = None) -> np.ndarray:
    """HxWx3 uint8 face -> degraded HxWx3 uint8 of the same size."""
    arr = np.asarray(hr)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise FewstepError(f"expected an HxWx3 uint8 face image, got {arr.shape} {arr.dtype}")
    log = {} if log is None else log
    log.update(preset=preset.name, seed=int(seed))
    x = _face_float(arr.astype(np.float32) / 255.0, preset, seed, log)
    return np.round(x * 255.0).astype(np.uint8)


def degrade_face_tensor(hr: torch.Tensor, preset: FacePreset, seed: int, log: dict) -> torch.Tensor:
    """(3,H,W) in [0,1] on any device -> (3,H,W) degraded, rounded to 8-bit levels."""
    arr = hr.detach().to("cpu", torch.float32).permute(1, 2, 0).numpy()
    x = _face_float(np.ascontiguousarray(arr), preset, seed, log)
    x = np.round(x * 255.0) / 255.0
    return torch.from_numpy(x).permute(2, 0, 1).to(device=hr.device, dtype=hr.dtype)
