"""Bicubic interpolation baselines: PyTorch's bicubic, and MATLAB-exact `imresize`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import FewstepError
from ..upscaler import Upscaler


def _check(lr: torch.Tensor, name: str) -> None:
    if lr.ndim != 4 or lr.shape[1] != 3:
        raise FewstepError(f"{name}: expected a (B,3,h,w) tensor, got {tuple(lr.shape)}")


class BicubicUpscaler(Upscaler):
    """torch bicubic (a = -0.75, align_corners=False), clamped to [0, 1]. No network, NFE 0."""

    nfe = 0

    def __init__(self, scale: int = 4, name: str = "bicubic", device: str = "cpu") -> None:
        if int(scale) < 1:
            raise FewstepError(f"{name}: scale must be a positive integer, got {scale}")
        self.scale = int(scale)
        self.name = name
        self.device = torch.device(device)

    @torch.no_grad()
    def restore(self, lr: torch.Tensor, *, seed: int = 0, mask: torch.Tensor | None = None) -> torch.Tensor:
        _check(lr, self.name)
        x = lr.to(self.device, torch.float32)
        y = F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return y.clamp_(0, 1)


class MatlabBicubicUpscaler(BicubicUpscaler):
    """MATLAB `imresize(x, scale)` (bicubic a = -0.5, antialiased), via fewstep.degrade.imresize."""

    @torch.no_grad()
    def restore(self, lr: torch.Tensor, *, seed: int = 0, mask: torch.Tensor | None = None) -> torch.Tensor:
        _check(lr, self.name)
        from ..degrade.resize import imresize

        # float64 makes imresize compute in double, like MATLAB; the result is cast back.
        y = imresize(lr.to(self.device, torch.float64), scale=self.scale)
        return y.to(torch.float32).clamp_(0, 1)


def bicubic(name: str = "bicubic", weights=None, device: str = "cpu", dtype: str = "fp32", quiet: bool = True,
            scale: int = 4) -> BicubicUpscaler:
    """Registry factory (weights/dtype/quiet do not apply to interpolation and are ignored)."""
    return BicubicUpscaler(scale=scale, name=name, device=device)


def bicubic_matlab(name: str = "bicubic-matlab", weights=None, device: str = "cpu", dtype: str = "fp32",
                   quiet: bool = True, scale: int = 4) -> MatlabBicubicUpscaler:
    return MatlabBicubicUpscaler(scale=scale, name=name, device=device)
