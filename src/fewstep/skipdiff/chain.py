"""Diffusion chains that SkipDiff can drive: the SR3 cosine DDPM and ResShift's residual chain.

A *chain* knows its noise levels and how to move a sample between any two of its native indices;
the *model* (a denoiser) is passed to every call, so one chain object serves any network.

Protocol (duck-typed; both `CosineChain` and `ResShiftAdapter` implement it):

    num_levels: int                                  native grid size (SR3: 100, ResShift: T)
    sigma(t) -> float                                noise std at native index t (observations)
    condition(model, lr) -> cond                     what the network is conditioned on
    prior(cond, noise) -> x                          sample at the top index
    predict_x0(model, x, cond, label) -> x0          ONE network evaluation, x read at level `label`
    moments(x, x0, t_from, t_to) -> (a, b, var)      exact posterior q(x_to | x_from, x0):
                                                     mean = a x + b x0, variance var (t_to=-1: x0)
    transition(x, x0, t_from, t_to, noise) -> x      a sample of that posterior
    noise_shape(cond) -> tuple                       shape of a sample
    to_image(model, x, cond) -> (B,3,H,W) in [0,1]   decode the final sample

`label` may differ from the true level of `x`: that is SkipDiff's "noise-level rearrangement"
(reset/hold modes tell the network that a latent at sigma=0.167 is at a lower level).
Indices are per-sample LongTensors or ints; -1 means "x0" (the end of the chain).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import FewstepError


def cosine_alphas_cumprod(levels: int, s: float = 8e-3, max_beta: float = 0.999) -> np.ndarray:
    """ᾱ_t (t = 0..levels-1) of the SR3/improved-DDPM cosine schedule, in float64.

    f(u) = cos²((u+s)/(1+s)·π/2), ᾱ(i) = f(i/N)/f(0), β_i = min(1 - ᾱ(i)/ᾱ(i-1), max_beta), and the
    cumulative product is taken over the *clipped* β (as the released code does), so only levels
    whose β hit the clip differ from f(i/N)/f(0).
    """
    if levels < 1:
        raise FewstepError(f"cosine chain needs levels >= 1, got {levels}")
    u = np.arange(levels + 1, dtype=np.float64) / levels
    f = np.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    betas = np.minimum(1 - abar[1:] / abar[:-1], max_beta)
    return np.cumprod(1 - betas)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def _as_index(t, batch: int) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=torch.long).cpu()
    return t.expand(batch) if t.ndim == 0 else t


def bicubic_up(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """The SR3 condition: bicubic upsampling of the LR (clamped: bicubic overshoots)."""
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)


class CosineChain:
    """SR3's pixel-space DDPM chain: ε-prediction, continuous √ᾱ conditioning, x̂0 clipped to [-1,1].

    `model(x_in, sqrt_abar)` takes the 6-channel input cat([cond, x_t]) and a (B,) tensor of √ᾱ and
    returns ε̂ (see `fewstep.skipdiff.sr3.SR3UNet`). Samples live in [-1, 1].
    """

    def __init__(self, levels: int = 100, s: float = 8e-3, max_beta: float = 0.999):
        self.num_levels = int(levels)
        self.s, self.max_beta = s, max_beta
        self.alphas_cumprod = cosine_alphas_cumprod(levels, s, max_beta)
        self.betas = 1 - self.alphas_cumprod / np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        # ᾱ at "index -1" is 1: the clean image (used for posteriors into x0 and training levels)
        self.sqrt_alphas_cumprod_prev = np.sqrt(np.append(1.0, self.alphas_cumprod))

    # --- schedule ----------------------------------------------------------------------------
    def abar(self, t) -> np.ndarray:
        t = np.asarray(t)
        return np.where(t < 0, 1.0, self.alphas_cumprod[np.clip(t, 0, self.num_levels - 1)])

    def sigma(self, t: int) -> float:
        return float(np.sqrt(1.0 - self.abar(int(t))))

    def coarse_chain(self, levels: int) -> "CosineChain":
        """The re-spaced cosine chain the released CSA uses (its own `levels`-step schedule)."""
        return CosineChain(levels, self.s, self.max_beta)

    # --- protocol ------------------------------------------------------------------------------
    def condition(self, model, lr: torch.Tensor) -> torch.Tensor:
        return bicubic_up(lr, getattr(model, "scale", 4)) * 2 - 1

    def prior(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return noise

    def predict_x0(self, model, x: torch.Tensor, cond: torch.Tensor, label) -> torch.Tensor:
        label = _as_index(label, x.shape[0])
        abar = torch.as_tensor(self.abar(label.numpy()), dtype=torch.float64)
        eps = model(torch.cat([cond, x], dim=1), abar.sqrt().float().to(x.device))
        x0 = _bcast(torch.sqrt(1 / abar), x) * x - _bcast(torch.sqrt(1 / abar - 1), x) * eps
        return x0.clamp(-1, 1)

    def moments(self, t_from, t_to, batch: int):
        """Coefficients (a, b, var) of q(x_to | x_from, x0) = N(a x_from + b x0, var), float64 (B,)."""
        tf, tt = _as_index(t_from, batch).numpy(), _as_index(t_to, batch).numpy()
        if np.any(tt >= tf):
            raise ValueError(f"transition needs t_to < t_from, got {tf} -> {tt}")
        a_f, a_t = self.abar(tf), self.abar(tt)
        beta = 1 - a_f / a_t  # the re-spaced β of the jump (= β_t for a single step)
        a = np.sqrt(1 - beta) * (1 - a_t) / (1 - a_f)
        b = np.sqrt(a_t) * beta / (1 - a_f)
        var = beta * (1 - a_t) / (1 - a_f)
        to_x0 = tt < 0
        a, b, var = np.where(to_x0, 0.0, a), np.where(to_x0, 1.0, b), np.where(to_x0, 0.0, var)
        return (torch.as_tensor(a), torch.as_tensor(b), torch.as_tensor(var))

    def transition(self, x, x0, t_from, t_to, noise: torch.Tensor | None) -> torch.Tensor:
        a, b, var = self.moments(t_from, t_to, x.shape[0])
        out = _bcast(a, x) * x + _bcast(b, x) * x0
        if noise is not None:
            out = out + _bcast(var.sqrt(), x) * noise
        return out

    def noise_shape(self, cond: torch.Tensor) -> tuple:
        return tuple(cond.shape)

    def to_image(self, model, x: torch.Tensor, cond) -> torch.Tensor:
        if getattr(model, "residual", False):
            x = x + cond
        return ((x + 1) / 2).clamp(0, 1)

    def q_sample(self, x0: torch.Tensor, sqrt_abar: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward marginal at a continuous level √ᾱ (training)."""
        g = _bcast(sqrt_abar, x0)
        return g * x0 + (1 - g ** 2).sqrt() * noise


class ResShiftAdapter:
    """SkipDiff's chain protocol over `fewstep.resshift.chain.ResShiftChain` (x0 or residual prediction).

    `model` is a ResShift denoiser: `model.unet(x_scaled, t, lq)` -> x̂0 in latent space, with
    optional `model.encode(img[-1,1])` / `model.decode(z)` for latent models (pixel chains: none).
    Labels must be trained discrete indices; jumps t -> s are ResShift's exact η-posteriors.
    """

    def __init__(self, rchain):
        self.rc = rchain
        self.num_levels = int(rchain.steps)

    def sigma(self, t: int) -> float:
        t = int(t)
        return 0.0 if t < 0 else float(self.rc.kappa * self.rc.sqrt_etas[t])

    def condition(self, model, lr: torch.Tensor) -> dict:
        scale = getattr(model, "scale", 4)
        y = bicubic_up(lr, scale) * 2 - 1
        lq = lr * 2 - 1
        enc = getattr(model, "encode", None)
        return {"y": enc(y) if enc is not None else y, "lq": lq}

    def prior(self, cond: dict, noise: torch.Tensor) -> torch.Tensor:
        return self.rc.prior_sample(cond["y"], noise)

    def predict_x0(self, model, x, cond: dict, label) -> torch.Tensor:
        t = _as_index(label, x.shape[0]).to(x.device)
        return self.rc.denoiser(getattr(model, "unet", model), cond["y"], cond["lq"])(x, t)

    def moments(self, t_from, t_to, batch: int):
        tf, tt = _as_index(t_from, batch).tolist(), _as_index(t_to, batch).tolist()
        coefs = [self.rc.jump_coefficients(int(f), int(s)) for f, s in zip(tf, tt)]
        return tuple(torch.tensor([c[i] for c in coefs], dtype=torch.float64) for i in range(3))

    def transition(self, x, x0, t_from, t_to, noise):
        a, b, var = self.moments(t_from, t_to, x.shape[0])
        out = _bcast(a, x) * x + _bcast(b, x) * x0
        if noise is not None:
            out = out + _bcast(var.sqrt(), x) * noise
        return out

    def noise_shape(self, cond: dict) -> tuple:
        return tuple(cond["y"].shape)

    def to_image(self, model, x, cond) -> torch.Tensor:
        dec = getattr(model, "decode", None)
        img = dec(x) if dec is not None else x
        return ((img + 1) / 2).clamp(0, 1)
