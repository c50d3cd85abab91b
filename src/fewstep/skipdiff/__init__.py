"""SkipDiff: coarse skip sampling plus a learned per-image fine-skip policy (issue 6).

    from fewstep.skipdiff import CosineChain, SkipDiffSampler, FixedPolicy
    chain = CosineChain(levels=100)
    sampler = SkipDiffSampler(chain, coarse=10, fine=10, mode="reset")
    out, nfe = sampler(model, lr, policy=FixedPolicy(m=3), seed=0)
"""

from __future__ import annotations

from .chain import CosineChain, ResShiftAdapter, cosine_alphas_cumprod
from .policy import ActorCritic, BanditPolicy, FixedPolicy, OraclePolicy, PPOPolicy, load_policy, ppo_update
from .sampler import CoarseResult, FineResult, SkipDiffSampler, keyed_noise
from .sr3 import SR3SkipDiff, SR3UNet, load_sr3, save_sr3

__all__ = [
    "ActorCritic", "BanditPolicy", "CoarseResult", "CosineChain", "FineResult", "FixedPolicy", "OraclePolicy",
    "PPOPolicy", "ResShiftAdapter", "SR3SkipDiff", "SR3UNet", "SkipDiffSampler", "cosine_alphas_cumprod",
    "keyed_noise", "load_policy", "load_sr3", "ppo_update", "save_sr3",
]
