"""Loading ResShift/VQ weights in every layout the official releases and trainers produced.

Accepted: a bare state dict, `{'state_dict': ...}` (training checkpoints; also `params_ema`,
`model`, `ema` wrappers), keys prefixed by `module.` (DDP) and/or `_orig_mod.` (torch.compile),
and the buffers `attn_mask` / `relative_position_index`, which the networks recompute (they are
deterministic), so they may be present or absent. Everything else is strict: a missing or
unexpected real weight, or a shape mismatch, is an error naming the key.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, FewstepError

RECOMPUTED_BUFFERS = ("attn_mask", "relative_position_index")
_WRAPPERS = ("state_dict", "params_ema", "ema", "model")
_PREFIXES = ("module.", "_orig_mod.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a .pth/.pt/.ckpt (weights_only) or .safetensors file into a flat tensor dict."""
    path = Path(path)
    if not path.is_file():
        raise FewstepError(f"{path}: checkpoint file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickled code, truncated download, ...
        raise FewstepError(f"{path}: cannot read checkpoint ({e.__class__.__name__}: {str(e).splitlines()[0][:200]})") from None
    return unwrap_state_dict(sd, source=str(path))


def unwrap_state_dict(sd, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    while isinstance(sd, dict) and not any(torch.is_tensor(v) for v in sd.values()):
        for key in _WRAPPERS:
            if key in sd and isinstance(sd[key], dict):
                sd = sd[key]
                break
        else:
            raise FewstepError(f"{source}: no state dict found (top-level keys: {', '.join(map(str, list(sd)[:8]))})")
    if not isinstance(sd, dict):
        raise FewstepError(f"{source}: expected a dict of tensors, got {type(sd).__name__}")
    out = {}
    for key, value in sd.items():
        if not torch.is_tensor(value):
            continue
        k = str(key)
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if k.startswith(prefix):
                    k, changed = k[len(prefix):], True
        out[k] = value
    return out


def load_into(model: nn.Module, sd: dict[str, torch.Tensor], source: str = "checkpoint") -> nn.Module:
    """Strictly load `sd` into `model`, tolerating only the recomputed buffers."""
    own = model.state_dict()
    def recomputed(k: str) -> bool:
        return k.rsplit(".", 1)[-1] in RECOMPUTED_BUFFERS

    missing = [k for k in own if k not in sd and not recomputed(k)]
    unexpected = [k for k in sd if k not in own and not recomputed(k)]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s), e.g. {missing[0]!r}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s), e.g. {unexpected[0]!r}")
        raise CheckpointError(f"{source}: does not match {type(model).__name__}: " + "; ".join(parts))
    for k, v in sd.items():
        if k in own and not recomputed(k) and own[k].shape != v.shape:
            raise CheckpointError(f"{source}: shape mismatch for {k!r}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}")
    filtered = {k: v for k, v in sd.items() if k in own and not recomputed(k)}
    model.load_state_dict(filtered, strict=False)
    return model


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
