"""ResShift's residual-shifting Markov chain (the "diffusion" of the method), in one place.

Notation (0-based step index t = 0..T-1; t = T-1 is the noisiest):
    x_t = x0 + eta_t (y - x0) + kappa sqrt(eta_t) eps          forward marginal
    x_T = y + kappa sqrt(eta_T) eps                              prior used for sampling
    network input = x_t / sqrt(kappa^2 eta_t + 1)                 (normalize_input)
    posterior q(x_{t-1} | x_t, x0) = N(c1 x_t + c2 x0, kappa^2 eta_{t-1} alpha_t / eta_t)

The network predicts x0 (official models) or, with ``prediction="residual"``, the residual
x0 - y, so that x0 = y + output: the LR latent passes through for free and a small, briefly trained
network (fewstep-small) only has to learn the detail (`x0_from_output`).

Tables are float64 numpy arrays (as the official code builds them); every lookup casts the
float64 value to float32 before it touches a tensor, which is what the official code multiplies
with. `jump` generalises the posterior to any pair of kept indices s < t (respaced sampling).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch


def eta_schedule(steps: int, min_noise_level: float, kappa: float, etas_end: float, power: float) -> np.ndarray:
    """sqrt(eta_i) = s1 (sT/s1)^((i/(T-1))^p) with s1 = min(mnl/kappa, mnl), sT = etas_end.

    Built as the official code does (a geometric base raised to a warped power) so that the
    float64 tables agree to the last bits.
    """
    s1 = min(min_noise_level / kappa, min_noise_level)
    if steps == 1:
        return np.array([etas_end], dtype=np.float64)
    base = np.exp(np.log(etas_end / s1) / (steps - 1))
    power_t = np.linspace(0, 1, steps, endpoint=True) ** power * (steps - 1)
    return base ** power_t * s1


class ResShiftChain:
    """The ResShift chain with float64 tables and float32 tensor arithmetic."""

    def __init__(self, steps: int = 4, min_noise_level: float = 0.2, kappa: float = 2.0,
                 etas_end: float = 0.99, power: float = 0.3, sqrt_etas: np.ndarray | None = None,
                 timestep_map: np.ndarray | None = None, prediction: str = "x0"):
        if prediction not in ("x0", "residual"):
            raise ValueError(f"prediction must be 'x0' or 'residual', got {prediction!r}")
        self.kappa, self.prediction = float(kappa), prediction
        if sqrt_etas is None:
            sqrt_etas = eta_schedule(steps, min_noise_level, kappa, etas_end, power)
        self.sqrt_etas = np.asarray(sqrt_etas, dtype=np.float64)
        self.steps = len(self.sqrt_etas)
        # the timestep the network was trained with for each index of this (possibly respaced) chain
        self.timestep_map = np.arange(self.steps) if timestep_map is None else np.asarray(timestep_map, dtype=np.int64)
        self.etas = self.sqrt_etas ** 2
        if not (np.all(self.etas > 0) and np.all(self.etas <= 1)):
            raise ValueError("eta schedule must lie in (0, 1]")
        self.etas_prev = np.append(0.0, self.etas[:-1])
        self.alpha = self.etas - self.etas_prev
        k2 = self.kappa ** 2
        self.posterior_variance = k2 * self.etas_prev / self.etas * self.alpha
        # element 0 (variance 0) is replaced by element 1 before the log, as in the official code
        # (a one-step chain has no element 1; its only step is t = 0, where the noise is masked anyway)
        first = self.posterior_variance[1] if self.steps > 1 else 1.0
        self.posterior_variance_clipped = np.append(first, self.posterior_variance[1:])
        self.posterior_log_variance_clipped = np.log(self.posterior_variance_clipped)
        self.posterior_mean_coef1 = self.etas_prev / self.etas
        self.posterior_mean_coef2 = self.alpha / self.etas
        self.kappa_sqrt_etas = self.kappa * self.sqrt_etas
        self.input_std = np.sqrt(k2 * self.etas + 1.0)

    # --- float32 lookups -------------------------------------------------------------------
    @staticmethod
    def _take(table: np.ndarray, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """table[t] cast float64 -> float32, shaped (B,1,1,1) to broadcast over `like`."""
        vals = torch.as_tensor(table, dtype=torch.float64)[torch.as_tensor(t).long().cpu()]
        vals = vals.to(torch.float32).to(like.device)
        return vals.reshape(-1, *([1] * (like.ndim - 1)))

    def respaced(self, keep: list[int] | np.ndarray) -> "ResShiftChain":
        """A chain over a subset of the indices (like the official SpacedDiffusion): the kept
        sqrt_etas are reused as they are, and every table is rebuilt from them."""
        keep = sorted(int(i) for i in keep)
        return ResShiftChain(kappa=self.kappa, sqrt_etas=self.sqrt_etas[keep], timestep_map=self.timestep_map[keep],
                             prediction=self.prediction)

    def with_steps(self, steps: int | None, name: str = "resshift") -> "ResShiftChain":
        """This chain sampled in `steps` steps: `steps` indices spread evenly over 0..T-1 (both ends
        kept), as the official respacing does; `None` or T gives the chain itself."""
        if steps is None or int(steps) == self.steps:
            return self
        if not 1 <= int(steps) <= self.steps:
            from ..errors import FewstepError

            raise FewstepError(f"{name}: steps must be between 1 and {self.steps}, got {steps}")
        return self.respaced(np.unique(np.round(np.linspace(0, self.steps - 1, int(steps))).astype(int)))

    def denoiser(self, net, y: torch.Tensor, lq: torch.Tensor, mask: torch.Tensor | None = None,
                 autocast: Callable[[], contextlib.AbstractContextManager] | None = None
                 ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The denoiser `D(x_t, t) -> x0` of this chain around `net` (ResShift's UNet): the network
        input is scaled, t mapped to the trained timestep, the output read as x0 (or y + residual).
        `y` is the LR latent, `lq` the network's LR condition; `autocast` wraps the network call
        (the chain arithmetic stays float32). The ResShift pipeline and SkipDiff's adapter share it."""
        extra = {} if mask is None else {"mask": mask}

        def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with autocast() if autocast is not None else contextlib.nullcontext():
                out = net(self.scale_input(x, t), self.model_timesteps(t), lq=lq, **extra)
            return self.x0_from_output(out.float(), y)

        return denoise

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Chain index -> the integer timestep fed to the network (identity unless respaced)."""
        return torch.as_tensor(self.timestep_map, device=t.device)[t.long()]

    def x0_from_output(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The network output as an x0 estimate: itself, or y + output for residual prediction."""
        return out if self.prediction == "x0" else y + out

    # --- the math ----------------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward marginal x_t = x0 + eta_t (y - x0) + kappa sqrt(eta_t) eps."""
        return x0 + self._take(self.etas, t, x0) * (y - x0) + self._take(self.kappa_sqrt_etas, t, x0) * noise

    def prior_sample(self, y: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_T = y + kappa sqrt(eta_T) eps (the prior mean is y itself, not x0 + eta_T (y - x0))."""
        return y + float(np.float32(self.kappa_sqrt_etas[-1])) * noise

    def scale_input(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Network input x_t / sqrt(kappa^2 eta_t + 1), the std computed in float32 as upstream."""
        eta = self._take(self.etas, t, x_t)
        return x_t / torch.sqrt(eta * self.kappa ** 2 + 1)

    def posterior_mean_variance(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor):
        """Mean and (clipped log-) variance of q(x_{t-1} | x_t, x0)."""
        mean = self._take(self.posterior_mean_coef1, t, x_t) * x_t + self._take(self.posterior_mean_coef2, t, x_t) * x0
        var = self._take(self.posterior_variance, t, x_t)
        logvar = self._take(self.posterior_log_variance_clipped, t, x_t)
        return mean, var, logvar

    def step(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor) -> torch.Tensor:
        """One ancestral step t -> t-1; at t = 0 the noise is masked out (the result is x0)."""
        if not torch.is_tensor(t):
            t = torch.full((x_t.shape[0],), int(t), dtype=torch.long)
        mean, _, logvar = self.posterior_mean_variance(x_t, x0, t)
        nonzero = (t != 0).float().to(x_t.device).reshape(-1, *([1] * (x_t.ndim - 1)))
        return mean + nonzero * torch.exp(0.5 * logvar) * noise

    def jump_coefficients(self, t: int, s: int) -> tuple[float, float, float]:
        """(coef of x_t, coef of x0, variance) of the exact jump t -> s (s < t; s = -1 means x0)."""
        if not (-1 <= s < t < self.steps):
            raise ValueError(f"jump needs -1 <= s < t < {self.steps}, got t={t}, s={s}")
        if s == -1:
            return 0.0, 1.0, 0.0
        eta_t, eta_s = self.etas[t], self.etas[s]
        return eta_s / eta_t, 1.0 - eta_s / eta_t, self.kappa ** 2 * eta_s * (eta_t - eta_s) / eta_t

    def jump(self, x_t: torch.Tensor, x0: torch.Tensor, t: int, s: int, noise: torch.Tensor | None = None):
        """Exact jump from index t to s < t given x0: returns (mean, variance) or a sample if noise."""
        a, b, var = self.jump_coefficients(t, s)
        mean = float(np.float32(a)) * x_t + float(np.float32(b)) * x0
        if noise is None:
            return mean, var
        return mean + float(np.float32(np.sqrt(var))) * noise
