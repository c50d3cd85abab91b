"""Loss networks shared by the trainers: the patch discriminator and the LPIPS loss.

One `PatchDiscriminator` (PatchGAN, as pix2pix and taming use it) serves the autoencoder trainer
(GroupNorm, the default) and S3Diff's trainer (spectral normalisation); one `load_lpips_loss` gives
every trainer the same frozen LPIPS on [-1, 1] images, with the same rule when its backbone file is
missing (drop the term with a warning, or refuse when the config requires it).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..errors import FewstepError


class PatchDiscriminator(nn.Module):
    """PatchGAN: conv4x4/2 + LeakyReLU, then `layers`-1 conv4x4/2 and one conv4x4/1 block (each
    with the normalisation + LeakyReLU), and a 1-channel conv4x4/1: a realness logit per patch.
    Channels double per block up to 8x `channels`. DCGAN initialisation (N(0, 0.02)).

    norm="group": GroupNorm after each inner conv. Not the usual BatchNorm: batch statistics would
        differ between one process and DDP shards, and between train and eval.
    norm="spectral": spectral normalisation of every conv and no feature norm (the Lipschitz
        constraint that keeps a GAN term on a pretrained generator stable).
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 3, norm: str = "group"):
        super().__init__()
        if norm not in ("group", "spectral"):
            raise FewstepError(f"discriminator norm must be 'group' or 'spectral', got {norm!r}")
        sn = nn.utils.spectral_norm if norm == "spectral" else (lambda m: m)
        mods: list[nn.Module] = [sn(nn.Conv2d(in_channels, channels, 4, 2, 1)), nn.LeakyReLU(0.2, True)]
        c = channels
        for i in range(1, layers + 1):
            nc = channels * min(2 ** i, 8)
            stride = 2 if i < layers else 1
            if norm == "group":
                mods += [nn.Conv2d(c, nc, 4, stride, 1, bias=False), nn.GroupNorm(min(32, nc // 4), nc)]
            else:
                mods.append(sn(nn.Conv2d(c, nc, 4, stride, 1)))
            mods.append(nn.LeakyReLU(0.2, True))
            c = nc
        mods.append(sn(nn.Conv2d(c, 1, 4, 1, 1)))
        self.net = nn.Sequential(*mods)
        for m in self.modules():  # the DCGAN init taming uses
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.GroupNorm):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x in [-1, 1]
        return self.net(x)


class _LPIPSPixels(nn.Module):
    """LPIPS on images in [-1, 1] (fewstep.metrics' LPIPS takes [0, 1]); per-sample distances."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, y):
        return self.net((x + 1) / 2, (y + 1) / 2)


def load_lpips_loss(weight: float, device: torch.device | str, *, net: str = "vgg", weights_dir: str | None = None,
                    required: bool = False, what: str = "loss.lpips_weight"):
    """The frozen LPIPS loss module (inputs in [-1, 1]) or None when `weight` is 0 or LPIPS is unavailable.

    Uses `fewstep.metrics.deep.load_lpips` (torchvision backbone file from `weights_dir` or the
    fewstep cache; never downloads during training). Without the file the LPIPS term is dropped
    with a warning naming the option `what`, or an error when `required`.
    """
    if not weight:
        return None
    try:
        from ..metrics.deep import load_lpips as _load

        model = _load(net, weights_dir, "cpu", download=False)
    except (ImportError, FewstepError) as e:
        msg = f"{what}={weight} but LPIPS is unavailable ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        if required:
            raise FewstepError(msg) from None
        warnings.warn(msg + "; training without the LPIPS term", stacklevel=2)
        return None
    import copy

    model = copy.deepcopy(model).to(device).eval()  # the loader caches its instance; keep ours private
    for p in model.parameters():
        p.requires_grad_(False)
    return _LPIPSPixels(model)
