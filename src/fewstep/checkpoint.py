"""The one checkpoint layer every weight loader goes through: read -> canonicalise -> strict load.

1. `read_checkpoint(path)`: a `.safetensors` file, or a `.pth/.pt/.ckpt/.pkl` read with
   `torch.load(weights_only=True)` (never unpickling code). A missing file is the "put FILE in DIR"
   line; an unreadable one (truncated, pickled code, not a checkpoint) names the file.
2. `canonical_state_dict(obj)`: unwraps the containers trainers write (`params_ema`, `state_dict`,
   `params`, `ema`, `model`: the first that holds the weights; EMA weights before raw ones) and
   strips the prefixes that wrappers add to every key (`module.` from DDP / DataParallel,
   `_orig_mod.` from torch.compile), so one released file loads however it was saved.
3. `load_state_dict(model, sd, source)`: strict — every missing or unexpected key and every shape
   mismatch is an error naming the file and the key — except the keys a loader declares as tolerated
   (buffers the network recomputes; weights an adapter checkpoint leaves at the base model's values).

Checkpoints with a structure of their own (S3Diff's dict of part state dicts, SkipDiff's policy
files) use steps 1 and 3 and pick their parts in between.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .errors import CheckpointError, WeightsNotFoundError

if TYPE_CHECKING:
    import torch
    from torch import nn

WRAPPERS = ("params_ema", "state_dict", "params", "ema", "model")
PREFIXES = ("module.", "_orig_mod.")
KeyFilter = Callable[[str], bool]


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{e.__class__.__name__}: {text[0][:200]}" if text else e.__class__.__name__


def _require_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weights not found: put {path.name} in {path.parent}")
    return path


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file."""
    from safetensors import safe_open

    path = _require_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(e)})") from None


def read_checkpoint(path: str | Path) -> Any:
    """The object stored in `path` (a dict for every checkpoint fewstep reads), safely."""
    path = _require_file(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)[0]
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickled code, truncated download, ...
        raise CheckpointError(f"{path}: cannot read checkpoint ({_first_line(e)})") from None


def canonical_state_dict(obj: Any, source: str = "checkpoint", *, wrappers: Iterable[str] = WRAPPERS,
                         prefixes: Iterable[str] = PREFIXES) -> dict[str, torch.Tensor]:
    """A flat {key: tensor} dict out of any of the wrapped layouts (non-tensor entries dropped)."""
    import torch

    wrappers, prefixes = tuple(wrappers), tuple(prefixes)
    while isinstance(obj, dict) and not any(torch.is_tensor(v) for v in obj.values()):
        inner = next((obj[k] for k in wrappers if isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise CheckpointError(f"{source}: no state dict found (top-level keys: "
                                  f"{', '.join(map(str, list(obj)[:8]))})")
        obj = inner
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: expected a dict of tensors, got {type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        if not torch.is_tensor(value):
            continue
        k = str(key)
        while k.startswith(prefixes):
            k = k[len(next(p for p in prefixes if k.startswith(p))):]
        out[k] = value
    return out


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """`read_checkpoint` + `canonical_state_dict`."""
    return canonical_state_dict(read_checkpoint(path), source=str(path))


def load_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], source: str = "checkpoint", *,
                    ignore: KeyFilter | None = None, optional: KeyFilter | None = None) -> nn.Module:
    """Load `sd` into `model` strictly, naming `source` and the first offending key on error.

    ignore:   keys skipped on both sides (present or absent, e.g. buffers the network recomputes).
    optional: model keys the file may leave out (they keep the model's values).
    """
    own = model.state_dict()
    skip = ignore or (lambda k: False)
    may_lack = optional or (lambda k: False)
    missing = [k for k in own if k not in sd and not skip(k) and not may_lack(k)]
    unexpected = [k for k in sd if k not in own and not skip(k)]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s), e.g. {missing[0]!r}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s), e.g. {unexpected[0]!r}")
        raise CheckpointError(f"{source}: does not match {type(model).__name__}: " + "; ".join(parts))
    for k, v in sd.items():
        if k in own and not skip(k) and tuple(own[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{source}: shape mismatch for {k!r}: file {tuple(v.shape)} vs model "
                                  f"{tuple(own[k].shape)}")
    model.load_state_dict({k: v for k, v in sd.items() if k in own and not skip(k)}, strict=False)
    return model
