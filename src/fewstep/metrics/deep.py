"""LPIPS (Zhang et al. 2018, v0.1) and DISTS (Ding et al. 2020) in plain torch, without torchvision.

The ImageNet backbones are torchvision's own files, loaded from a weights folder (never shipped:
no registry package carries them):
- AlexNet: `alexnet-owt-7be5be79.pth`; VGG16: `vgg16-397923af.pth` (as torchvision saves them).
The feature extractors below register their layers under torchvision's key names
(`features.<index>.weight/bias`), so those files load with `torch.load(weights_only=True)`; their
`classifier.*` keys are ignored. The small calibrated heads are vendored in fewstep/data/metrics/:
LPIPS v0.1 linear layers (lpips 0.1.4, BSD-2) and DISTS alpha/beta (DISTS_pytorch 0.1, MIT).

LPIPS: inputs in [0, 1] -> [-1, 1] -> (x - shift) / scale; unit-normalised features of 5 layers;
squared differences weighted by 1x1 convs, spatially averaged and summed.
DISTS: VGG16 with L2 pooling (Hanning 3x3, stride 2) instead of max pooling; per-channel texture
(mean) and structure (covariance) similarities of the input and 5 stages, weighted by alpha/beta.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, FewstepError
from ..weights import WeightFile, resolve
from ._image import to_hwc255

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "metrics"

ALEXNET = WeightFile("alexnet-owt-7be5be79.pth", url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth")
VGG16 = WeightFile("vgg16-397923af.pth", url="https://download.pytorch.org/models/vgg16-397923af.pth")

# torchvision `features` layouts: ints are conv output channels, "M" a 2x2/3x3 max pool.
_VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class L2Pool(nn.Module):
    """DISTS' L2 pooling: sqrt(hanning3x3 * x^2), stride 2 (the filter is fixed, not saved)."""

    def __init__(self, channels: int):
        super().__init__()
        a = np.hanning(5)[1:-1]
        g = torch.tensor(np.outer(a, a) / np.outer(a, a).sum(), dtype=torch.float32)
        self.register_buffer("filter", g[None, None].repeat(channels, 1, 1, 1), persistent=False)

    def forward(self, x):
        out = F.conv2d(x * x, self.filter, stride=2, padding=1, groups=x.shape[1])
        return (out + 1e-12).sqrt()


class VGG16Features(nn.Module):
    """torchvision `vgg16().features` (key names `features.N.*`); optionally L2 pooling for DISTS."""

    def __init__(self, l2pool: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        ch = 3
        for v in _VGG16_CFG:
            if v == "M":
                layers.append(L2Pool(ch) if l2pool else nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(ch, v, 3, padding=1), nn.ReLU()]
                ch = v
        if l2pool:
            layers = layers[:-1]  # DISTS stops at relu5_3
        self.features = nn.Sequential(*layers)


class AlexNetFeatures(nn.Module):
    """torchvision `alexnet().features` (key names `features.N.*`)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
        )


def _taps(features: nn.Sequential, x, tap_indices: list[int]) -> list:
    outs = []
    for i, layer in enumerate(features):
        x = layer(x)
        if i in tap_indices:
            outs.append(x)
            if len(outs) == len(tap_indices):
                break
    return outs


def load_backbone(module: nn.Module, path: str | Path) -> None:
    """Load a torchvision backbone file into `module` (its `features.*` keys, strictly)."""
    path = Path(path)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a user-facing error
        raise CheckpointError(f"{path}: cannot read backbone weights ({e.__class__.__name__}: {e})") from None
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(sd).__name__}")
    want = module.state_dict()
    feats = {}
    for k, v in sd.items():
        if k.startswith("features."):
            if k not in want:
                raise CheckpointError(f"{path}: unexpected key {k} for this backbone")
            if tuple(v.shape) != tuple(want[k].shape):
                raise CheckpointError(f"{path}: {k} has shape {tuple(v.shape)}, expected {tuple(want[k].shape)}")
            feats[k] = v
        elif not k.startswith("classifier."):
            raise CheckpointError(f"{path}: unexpected key {k} (not a torchvision backbone file?)")
    missing = sorted(set(want) - set(feats))
    if missing:
        raise CheckpointError(f"{path}: missing key {missing[0]} ({len(missing)} missing)")
    module.load_state_dict(feats, strict=True)


class LPIPS(nn.Module):
    """LPIPS v0.1 with an AlexNet ('alex') or VGG16 ('vgg') trunk; forward(x, y) -> (N,) distances."""

    CHANNELS = {"alex": [64, 192, 384, 256, 256], "vgg": [64, 128, 256, 512, 512]}
    TAPS = {"alex": [1, 4, 7, 9, 11], "vgg": [3, 8, 15, 22, 29]}  # relu outputs in `features`

    def __init__(self, net: str = "alex"):
        super().__init__()
        if net not in self.CHANNELS:
            raise FewstepError(f"LPIPS net must be 'alex' or 'vgg', got {net!r}")
        self.net = net
        self.backbone = AlexNetFeatures() if net == "alex" else VGG16Features()
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in self.CHANNELS[net])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def load_heads(self, path: str | Path | None = None) -> None:
        """The calibrated linear heads (default: the vendored lpips 0.1.4 v0.1 file)."""
        path = Path(path) if path else DATA_DIR / f"lpips_v0.1_{self.net}.pth"
        sd = torch.load(path, map_location="cpu", weights_only=True)
        mapped = {f"{k.split('.')[0][3:]}.weight": v for k, v in sd.items()}  # lin3.model.1.weight -> 3.weight
        self.heads.load_state_dict(mapped, strict=True)

    def forward(self, x, y):
        def feats(t):
            t = (t * 2.0 - 1.0 - self.shift) / self.scale
            outs = _taps(self.backbone.features, t, self.TAPS[self.net])
            return [o / (o.pow(2).sum(1, keepdim=True).sqrt() + 1e-10) for o in outs]

        fx, fy = feats(x), feats(y)
        total = 0.0
        for head, a, b in zip(self.heads, fx, fy):
            total = total + head((a - b) ** 2).mean((2, 3))
        return total[:, 0]


class DISTS(nn.Module):
    """DISTS (VGG16 trunk with L2 pooling); forward(x, y) -> (N,) distances."""

    CHANNELS = [3, 64, 128, 256, 512, 512]
    TAPS = [3, 8, 15, 22, 29]

    def __init__(self):
        super().__init__()
        self.backbone = VGG16Features(l2pool=True)
        n = sum(self.CHANNELS)
        self.alpha = nn.Parameter(torch.full((1, n, 1, 1), 0.1))
        self.beta = nn.Parameter(torch.full((1, n, 1, 1), 0.1))
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def load_heads(self, path: str | Path | None = None) -> None:
        """alpha/beta (default: the vendored DISTS_pytorch 0.1 `weights.pt`)."""
        sd = torch.load(Path(path) if path else DATA_DIR / "dists_alpha_beta.pt", map_location="cpu", weights_only=True)
        self.alpha.data.copy_(sd["alpha"])
        self.beta.data.copy_(sd["beta"])

    def forward(self, x, y):
        def feats(t):
            return [t] + _taps(self.backbone.features, (t - self.mean) / self.std, self.TAPS)

        fx, fy = feats(x), feats(y)
        w = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / w, self.CHANNELS, dim=1)
        betas = torch.split(self.beta / w, self.CHANNELS, dim=1)
        c1 = c2 = 1e-6
        s = 0.0
        for a, b, al, be in zip(fx, fy, alphas, betas):
            ma, mb = a.mean((2, 3), keepdim=True), b.mean((2, 3), keepdim=True)
            texture = (2 * ma * mb + c1) / (ma * ma + mb * mb + c1)
            va = ((a - ma) ** 2).mean((2, 3), keepdim=True)
            vb = ((b - mb) ** 2).mean((2, 3), keepdim=True)
            cov = (a * b).mean((2, 3), keepdim=True) - ma * mb
            structure = (2 * cov + c2) / (va + vb + c2)
            s = s + (al * texture).sum(1, keepdim=True) + (be * structure).sum(1, keepdim=True)
        return 1.0 - s.reshape(-1)


@functools.lru_cache(maxsize=4)
def load_lpips(net: str = "alex", weights: str | None = None, device: str = "cpu", download: bool = True) -> LPIPS:
    """An LPIPS model with its torchvision backbone from `weights` (folder) or the fewstep cache."""
    model = LPIPS(net)
    load_backbone(model.backbone, resolve(ALEXNET if net == "alex" else VGG16, weights, download=download))
    model.load_heads()
    return model.to(device)


@functools.lru_cache(maxsize=2)
def load_dists(weights: str | None = None, device: str = "cpu", download: bool = True) -> DISTS:
    """A DISTS model with the torchvision VGG16 from `weights` (folder) or the fewstep cache."""
    model = DISTS()
    load_backbone(model.backbone, resolve(VGG16, weights, download=download))
    model.load_heads()
    return model.to(device)


def _as_tensor(img, what: str, device: str):
    arr = to_hwc255(img, what) / 255.0
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32))[None].to(device)


def _pair(img, ref, device: str):
    x, y = _as_tensor(img, "image", device), _as_tensor(ref, "reference", device)
    if x.shape != y.shape:
        raise FewstepError(f"image and reference differ in shape: {tuple(x.shape[2:])} vs {tuple(y.shape[2:])}")
    return x, y


def lpips(img, ref, net: str = "alex", *, weights: str | Path | None = None, device: str = "cpu") -> float:
    """LPIPS distance (lower is better). Needs the torchvision backbone file in `weights` or the cache."""
    model = load_lpips(net, str(weights) if weights else None, device)
    x, y = _pair(img, ref, device)
    with torch.inference_mode():
        return float(model(x, y)[0])


def dists(img, ref, *, weights: str | Path | None = None, device: str = "cpu") -> float:
    """DISTS distance (lower is better). Needs `vgg16-397923af.pth` in `weights` or the cache."""
    model = load_dists(str(weights) if weights else None, device)
    x, y = _pair(img, ref, device)
    with torch.inference_mode():
        return float(model(x, y)[0])
