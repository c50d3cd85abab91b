"""Latent autoencoder trainer (VQ f4 by default, a KL autoencoder from diffusers, or the small
PCA-initialised `PatchAutoencoder` of `fewstep-small`).

Generator loss = L1(rec, x) + w_lpips * LPIPS (when available) + w_cb * codebook/commitment loss
(VQ) or w_kl * KL (KL) + w_adv * hinge generator loss once the discriminator has started.
Discriminator: a PatchGAN (4x4 convs, stride 2) trained with the hinge loss from `disc_start` on.
The adversarial weight is fixed (taming's adaptive weight needs the decoder's last-layer gradient,
which under DDP costs an extra backward; a fixed weight keeps the step a single pass).

Config sections: ``autoencoder`` (``kind``: vq|kl, ``params``), ``data`` (``hr_dir``, ``crop``),
``loss`` (``l1_weight``, ``lpips_weight``, ``codebook_weight``, ``kl_weight``, ``disc_weight``,
``disc_start``, ``disc_lr``, ``disc_layers``, ``disc_channels``), ``val``, ``export``, ``train``.
"""

from __future__ import annotations

import json
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FewstepError
from ..training.config import require, section
from ..training.engine import TrainTask, export_safetensors, run_training
from ..training.losses import PatchDiscriminator, load_lpips_loss
from ..utils.dtypes import torch_dtype
from .train import image_metrics


class KLAutoencoder(nn.Module):
    """diffusers' AutoencoderKL with the VQModel interface: encode -> latent (mean), decode."""

    def __init__(self, **params):
        super().__init__()
        try:
            from diffusers import AutoencoderKL
        except ImportError:
            raise FewstepError("autoencoder.kind 'kl' needs diffusers (pip install 'fewstep[s3diff]')") from None
        self.model = AutoencoderKL(**params)
        self.embed_dim = self.model.config.latent_channels
        self.downsample_factor = 2 ** (len(self.model.config.block_out_channels) - 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode(x).latent_dist.mean

    def decode(self, z: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        return self.model.decode(z).sample

    def forward(self, x: torch.Tensor):
        """(reconstruction from a posterior sample, KL to N(0, I) averaged per element)."""
        post = self.model.encode(x).latent_dist
        z = post.sample()
        return self.model.decode(z).sample, post.kl().mean() / (z[0].numel())


class AutoencoderTask(TrainTask):
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.ae = section(cfg, "autoencoder")
        self.kind = self.ae.get("kind", "vq")
        if self.kind not in ("vq", "kl", "patch"):
            raise FewstepError(f"config: autoencoder.kind must be 'vq', 'kl' or 'patch', got {self.kind!r}")
        require(cfg, "autoencoder.params")
        require(cfg, "data.hr_dir")
        self.data = section(cfg, "data")
        lc = section(cfg, "loss")
        self.l1_w = float(lc.get("l1_weight", 1.0))
        self.lpips_w = float(lc.get("lpips_weight", 0.0))
        self.reg_w = float(lc.get("codebook_weight", 1.0) if self.kind == "vq" else lc.get("kl_weight", 1e-6))
        self.disc_w = float(lc.get("disc_weight", 0.0))
        self.disc_start = int(lc.get("disc_start", 0))
        self.disc_lr = lc.get("disc_lr")
        self.disc_layers = int(lc.get("disc_layers", 3))
        self.disc_channels = int(lc.get("disc_channels", 64))
        self.lpips_required = bool(lc.get("lpips_required", False))
        self.seed = int(cfg.get("seed", 0))
        self._rec = None

    def setup(self, ctx) -> None:
        from .train import build_val_set

        lc = section(self.cfg, "loss")
        self.lpips = load_lpips_loss(self.lpips_w, ctx.device, net=lc.get("lpips_net", "vgg"),
                                     weights_dir=lc.get("lpips_weights_dir"), required=self.lpips_required)
        self.val_set = build_val_set(self.cfg, 4, self.seed) if ctx.is_main else []

    def build_models(self):
        if self.kind == "vq":
            from .vq import VQModel

            models: dict[str, nn.Module] = {"ae": VQModel(**self.ae["params"])}
        elif self.kind == "patch":
            from .patch_ae import PatchAutoencoder, sample_patches

            ae = PatchAutoencoder(**self.ae["params"])
            # the linear part is fitted, not learned: PCA of 4x4 patches of the training photos
            # (deterministic, so every DDP process and every resume builds the same start)
            stats = ae.fit_pca(sample_patches(self.data["hr_dir"], int(self.ae.get("pca_patches", 400_000)),
                                              seed=self.seed))
            print(f"patch autoencoder: PCA keeps {100 * stats['explained']:.2f} % of the patch variance, "
                  f"linear reconstruction {stats['linear_psnr']:.2f} dB")
            models = {"ae": ae}
        else:
            models = {"ae": KLAutoencoder(**self.ae["params"])}
        if self.disc_w > 0:
            models["disc"] = PatchDiscriminator(3, self.disc_channels, self.disc_layers)
        return models

    def optimizers(self):
        opts: dict[str, dict] = {"ae": {"models": ["ae"]}}
        if self.disc_w > 0:
            opts["disc"] = {"models": ["disc"]}
            if self.disc_lr is not None:
                opts["disc"]["lr"] = float(self.disc_lr)
        return opts

    def ema_models(self):
        return ["ae"]

    def active(self, opt, step):
        return opt != "disc" or step >= self.disc_start

    def dataset(self):
        from ..datasets import PairedDegradationDataset

        d = self.data
        # HR crops are what is trained on; the cheap bicubic preset only fills the unused "lr" field
        return PairedDegradationDataset(d["hr_dir"], crop=int(d.get("crop", 256)), scale=4, preset="bicubic",
                                        seed=int(d.get("seed", self.seed)), length=d.get("length"))

    def collate(self, items):
        return torch.stack([it["hr"] for it in items])

    def loss(self, ctx, opt, batch):
        x = batch * 2 - 1
        if opt == "ae":
            rec, reg = ctx.models["ae"](x)
            rec = rec.float()
            l1 = (rec - x).abs().mean()
            loss = self.l1_w * l1 + self.reg_w * reg.float()
            logs = {"l1": float(l1.detach()), "reg": float(reg.detach())}
            if self.lpips is not None:
                lp = torch.nan_to_num(self.lpips(rec, x).reshape(-1), nan=0.0).mean()
                loss = loss + self.lpips_w * lp
                logs["lpips"] = float(lp.detach())
            if self.disc_w > 0 and ctx.step >= self.disc_start:
                # through the unwrapped discriminator (its parameters are frozen during this loss)
                g = -ctx.raw["disc"](rec).float().mean()
                loss = loss + self.disc_w * g
                logs["g_adv"] = float(g.detach())
            elif self.disc_w > 0:
                logs["g_adv"] = 0.0
            self._rec = rec.detach()
            return loss, logs
        # discriminator: hinge loss on real vs the reconstruction of this very batch
        # one forward over [real; fake] (GroupNorm is per sample, so this equals two separate calls)
        scores = ctx.models["disc"](torch.cat([x, self._rec.to(x.dtype)])).float()
        real, fake = scores.chunk(2)
        loss = 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())
        return loss, {"d_real": float(real.detach().mean()), "d_fake": float(fake.detach().mean())}

    def validate(self, ctx, models):
        if not self.val_set:
            return {}
        ae = models["ae"]
        sums = {"psnr_y": 0.0, "l1": 0.0}
        for item in self.val_set:
            x = item["hr"][None].to(ctx.device) * 2 - 1
            z = ae.encode(x)
            rec = ((ae.decode(z).float().clamp(-1, 1) + 1) / 2)[0].cpu()
            m = image_metrics(rec, item["hr"], scale=0, niqe=False)
            sums["psnr_y"] += m["psnr_y"]
            sums["l1"] += float((rec - item["hr"]).abs().mean())
        return {k: v / len(self.val_set) for k, v in sums.items()}

    def export(self, ctx, models):
        ex = section(self.cfg, "export")
        dtype = torch_dtype(ex.get("dtype", "fp32"), what="config: export.dtype")
        folder = ctx.out_dir / "export"
        ae = models["ae"]
        # a KL model is saved by its diffusers module so the keys are the usual diffusers keys
        export_safetensors({"autoencoder": ae.model if self.kind == "kl" else ae}, folder, dtype=dtype)
        params = {"kind": ae.kind, **ae.config} if self.kind == "patch" else self.ae["params"]
        meta = {"kind": self.kind, "step": ctx.step, "params": params,
                "ema": ctx.settings.ema_rate is not None, "dtype": ex.get("dtype", "fp32")}
        (folder / "autoencoder.json").write_text(json.dumps(meta, indent=2))


def train(config: dict[str, Any], resume: bool = True, quiet: bool = False) -> dict[str, Any]:
    """Train the latent autoencoder as `config` says; returns the run summary."""
    return run_training(AutoencoderTask(config), config, resume=resume, quiet=quiet)
