"""Registry entry and Upscaler wrapper: ``fewstep.load("s3diff", weights=DIR)``.

DIR holds ``s3diff.pkl``, ``de_net.pth`` and an ``sd-turbo/`` folder in diffusers layout (or pass
``sd_turbo=PATH_OR_HUB_ID``). Files missing locally are looked up in the fewstep cache and, online,
downloaded from the Hugging Face Hub.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..upscaler import Upscaler
from ..weights import WeightFile, cache_dir, resolve

MODELS = [
    ("s3diff", "fewstep.s3diff.models:load_s3diff",
     "S3Diff x4: one-step degradation-guided SR on SD-Turbo (needs s3diff.pkl, de_net.pth, sd-turbo/)"),
]

S3DIFF_CKPT = WeightFile("s3diff.pkl", "https://huggingface.co/zhangap/S3Diff/resolve/main/s3diff.pkl")
DE_NET_CKPT = WeightFile("de_net.pth", "https://huggingface.co/zhangap/S3Diff/resolve/main/de_net.pth")
SD_TURBO_DIRNAME = "sd-turbo"


class S3DiffUpscaler(Upscaler):
    scale = 4
    nfe = 2  # one UNet call with the two guidance branches batched (2 evaluations of the UNet)

    def __init__(self, pipe, *, name: str = "s3diff", color_fix: str = "wavelet", latent: str = "sample") -> None:
        self.pipe = pipe
        self.name = name
        self.color_fix = color_fix
        self.latent = latent

    def restore(self, lr: torch.Tensor, *, seed: int = 0, mask: torch.Tensor | None = None) -> torch.Tensor:
        """lr (1,3,h,w) in [0,1] -> (1,3,4h,4w) in [0,1]; `seed` draws the encoder noise (as the official
        script does with --seed for its first image)."""
        out = self.pipe(lr, generator=torch.Generator().manual_seed(int(seed)), latent=self.latent,
                        color_fix=self.color_fix)
        return out.to(lr.device)


def _sd_turbo_source(weights: str | Path | None, sd_turbo: str | Path | None) -> str:
    from .model import SD_TURBO_HUB_ID

    if sd_turbo is not None:
        return str(sd_turbo)
    for folder in ([Path(weights)] if weights else []) + [cache_dir()]:
        if (folder / SD_TURBO_DIRNAME).is_dir():
            return str(folder / SD_TURBO_DIRNAME)
    return SD_TURBO_HUB_ID


def load_s3diff(name: str = "s3diff", weights: str | Path | None = None, device: str = "cpu", dtype: str = "fp32",
                *, sd_turbo: str | Path | None = None, upsample: str = "bilinear", latent_tile: int = 96,
                latent_overlap: int = 32, color_fix: str = "wavelet", latent: str = "sample",
                merge_lora: bool = False, tile_batch: int = 4, guidance_scale: float | None = None,
                vae_encoder_tile: int = 1024, vae_decoder_tile: int = 224, quiet: bool = True) -> S3DiffUpscaler:
    from .pipeline import S3DiffPipeline

    ckpt = resolve(S3DIFF_CKPT, weights, quiet=quiet)
    de = resolve(DE_NET_CKPT, weights, quiet=quiet)
    pipe = S3DiffPipeline.from_pretrained(_sd_turbo_source(weights, sd_turbo), ckpt, de, upsample=upsample,
                                          latent_tile=latent_tile, latent_overlap=latent_overlap, device=device,
                                          dtype=dtype, merge_lora=merge_lora, quiet=quiet, tile_batch=tile_batch,
                                          vae_encoder_tile=vae_encoder_tile, vae_decoder_tile=vae_decoder_tile,
                                          **({} if guidance_scale is None else {"guidance_scale": guidance_scale}))
    return S3DiffUpscaler(pipe, name=name, color_fix=color_fix, latent=latent)
