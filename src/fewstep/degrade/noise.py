"""Additive Gaussian and Poisson (shot) noise, Real-ESRGAN style, on float images in [0, 1].

Random numbers are always drawn on the CPU from an explicit `torch.Generator` and then moved to the
image's device, so a seed gives the same noise on CPU and GPU (device RNG streams differ).
"""

from __future__ import annotations

import math

import torch

# ITU-R BT.601 luma weights, as used for "gray" noise (same weights as rgb_to_grayscale)
_LUMA = (0.299, 0.587, 0.114)


def _gray(img: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_LUMA, dtype=img.dtype, device=img.device).view(3, 1, 1)
    return (img * w).sum(dim=-3, keepdim=True)


def gaussian_noise(img: torch.Tensor, sigma: float, gray: bool, generator: torch.Generator) -> torch.Tensor:
    """img (3,H,W) in [0,1]; sigma on the 0..255 scale. Returns the noise tensor (not added)."""
    c = 1 if gray else img.shape[-3]
    n = torch.randn((c,) + tuple(img.shape[-2:]), generator=generator, dtype=torch.float32)
    n = n.to(device=img.device, dtype=img.dtype) * (sigma / 255.0)
    return n.expand_as(img) if gray else n


def poisson_noise(img: torch.Tensor, scale: float, gray: bool, generator: torch.Generator) -> torch.Tensor:
    """Shot noise of `img` (3,H,W) in [0,1], multiplied by `scale`. Returns the noise (not added).

    Like Real-ESRGAN, the photon count per unit intensity is 2^ceil(log2(#distinct 8-bit levels)),
    so images with few levels get coarser (relatively stronger) noise.
    """
    src = _gray(img) if gray else img
    q = torch.clamp(torch.round(src * 255.0), 0, 255) / 255.0
    levels = int(torch.unique(q).numel())
    vals = 2.0 ** math.ceil(math.log2(max(levels, 1))) if levels > 1 else 1.0
    rate = (q * vals).to("cpu", torch.float64)
    counts = torch.poisson(rate, generator=generator)
    noise = (counts / vals - q.to("cpu", torch.float64)).to(device=img.device, dtype=img.dtype) * scale
    return noise.expand_as(img) if gray else noise
