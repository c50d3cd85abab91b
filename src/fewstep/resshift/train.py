"""ResShift trainer (resshift.md §2.7 and §7): latent x0-MSE (+ optional LPIPS) on the shared engine.

Per batch: z0 = E(HR), z_y = E(bicubic x sf (LR)) (frozen VQ, no quantisation),
t ~ U{0..T-1}, eps ~ N(0, I), z_t = q_sample(z0, z_y, t, eps);
loss = mean (z0 - f(z_t / sqrt(kappa^2 eta_t + 1), t, LR))^2  [+ w * LPIPS(clamp(D(x0_hat)), HR)],
where D quantises in straight-through form, as the journal trainer does. Validation samples the EMA
UNet on a fixed set of (HR crop, degraded LR) pairs and reports PSNR-Y and NIQE.

Config sections: ``model`` (SwinUNet params), ``diffusion`` (chain params), ``autoencoder``
(``params`` = VQ params, ``weights`` = trained VQ file), ``data``, ``loss``, ``val``, ``export``,
``train`` (engine settings, see `fewstep.training.TrainSettings`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import FewstepError
from ..training.config import require, section
from ..training.engine import TrainTask, export_safetensors, run_training
from ..training.losses import load_lpips_loss
from ..utils.dtypes import torch_dtype


def build_val_set(cfg: dict, scale: int, seed: int, *, inpaint: bool = False) -> list[dict[str, torch.Tensor]]:
    """A fixed list of {"hr", "lr"[, "mask"]} pairs: `val.num_images` crops of `val.hr_dir`
    (epoch 0, fixed seed), degraded with `val.preset` (inpainting: with a fixed mask)."""
    from ..datasets import PairedDegradationDataset

    val = section(cfg, "val")
    hr_dir = val.get("hr_dir")
    if not hr_dir:
        return []
    ds = PairedDegradationDataset(hr_dir, crop=int(val.get("crop", 256)), scale=4 if inpaint else scale,
                                  preset="bicubic" if inpaint else val.get("preset", "resshift-test"),
                                  seed=int(val.get("seed", seed)), flips=False)
    if inpaint:
        ds = InpaintPairs(ds)
    n = min(int(val.get("num_images", 8)), len(ds))
    return [ds[i] for i in range(n)]


def image_metrics(out: torch.Tensor, hr: torch.Tensor, *, scale: int, niqe: bool = True) -> dict[str, float]:
    """PSNR-Y (border = scale, as BasicSR) and NIQE of one (3,H,W) [0,1] output."""
    from ..metrics.fullref import psnr

    m = {"psnr_y": psnr(out, hr, crop_border=scale, y_channel=True)}
    if niqe:
        import math

        from ..errors import FewstepError
        from ..metrics.niqe import niqe as niqe_fn

        try:
            m["niqe"] = niqe_fn(out)
        except FewstepError:  # too few non-flat blocks for NIQE: a blank value must not stop training
            m["niqe"] = math.nan
    return m


class InpaintPairs(torch.utils.data.Dataset):
    """HR crops of `base` plus a LaMa-style mask (1 = hole) seeded by the item's own seed; the
    "lr" is the HR with holes (filled by the trainer), as the official inpainting configs train."""

    def __init__(self, base):
        from ..degrade.masks import MixedMaskGenerator

        self.base, self.masks = base, MixedMaskGenerator()

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        item = self.base[i]
        hr = item["hr"]
        mask = torch.from_numpy(self.masks(tuple(hr.shape[-2:]), seed=int(item["seed"]))).float()[None]
        return {"hr": hr, "lr": hr.clone(), "mask": mask, "index": item["index"], "seed": item["seed"]}


class ResShiftTask(TrainTask):
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.model_cfg = dict(section(cfg, "model"))
        self.chain_cfg = dict(section(cfg, "diffusion"))
        self.ae = section(cfg, "autoencoder")
        self.data = section(cfg, "data")
        self.loss_cfg = section(cfg, "loss")
        self.inpaint = self.data.get("task", "sr") == "inpaint"
        self.scale = 1 if self.inpaint else int(self.data.get("scale", 4))
        self.seed = int(cfg.get("seed", 0))
        require(cfg, "data.hr_dir")
        require(cfg, "autoencoder.params")

    def setup(self, ctx) -> None:
        from .chain import ResShiftChain
        from .checkpoint import load_into, read_state_dict
        from .patch_ae import build_autoencoder

        self.chain = ResShiftChain(**self.chain_cfg)
        vq = build_autoencoder(self.ae["params"])
        weights = self.ae.get("weights")
        if weights:
            if not Path(weights).is_file():
                raise FewstepError(f"autoencoder.weights: {weights} not found (train it first: trainer 'autoencoder')")
            load_into(vq, read_state_dict(weights), source=str(weights))
        elif not self.ae.get("allow_random", False):
            raise FewstepError("config: autoencoder.weights is required (a trained VQ; see configs/autoencoder_*.yaml)")
        self.vq = vq.to(ctx.device).eval()
        for p in self.vq.parameters():
            p.requires_grad_(False)
        self.lpips_w = float(self.loss_cfg.get("lpips_weight", 0.0))
        self.mse_w = float(self.loss_cfg.get("mse_weight", 1.0))
        self.lpips = load_lpips_loss(self.lpips_w, ctx.device, net=self.loss_cfg.get("lpips_net", "vgg"),
                                     weights_dir=self.loss_cfg.get("lpips_weights_dir"),
                                     required=bool(self.loss_cfg.get("lpips_required", False)))
        self.val_set = build_val_set(self.cfg, self.scale, self.seed, inpaint=self.inpaint) if ctx.is_main else []

    def build_models(self):
        from .unet import SwinUNet

        unet = SwinUNet(**self.model_cfg)
        return {"unet": unet}

    def dataset(self):
        from ..datasets import PairedDegradationDataset

        d = self.data
        if self.inpaint:  # the degradation is the mask; the bicubic preset only fills an unused field
            base = PairedDegradationDataset(d["hr_dir"], crop=int(d.get("crop", 256)), scale=4, preset="bicubic",
                                            seed=int(d.get("seed", self.seed)), length=d.get("length"))
            return InpaintPairs(base)
        return PairedDegradationDataset(d["hr_dir"], crop=int(d.get("crop", 256)), scale=self.scale,
                                        preset=d.get("preset", "resshift"), seed=int(d.get("seed", self.seed)),
                                        length=d.get("length"))

    def collate(self, items):
        out = {"hr": torch.stack([it["hr"] for it in items]), "lr": torch.stack([it["lr"] for it in items])}
        if "mask" in items[0]:
            out["mask"] = torch.stack([it["mask"] for it in items])
        return out

    @torch.no_grad()
    def _encode(self, hr: torch.Tensor, lq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z0 = self.vq.encode(hr).float()
        up = F.interpolate(lq, scale_factor=self.scale, mode="bicubic") if self.scale != 1 else lq
        zy = self.vq.encode(up).float()
        return z0, zy

    def loss(self, ctx, opt, batch):
        hr = batch["hr"] * 2 - 1
        lq = batch["lr"] * 2 - 1
        mask_in = None
        if "mask" in batch:  # holes are -1 in the conditioning image; the mask goes in as [-1, 1]
            lq = torch.where(batch["mask"] > 0.5, torch.full_like(lq, -1.0), lq)
            mask_in = batch["mask"] * 2 - 1
        z0, zy = self._encode(hr, lq)
        b = z0.shape[0]
        t = torch.randint(0, self.chain.steps, (b,), device=z0.device)
        noise = torch.randn_like(z0)
        zt = self.chain.q_sample(z0, zy, t, noise)
        out = ctx.models["unet"](self.chain.scale_input(zt, t), t, lq=lq, mask=mask_in).float()
        pred = self.chain.x0_from_output(out, zy)  # the x0 estimate (residual models: zy + output)
        mse = (pred - z0).pow(2).mean()
        logs = {"mse": float(mse.detach())}
        loss = self.mse_w * mse
        if self.lpips is not None:
            img = self.vq.decode(pred).clamp(-1, 1)  # quantised in straight-through form
            lp = self.lpips(img.float(), hr.float()).reshape(-1)
            lp = torch.nan_to_num(lp, nan=0.0).mean()  # official: NaN LPIPS values are zeroed
            loss = loss + self.lpips_w * lp
            logs["lpips"] = float(lp.detach())
        return loss, logs

    def validate(self, ctx, models):
        if not self.val_set:
            return {}
        from .pipeline import ResShiftPipeline

        val = section(self.cfg, "val")
        pipe = ResShiftPipeline(models["unet"], self.vq, self.chain, self.scale)
        use_niqe = bool(val.get("niqe", True))
        sums: dict[str, float] = {}
        for i, item in enumerate(self.val_set):
            lr = item["lr"][None].to(ctx.device) * 2 - 1
            mask = item["mask"][None] if "mask" in item else None
            out = pipe.sample(lr, seed=int(val.get("sample_seed", 0)) + i, mask=mask)
            out = ((out.clamp(-1, 1) + 1) / 2)[0].cpu()
            for k, v in image_metrics(out, item["hr"], scale=self.scale, niqe=use_niqe).items():
                sums[k] = sums.get(k, 0.0) + v
        return {k: v / len(self.val_set) for k, v in sums.items()}

    def export(self, ctx, models):
        ex = section(self.cfg, "export")
        dtype = torch_dtype(ex.get("dtype", "fp32"), what="config: export.dtype")
        folder = ctx.out_dir / "export"
        # the shifted-window masks / index tables are rebuilt from the config; no need to ship them
        export_safetensors({"unet": models["unet"]}, folder, dtype=dtype, skip=("attn_mask", "relative_position_index"))
        meta = {"kind": "resshift", "step": ctx.step, "scale": self.scale, "model": self.model_cfg,
                "diffusion": self.chain_cfg, "autoencoder": {"params": self.ae["params"]},
                "ema": ctx.settings.ema_rate is not None, "dtype": ex.get("dtype", "fp32")}
        (folder / "resshift.json").write_text(json.dumps(meta, indent=2))
        # with the (frozen) autoencoder beside the UNet the export is a complete model folder:
        # `fewstep upscale --model OUT_DIR/export` runs it as it is
        from ..model_folder import resshift_card, write_model_folder

        export_safetensors({"autoencoder": self.vq}, folder, dtype=dtype)
        card = resshift_card(name=str(ex.get("name", ctx.out_dir.name)), scale=self.scale, unet=self.model_cfg,
                             vq=self.ae["params"], chain=self.chain_cfg, task="inpaint" if self.inpaint else "sr",
                             tile=int(ex.get("tile", 256)), overlap=int(ex.get("overlap", 32)),
                             training={"resshift_step": ctx.step, "ema": meta["ema"], "dtype": meta["dtype"]})
        write_model_folder(folder, card, ["unet.safetensors", "autoencoder.safetensors"])


def train(config: dict[str, Any], resume: bool = True, quiet: bool = False) -> dict[str, Any]:
    """Train a ResShift UNet as `config` says (see the module docstring); returns the run summary."""
    return run_training(ResShiftTask(config), config, resume=resume, quiet=quiet)
