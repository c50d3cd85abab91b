"""Trainers: the SR3 base model (`trainer: sr3`) and the fine-skip policy (`trainer: skipdiff_policy`).

`fewstep train configs/sr3_small.yaml` dispatches to `train_sr3`, and
`fewstep train configs/skipdiff_policy.yaml` to `train_policy`; `train(config)` picks by the
config's `trainer:` key. The SR3 trainer runs on the shared engine (`fewstep.training`: EMA,
exact resume, AMP, accelerate); the policy trainer is a small self-contained loop (its work is
sampling with a frozen network, not gradient steps on it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..datasets import EpochSeededDataset
from ..errors import FewstepError


def train(config: dict, *, resume: bool = True, quiet: bool = False) -> dict:
    kind = config.get("trainer")
    if kind == "sr3":
        return train_sr3(config, resume=resume, quiet=quiet)
    if kind == "skipdiff_policy":
        return train_policy(config, resume=resume, quiet=quiet)
    raise FewstepError(f"config: trainer must be 'sr3' or 'skipdiff_policy', got {kind!r}")


def _threads(cfg: dict) -> None:
    # on a shared, oversubscribed CPU one thread per process is several times faster than two
    n = cfg.get("threads")
    if n:
        torch.set_num_threads(int(n))


# ---------------------------------------------------------------------------------------------
# data: HR crops + MATLAB-bicubic LR, images decoded once (decoding a 1280x800 PNG per crop would
# cost more than a training step of the small model)
# ---------------------------------------------------------------------------------------------
class BicubicCrops(EpochSeededDataset):
    """{"hr": (3,c,c), "lr": (3,c/s,c/s)} in [0,1]; item i of epoch e is a function of (seed, e, i)."""

    def __init__(self, hr_dir: str, crop: int = 48, scale: int = 4, seed: int = 0, length: int | None = None,
                 flips: bool = True):
        from ..datasets import list_images
        from ..imageio import read_rgb8

        if crop % scale:
            raise FewstepError(f"config: data.crop={crop} must be a multiple of data.scale={scale}")
        files = list_images(hr_dir)
        if not files:
            raise FewstepError(f"{hr_dir}: no images")
        self.images = [read_rgb8(f) for f in files]
        self.images = [im for im in self.images if min(im.shape[:2]) >= crop]
        if not self.images:
            raise FewstepError(f"{hr_dir}: no image is at least {crop} px on each side")
        self.crop, self.scale, self.seed, self.flips = int(crop), int(scale), int(seed), flips
        self.length = int(length or 100 * len(self.images))

    def __getitem__(self, i: int) -> dict:
        from ..degrade import imresize

        rng = self.item_rng(i)
        im = self.images[int(rng.integers(len(self.images)))]
        h, w = im.shape[:2]
        y, x = int(rng.integers(h - self.crop + 1)), int(rng.integers(w - self.crop + 1))
        hr = im[y:y + self.crop, x:x + self.crop]
        if self.flips:
            if rng.random() < 0.5:
                hr = hr[:, ::-1]
            hr = np.rot90(hr, int(rng.integers(4)))
        hr = np.ascontiguousarray(hr)
        lr = np.clip(np.round(imresize(hr.astype(np.float64), 1 / self.scale)), 0, 255).astype(np.uint8)
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float() / 255  # noqa: E731
        return {"hr": t(hr), "lr": t(lr)}


def eval_pairs(hr_dir: str, scale: int = 4, crop: int | None = None, limit: int | None = None,
               where: str = "centre"):
    """Eval photos -> list of (name, lr (1,3,h,w), hr (1,3,H,W)) with MATLAB-bicubic LR.

    where="centre": centre crops; "texture": of the 3x3 grid of evenly placed windows, the one with
    the largest mean |Laplacian| (small centre crops of these photos are often flat sky, where any
    x4 method scores > 45 dB and the comparison says nothing about SR).
    """
    from ..datasets import list_images
    from ..imageio import read_rgb8
    from ..degrade import imresize

    if where not in ("centre", "texture"):
        raise FewstepError(f"crop placement must be 'centre' or 'texture', got {where!r}")
    out = []
    for f in list_images(hr_dir)[:limit]:
        hr = read_rgb8(f)
        h, w = hr.shape[:2]
        c = crop or min(h, w)
        c -= c % scale
        y, x = (h - c) // 2, (w - c) // 2
        if where == "texture":
            g = hr.astype(np.float64).mean(2)
            lap = np.abs(4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:])
            cands = [(int(yy), int(xx)) for yy in np.linspace(0, h - c, 3) for xx in np.linspace(0, w - c, 3)]
            y, x = max(cands, key=lambda p: lap[p[0]:p[0] + c - 2, p[1]:p[1] + c - 2].mean())
        hr = np.ascontiguousarray(hr[y:y + c, x:x + c])
        lr = np.clip(np.round(imresize(hr.astype(np.float64), 1 / scale)), 0, 255).astype(np.uint8)
        t = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255  # noqa: E731
        out.append((f.stem, t(lr), t(hr)))
    return out


# ---------------------------------------------------------------------------------------------
# SR3
# ---------------------------------------------------------------------------------------------
class SR3Task:
    """L1(ε, ε̂) at a continuous level √ᾱ ~ U[√ᾱ_{t-1}, √ᾱ_t], t ~ U{1..T} (SR3/WaveGrad)."""

    def __init__(self, cfg: dict):
        from .chain import CosineChain

        self.cfg = cfg
        self.mcfg = dict(cfg.get("model") or {})
        self.dcfg = dict(cfg.get("data") or {})
        if "hr_dir" not in self.dcfg:
            raise FewstepError("config: missing required key 'data.hr_dir'")
        self.chain = CosineChain(int(cfg.get("diffusion", {}).get("levels", 100)))
        self.scale = int(self.dcfg.get("scale", 4))

    def setup(self, ctx):
        pass

    def build_models(self):
        from .sr3 import SR3UNet

        return {"unet": SR3UNet(**self.mcfg, scale=self.scale)}

    def optimizers(self):
        return {"main": {"models": None}}

    def ema_models(self):
        return None

    def active(self, opt, step):
        return True

    def dataset(self):
        return BicubicCrops(self.dcfg["hr_dir"], int(self.dcfg.get("crop", 48)), self.scale,
                            int(self.cfg.get("seed", 0)), self.dcfg.get("length"))

    def collate(self, items):
        return torch.utils.data.default_collate(items)

    def loss(self, ctx, opt, batch):
        from .chain import bicubic_up

        hr = batch["hr"] * 2 - 1
        cond = bicubic_up(batch["lr"], self.scale) * 2 - 1
        if self.mcfg.get("residual"):
            hr = hr - cond
        B = hr.shape[0]
        prev = torch.as_tensor(self.chain.sqrt_alphas_cumprod_prev, dtype=torch.float32, device=hr.device)
        t = torch.randint(1, self.chain.num_levels + 1, (B,), device=hr.device)
        u = torch.rand(B, device=hr.device)
        level = prev[t - 1] + u * (prev[t] - prev[t - 1])
        noise = torch.randn_like(hr)
        x_t = self.chain.q_sample(hr, level, noise)
        eps = ctx.models["unet"](torch.cat([cond, x_t], 1), level)
        return (eps - noise).abs().mean(), {}

    def validate(self, ctx, models):
        """PSNR-Y of 10-step sampling on a few eval crops vs bicubic (cheap progress signal)."""
        from ..metrics import psnr
        from .sampler import SkipDiffSampler

        v = self.cfg.get("val") or {}
        if not v.get("hr_dir"):
            return {}
        pairs = eval_pairs(v["hr_dir"], self.scale, int(v.get("crop", 64)), int(v.get("num_images", 4)))
        s = SkipDiffSampler(self.chain)
        out = {"psnr_y": 0.0, "psnr_y_bicubic": 0.0}
        unet = models["unet"]
        from .chain import bicubic_up

        for _, lr, hr in pairs:
            sr, _ = s.plain(unet, lr.to(ctx.device), 10, seed=0)
            ref = (hr[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            for key, img in (("psnr_y", sr), ("psnr_y_bicubic", bicubic_up(lr, self.scale))):
                arr = (img[0].cpu().permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                out[key] += psnr(arr, ref, crop_border=self.scale, y_channel=True) / len(pairs)
        return out

    def export(self, ctx, models):
        from .sr3 import save_sr3

        from ..model_folder import write_model_folder

        folder = ctx.out_dir / "export"
        folder.mkdir(parents=True, exist_ok=True)
        save_sr3(models["unet"], folder / "sr3_small.safetensors")
        # a model folder: `--model OUT_DIR/export` samples it with SkipDiff (9 coarse + 10 fine steps)
        card = {"type": "sr3", "name": ctx.out_dir.name, "task": "sr", "scale": self.scale,
                "weights_file": "sr3_small.safetensors", "options": {"policy": "fixed", "m": 10},
                "training": {"sr3_step": ctx.step, "ema": ctx.settings.ema_rate is not None}}
        write_model_folder(folder, card, ["sr3_small.safetensors"])


def train_sr3(config: dict, *, resume: bool = True, quiet: bool = False) -> dict:
    """Train the SR3 base model (`trainer: sr3`); exports runs/.../export/sr3_small.safetensors."""
    from ..training import run_training

    _threads(config)
    return run_training(SR3Task(config), config, resume=resume, quiet=quiet)


# ---------------------------------------------------------------------------------------------
# policy
# ---------------------------------------------------------------------------------------------
def _load_base(cfg: dict):
    from .sr3 import DEFAULT_WEIGHTS, load_sr3

    w = cfg.get("base", {}).get("weights_file") or str(DEFAULT_WEIGHTS)
    return load_sr3(w)


def enumerate_dataset(unet, pairs, sampler, reward_fn, *, seed: int = 0, record_obs: int | None = None,
                      quiet: bool = False) -> dict:
    """For every (name, lr, hr): CSA once, all F skip-first completions, their rewards.

    Returns {"features": (N,D), "rewards": (N,F), "psnr": (N,F), "obs": [N][m-1][i] 128² states
    (when record_obs)}. Cost: 9 + Σm = 64 network evaluations per image (faithful setting).
    """
    from tqdm.auto import tqdm

    from .policy import bandit_features

    feats, rewards, psnrs, obs = [], [], [], []
    for i, (name, lr, hr) in enumerate(tqdm(pairs, desc="enumerate", disable=quiet)):
        cr = sampler.coarse(unet, lr, seed + i)
        en = sampler.enumerate(unet, cr, record=record_obs is not None)
        feats.append(bandit_features(cr)[0])
        r, p = reward_fn(en["images"][:, 0], hr)
        rewards.append(torch.as_tensor(r, dtype=torch.float64))
        psnrs.append(torch.as_tensor(p, dtype=torch.float64))
        if record_obs is not None:
            import torch.nn.functional as F

            def small(x):
                if x.shape[-1] != record_obs:
                    x = F.interpolate(x.float(), size=(record_obs, record_obs), mode="bicubic", antialias=True)
                return x[0].half()

            obs.append({"coarse": small(cr.x), "chains": [[small(s) for s in chain] for chain in en["states"]]})
    return {"features": torch.stack(feats), "rewards": torch.stack(rewards), "psnr": torch.stack(psnrs), "obs": obs}


def train_policy(config: dict, *, resume: bool = True, quiet: bool = False) -> dict:
    """Fit the bandit policy (exhaustive enumeration) and/or PPO (faithful) on training crops.

    Writes out_dir/bandit_policy.pt, out_dir/ppo_policy.pt and out_dir/enumeration.pt (a cache: a
    rerun with resume reuses it).
    """
    from .chain import CosineChain
    from .rewards import build_reward
    from .sampler import SkipDiffSampler

    _threads(config)
    out = Path(config.get("out_dir") or "")
    if not str(out):
        raise FewstepError("config: missing required key 'out_dir'")
    out.mkdir(parents=True, exist_ok=True)
    seed = int(config.get("seed", 0))
    d = config.get("data") or {}
    s_cfg = config.get("sampler") or {}
    unet = _load_base(config)
    sampler = SkipDiffSampler(CosineChain(100), coarse=int(s_cfg.get("coarse", 10)), fine=int(s_cfg.get("fine", 10)),
                              mode=s_cfg.get("mode", "reset"))
    cache = out / "enumeration.pt"
    kinds = config.get("policies", ["bandit", "ppo"])
    ppo_cfg = config.get("ppo") or {}
    obs_size = int(ppo_cfg.get("obs_size", 128))
    if resume and cache.is_file():
        en = torch.load(cache, map_location="cpu", weights_only=True)
    else:
        torch.manual_seed(seed)
        ds = BicubicCrops(d["hr_dir"], int(d.get("crop", 128)), unet.scale, seed, int(d.get("num_images", 64)))
        pairs = [(str(i), ds[i]["lr"][None], ds[i]["hr"][None]) for i in range(len(ds))]
        reward_fn = build_reward(config.get("reward") or {}, train_hr=[p[2] for p in pairs])
        en = enumerate_dataset(unet, pairs, sampler, reward_fn, seed=seed,
                               record_obs=obs_size if "ppo" in kinds else None, quiet=quiet)
        torch.save(en, cache)
    summary = {"images": int(en["rewards"].shape[0]), "best_fixed_m": int(en["rewards"].mean(0).argmax()) + 1}
    if "bandit" in kinds:
        from .policy import BanditPolicy

        b = config.get("bandit") or {}
        pol = BanditPolicy(sampler.num_fine, en["features"].shape[1])
        loss = pol.fit(en["features"].float(), en["rewards"].float(), tau=float(b.get("tau", 0.05)),
                       weight_decay=float(b.get("weight_decay", 1e-3)))
        torch.save({"kind": "bandit", "num_fine": sampler.num_fine, "num_features": en["features"].shape[1],
                    "state_dict": pol.state_dict()}, out / "bandit_policy.pt")
        m = pol(en["features"].float()).argmax(1)
        summary.update(bandit_loss=loss, bandit_train_reward=float(en["rewards"].gather(1, m[:, None]).mean()),
                       fixed_train_reward=float(en["rewards"].mean(0).max()),
                       oracle_train_reward=float(en["rewards"].max(1).values.mean()))
    if "ppo" in kinds:
        summary.update(_train_ppo(en, sampler.num_fine, ppo_cfg, seed, out, quiet))
    return summary


def _train_ppo(en: dict, F: int, cfg: dict, seed: int, out: Path, quiet: bool) -> dict:
    """PPO (released hyper-parameters) on exact replays of the reset-mode environment.

    With "reset", the state after any action history is either the coarse latent or the i-th state
    of the completion that started at the last skip; those are exactly the enumerated chains, so
    episodes are replayed from the cache instead of re-running the frozen SR3 network.
    """
    from tqdm.auto import tqdm

    from .policy import ActorCritic, ppo_update

    torch.manual_seed(seed)
    net = ActorCritic(int(cfg.get("obs_size", 128)), int(cfg.get("hidden", 1536)))
    opt = torch.optim.Adam(net.parameters(), lr=float(cfg.get("lr", 3e-4)), betas=(0.9, 0.999))
    episodes, batch = int(cfg.get("episodes", 200)), int(cfg.get("batch", 4))
    gen = torch.Generator().manual_seed(seed)
    N = en["rewards"].shape[0]
    rewards = en["rewards"].float()
    hist = []
    for ep in tqdm(range(episodes), desc="ppo", disable=quiet):
        idx = torch.randint(N, (batch,), generator=gen)
        h = net.init_hidden(batch)
        start = torch.full((batch,), -1)  # decision index where the current chain started (-1: at coarse)
        done = torch.zeros(batch, dtype=torch.long)  # denoise steps taken in the current chain
        tr = {"obs": [], "actions": [], "logp": [], "values": []}
        for k in range(F - 1):
            x = torch.stack([_state(en, int(idx[b]), F, int(start[b]), int(done[b])) for b in range(batch)])
            a, lp, v, h, o = net.act(x.float(), h, gen)
            for key, val in zip(tr, (o, a, lp, v)):
                tr[key].append(val)
            for b in range(batch):
                if a[b] == 0:
                    if start[b] < 0:
                        start[b] = k
                    done[b] += 1
                else:
                    start[b], done[b] = -1, 0
        # the forced last step completes the chain: m = number of steps since the last skip
        m = torch.where(start < 0, torch.ones_like(start), F - start)
        r = rewards[idx, m - 1]
        ppo_update(net, opt, tr, r, gamma=float(cfg.get("gamma", 0.7)), clip=float(cfg.get("clip", 0.2)),
                   epochs=int(cfg.get("epochs", 1)), value_coef=float(cfg.get("value_coef", 0.5)),
                   entropy_coef=float(cfg.get("entropy_coef", 0.01)))
        hist.append(float(r.mean()))
    torch.save({"kind": "ppo", "obs_size": net.obs_size, "hidden": net.hidden, "state_dict": net.state_dict()},
               out / "ppo_policy.pt")
    k = max(1, len(hist) // 5)
    return {"ppo_reward_first": float(np.mean(hist[:k])), "ppo_reward_last": float(np.mean(hist[-k:]))}


def _state(en: dict, i: int, F: int, start: int, done: int) -> torch.Tensor:
    """Replayed observation: the coarse latent, or state `done` of the chain begun at decision
    `start` (that chain is the skip-first completion m = F - start)."""
    o = en["obs"][i]
    if start < 0:
        return o["coarse"]
    return o["chains"][F - start - 1][done]
