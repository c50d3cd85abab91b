"""Learning-rate schedule: linear warm-up, then cosine annealing to `eta_min` (or constant).

This is the journal ResShift recipe: lr rises linearly from 0 to the base lr over `warmup`
optimizer steps, then `CosineAnnealingLR(T_max = total - warmup, eta_min)` follows. Built on
`LambdaLR` with a plain function, so the scheduler state is only numbers (weights_only-safe).
"""

from __future__ import annotations

import math

from ..errors import FewstepError


def lr_at(step: int, *, base_lr: float, total: int, warmup: int = 0, eta_min: float = 0.0,
          kind: str = "cosine") -> float:
    """Learning rate used for optimizer step `step` (0-based: the first update is step 0)."""
    if warmup > 0 and step < warmup:
        # (step + 1): the first update already moves (the official trainer's iteration 1 uses 1/warmup).
        return base_lr * (step + 1) / warmup
    if kind == "constant":
        return base_lr
    if kind != "cosine":
        raise FewstepError(f"config: train.schedule must be 'cosine' or 'constant', got {kind!r}")
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0), span) / span
    return eta_min + (base_lr - eta_min) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer, *, total: int, warmup: int = 0, eta_min: float = 0.0, kind: str = "cosine"):
    """A LambdaLR whose lr at optimizer step k equals `lr_at(k, ...)` for every param group."""
    import torch

    if total <= 0:
        raise FewstepError(f"config: train.steps must be positive, got {total}")
    if warmup < 0:
        raise FewstepError(f"config: train.warmup must be >= 0, got {warmup}")

    def factor_for(base_lr: float):
        def factor(step: int) -> float:
            if base_lr == 0:
                return 0.0
            return lr_at(step, base_lr=base_lr, total=total, warmup=warmup, eta_min=eta_min, kind=kind) / base_lr

        return factor

    lambdas = [factor_for(g["lr"]) for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
