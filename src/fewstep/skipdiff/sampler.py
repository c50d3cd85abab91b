"""SkipDiff sampling: a coarse skip approximation (CSA) then a per-image fine skip refinement (FSR).

CSA: ancestral steps over a coarse, re-spaced grid; the faithful SR3 setting is the 10-level
cosine grid (= every 10th level of the 100-level grid below the clipped top), 9 steps from σ≈1
to σ=0.1671 (native index 9). FSR: at each fine index f (9..0) the policy chooses per sample
  0 = denoise: one network evaluation, then a step to the next fine index;
  1 = skip, whose meaning is the `mode`:
      "reset" (as released): x <- the coarse latent; the next denoise is labelled one level lower;
      "hold":  keep x; the next denoise is labelled one level lower (label lowering);
      "jump":  keep x on the chain; the next denoise jumps exactly from x's true level, so every
               action sequence is a valid re-spaced sampler (the natural mode for ResShift).
The last decision is forced to "denoise" (the chain must end at x̂0). Only samples that denoise
run the network (index-select, scatter back), so `nfe` counts each sample's real evaluations.

Noise is keyed by (seed, stage, target index): a sample's noise never depends on the batch it is
in nor on the actions of other samples, and all completions of one image share their noise
(common random numbers, which makes the per-image comparison of completions fair).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..errors import FewstepError
from ..progress import tick as progress_tick
from ..utils.seeding import seed_from
from .policy import DENOISE, SKIP, FixedPolicy

MODES = ("reset", "hold", "jump")


def keyed_noise(shape: Sequence[int], seeds: Sequence[int], key: str, device="cpu", dtype=torch.float32):
    """Standard normal noise of `shape` (batch first); sample i depends only on (seeds[i], key)."""
    out = []
    for s in seeds:
        g = torch.Generator().manual_seed(seed_from(f"{int(s)}/{key}"))
        out.append(torch.randn(tuple(shape[1:]), generator=g, dtype=torch.float32))
    return torch.stack(out).to(device, dtype)


@dataclass
class CoarseResult:
    """The state after the CSA: latent x at native index `level`, its x̂0, the condition."""

    x: torch.Tensor
    x0: torch.Tensor
    cond: object
    lr: torch.Tensor
    seeds: list[int]
    level: int
    nfe: int


@dataclass
class FineResult:
    x: torch.Tensor
    image: torch.Tensor
    nfe: torch.Tensor  # (B,) total network evaluations per sample, CSA included
    actions: torch.Tensor  # (B, F) 0 denoise / 1 skip
    states: list = field(default_factory=list)  # x before each decision (when recorded)


class SkipDiffSampler:
    """`out, nfe = SkipDiffSampler(chain, coarse=10, fine=10, mode="reset")(model, lr, policy=..., seed=0)`.

    coarse: an int (CosineChain: the `coarse`-level re-spaced cosine grid; other chains: that many
            evenly spaced native indices) or a descending list of native indices ending at fine[0].
    fine:   an int F (fine indices F-1..0) or a descending list of native indices ending at 0.
    """

    def __init__(self, chain, coarse: int | Sequence[int] = 10, fine: int | Sequence[int] = 10,
                 mode: str = "reset"):
        if mode not in MODES:
            raise FewstepError(f"skipdiff mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.chain, self.mode = chain, mode
        if isinstance(fine, int):
            if not 1 <= fine <= chain.num_levels:
                raise FewstepError(f"skipdiff fine={fine} must be in 1..{chain.num_levels}")
            fine = list(range(fine - 1, -1, -1))
        self.fine_idx = [int(f) for f in fine]
        if self.fine_idx != sorted(self.fine_idx, reverse=True) or self.fine_idx[-1] != 0:
            raise FewstepError(f"skipdiff fine indices must descend to 0, got {self.fine_idx}")
        land = self.fine_idx[0]
        if isinstance(coarse, int) and hasattr(chain, "coarse_chain"):
            self.coarse_chain = chain.coarse_chain(coarse)
            self.coarse_idx = list(range(coarse - 1, -1, -1))
            # the coarse grid must land exactly on the first fine level (faithful: 10 x 10 = 100)
            if not np.isclose(self.coarse_chain.abar(0), chain.abar(land), rtol=1e-9, atol=0):
                raise FewstepError(f"skipdiff coarse={coarse} grid does not land on fine level {land} "
                                   f"of the {chain.num_levels}-level chain (need levels = coarse x fine)")
        else:
            self.coarse_chain = chain
            if isinstance(coarse, int):
                coarse = np.unique(np.round(np.linspace(land, chain.num_levels - 1, coarse)).astype(int))[::-1]
            self.coarse_idx = [int(c) for c in coarse]
            if self.coarse_idx[-1] != land or self.coarse_idx != sorted(set(self.coarse_idx), reverse=True):
                raise FewstepError(f"skipdiff coarse indices must descend to the first fine index {land}, "
                                   f"got {self.coarse_idx}")
        self.landing_sigma = chain.sigma(land)

    @property
    def num_fine(self) -> int:
        return len(self.fine_idx)

    @property
    def coarse_nfe(self) -> int:
        return len(self.coarse_idx) - 1

    # --- stages --------------------------------------------------------------------------------
    @staticmethod
    def _seeds(seed, batch: int) -> list[int]:
        if isinstance(seed, (int, np.integer)):
            return [int(seed)] * batch  # same seed -> same output for an image, whatever its batch
        seeds = [int(s) for s in seed]
        if len(seeds) != batch:
            raise FewstepError(f"got {len(seeds)} seeds for a batch of {batch}")
        return seeds

    @torch.no_grad()
    def coarse(self, model, lr: torch.Tensor, seed=0) -> CoarseResult:
        seeds = self._seeds(seed, lr.shape[0])
        ch = self.coarse_chain
        cond = self.chain.condition(model, lr)
        shape = self.chain.noise_shape(cond)
        x = ch.prior(cond, keyed_noise(shape, seeds, "prior", lr.device))
        x0 = None
        for t_from, t_to in zip(self.coarse_idx[:-1], self.coarse_idx[1:]):
            x0 = ch.predict_x0(model, x, cond, t_from)
            x = ch.transition(x, x0, t_from, t_to, keyed_noise(shape, seeds, f"coarse/{t_to}", lr.device))
            progress_tick("step", self.coarse_idx.index(t_to), self.coarse_nfe + self.num_fine)
        if x0 is None:  # no coarse step: the FSR starts from the prior
            x0 = torch.zeros_like(x)
        return CoarseResult(x, x0, cond, lr, seeds, self.fine_idx[0], self.coarse_nfe)

    @torch.no_grad()
    def fine(self, model, cr: CoarseResult, policy, *, record: bool = False) -> FineResult:
        ch, F, B = self.chain, self.num_fine, cr.x.shape[0]
        x, x0 = cr.x.clone(), cr.x0.clone()
        cur = torch.full((B,), cr.level, dtype=torch.long)  # true chain level (used by "jump")
        nfe = torch.full((B,), cr.nfe, dtype=torch.long)
        actions = torch.zeros(B, F, dtype=torch.long)
        shape = tuple(x.shape)
        state = policy.begin(cr, self) if hasattr(policy, "begin") else None
        states = []
        for k, f in enumerate(self.fine_idx):
            nxt = self.fine_idx[k + 1] if k + 1 < F else -1
            obs = {"x": x, "x0": x0, "k": k, "level": f, "cur": cur, "coarse": cr, "num_fine": F}
            if record:
                states.append(x.clone())
            if k == F - 1:
                a = torch.full((B,), DENOISE, dtype=torch.long)
            else:
                a, state = policy.act(obs, state)
                a = torch.as_tensor(a, dtype=torch.long).reshape(B)
            actions[:, k] = a
            d = torch.nonzero(a == DENOISE).flatten()
            if len(d):
                xs = x[d]
                src = cur[d] if self.mode == "jump" else torch.full((len(d),), f, dtype=torch.long)
                cond = _index_cond(cr.cond, d)
                x0s = ch.predict_x0(model, xs, cond, src)
                noise = None
                if nxt >= 0:
                    noise = keyed_noise(shape, [cr.seeds[i] for i in d.tolist()], f"fine/{nxt}", x.device)
                x[d] = ch.transition(xs, x0s, src, torch.full((len(d),), nxt, dtype=torch.long), noise).to(x.dtype)
                x0[d] = x0s.to(x0.dtype)
                cur[d] = nxt
                nfe[d] += 1
            s = torch.nonzero(a == SKIP).flatten()
            if len(s) and self.mode == "reset":
                x[s] = cr.x[s]
                cur[s] = cr.level
            progress_tick("step", self.coarse_nfe + k + 1, self.coarse_nfe + F)
        image = ch.to_image(model, x, cr.cond)
        return FineResult(x, image, nfe, actions, states)

    # --- public ------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, model, lr: torch.Tensor, policy=None, seed=0, *, hr: torch.Tensor | None = None,
                 return_info: bool = False):
        """Returns (image (B,3,H,W) in [0,1], nfe (B,)); with return_info also the FineResult/choices."""
        policy = policy if policy is not None else FixedPolicy(self.num_fine)
        cr = self.coarse(model, lr, seed)
        if getattr(policy, "needs_enumeration", False):
            en = self.enumerate(model, cr)
            m = policy.choose(en, hr=hr)
            idx = (m - 1).long()
            image = en["images"][idx, torch.arange(len(idx))]
            nfe = cr.nfe + m.long()
            info = {"m": m, "enumeration": en}
            return (image, nfe, info) if return_info else (image, nfe)
        res = self.fine(model, cr, policy)
        return (res.image, res.nfe, res) if return_info else (res.image, res.nfe)

    @torch.no_grad()
    def enumerate(self, model, cr: CoarseResult, *, record: bool = False) -> dict:
        """All skip-first completions m = 1..F from one coarse latent (Σm network evaluations).

        Returns {"images": (F,B,3,H,W) in [0,1], "states": [m-1][i] = x after i denoise steps of the
        m-completion (when record), "coarse": cr}. With reset/hold these are all reachable outputs.
        """
        images, states = [], []
        for m in range(1, self.num_fine + 1):
            res = self.fine(model, cr, FixedPolicy(m), record=record)
            images.append(res.image)
            if record:
                # states before decisions F-m .. F-1 are the denoise chain; add the final sample
                states.append(res.states[self.num_fine - m:] + [res.x.clone()])
        return {"images": torch.stack(images), "states": states, "coarse": cr}

    @torch.no_grad()
    def plain(self, model, lr: torch.Tensor, steps: Sequence[int] | int | None = None, seed=0):
        """Plain ancestral sampling over native indices `steps` (default: all levels), or the
        `steps`-level re-spaced cosine grid when an int is given to a CosineChain."""
        ch = self.chain
        if isinstance(steps, int) and hasattr(ch, "coarse_chain"):
            ch, steps = ch.coarse_chain(steps), list(range(steps - 1, -1, -1))
        elif steps is None:
            steps = list(range(ch.num_levels - 1, -1, -1))
        seeds = self._seeds(seed, lr.shape[0])
        cond = self.chain.condition(model, lr)
        shape = self.chain.noise_shape(cond)
        x = ch.prior(cond, keyed_noise(shape, seeds, "prior", lr.device))
        idx = list(steps) + [-1]
        for t_from, t_to in zip(idx[:-1], idx[1:]):
            x0 = ch.predict_x0(model, x, cond, t_from)
            noise = keyed_noise(shape, seeds, f"plain/{t_to}", lr.device) if t_to >= 0 else None
            x = ch.transition(x, x0, t_from, t_to, noise)
        return self.chain.to_image(model, x, cond), torch.full((lr.shape[0],), len(steps), dtype=torch.long)


def _index_cond(cond, idx: torch.Tensor):
    if torch.is_tensor(cond):
        return cond[idx]
    if isinstance(cond, dict):
        return {k: _index_cond(v, idx) for k, v in cond.items()}
    return cond
