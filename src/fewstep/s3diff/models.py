"""Registry entry and Upscaler wrapper: ``fewstep.load("s3diff", weights=DIR)``.

DIR holds ``s3diff.pkl``, ``de_net.pth`` and an ``sd-turbo/`` folder in diffusers layout (or pass
``sd_turbo=PATH_OR_HUB_ID``). Files missing locally are looked up in the fewstep cache (and, for
SD-Turbo, the Hugging Face cache) and, online, downloaded from the Hugging Face Hub.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..registry import ModelSpec, OptionSpec
from ..upscaler import Upscaler
from ..weights import WeightFile

if TYPE_CHECKING:  # torch is imported where used, so listing models stays cheap
    import torch

_HUB = "https://huggingface.co/zhangap/S3Diff/resolve/main/"
S3DIFF_CKPT = WeightFile("s3diff.pkl", _HUB + "s3diff.pkl")  # 138 MB; no published checksum
DE_NET_CKPT = WeightFile("de_net.pth", _HUB + "de_net.pth")  # 9.42 MB
SD_TURBO_DIRNAME = "sd-turbo"
SD_TURBO = WeightFile(SD_TURBO_DIRNAME, hub_repo="stabilityai/sd-turbo")

OPTIONS = (
    OptionSpec("sd_turbo", str, None, "SD-Turbo folder (diffusers layout) or hub id; None: DIR/sd-turbo, the caches, the hub"),
    OptionSpec("upsample", str, "bilinear", "LR upsampling before the VAE", choices=("bilinear", "bicubic")),
    OptionSpec("latent_tile", int, 96, "UNet tile size in latent pixels (x8 output pixels)", min=1),
    OptionSpec("latent_overlap", int, 32, "UNet tile overlap in latent pixels", min=0),
    OptionSpec("color_fix", str, "wavelet", "colour correction against the LR", choices=("wavelet", "adain", "none")),
    OptionSpec("latent", str, "sample", "VAE posterior: sample (official) or mode (its mean)", choices=("sample", "mode")),
    OptionSpec("merge_lora", bool, False, "merge the LoRA weights into the base layers (faster, same output up to rounding)"),
    OptionSpec("tile_batch", int, 4, "UNet tiles per network call", min=1),
    OptionSpec("guidance_scale", float, None, "classifier-free guidance scale (None: the official 1.07)"),
    OptionSpec("vae_encoder_tile", int, 1024, "VAE encoder tile size in output pixels", min=0),
    OptionSpec("vae_decoder_tile", int, 224, "VAE decoder tile size in latent pixels", min=0),
)

MODELS = (
    ModelSpec("s3diff", "sr", 4,
              "S3Diff x4: one-step degradation-guided SR on SD-Turbo (needs s3diff.pkl, de_net.pth, sd-turbo/)",
              "fewstep.s3diff.models:load_s3diff", weights=(S3DIFF_CKPT, DE_NET_CKPT, SD_TURBO), options=OPTIONS,
              dtypes=("fp32", "bf16", "fp16"), default_tile=96 * 8 // 4,
              # overlapping latent tiles are blended with Gaussian weights, as the official code does;
              # measured 0.053 with the tiny random stand-in cut into 8-latent-pixel tiles (tests/
              # test_contract.py); not yet measured with the released weights
              tile_tolerance=0.06),
)


class S3DiffUpscaler(Upscaler):
    scale = 4
    nfe = 2  # one UNet call with the two guidance branches batched (2 evaluations of the UNet)

    def __init__(self, pipe, *, name: str = "s3diff", color_fix: str | None = "wavelet", latent: str = "sample") -> None:
        self.pipe = pipe
        self.name = name
        self.color_fix = color_fix
        self.latent = latent

    def restore(self, lr: torch.Tensor, *, seed: int = 0, mask: torch.Tensor | None = None) -> torch.Tensor:
        """lr (1,3,h,w) in [0,1] -> (1,3,4h,4w) in [0,1]; `seed` draws the encoder noise (as the official
        script does with --seed for its first image)."""
        import torch

        out = self.pipe(lr, generator=torch.Generator().manual_seed(int(seed)), latent=self.latent,
                        color_fix=self.color_fix)
        return out.to(lr.device)


def _sd_turbo_source(weights: str | Path | None, sd_turbo: str | Path | None, quiet: bool) -> str:
    """An explicit `sd_turbo` wins; else DIR/sd-turbo, the fewstep cache, the hub cache, the hub."""
    from ..weights import resolve

    if sd_turbo is not None:
        return str(sd_turbo)
    return str(resolve(SD_TURBO, weights, quiet=quiet))


def load_s3diff(name: str = "s3diff", weights: str | Path | None = None, device: str = "cpu", dtype: str = "fp32",
                *, sd_turbo: str | Path | None = None, upsample: str = "bilinear", latent_tile: int = 96,
                latent_overlap: int = 32, color_fix: str | None = "wavelet", latent: str = "sample",
                merge_lora: bool = False, tile_batch: int = 4, guidance_scale: float | None = None,
                vae_encoder_tile: int = 1024, vae_decoder_tile: int = 224, quiet: bool = True) -> S3DiffUpscaler:
    from ..weights import resolve
    from .pipeline import S3DiffPipeline

    ckpt = resolve(S3DIFF_CKPT, weights, quiet=quiet)
    de = resolve(DE_NET_CKPT, weights, quiet=quiet)
    pipe = S3DiffPipeline.from_pretrained(_sd_turbo_source(weights, sd_turbo, quiet), ckpt, de, upsample=upsample,
                                          latent_tile=latent_tile, latent_overlap=latent_overlap, device=device,
                                          dtype=dtype, merge_lora=merge_lora, quiet=quiet, tile_batch=tile_batch,
                                          vae_encoder_tile=vae_encoder_tile, vae_decoder_tile=vae_decoder_tile,
                                          **({} if guidance_scale is None else {"guidance_scale": guidance_scale}))
    return S3DiffUpscaler(pipe, name=name, color_fix=color_fix, latent=latent)
