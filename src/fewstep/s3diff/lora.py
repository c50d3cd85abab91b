"""Degradation-modulated LoRA layers (S3Diff), with the modulation matrix as an explicit input.

A wrapped layer computes  y = base(x) + scale * B(A(x) . M),  contracting the rank dimension of
A(x) with M's *first* index (h'[..., j] = sum_k h[..., k] M[k, j]). M is one r x r matrix per
image (shape (B or 1, r, r)). It lives in a non-persistent buffer ``mod`` that is None at rest and
is only supplied for one call through `torch.func.functional_call` (see `modulated_call`), so no
state leaks between calls and the model stays traceable by torch.compile / CUDA graphs.

Module and state-dict names mirror peft (``X.base_layer``, ``X.lora_A.<adapter>``) so official
checkpoints map 1:1.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable

import torch
from torch import nn

# peft's LoraConfig default lora_alpha; the official LoraConfig passes none, so scale = 8 / rank.
PEFT_DEFAULT_LORA_ALPHA = 8


class ModulatedLoRA(nn.Module):
    def __init__(self, base: nn.Module, rank: int, scale: float, adapter: str) -> None:
        super().__init__()
        self.base_layer = base
        self.rank = rank
        self.scale = float(scale)
        self.adapter = adapter
        if isinstance(base, nn.Conv2d):
            self.is_conv = True
            a = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding, bias=False)
            b = nn.Conv2d(rank, base.out_channels, 1, 1, bias=False)
        elif isinstance(base, nn.Linear):
            self.is_conv = False
            a = nn.Linear(base.in_features, rank, bias=False)
            b = nn.Linear(rank, base.out_features, bias=False)
        else:
            raise TypeError(f"modulated LoRA supports Conv2d/Linear, not {type(base).__name__}")
        self.lora_A = nn.ModuleDict({adapter: a})
        self.lora_B = nn.ModuleDict({adapter: b})
        self.register_buffer("mod", None, persistent=False)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        y = self.base_layer(x, *args, **kwargs)
        m = self.mod
        if m is None:  # merged weights (or base-only) call
            return y
        a, b = self.lora_A[self.adapter], self.lora_B[self.adapter]
        h = a(x.to(a.weight.dtype))
        # The r x r contraction is tiny; keep it in fp32 (bf16 einsums gave NaNs in a port).
        if self.is_conv:
            h = torch.einsum("...khw,...kr->...rhw", h.float(), m.float())
        else:
            h = torch.einsum("...lk,...kr->...lr", h.float(), m.float())
        return y + b(h.to(b.weight.dtype)) * self.scale

    def delta_weight(self, m: torch.Tensor) -> torch.Tensor:
        """scale * B M^T A for one matrix m (r, r): the weight change this M adds to the base layer."""
        a = self.lora_A[self.adapter].weight.double()
        b = self.lora_B[self.adapter].weight.double().flatten(1)  # (out, r)
        bm = b @ m.double().t()  # (out, r): sum_r' B[o, r'] M[k, r']
        if self.is_conv:
            dw = torch.einsum("ok,kihw->oihw", bm, a)
        else:
            dw = bm @ a
        return (dw * self.scale).to(self.base_layer.weight.dtype)


def unet_target_matcher(targets: Iterable[str]) -> Callable[[str], bool]:
    """peft's list matching: exact name or dotted-suffix match."""
    targets = list(targets)
    return lambda name: any(name == t or name.endswith("." + t) for t in targets)


def regex_target_matcher(pattern: str) -> Callable[[str], bool]:
    """peft's string matching: re.fullmatch on the module name."""
    rx = re.compile(pattern)
    return lambda name: rx.fullmatch(name) is not None


def inject_lora(model: nn.Module, match: Callable[[str], bool], rank: int, adapter: str,
                scale: float | None = None) -> dict[str, ModulatedLoRA]:
    """Wrap every Conv2d/Linear whose name matches; returns {module name: wrapper} in model order."""
    scale = PEFT_DEFAULT_LORA_ALPHA / rank if scale is None else scale
    found = [(n, m) for n, m in model.named_modules() if n and match(n) and isinstance(m, (nn.Conv2d, nn.Linear))]
    out: dict[str, ModulatedLoRA] = {}
    for name, mod in found:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        wrapper = ModulatedLoRA(mod, rank, scale, adapter)
        setattr(parent, child, wrapper)
        out[name] = wrapper
    return out


def unet_block_id(name: str) -> int:
    """Which of the 10 UNet modulation matrices a layer uses (official block assignment)."""
    parts = name.split(".")
    if parts[0] == "down_blocks":
        return int(parts[1])
    if parts[0] == "mid_block":
        return 4
    if parts[0] == "up_blocks":
        return 5 + int(parts[1])
    return 9


def vae_block_id(name: str) -> int:
    """Which of the 6 VAE-encoder matrices a layer uses; `name` is relative to the VAE."""
    parts = name.split(".")
    if len(parts) > 2 and parts[1] == "down_blocks":
        return int(parts[2])
    if len(parts) > 1 and parts[1] == "mid_block":
        return 4
    return 5
