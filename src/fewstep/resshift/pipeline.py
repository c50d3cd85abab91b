"""ResShift sampling: LR image in, restored image out.

`ResShiftPipeline.sample` is the official per-image/per-patch sampling function:
    pad LR (reflect, bottom/right) to a multiple of lq_size -> bicubic x sf (no clamp)
    -> z_y = VQ.encode (no quantisation) -> x_T = z_y + kappa sqrt(eta_T) eps
    -> T posterior steps with x0 predicted by the UNet (fed x_t / std, raw t, the padded LR)
    -> VQ.decode (quantises) -> crop to LR size x sf.
`ResShiftUpscaler` wraps it for whole images: tiling with Gaussian (default) or uniform
(official) blending, per-tile seeds, inpainting masks, [0,1] in and out.

Noise: every random draw comes from a CPU generator seeded by (seed, tile top, tile left), so a
sample depends only on the seed, its content and its tile position — not on the batch it was
run in, the device, or how many other tiles there are. An untiled run uses position (0, 0), so a
single tile covering the image gives exactly the untiled result.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import FewstepError
from ..nn import speed
from ..progress import tick as progress_tick
from ..tiling import run_tiled
from ..upscaler import Upscaler
from ..utils.dtypes import torch_dtype
from ..utils.padding import pad_to_multiple
from ..utils.seeding import seed_from
from .chain import ResShiftChain


def tile_seed(seed: int, top: int = 0, left: int = 0) -> int:
    """A 63-bit seed derived from (seed, tile position); stable across runs and machines."""
    return seed_from(f"fewstep:{int(seed)}:{int(top)}:{int(left)}")


class ResShiftPipeline:
    """UNet + VQ + chain. `sample` works on (B,3,h,w) LR tensors in [-1, 1]."""

    def __init__(self, unet, vq, chain: ResShiftChain, scale: int = 4, *, lq_size: int | None = None,
                 latent_scale_factor: float = 1.0):
        self.unet, self.vq, self.chain, self.scale = unet, vq, chain, int(scale)
        if speed.WINOGRAD and speed.winograd_available():  # fewer multiplies in every 3x3 conv (speed.py)
            speed.winograd_convs(unet)
            speed.winograd_convs(vq)
        else:  # NHWC VQ convs: faster oneDNN kernels than NCHW on large maps (speed.py)
            for part in ("encoder", "decoder") if speed.CHANNELS_LAST_VQ else ():
                if hasattr(vq, part):
                    speed.channels_last(getattr(vq, part))
        self.lq_size = int(lq_size or getattr(unet, "lq_size", 64))
        self.latent_scale_factor = latent_scale_factor

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to(self, device) -> "ResShiftPipeline":
        self.unet.to(device)
        self.vq.to(device)
        return self

    def latent_shape(self, lr_shape: Sequence[int]) -> tuple[int, int, int]:
        h, w = lr_shape[-2:]
        h, w = h + (-h) % self.lq_size, w + (-w) % self.lq_size
        f = self.vq.downsample_factor
        return self.vq.embed_dim, h * self.scale // f, w * self.scale // f

    def draw_noise(self, lr_shape: Sequence[int], seeds: Sequence[int]) -> list[torch.Tensor]:
        """[eps_prior, eps_{T-1}, ..., eps_0], each (B, C, h, w), sample i from seeds[i]."""
        shape = self.latent_shape(lr_shape)
        per_sample = []
        for s in seeds:
            g = torch.Generator("cpu").manual_seed(int(s))
            per_sample.append(torch.randn((self.chain.steps + 1, 1, *shape), generator=g))
        stacked = torch.cat(per_sample, dim=1)  # (T+1, B, C, h, w)
        return [n.to(self.device) for n in stacked]

    def _autocast(self, dtype: torch.dtype | None):
        if dtype is None or dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @torch.no_grad()
    def sample(self, lr: torch.Tensor, noise: Sequence[torch.Tensor] | None = None, *, seed: int | Sequence[int] = 0,
               mask: torch.Tensor | None = None, dtype: torch.dtype | str | None = None,
               callback=None) -> torch.Tensor:
        """lr in [-1,1] (B,3,h,w) -> decoded image (B,3,h*sf,w*sf), NOT clamped.

        mask: (B,1,h,w) in {0,1}, 1 = hole (inpainting models); hole pixels of the LR are set to
        -1 as in training. dtype: autocast dtype for the networks (fp32 by default); the chain
        arithmetic always runs in float32.
        """
        if isinstance(dtype, str):
            dtype = torch_dtype(dtype)
        lr = lr.to(self.device, torch.float32)
        b, _, h, w = lr.shape
        lq, _ = pad_to_multiple(lr, self.lq_size)
        mask_in = None
        if mask is not None:
            m, _ = pad_to_multiple(mask.to(self.device, torch.float32), self.lq_size)
            lq = torch.where(m > 0.5, torch.full_like(lq, -1.0), lq)
            mask_in = m * 2 - 1
        if noise is None:
            seeds = [seed] * b if isinstance(seed, int) else list(seed)
            noise = self.draw_noise(lr.shape, seeds)
        if len(noise) != self.chain.steps + 1:
            raise ValueError(f"need {self.chain.steps + 1} noise tensors (prior + one per step), got {len(noise)}")
        with self._autocast(dtype):
            up = F.interpolate(lq, scale_factor=self.scale, mode="bicubic") if self.scale != 1 else lq
            z_y = self.vq.encode(up).float() * self.latent_scale_factor
        denoise = self.chain.denoiser(self.unet, z_y, lq, mask_in, autocast=lambda: self._autocast(dtype))
        z = self.chain.prior_sample(z_y, noise[0].to(z_y))
        for k, t in enumerate(reversed(range(self.chain.steps))):
            tt = torch.full((b,), t, dtype=torch.long, device=self.device)
            x0 = denoise(z, tt)
            z = self.chain.step(z, x0, tt, noise[k + 1].to(z))
            if callback is not None:
                callback(k, t, z, x0)
            progress_tick("step", k + 1, self.chain.steps)
        with self._autocast(dtype):
            out = self.vq.decode(z / self.latent_scale_factor).float()
        return out[..., : h * self.scale, : w * self.scale]


class ResShiftUpscaler(Upscaler):
    """A `ResShiftPipeline` behind the `Upscaler` interface, with tiling and seeds per tile."""

    def __init__(self, pipeline: ResShiftPipeline, *, name: str = "resshift", tile: int | None = 256,
                 overlap: int = 32, blend: str = "gaussian", tile_batch: int = 1, dtype: str | torch.dtype | None = None,
                 needs_mask: bool = False, quiet: bool = True):
        self.pipe, self.name, self.scale = pipeline, name, pipeline.scale
        self.tile, self.overlap, self.blend, self.tile_batch = tile, overlap, blend, max(1, int(tile_batch))
        self.dtype, self.needs_mask, self.quiet = dtype, needs_mask, quiet
        self.nfe = pipeline.chain.steps

    @torch.no_grad()
    def restore(self, lr: torch.Tensor, *, seed: int = 0, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.needs_mask and mask is None:
            raise FewstepError(f"model {self.name!r} needs a mask (--mask)")
        x = lr.to(self.pipe.device, torch.float32) * 2 - 1
        b = x.shape[0]
        m = mask.to(x.device, torch.float32) if mask is not None else None
        if m is not None:  # carry the mask as an extra channel so it is cut into the same tiles
            x = torch.cat([x, m], dim=1)

        def restore_tiles(crops, tiles):
            seeds = [tile_seed(seed, t.top, t.left) for t in tiles for _ in range(b)]
            img, mk = (crops[:, :3], crops[:, 3:]) if m is not None else (crops, None)
            return self.pipe.sample(img, seed=seeds, mask=mk, dtype=self.dtype).clamp(-1, 1)

        y = run_tiled(x, restore_tiles, scale=self.scale, tile=self.tile, overlap=self.overlap, blend=self.blend,
                      tile_batch=self.tile_batch, progress=not self.quiet, out_channels=3) * 0.5 + 0.5
        if m is not None and self.scale == 1:  # keep the known pixels (the official `mask_back`)
            y = y * m + lr.to(y) * (1 - m)
        return y.clamp(0, 1)
