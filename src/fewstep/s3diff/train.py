"""S3Diff training on the shared engine (`fewstep train configs/s3diff.yaml`).

Per micro-batch (official recipe, s3diff.md §8, with the differences noted):
* online negative samples: with probability `neg_prob` (0.05) an item gets the negative prompt and
  its own bicubic-upsampled LR as the target;
* generator loss  = l2 * MSE + lpips * LPIPS(VGG) (LPIPS only when its backbone weights are present)
  + gan * non-saturating GAN loss on the items with the positive prompt. The official code takes a
  second generator step with a fresh positive-prompt forward for the GAN term; here both terms share
  one forward and one step (one optimizer per network, as the engine runs them);
* discriminator loss = BCE(D(real), 1) + BCE(D(fake.detach()), 0), averaged.
Trainable: LoRA A/B of the VAE encoder and UNet, unet.conv_in, the six MLPs and both block
embeddings; frozen: W, DEResNet, text encoder, VAE decoder and all base weights.
The discriminator is pluggable: ``discriminator: {factory: "module:function", ...kwargs}``; the
default is a small patch discriminator that needs no pretrained weights.
The release weights are exported to ``out_dir/export/s3diff.pkl`` in the official layout.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FewstepError
from ..training import TrainTask


def build_discriminator(spec: dict | None) -> nn.Module:
    spec = dict(spec or {})
    factory = spec.pop("factory", None)
    if factory is None:
        from ..training.losses import PatchDiscriminator

        return PatchDiscriminator(**{"norm": "spectral", **spec})
    from ..registry import resolve_object

    return resolve_object(str(factory), what="config: discriminator.factory")(**spec)


class TrainableS3Diff(nn.Module):
    """Holds the full S3DiffModel, but its state dict is only the trainable part (small checkpoints)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        self._keys = set("model." + k for k in model.trainable_parameters())

    def state_dict(self, *args, **kwargs):  # type: ignore[override]
        full = super().state_dict(*args, **kwargs)
        return {k: v for k, v in full.items() if k in self._keys}

    def load_state_dict(self, sd, strict: bool = True, assign: bool = False):  # type: ignore[override]
        missing = sorted(self._keys - set(sd))
        unknown = sorted(set(sd) - self._keys)
        if strict and (missing or unknown):
            raise RuntimeError(f"missing {missing[:1]} / unexpected {unknown[:1]} keys")
        return super().load_state_dict(sd, strict=False)

    def forward(self, lr: torch.Tensor, x_src: torch.Tensor, emb: torch.Tensor, de_net: nn.Module) -> torch.Tensor:
        m = self.model
        with torch.no_grad():
            scores = de_net(lr)
        vae_mod, unet_mod = m.modulation(scores)
        mean, std = m.encode_posterior(x_src, vae_mod)
        z = (mean + std * torch.randn_like(std)) * m.scaling_factor
        # one batched UNet call; the LoRA einsum pairs item i with its own matrices unet_mod[i]
        eps = m.eps(z, emb, unet_mod)
        return m.decode(m.x0(z, eps)).clamp(-1, 1)


class S3DiffTask(TrainTask):
    """The S3Diff recipe as a task of the shared training engine."""

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.mcfg = dict(cfg.get("model") or {})
        self.lcfg = {"l2": 2.0, "lpips": 5.0, "gan": 0.5, "neg_prob": 0.05, **(cfg.get("loss") or {})}
        self.dcfg = dict(cfg.get("data") or {})
        for key in ("sd_turbo", "de_net"):
            if not self.mcfg.get(key):
                raise FewstepError(f"config: missing required key 'model.{key}'")
        if not self.dcfg.get("hr_dir"):
            raise FewstepError("config: missing required key 'data.hr_dir'")
        self._fake: torch.Tensor | None = None

    # -- engine protocol
    def setup(self, ctx) -> None:
        from .deresnet import load_deresnet
        from .pipeline import load_text_encoder
        from .model import NEG_PROMPT, POS_PROMPT, resolve_sd_turbo

        self.device = ctx.device
        self.de_net = load_deresnet(self.mcfg["de_net"]).to(self.device)
        src = resolve_sd_turbo(self.mcfg["sd_turbo"])
        self.src = src
        te, tok = load_text_encoder(src)
        with torch.no_grad():
            embs = []
            for text in (self.mcfg.get("pos_prompt", POS_PROMPT), self.mcfg.get("neg_prompt", NEG_PROMPT)):
                ids = tok(text, max_length=tok.model_max_length, padding="max_length", truncation=True,
                          return_tensors="pt").input_ids
                embs.append(te(ids)[0].float())
        self.pos_emb, self.neg_emb = (e.to(self.device) for e in embs)
        del te  # the prompts are fixed: the text encoder is not needed during training
        from ..training.losses import load_lpips_loss

        self.lpips = load_lpips_loss(float(self.lcfg["lpips"]), self.device, weights_dir=self.mcfg.get("lpips_weights"),
                                     what="loss.lpips")

    def build_models(self) -> dict[str, nn.Module]:
        from .model import S3DiffModel, read_official_checkpoint

        ck = self.mcfg.get("s3diff_ckpt")
        ckpt = read_official_checkpoint(ck) if ck else None
        model = S3DiffModel.from_sd_turbo(self.src, rank_unet=int(self.mcfg.get("rank_unet", 32)),
                                          rank_vae=int(self.mcfg.get("rank_vae", 16)))
        if ckpt is not None:
            model.load_official(ckpt)
        else:
            model.init_lora_for_training(torch.Generator().manual_seed(int(self.cfg.get("seed", 0))))
        model.set_trainable()
        models = {"generator": TrainableS3Diff(model)}
        if float(self.lcfg["gan"]) > 0:
            models["discriminator"] = build_discriminator(self.cfg.get("discriminator"))
        return models

    def optimizers(self) -> dict[str, dict[str, Any]]:
        opts = {"generator": {"models": ["generator"]}}
        if float(self.lcfg["gan"]) > 0:
            opts["discriminator"] = {"models": ["discriminator"]}
        return opts

    def ema_models(self) -> list[str]:
        return []  # the official recipe keeps no EMA

    def active(self, opt: str, step: int) -> bool:
        return True

    def dataset(self):
        from ..datasets import PairedDegradationDataset

        d = self.dcfg
        return PairedDegradationDataset(d["hr_dir"], crop=int(d.get("crop", 512)), scale=4,
                                        preset=d.get("preset", "s3diff"), seed=int(self.cfg.get("seed", 0)),
                                        length=d.get("length"))

    def collate(self, items: list) -> dict[str, torch.Tensor]:
        return {"hr": torch.stack([i["hr"] for i in items]), "lr": torch.stack([i["lr"] for i in items])}

    def loss(self, ctx, opt: str, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        if opt == "generator":
            return self.generator_loss(ctx.models["generator"], ctx.raw.get("discriminator"), batch)
        fake = self._fake
        if fake is None:
            raise FewstepError("discriminator step without a generator step on this batch")
        d = ctx.models["discriminator"]
        real = batch["hr"].to(fake.device) * 2 - 1
        l_real = F.softplus(-d(real)).mean()
        l_fake = F.softplus(d(fake)).mean()
        self._fake = None
        loss = 0.5 * (l_real + l_fake)
        return loss, {"d_real": float(l_real.detach()), "d_fake": float(l_fake.detach())}

    def generator_loss(self, gen: nn.Module, disc: nn.Module | None, batch: dict
                       ) -> tuple[torch.Tensor, dict[str, float]]:
        lr = batch["lr"].float()
        gt = batch["hr"].float() * 2 - 1
        b = lr.shape[0]
        # bicubic as in training (the inference default is bilinear)
        x_src = (F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False) * 2 - 1).clamp(-1, 1)
        neg = torch.rand(b) < float(self.lcfg["neg_prob"])
        negd = neg.to(lr.device)[:, None, None]
        emb = torch.where(negd, self.neg_emb.expand(b, -1, -1), self.pos_emb.expand(b, -1, -1))
        target = torch.where(negd[..., None], x_src, gt)
        out = gen(lr, x_src, emb, self.de_net)
        l2 = F.mse_loss(out.float(), target.float())
        loss = float(self.lcfg["l2"]) * l2
        logs = {"l2": float(l2.detach())}
        if self.lpips is not None:
            lp = self.lpips(out.float(), target.float()).mean()
            loss = loss + float(self.lcfg["lpips"]) * lp
            logs["lpips"] = float(lp.detach())
        if disc is not None:
            pos = ~neg.to(lr.device)
            if pos.any():
                lg = F.softplus(-disc(out[pos])).mean()
                loss = loss + float(self.lcfg["gan"]) * lg
                logs["g_gan"] = float(lg.detach())
            self._fake = out.detach()
        return loss, logs

    def export(self, ctx, models: dict[str, nn.Module]) -> None:
        gen = models["generator"]
        gen = getattr(gen, "module", gen)
        folder = Path(ctx.out_dir) / "export"
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "s3diff.pkl.tmp"
        torch.save(gen.model.official_state_dict(), tmp)
        tmp.replace(folder / "s3diff.pkl")

    def validate(self, ctx, models) -> dict[str, float]:
        return {}


def train(config: dict, *, resume: bool = True, quiet: bool = False) -> None:
    """Entry point for ``trainer: s3diff`` configs."""
    from ..training import run_training

    task = S3DiffTask(config)
    threads = config.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*should be kept in float32.*")
        run_training(task, config, resume=resume, quiet=quiet)
