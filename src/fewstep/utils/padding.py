"""Padding an image tensor at the bottom/right to a multiple of a network's stride."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(x padded so that H and W are multiples of `multiple`, (pad_h, pad_w)).

    Reflect padding at the bottom/right, as the official ResShift/S3Diff code pads; where the pad is
    not smaller than the image (reflect cannot reach that far; upstream crashes) it replicates."""
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (0, 0)
    mode = "reflect" if (ph < h and pw < w) else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (ph, pw)
