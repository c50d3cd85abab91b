"""Loading ResShift/VQ weights in every layout the official releases and trainers produced.

Reading and unwrapping (any wrapper/prefix layout) is `fewstep.checkpoint`. Declared here: the
buffers `attn_mask` / `relative_position_index`, which the networks recompute (they are
deterministic), so they may be present or absent. Everything else is strict: a missing or
unexpected real weight, or a shape mismatch, is an error naming the key.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..checkpoint import load_state_dict, read_state_dict

RECOMPUTED_BUFFERS = ("attn_mask", "relative_position_index")


def _recomputed(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in RECOMPUTED_BUFFERS


def load_into(model: nn.Module, sd, source: str = "checkpoint") -> nn.Module:
    """Strictly load `sd` into `model`, tolerating only the recomputed buffers."""
    return load_state_dict(model, sd, source, ignore=_recomputed)


def load_unet(path: str | Path, config: dict):
    """Build a `SwinUNet` from the official `model.params` dict and load `path` into it."""
    from .unet import SwinUNet

    model = SwinUNet(**config)
    return load_into(model, read_state_dict(path), source=str(path)).eval()


def load_vq(path: str | Path, config: dict):
    """Build the latent autoencoder from its `params` dict (the official VQ `{embed_dim, n_embed,
    ddconfig}`, or `{kind: patch, ...}` for `PatchAutoencoder`) and load `path` into it."""
    from .patch_ae import build_autoencoder

    model = build_autoencoder(config)
    return load_into(model, read_state_dict(path), source=str(path)).eval()
