"""S3DiffPipeline: LR image -> one-step SD-Turbo super-resolution, official pre/post-processing.

    pipe = S3DiffPipeline.from_pretrained(sd_turbo_dir, s3diff_ckpt, de_net_ckpt)
    out = pipe(lr, encoder_noise=noise, color_fix="wavelet")   # (B,3,4h,4w) float in [0, 1]
    pipe.degradation_scores(lr)                                 # (B, 2): blur, noise

Differences from the official script, none of which change the math: both guidance passes run as one
batched UNet call; the prompt embeddings are computed once; no gc/empty_cache per call; the encoder
noise comes from an explicit generator (seed 0 by default) or tensor; optional per-image LoRA merge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import FewstepError
from .colorfix import COLOR_FIXES, color_fix as apply_color_fix, to_8bit
from .model import GUIDANCE_SCALE, NEG_PROMPT, POS_PROMPT, S3DiffModel, _first_line, resolve_sd_turbo
from ..utils.dtypes import torch_dtype
from ..utils.padding import pad_to_multiple
from .tiling import gaussian_weights, tile_plan

UPSAMPLE_MODES = ("bilinear", "bicubic")


class S3DiffPipeline:
    scale = 4

    def __init__(self, model: S3DiffModel, de_net: torch.nn.Module, text_encoder: torch.nn.Module | None,
                 tokenizer: Any, *, upsample: str = "bilinear", latent_tile: int = 96, latent_overlap: int = 32,
                 tile_batch: int = 4, guidance_scale: float = GUIDANCE_SCALE, pos_prompt: str = POS_PROMPT,
                 neg_prompt: str = NEG_PROMPT, merge_lora: bool | str = False, vae_encoder_tile: int = 1024,
                 vae_decoder_tile: int = 224, device: str | torch.device = "cpu",
                 dtype: str | torch.dtype = "fp32", quiet: bool = True) -> None:
        if upsample not in UPSAMPLE_MODES:
            raise FewstepError(f"unknown upsample mode {upsample!r}; choose bilinear or bicubic")
        tile_plan(1, 1, latent_tile, latent_overlap)  # validates tile/overlap
        self.device = torch.device(device)
        self.dtype = torch_dtype(dtype)
        self.model = model.eval().requires_grad_(False).to(self.device)
        # Degradation scores and modulation matrices are tiny and steer everything: keep them fp32.
        if self.dtype != torch.float32:
            self.model.unet.to(self.dtype)
            self.model.vae.to(self.dtype)
        self.de_net = de_net.eval().requires_grad_(False).to(self.device, torch.float32)
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.upsample = upsample
        self.latent_tile, self.latent_overlap, self.tile_batch = latent_tile, latent_overlap, max(1, tile_batch)
        self.guidance_scale = float(guidance_scale)
        self.pos_prompt, self.neg_prompt = pos_prompt, neg_prompt
        self.merge_lora = merge_lora
        self.vae_encoder_tile, self.vae_decoder_tile = vae_encoder_tile, vae_decoder_tile
        self.quiet = quiet
        self._emb: tuple[torch.Tensor, torch.Tensor] | None = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, sd_turbo: str | Path, s3diff_ckpt: str | Path, de_net_ckpt: str | Path, *,
                        upsample: str = "bilinear", latent_tile: int = 96, latent_overlap: int = 32,
                        device: str = "cpu", dtype: str = "fp32", **kwargs) -> "S3DiffPipeline":
        """sd_turbo: diffusers-layout folder (or hub id when online); s3diff.pkl; de_net.pth."""
        from .deresnet import load_deresnet
        from .model import read_official_checkpoint

        ckpt = read_official_checkpoint(s3diff_ckpt)  # read first: cheap, and fails before the big loads
        de_net = load_deresnet(de_net_ckpt)
        src = resolve_sd_turbo(sd_turbo)
        model = S3DiffModel.from_sd_turbo(src, rank_unet=int(ckpt.get("rank_unet", 32)),
                                          rank_vae=int(ckpt.get("rank_vae", 16)),
                                          unet_targets=ckpt.get("unet_lora_target_modules"),
                                          vae_targets=ckpt.get("vae_lora_target_modules"))
        model.load_official(ckpt)
        text_encoder, tokenizer = load_text_encoder(src)
        return cls(model, de_net, text_encoder, tokenizer, upsample=upsample, latent_tile=latent_tile,
                   latent_overlap=latent_overlap, device=device, dtype=dtype, **kwargs)

    # ------------------------------------------------------------------ stages
    @torch.no_grad()
    def encode_prompt(self, text: str) -> torch.Tensor:
        """Last hidden state (1, 77, C) of the text encoder: padded to 77 with the pad id, no mask."""
        if self.text_encoder is None or self.tokenizer is None:
            raise FewstepError("this pipeline has no text encoder; pass prompt embeddings instead")
        ids = self.tokenizer(text, max_length=self.tokenizer.model_max_length, padding="max_length",
                             truncation=True, return_tensors="pt").input_ids
        te = self.text_encoder.to(self.device)
        return te(ids.to(self.device))[0].float()

    def prompt_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(positive, negative) embeddings, computed once and cached (the prompts are constants)."""
        if self._emb is None:
            self._emb = (self.encode_prompt(self.pos_prompt), self.encode_prompt(self.neg_prompt))
        return self._emb

    def set_prompt_embeddings(self, pos: torch.Tensor, neg: torch.Tensor) -> None:
        self._emb = (pos.to(self.device, torch.float32), neg.to(self.device, torch.float32))

    @torch.no_grad()
    def degradation_scores(self, lr: torch.Tensor) -> torch.Tensor:
        """(B, 2) = [blur, noise] in [0, 1], from the native-resolution LR in [0, 1]."""
        return self.de_net(self._check(lr).float())

    @torch.no_grad()
    def modulation(self, scores: torch.Tensor, intermediates: dict | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(vae_mod (B,6,rv,rv), unet_mod (B,10,ru,ru)) from the (B,2) scores."""
        return self.model.modulation(scores.to(self.device, torch.float32), intermediates=intermediates)

    def upsample_lr(self, lr: torch.Tensor) -> torch.Tensor:
        h, w = lr.shape[-2:]
        return F.interpolate(lr.float(), size=(h * self.scale, w * self.scale), mode=self.upsample,
                             align_corners=False)

    def _check(self, lr: torch.Tensor) -> torch.Tensor:
        if not isinstance(lr, torch.Tensor) or lr.ndim != 4 or lr.shape[1] != 3:
            raise FewstepError(f"expected an LR tensor of shape (B, 3, h, w), got "
                               f"{tuple(lr.shape) if isinstance(lr, torch.Tensor) else type(lr).__name__}")
        if lr.shape[-1] < 2 or lr.shape[-2] < 2:
            raise FewstepError(f"LR image {tuple(lr.shape[-2:])} is too small")
        return lr.to(self.device)

    # ------------------------------------------------------------------ UNet
    def _eps_cfg(self, z: torch.Tensor, unet_mod: torch.Tensor, merged: dict | None,
                 inter: dict | None = None) -> torch.Tensor:
        """Guided eps for z (n, 4, h, w) of ONE image (unet_mod batch 1): pos and neg in one UNet call."""
        pos, neg = self.prompt_embeddings()
        n = z.shape[0]
        emb = torch.cat([pos.expand(n, -1, -1), neg.expand(n, -1, -1)])
        eps = self.model.eps(torch.cat([z, z]), emb, unet_mod, merged=merged)
        e_pos, e_neg = eps[:n], eps[n:]
        if inter is not None:
            inter.setdefault("eps_pos", []).append(e_pos)
            inter.setdefault("eps_neg", []).append(e_neg)
        return e_neg + self.guidance_scale * (e_pos - e_neg)

    def _eps_image(self, z: torch.Tensor, unet_mod: torch.Tensor, merged: dict | None,
                   inter: dict | None = None) -> torch.Tensor:
        h, w = z.shape[-2:]
        t, offsets = tile_plan(h, w, self.latent_tile, self.latent_overlap)
        if not offsets:
            return self._eps_cfg(z, unet_mod, merged, inter)
        wt = gaussian_weights(t).to(z.device)[None, None]  # float64, as the official blend
        acc = torch.zeros(z.shape, device=z.device, dtype=torch.float32)
        cnt = torch.zeros(z.shape, device=z.device, dtype=torch.float32)
        tiles = []
        for i in range(0, len(offsets), self.tile_batch):
            chunk = offsets[i:i + self.tile_batch]
            zt = torch.cat([z[:, :, y:y + t, x:x + t] for y, x in chunk])
            cfg = self._eps_cfg(zt, unet_mod, merged, inter)
            for k, (y, x) in enumerate(chunk):
                acc[:, :, y:y + t, x:x + t] += cfg[k:k + 1] * wt  # float64 product, rounded on add
                cnt[:, :, y:y + t, x:x + t] += wt
                tiles.append(cfg[k:k + 1])
        if inter is not None:
            inter.setdefault("tile_eps_cfg", []).append(torch.cat(tiles))
            inter["tile_offsets"] = offsets
            inter["tile_weights"] = wt[0, 0]
        return acc / cnt

    # ------------------------------------------------------------------ VAE
    def _encoder_runner(self, hw: tuple[int, int]):
        from .vae_tiling import TiledEncoder

        if max(hw) > self.vae_encoder_tile + 2 * 32:
            return TiledEncoder(self.model.vae.encoder, tile=self.vae_encoder_tile)
        return None

    def _decoder_runner(self, hw: tuple[int, int]):
        from .vae_tiling import TiledDecoder

        if max(hw) > self.vae_decoder_tile + 2 * 11:
            return TiledDecoder(self.model.vae.decoder, tile=self.vae_decoder_tile)
        return None

    # ------------------------------------------------------------------ full forward
    @torch.no_grad()
    def __call__(self, lr: torch.Tensor, *, encoder_noise: torch.Tensor | None = None,
                 generator: torch.Generator | int | None = None, latent: str = "sample",
                 color_fix: str | None = "wavelet", quantize: bool = True, rng_parity: bool = False,
                 return_intermediates: bool = False):
        """lr (B,3,h,w) in [0,1] -> (B,3,4h,4w) in [0,1].

        encoder_noise: (B,4,H/8,W/8) standard normal for the posterior sample (official parity);
        otherwise drawn from `generator` (a torch.Generator or int seed; default seed 0), per image in
        order. latent="mode" uses the posterior mean instead (deterministic, slightly different).
        quantize: run the colour fix on 8-bit-truncated images as the official script does.
        rng_parity: also draw (and add) the scheduler's 1e-10 variance noise, like DDPMScheduler.step.
        color_fix: "wavelet", "adain", or None / "none" for no colour fix.
        """
        if color_fix is None:  # Python's "off"; "none" stays accepted for the CLI and configs
            color_fix = "none"
        if color_fix not in COLOR_FIXES and color_fix != "nofix":
            raise FewstepError(f"unknown colour fix {color_fix!r}; choose one of {', '.join(COLOR_FIXES)}")
        if latent not in ("sample", "mode"):
            raise FewstepError(f"latent must be 'sample' or 'mode', not {latent!r}")
        lr = self._check(lr).float()
        b, _, h, w = lr.shape
        inter: dict[str, Any] | None = {} if return_intermediates else None
        scores = self.degradation_scores(lr)
        mod_inter: dict[str, torch.Tensor] | None = {} if return_intermediates else None
        vae_mod, unet_mod = self.modulation(scores, mod_inter)
        lr_up = self.upsample_lr(lr)
        x, (ph, pw) = pad_to_multiple((lr_up * 2 - 1).clamp(-1, 1), 64)
        gen = generator
        if encoder_noise is None and latent == "sample" and not isinstance(gen, torch.Generator):
            gen = torch.Generator().manual_seed(0 if gen is None else int(gen))
        lat_hw = (x.shape[-2] // 8, x.shape[-1] // 8)
        if encoder_noise is not None and tuple(encoder_noise.shape) != (b, 4, *lat_hw):
            raise FewstepError(f"encoder_noise must have shape {(b, 4, *lat_hw)}, got {tuple(encoder_noise.shape)}")
        enc_runner = self._encoder_runner(x.shape[-2:])
        dec_runner = self._decoder_runner(lat_hw)
        outs = []
        if self.merge_lora != "inplace" and self.model.lora_merged:
            self.model.unmerge_lora_()  # a previous in-place merge must not add to the modulated LoRA
        for i in range(b):
            vm, um = vae_mod[i:i + 1], unet_mod[i:i + 1]
            merged_v = merged_u = None
            if self.merge_lora == "inplace":  # fast path: plain modules with this image's weights
                self.model.merge_lora_(vm, um)
                vm = um = None
            elif self.merge_lora:
                merged_v, merged_u = self.model.merged_weights(vm, um)
            xi = x[i:i + 1].to(self.dtype)
            mean, std = self.model.encode_posterior(xi, vm, merged=merged_v, encoder=enc_runner)
            mean, std = mean.float(), std.float()
            if latent == "mode":
                z = mean * self.model.scaling_factor
            else:
                noise = encoder_noise[i:i + 1] if encoder_noise is not None else \
                    torch.randn(mean.shape, generator=gen, dtype=torch.float32)
                z = (mean + std * noise.to(mean.device, torch.float32)) * self.model.scaling_factor
            eps = self._eps_image(z, um, merged_u, inter)
            x0 = self.model.x0(z, eps)
            if rng_parity and isinstance(gen, torch.Generator):
                x0 = x0 + 1e-10 * torch.randn(x0.shape, generator=gen, dtype=torch.float32).to(x0.device)
            dec = self.model.decode(x0, decoder=dec_runner).clamp(-1, 1)
            out = dec[:, :, :h * self.scale, :w * self.scale] * 0.5 + 0.5
            if inter is not None:
                for k, v in (("posterior_mean", mean), ("posterior_std", std), ("lq_latent", z), ("eps_cfg", eps),
                             ("x0", x0), ("out_float", out)):
                    inter.setdefault(k, []).append(v)
            outs.append(out)
        out = torch.cat(outs)
        fixed = out
        if color_fix not in ("none", "nofix"):
            src = lr_up.clamp(0, 1)
            if quantize:
                fixed = apply_color_fix(to_8bit(out), to_8bit(src), color_fix)
            else:
                fixed = apply_color_fix(out, src, color_fix)
        if inter is None:
            return fixed
        res = {k: (torch.cat(v) if isinstance(v, list) and v and isinstance(v[0], torch.Tensor) else v)
               for k, v in inter.items()}
        res.update(mod_inter or {})
        res.update(deg_score=scores, vae_mod=vae_mod, unet_mod=unet_mod, lr_up=lr_up, pad_hw=(ph, pw))
        return fixed, res


def load_text_encoder(src: str):
    from transformers import AutoTokenizer, CLIPTextModel

    try:
        tok = AutoTokenizer.from_pretrained(src, subfolder="tokenizer")
        te = CLIPTextModel.from_pretrained(src, subfolder="text_encoder")
    except (OSError, ValueError) as e:
        raise FewstepError(f"cannot load the text encoder/tokenizer from {src}: {_first_line(e)}") from None
    return te.eval().requires_grad_(False), tok
