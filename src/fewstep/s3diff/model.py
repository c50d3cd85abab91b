"""The S3Diff network: SD-Turbo UNet/VAE with degradation-modulated LoRA, plus the small nets that
turn degradation scores into the per-block modulation matrices.

Everything that varies per image (the modulation matrices, or per-image merged weights) is an
explicit argument of `S3DiffModel.encode_posterior` / `S3DiffModel.eps`; the modules keep no
per-call state.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, FewstepError, WeightsNotFoundError
from .lora import (inject_lora, regex_target_matcher, unet_block_id, unet_target_matcher,
                   vae_block_id)

# Official defaults (src/s3diff_tile.py, src/my_utils/training_utils.py).
UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_shortcut", "conv_out",
                "proj_in", "proj_out", "ff.net.2", "ff.net.0.proj"]
VAE_TARGETS = r"^encoder\..*(conv1|conv2|conv_in|conv_shortcut|conv|conv_out|to_k|to_q|to_v|to_out\.0)$"
POS_PROMPT = ("A high-resolution, 8K, ultra-realistic image with sharp focus, vibrant colors, "
              "and natural lighting.")
NEG_PROMPT = ("oil painting, cartoon, blur, dirty, messy, low quality, deformation, low resolution, "
              "oversmooth")
GUIDANCE_SCALE = 1.07
TIMESTEP = 999
N_VAE_BLOCKS, N_UNET_BLOCKS = 6, 10


class DegradationModulation(nn.Module):
    """Scores (B, 2) = [blur, noise] -> VAE matrices (B, 6, rv, rv) and UNet matrices (B, 10, ru, ru)."""

    def __init__(self, rank_vae: int = 16, rank_unet: int = 32, num_embeddings: int = 64,
                 block_dim: int = 64) -> None:
        super().__init__()
        self.rank_vae, self.rank_unet = rank_vae, rank_unet
        # Fixed random Fourier frequencies; always loaded from the checkpoint, never re-drawn.
        self.register_buffer("w", torch.randn(num_embeddings))
        self.vae_de_mlp = nn.Sequential(nn.Linear(num_embeddings * 4, 256), nn.ReLU())
        self.unet_de_mlp = nn.Sequential(nn.Linear(num_embeddings * 4, 256), nn.ReLU())
        self.vae_block_mlp = nn.Sequential(nn.Linear(block_dim, block_dim), nn.ReLU())
        self.unet_block_mlp = nn.Sequential(nn.Linear(block_dim, block_dim), nn.ReLU())
        self.vae_fuse_mlp = nn.Linear(256 + block_dim, rank_vae ** 2)
        self.unet_fuse_mlp = nn.Linear(256 + block_dim, rank_unet ** 2)
        self.vae_block_embeddings = nn.Embedding(N_VAE_BLOCKS, block_dim)
        self.unet_block_embeddings = nn.Embedding(N_UNET_BLOCKS, block_dim)

    def init_for_training(self) -> None:
        """Official from-scratch init: kaiming-normal x 1e-5 and zero bias on the six MLPs (M ~ 0)."""
        for mlp in (self.vae_de_mlp, self.unet_de_mlp, self.vae_block_mlp, self.unet_block_mlp,
                    self.vae_fuse_mlp, self.unet_fuse_mlp):
            for m in mlp.modules():
                if isinstance(m, nn.Linear):
                    nn.init.kaiming_normal_(m.weight)
                    m.weight.data.mul_(1e-5)
                    nn.init.zeros_(m.bias)

    def fourier(self, scores: torch.Tensor) -> torch.Tensor:
        # Same op order as the official code: ((s * w) * 2) * pi in the model dtype.
        proj = scores[..., None] * self.w[None, None, :] * 2 * math.pi  # (B, 2, 64)
        proj = torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)  # (B, 2, 128)
        return torch.cat([proj[:, 0], proj[:, 1]], dim=-1)  # [sin b, cos b, sin n, cos n]

    def forward(self, scores: torch.Tensor, *, intermediates: dict | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.fourier(scores.float())
        n = feat.shape[0]
        outs = []
        for kind, de_mlp, block_mlp, emb, fuse, r in (
                ("vae", self.vae_de_mlp, self.vae_block_mlp, self.vae_block_embeddings, self.vae_fuse_mlp,
                 self.rank_vae),
                ("unet", self.unet_de_mlp, self.unet_block_mlp, self.unet_block_embeddings, self.unet_fuse_mlp,
                 self.rank_unet)):
            de = de_mlp(feat)  # (B, 256)
            blk = block_mlp(emb.weight)  # (n_blocks, 64), over the whole table
            nb = blk.shape[0]
            fused = fuse(torch.cat([de[:, None].expand(n, nb, de.shape[-1]), blk[None].expand(n, nb, blk.shape[-1])],
                                   dim=-1))
            outs.append(fused.reshape(n, nb, r, r))  # row-major: M[k, j] = out[k * r + j]
            if intermediates is not None:
                intermediates[f"{kind}_de_embed"] = de
                intermediates[f"{kind}_block_feat"] = blk
        if intermediates is not None:
            intermediates["fourier_feat"] = feat
        return outs[0], outs[1]


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else e.__class__.__name__


class S3DiffModel(nn.Module):
    """UNet + VAE (encoder LoRA) + modulation nets. Build with `from_sd_turbo` or `from_modules`."""

    def __init__(self, unet: nn.Module, vae: nn.Module, alphas_cumprod: torch.Tensor, *, rank_unet: int = 32,
                 rank_vae: int = 16, unet_targets: list[str] | None = None, vae_targets: str | None = None) -> None:
        super().__init__()
        self.unet, self.vae = unet, vae
        self.unet_targets = list(unet_targets or UNET_TARGETS)
        self.vae_targets = vae_targets or VAE_TARGETS
        self.rank_unet, self.rank_vae = rank_unet, rank_vae
        self.unet_lora = inject_lora(unet, unet_target_matcher(self.unet_targets), rank_unet, "default")
        vae_lora = inject_lora(vae, regex_target_matcher(self.vae_targets), rank_vae, "vae_skip")
        if any(not n.startswith("encoder.") for n in vae_lora):
            raise FewstepError("VAE LoRA targets must lie inside the encoder")
        self.vae_lora = vae_lora
        self.unet_blocks = {n: unet_block_id(n) for n in self.unet_lora}
        self.vae_blocks = {n: vae_block_id(n) for n in self.vae_lora}
        self.modulation = DegradationModulation(rank_vae, rank_unet)
        ab = alphas_cumprod[TIMESTEP].to(torch.float32)
        self.register_buffer("alpha_bar", ab.reshape(()), persistent=False)
        self.scaling_factor = float(getattr(vae.config, "scaling_factor", 0.18215))
        self._lora_base: dict[str, torch.Tensor] | None = None  # W0 kept by merge_lora_
        self.lora_merged = False

    # ----------------------------------------------------------------- building
    @classmethod
    def from_sd_turbo(cls, sd_turbo: str | Path, *, rank_unet: int = 32, rank_vae: int = 16,
                      unet_targets: list[str] | None = None, vae_targets: str | None = None) -> "S3DiffModel":
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

        src = resolve_sd_turbo(sd_turbo)
        try:
            unet = UNet2DConditionModel.from_pretrained(src, subfolder="unet")
            vae = AutoencoderKL.from_pretrained(src, subfolder="vae")
            sched = DDPMScheduler.from_pretrained(src, subfolder="scheduler")
        except (OSError, ValueError) as e:
            raise WeightsNotFoundError(f"cannot load SD-Turbo from {src}: {_first_line(e)}") from None
        return cls(unet, vae, sched.alphas_cumprod, rank_unet=rank_unet, rank_vae=rank_vae,
                   unet_targets=unet_targets, vae_targets=vae_targets)

    # ----------------------------------------------------------------- checkpoint
    def load_official(self, ckpt: dict[str, Any] | str | Path) -> None:
        """Load an official `s3diff.pkl` (dict) into this model; errors name the file and key."""
        where = str(ckpt) if not isinstance(ckpt, dict) else "checkpoint"
        if not isinstance(ckpt, dict):
            ckpt = read_official_checkpoint(ckpt)
        for key in ("state_dict_unet", "state_dict_vae", "w", "state_embeddings", "state_dict_unet_fuse_mlp"):
            if key not in ckpt:
                raise CheckpointError(f"{where}: missing key {key!r} (not an S3Diff checkpoint)")
        if int(ckpt.get("rank_unet", self.rank_unet)) != self.rank_unet or \
                int(ckpt.get("rank_vae", self.rank_vae)) != self.rank_vae:
            raise CheckpointError(f"{where}: LoRA ranks {ckpt.get('rank_unet')}/{ckpt.get('rank_vae')} differ from the "
                                  f"model's {self.rank_unet}/{self.rank_vae}")
        from ..checkpoint import load_state_dict

        # LoRA checkpoints hold the adapters (and conv_in) only; the other weights stay SD-Turbo's
        load_state_dict(self.unet, ckpt["state_dict_unet"], f"{where} [state_dict_unet]",
                        optional=lambda k: not ("lora_" in k or k.startswith("conv_in.")))
        load_state_dict(self.vae, ckpt["state_dict_vae"], f"{where} [state_dict_vae]", optional=lambda k: "lora_" not in k)
        m = self.modulation
        parts = {"state_dict_vae_de_mlp": m.vae_de_mlp, "state_dict_unet_de_mlp": m.unet_de_mlp,
                 "state_dict_vae_block_mlp": m.vae_block_mlp, "state_dict_unet_block_mlp": m.unet_block_mlp,
                 "state_dict_vae_fuse_mlp": m.vae_fuse_mlp, "state_dict_unet_fuse_mlp": m.unet_fuse_mlp}
        emb = ckpt["state_embeddings"]
        for key, mod in parts.items():
            if not isinstance(ckpt.get(key), dict):
                raise CheckpointError(f"{where}: missing key {key!r} (not an S3Diff checkpoint)")
            load_state_dict(mod, ckpt[key], f"{where} [{key}]")
        for key, mod in (("state_dict_vae_block", m.vae_block_embeddings),
                         ("state_dict_unet_block", m.unet_block_embeddings)):
            if key not in emb:
                raise CheckpointError(f"{where}: state_embeddings lacks {key!r}")
            load_state_dict(mod, emb[key], f"{where} [state_embeddings.{key}]")
        w = torch.as_tensor(ckpt["w"]).detach().float()
        if w.shape != m.w.shape:
            raise CheckpointError(f"{where}: w has shape {tuple(w.shape)}, expected {tuple(m.w.shape)}")
        m.w.copy_(w)

    def official_state_dict(self) -> dict[str, Any]:
        """The checkpoint dict in the layout of the official `S3Diff.save_model` (`s3diff.pkl`)."""
        m = self.modulation

        def cpu(sd):
            return {k: v.detach().cpu().clone() for k, v in sd.items()}

        return {
            "unet_lora_target_modules": list(self.unet_targets),
            "vae_lora_target_modules": self.vae_targets,
            "rank_unet": self.rank_unet,
            "rank_vae": self.rank_vae,
            "state_dict_unet": {k: v.detach().cpu().clone() for k, v in self.unet.state_dict().items()
                                if "lora" in k or "conv_in" in k},
            "state_dict_vae": {k: v.detach().cpu().clone() for k, v in self.vae.state_dict().items() if "lora" in k},
            "state_dict_vae_de_mlp": cpu(m.vae_de_mlp.state_dict()),
            "state_dict_unet_de_mlp": cpu(m.unet_de_mlp.state_dict()),
            "state_dict_vae_block_mlp": cpu(m.vae_block_mlp.state_dict()),
            "state_dict_unet_block_mlp": cpu(m.unet_block_mlp.state_dict()),
            "state_dict_vae_fuse_mlp": cpu(m.vae_fuse_mlp.state_dict()),
            "state_dict_unet_fuse_mlp": cpu(m.unet_fuse_mlp.state_dict()),
            "w": nn.Parameter(m.w.detach().cpu().clone(), requires_grad=False),
            "state_embeddings": {"state_dict_vae_block": cpu(m.vae_block_embeddings.state_dict()),
                                 "state_dict_unet_block": cpu(m.unet_block_embeddings.state_dict())},
        }

    # ----------------------------------------------------------------- training set-up
    def init_lora_for_training(self, generator: torch.Generator | None = None) -> None:
        """peft 'gaussian'-style init: A ~ N(0, 1/r), B = 0 (so the model starts as SD-Turbo)."""
        for layer in list(self.unet_lora.values()) + list(self.vae_lora.values()):
            a = layer.lora_A[layer.adapter].weight
            with torch.no_grad():
                a.copy_(torch.randn(a.shape, generator=generator) / layer.rank)
                layer.lora_B[layer.adapter].weight.zero_()
        self.modulation.init_for_training()

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Exactly the official trainable set: LoRA A/B, unet.conv_in, the six MLPs, both embeddings."""
        out: dict[str, nn.Parameter] = {}
        for prefix, mod in (("unet.", self.unet), ("vae.", self.vae)):
            for k, p in mod.named_parameters():
                if "lora_" in k or (prefix == "unet." and k.startswith("conv_in.")):
                    out[prefix + k] = p
        for k, p in self.modulation.named_parameters():
            out["modulation." + k] = p
        return out

    def set_trainable(self) -> None:
        self.requires_grad_(False)
        for p in self.trainable_parameters().values():
            p.requires_grad_(True)

    # ----------------------------------------------------------------- forward pieces
    def mod_buffers(self, vae_mod: torch.Tensor | None = None, unet_mod: torch.Tensor | None = None
                    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Per-layer `mod` tensors for functional_call: VAE names relative to `vae.encoder`."""
        enc = {}
        if vae_mod is not None:
            enc = {n[len("encoder."):] + ".mod": vae_mod[:, b] for n, b in self.vae_blocks.items()}
        un = {}
        if unet_mod is not None:
            un = {n + ".mod": unet_mod[:, b] for n, b in self.unet_blocks.items()}
        return enc, un

    def merged_weights(self, vae_mod: torch.Tensor, unet_mod: torch.Tensor
                       ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Per-image merged base weights W + scale*B M^T A (one image: mods of batch 1)."""
        if vae_mod.shape[0] != 1 or unet_mod.shape[0] != 1:
            raise FewstepError("merged LoRA weights are per image: pass modulation matrices of batch 1")
        enc = {n[len("encoder."):] + ".base_layer.weight": l.base_layer.weight + l.delta_weight(vae_mod[0, self.vae_blocks[n]])
               for n, l in self.vae_lora.items()}
        un = {n + ".base_layer.weight": l.base_layer.weight + l.delta_weight(unet_mod[0, self.unet_blocks[n]])
              for n, l in self.unet_lora.items()}
        return enc, un

    @torch.no_grad()
    def merge_lora_(self, vae_mod: torch.Tensor, unet_mod: torch.Tensor) -> None:
        """Write one image's merged weights W0 + scale*B M^T A into the base layers, in place.

        The inference fast path: afterwards the model is a plain SD-Turbo UNet/VAE (call
        `encode_posterior`/`eps` with no modulation), so torch.compile sees fixed parameters and
        CUDA graphs replay with the new weights (same storage, new values). The values equal those
        of `merged_weights`. The original W0 are kept once (a copy of every targeted weight);
        `unmerge_lora_` restores them.
        """
        if vae_mod.shape[0] != 1 or unet_mod.shape[0] != 1:
            raise FewstepError("merged LoRA weights are per image: pass modulation matrices of batch 1")
        first = next(iter(self.unet_lora.values())).base_layer.weight
        if self._lora_base is not None and not self.lora_merged:
            kept = next(iter(self._lora_base.values()))
            if (kept.dtype, kept.device) != (first.dtype, first.device):  # model moved/cast since: re-take W0
                self._lora_base = None
        if self._lora_base is None:
            self._lora_base = {n: l.base_layer.weight.detach().clone()
                               for n, l in list(self.vae_lora.items()) + list(self.unet_lora.items())}
        for layers, blocks, mod in ((self.vae_lora, self.vae_blocks, vae_mod), (self.unet_lora, self.unet_blocks, unet_mod)):
            for n, l in layers.items():
                l.base_layer.weight.copy_(self._lora_base[n] + l.delta_weight(mod[0, blocks[n]]))
        self.lora_merged = True

    @torch.no_grad()
    def unmerge_lora_(self) -> None:
        """Undo `merge_lora_` (the base weights get their original values back)."""
        if self._lora_base is not None and self.lora_merged:
            for n, l in list(self.vae_lora.items()) + list(self.unet_lora.items()):
                l.base_layer.weight.copy_(self._lora_base[n])
        self.lora_merged = False

    def encode_posterior(self, x: torch.Tensor, vae_mod: torch.Tensor | None = None, *,
                         merged: dict[str, torch.Tensor] | None = None,
                         encoder: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x in [-1, 1] (B,3,H,W) -> posterior mean, std (B,4,H/8,W/8), encoder LoRA modulated."""
        enc_bufs = merged if merged is not None else self.mod_buffers(vae_mod=vae_mod)[0]
        runner = encoder if encoder is not None else self.vae.encoder
        # `encoder` may be a wrapper (tiled VAE) that holds vae.encoder as `.encoder`.
        if encoder is not None:
            enc_bufs = {"encoder." + k: v for k, v in enc_bufs.items()}
        h = torch.func.functional_call(runner, enc_bufs, (x,), strict=False)
        if self.vae.quant_conv is not None:
            h = self.vae.quant_conv(h)
        mean, logvar = h.chunk(2, dim=1)
        logvar = logvar.clamp(-30.0, 20.0)
        return mean, torch.exp(0.5 * logvar)

    def eps(self, z: torch.Tensor, emb: torch.Tensor, unet_mod: torch.Tensor | None = None, *,
            merged: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """UNet noise prediction at t = 999 (float32 output). unet_mod batch must be 1 or z's batch."""
        bufs = merged if merged is not None else self.mod_buffers(unet_mod=unet_mod)[1]
        dtype = next(self.unet.parameters()).dtype
        t = torch.tensor([TIMESTEP], device=z.device, dtype=torch.long)
        out = torch.func.functional_call(self.unet, bufs, (z.to(dtype), t),
                                         {"encoder_hidden_states": emb.to(dtype), "return_dict": False},
                                         strict=False)[0]
        return out.float()

    def x0(self, z: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The one-step DDPM x0 at t = 999, in float32: (z - sqrt(1 - ab) eps) / sqrt(ab)."""
        ab = self.alpha_bar.float()
        return (z.float() - (1 - ab) ** 0.5 * eps.float()) / ab ** 0.5

    def decode(self, x0: torch.Tensor, decoder: nn.Module | None = None) -> torch.Tensor:
        """Frozen decoder on x0 / 0.18215 -> image in (about) [-1, 1], float32."""
        dtype = next(self.vae.decoder.parameters()).dtype
        z = (x0 / self.scaling_factor).to(dtype)
        if self.vae.post_quant_conv is not None:
            z = self.vae.post_quant_conv(z)
        out = decoder(z) if decoder is not None else self.vae.decoder(z)
        return out.float()


def read_official_checkpoint(path: str | Path) -> dict[str, Any]:
    from ..checkpoint import read_checkpoint

    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not an S3Diff checkpoint (top level is {type(ckpt).__name__})")
    return ckpt


SD_TURBO_HUB_ID = "stabilityai/sd-turbo"
_SD_TURBO_FILES = ("unet/config.json", "vae/config.json", "text_encoder/config.json",
                   "scheduler/scheduler_config.json", "tokenizer")


def resolve_sd_turbo(src: str | Path) -> str:
    """A local diffusers-layout folder (checked file by file) or a hub id (downloaded when online)."""
    p = Path(src)
    if p.is_dir():
        for rel in _SD_TURBO_FILES:
            if not (p / rel).exists():
                raise WeightsNotFoundError(f"weights not found: {p / rel} is missing (SD-Turbo folder in "
                                           f"diffusers layout expected at {p})")
        return str(p)
    s = str(src)
    if s.count("/") == 1 and not p.exists() and not s.startswith((".", "/")):
        from ..weights import offline

        if offline():
            raise WeightsNotFoundError(f"weights not found: put the sd-turbo folder (diffusers layout) at a local "
                                       f"path; {s} cannot be downloaded offline")
        try:
            from huggingface_hub import snapshot_download

            return snapshot_download(s)
        except Exception as e:  # network errors of all kinds
            raise WeightsNotFoundError(f"weights not found: {s} could not be downloaded ({_first_line(e)}); "
                                       f"put the sd-turbo folder (diffusers layout) on disk") from None
    raise WeightsNotFoundError(f"weights not found: SD-Turbo folder {p} does not exist")
