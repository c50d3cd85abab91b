"""Resumable training checkpoints: one ``torch.save`` file of plain tensors, numbers and dicts.

Everything in a checkpoint loads with ``torch.load(weights_only=True)``: RNG states are stored as
tensors and lists, never as pickled objects. Files are written to a temporary name in the same
folder and renamed, so a crash while saving never leaves a truncated ``step_*.pt`` behind; only the
newest `keep` checkpoints are kept.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError

_NAME = re.compile(r"^step_(\d+)\.pt$")


# ---------------------------------------------------------------- RNG states as plain tensors
def capture_rng() -> dict[str, Any]:
    """The python, numpy, torch (CPU) and CUDA generator states, as tensors/lists/numbers."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    out: dict[str, Any] = {
        "python_version": int(version),
        "python_state": torch.tensor(internal, dtype=torch.int64),
        "python_gauss": None if gauss is None else float(gauss),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_gauss": float(np_state[4]),
        "torch": torch.get_rng_state().clone(),
        "cuda": [s.clone() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }
    return out


def restore_rng(state: dict[str, Any]) -> None:
    internal = tuple(int(v) for v in state["python_state"].tolist())
    random.setstate((int(state["python_version"]), internal, state["python_gauss"]))
    np.random.set_state((
        "MT19937",
        state["numpy_keys"].numpy().astype(np.uint32),
        int(state["numpy_pos"]),
        int(state["numpy_has_gauss"]),
        float(state["numpy_gauss"]),
    ))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# ---------------------------------------------------------------- files
def checkpoint_path(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"step_{step:08d}.pt"


def list_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints in `folder`, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(folder: str | Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


def save_checkpoint(state: dict[str, Any], folder: str | Path, step: int, *, keep: int = 3) -> Path:
    """Write `state` atomically as ``folder/step_XXXXXXXX.pt`` and delete all but the newest `keep`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(folder, step)
    tmp = final.with_name(final.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    if keep > 0:
        for _, old in list_checkpoints(folder)[:-keep]:
            old.unlink(missing_ok=True)
    return final


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except Exception as e:  # truncated or foreign file
        raise CheckpointError(f"{path}: not a readable training checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path}: not a fewstep training checkpoint (no 'step')")
    return state
