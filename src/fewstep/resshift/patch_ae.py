"""A small f4 latent autoencoder that trains in minutes on a CPU (the `fewstep-small` latent space).

Encoder: a linear map of each 4x4x3 patch (pixel-unshuffle, then a 1x1 conv 48 -> C) fitted by
PCA on training photos and whitened, so every latent channel has unit variance. On the shared
photos 8 channels keep 99.5 % of the patch variance (34.3 dB PSNR reconstructed linearly).
Decoder: the exact inverse of that projection (1x1 conv C -> 48, pixel-shuffle) plus a learned
residual - plain residual conv blocks at 1/4 and 1/2 resolution and pixel-shuffle upsampling -
whose last conv starts at zero, so training starts from the PCA reconstruction and only adds
the detail the truncated components lost (trained with L1 and a patch discriminator).

Why this shape instead of the LDM VQ-f4 (`vq.py`): every convolution runs at 1/4 or 1/2
resolution and no layer normalises over the image, so training is ~10x cheaper than the LDM
layout at the same width and tiled decoding is exact up to the receptive field. Why whitened:
ResShift adds noise of the same size to every latent channel; with unit-variance channels that
noise is equally strong for coarse and fine structure, as in the VQ latents the chain was designed
for. The encoder stays fixed by default (`train_encoder=False`) so the latent statistics the chain
relies on do not drift while the decoder trains.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class _ResBlock(nn.Module):
    """x + conv(SiLU(conv(SiLU(x)))); the second conv starts at zero (identity block)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class PatchAutoencoder(nn.Module):
    """f = 4 autoencoder: linear (PCA) encoder, linear inverse + learned residual decoder.

    encode(x in [-1, 1]) -> (B, embed_dim, H/4, W/4); decode(z) -> (B, 3, H, W), not clamped.
    `channels`/`blocks`: width and number of residual blocks at 1/4 and 1/2 resolution.
    """

    kind = "patch"

    def __init__(self, embed_dim: int = 8, channels: Sequence[int] = (128, 64), blocks: Sequence[int] = (4, 2),
                 train_encoder: bool = False, **unused):
        super().__init__()
        c4, c2 = int(channels[0]), int(channels[1])
        self.embed_dim, self.downsample_factor = int(embed_dim), 4
        self.config = {"embed_dim": self.embed_dim, "channels": [c4, c2], "blocks": [int(b) for b in blocks],
                       "train_encoder": bool(train_encoder)}
        self.encoder = nn.Conv2d(48, self.embed_dim, 1)  # on pixel_unshuffle(x, 4)
        self.linear_decoder = nn.Conv2d(self.embed_dim, 48, 1)  # then pixel_shuffle(., 4)
        self.decoder = nn.Sequential(
            nn.Conv2d(self.embed_dim, c4, 3, padding=1),
            *[_ResBlock(c4) for _ in range(int(blocks[0]))],
            nn.SiLU(), nn.Conv2d(c4, 4 * c2, 3, padding=1), nn.PixelShuffle(2),
            *[_ResBlock(c2) for _ in range(int(blocks[1]))],
            nn.SiLU(), nn.Conv2d(c2, 12, 3, padding=1), nn.PixelShuffle(2),
        )
        last = self.decoder[-2]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        if not train_encoder:
            for p in self.encoder.parameters():
                p.requires_grad_(False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image in [-1, 1] (sides divisible by 4) -> whitened latent."""
        return self.encoder(F.pixel_unshuffle(x, 4))

    def decode(self, z: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        """Latent -> image in about [-1, 1] (not clamped). `force_not_quantize` is accepted for the
        VQ interface; there is nothing to quantise."""
        return F.pixel_shuffle(self.linear_decoder(z), 4) + self.decoder(z)

    def forward(self, x: torch.Tensor):
        """Training forward: (reconstruction, regulariser = 0: the latent is a fixed projection)."""
        return self.decode(self.encode(x)), x.new_zeros(())

    @torch.no_grad()
    def fit_pca(self, patches: torch.Tensor) -> dict[str, float]:
        """Set encoder and linear decoder from patches (N, 48) in [-1, 1] (pixel-unshuffle order).

        Encoder rows are the top principal directions divided by their standard deviation; the
        linear decoder is its inverse on that subspace plus the mean. Returns the explained
        variance fraction and the linear reconstruction PSNR on these patches (images in [0, 1]).
        """
        p = patches.double()
        mean = p.mean(0)
        cov = (p - mean).T @ (p - mean) / p.shape[0]
        evals, evecs = torch.linalg.eigh(cov)
        order = torch.argsort(evals, descending=True)[: self.embed_dim]
        vecs, std = evecs[:, order], evals[order].clamp_min(1e-12).sqrt()
        # fix each direction's sign (eigh's is arbitrary): largest-magnitude entry positive
        signs = torch.sign(vecs.gather(0, vecs.abs().argmax(0, keepdim=True)))[0]
        vecs = vecs * signs
        w_enc = (vecs / std).T  # (C, 48)
        self.encoder.weight.copy_(w_enc.reshape(self.embed_dim, 48, 1, 1).float())
        self.encoder.bias.copy_((-w_enc @ mean).float())
        self.linear_decoder.weight.copy_((vecs * std).reshape(48, self.embed_dim, 1, 1).float())
        self.linear_decoder.bias.copy_(mean.float())
        rest = evals.sum() - evals[order].sum()
        mse01 = float(rest) / 48 / 4  # per element, [-1, 1] -> [0, 1] units
        return {"explained": float(evals[order].sum() / evals.sum()), "linear_psnr": 10 * torch.log10(torch.tensor(1 / mse01)).item()}


def sample_patches(hr_dir, count: int = 400_000, seed: int = 0) -> torch.Tensor:
    """`count` random 4x4 patches (N, 48) in [-1, 1] from the images of `hr_dir`, spread evenly
    over the images (aligned to the 4-pixel grid, as the encoder sees them)."""
    from ..imageio import list_images, read_rgb8

    files = [f for f, _ in list_images([hr_dir])]
    if not files:
        from ..errors import FewstepError

        raise FewstepError(f"{hr_dir}: no images to fit the autoencoder's PCA on")
    g = torch.Generator().manual_seed(int(seed))
    per = max(1, count // len(files))
    out = []
    for f in files:
        x = torch.from_numpy(read_rgb8(f)).permute(2, 0, 1).float() / 127.5 - 1
        h, w = x.shape[1] // 4 * 4, x.shape[2] // 4 * 4
        cols = F.pixel_unshuffle(x[None, :, :h, :w], 4)[0].reshape(48, -1)
        idx = torch.randint(0, cols.shape[1], (per,), generator=g)
        out.append(cols[:, idx].T)
    return torch.cat(out)


def build_autoencoder(config: dict) -> nn.Module:
    """The latent autoencoder a config describes: ``{"kind": "patch", ...}`` -> `PatchAutoencoder`,
    anything else (the official ``{embed_dim, n_embed, ddconfig}``) -> `VQModel`."""
    cfg = dict(config)
    if cfg.pop("kind", "vq") == "patch":
        return PatchAutoencoder(**cfg)
    from .vq import VQModel

    return VQModel(**cfg)
