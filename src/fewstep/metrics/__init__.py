"""Image-quality metrics with the conventions of the SR literature and pyiqa's names.

    from fewstep.metrics import psnr, ssim, niqe, brisque, get_metric
    psnr(sr, hr, crop_border=4, y_channel=True)      # BasicSR calculate_psnr
    edge_recovery(sr, hr)                            # share of the HR's strongest edges kept (1 = all)
    niqe(sr)                                         # MATLAB niqe; niqe(sr, flavour="pyiqa") as pyiqa
    m = get_metric("lpips", weights="~/weights")     # m.lower_better, m.needs_reference, m(sr, hr)

Images: HxWx3 uint8 RGB arrays, or float tensors in [0, 1] shaped (3,H,W) / (1,3,H,W).
Agreement with the reference implementations is documented in docs/metrics.md.
torch is imported only by the LPIPS/DISTS code, when first used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import FewstepError
from .brisque import brisque
from .edge import edge_recovery
from .fullref import psnr, ssim
from .niqe import NiqeModel, fit_niqe_model, niqe


def lpips(img, ref, net: str = "alex", **kwargs) -> float:
    """LPIPS v0.1 (see fewstep.metrics.deep.lpips); needs the torchvision backbone file."""
    from .deep import lpips as _lpips

    return _lpips(img, ref, net, **kwargs)


def dists(img, ref, **kwargs) -> float:
    """DISTS (see fewstep.metrics.deep.dists); needs vgg16-397923af.pth."""
    from .deep import dists as _dists

    return _dists(img, ref, **kwargs)


@dataclass(frozen=True)
class Metric:
    """A named metric: call as metric(img) or metric(img, ref); returns a float."""

    name: str
    lower_better: bool
    needs_reference: bool
    fn: Callable[..., float] = field(repr=False)
    description: str = ""
    options: dict = field(default_factory=dict)

    def __call__(self, img, ref=None) -> float:
        if self.needs_reference:
            if ref is None:
                raise FewstepError(f"metric {self.name} needs a reference image")
            return float(self.fn(img, ref, **self.options))
        return float(self.fn(img, **self.options))  # no-reference metrics ignore `ref`

    def with_options(self, **options: Any) -> "Metric":
        return Metric(self.name, self.lower_better, self.needs_reference, self.fn, self.description,
                      {**self.options, **options})


def _m(name, lower_better, needs_reference, fn, description, **options) -> Metric:
    return Metric(name, lower_better, needs_reference, fn, description, options)


METRICS: dict[str, Metric] = {m.name: m for m in [
    _m("psnr", False, True, psnr, "PSNR in dB on RGB [0,255] (BasicSR)"),
    _m("psnr_y", False, True, psnr, "PSNR in dB on the MATLAB YCbCr Y channel", y_channel=True),
    _m("ssim", False, True, ssim, "SSIM averaged over RGB channels (BasicSR)"),
    _m("ssim_y", False, True, ssim, "SSIM on the MATLAB YCbCr Y channel", y_channel=True),
    _m("niqe", True, False, niqe, "NIQE as MATLAB's niqe (standard model, rgb2gray)"),
    _m("niqe_pyiqa", True, False, niqe, "NIQE as pyiqa computes it (the numbers papers quote)", flavour="pyiqa"),
    _m("niqe_basicsr", True, False, niqe, "NIQE as BasicSR's calculate_niqe", flavour="basicsr"),
    _m("brisque", True, False, brisque, "BRISQUE as the authors' release (LIVE allmodel, ~0-100)"),
    _m("brisque_opencv", True, False, brisque, "BRISQUE as OpenCV's QualityBRISQUE (its LIVE model, 0-100)",
       flavour="opencv"),
    _m("edge_recovery", False, True, edge_recovery, "edge recovery on Y: SR gradient along the HR's top-10% edges / HR magnitude (1 = kept)"),
    _m("lpips", True, True, lpips, "LPIPS v0.1, AlexNet (needs alexnet-owt-7be5be79.pth)", net="alex"),
    _m("lpips-vgg", True, True, lpips, "LPIPS v0.1, VGG16 (needs vgg16-397923af.pth)", net="vgg"),
    _m("dists", True, True, dists, "DISTS (needs vgg16-397923af.pth)"),
]}

# pyiqa spellings that mean the same thing here
_ALIASES = {"psnry": "psnr_y", "lpips-alex": "lpips", "lpips_vgg": "lpips-vgg"}

_OPTIONS = {
    "psnr": {"crop_border"}, "psnr_y": {"crop_border"}, "ssim": {"crop_border"}, "ssim_y": {"crop_border"},
    "niqe": {"model", "convert_to", "crop_border", "flavour"}, "niqe_pyiqa": {"model", "convert_to", "crop_border"},
    "niqe_basicsr": {"model", "convert_to", "crop_border"}, "brisque": {"flavour"}, "brisque_opencv": set(),
    "edge_recovery": {"crop_border"},
    "lpips": {"weights", "device"}, "lpips-vgg": {"weights", "device"}, "dists": {"weights", "device"},
}


def get_metric(name: str, **options: Any) -> Metric:
    """The metric called `name` (pyiqa style), with options bound (e.g. crop_border=4, weights=DIR)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in METRICS:
        raise FewstepError(f"unknown metric {name!r}; available: {', '.join(METRICS)}")
    bad = sorted(set(options) - _OPTIONS[key])
    if bad:
        allowed = ", ".join(sorted(_OPTIONS[key])) or "none"
        raise FewstepError(f"metric {key} has no option {bad[0]!r} (options: {allowed})")
    return METRICS[key].with_options(**options) if options else METRICS[key]


__all__ = ["psnr", "ssim", "niqe", "brisque", "edge_recovery", "lpips", "dists", "NiqeModel", "fit_niqe_model",
           "Metric", "METRICS", "get_metric"]
