"""Colour correction of the SR output against the upsampled LR (StableSR lineage, as S3Diff uses it).

* wavelet: high frequencies of the output + low frequencies of the source, from 5 levels of a dilated
  3x3 [1,2,1]x[1,2,1]/16 blur with replicate padding (dilation 1, 2, 4, 8, 16);
* adain: per-channel mean/std of the output matched to the source (unbiased var + 1e-5).

The official code applies these to the two 8-bit images; `to_8bit` reproduces its truncation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import FewstepError

COLOR_FIXES = ("wavelet", "adain", "none")


def to_8bit(x: torch.Tensor) -> torch.Tensor:
    """What torchvision's ToPILImage -> ToTensor round trip gives: trunc(x * 255) / 255 (x clamped first;
    the official code wraps around on overshoot, which was a bug)."""
    return (x.clamp(0, 1) * 255).to(torch.uint8).to(torch.float32) / 255


def _blur(x: torch.Tensor, radius: int) -> torch.Tensor:
    k = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=x.dtype, device=x.device) / 16
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    return F.conv2d(x, k[None, None].repeat(c, 1, 1, 1), groups=c, dilation=radius)


def wavelet_decomposition(x: torch.Tensor, levels: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    high = torch.zeros_like(x)
    for i in range(levels):
        low = _blur(x, 2 ** i)
        high = high + (x - low)
        x = low
    return high, x


def wavelet_color_fix(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) in [0,1] each -> HF(target) + LF(source), clamped to [0, 1]."""
    high, _ = wavelet_decomposition(target)
    _, low = wavelet_decomposition(source)
    return (high + low).clamp(0, 1)


def _mean_std(x: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1)
    return flat.mean(dim=2).view(b, c, 1, 1), (flat.var(dim=2) + eps).sqrt().view(b, c, 1, 1)


def adain_color_fix(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    sm, ss = _mean_std(source)
    tm, ts = _mean_std(target)
    return ((target - tm) / ts * ss + sm).clamp(0, 1)


def color_fix(target: torch.Tensor, source: torch.Tensor, method: str) -> torch.Tensor:
    if method == "wavelet":
        return wavelet_color_fix(target, source)
    if method == "adain":
        return adain_color_fix(target, source)
    if method in ("none", "nofix", None):
        return target
    raise FewstepError(f"unknown colour fix {method!r}; choose one of {', '.join(COLOR_FIXES)}")
