"""Exponential moving average of a model's weights (used for validation and export).

The EMA is a full copy of the module, so validation can run it directly. Floating-point entries of
the state dict are averaged, ``ema = rate * ema + (1 - rate) * live``; integer buffers (step
counters, index tables) are copied, since averaging an index is meaningless.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, rate: float = 0.999):
        if not 0.0 <= rate < 1.0:
            from ..errors import FewstepError

            raise FewstepError(f"config: ema rate must be in [0, 1), got {rate}")
        self.rate = float(rate)
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        live = model.state_dict()
        for name, shadow in self.module.state_dict().items():
            src = live[name].detach()
            if shadow.dtype.is_floating_point or shadow.dtype.is_complex:
                shadow.lerp_(src.to(shadow.dtype), 1.0 - self.rate)
            else:
                shadow.copy_(src)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state, strict=True)
