"""`fewstep train CONFIG.yaml`: run the trainer named by the config's ``trainer:`` key.

The same command scales out unchanged: ``accelerate launch --num_processes 8 -m fewstep.cli train
CONFIG.yaml`` or ``torchrun --nproc_per_node 8 -m fewstep.cli train CONFIG.yaml`` trains data-parallel
(DDP); ``train.batch_size`` stays the global batch, so results do not depend on the process count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, List

import typer

# trainer name -> "module:function"; each is called as fn(config_dict, resume=..., quiet=...)
TRAINERS: dict[str, str] = {
    "resshift": "fewstep.resshift.train:train",
    "resshift-refiner": "fewstep.resshift.two_stage:train",
    "autoencoder": "fewstep.resshift.autoencoder_train:train",
    "sr3": "fewstep.skipdiff.train:train_sr3",
    "skipdiff_policy": "fewstep.skipdiff.train:train_policy",
    "s3diff": "fewstep.s3diff.train:train",
}


def resolve_trainer(name: Any) -> Callable[..., Any]:
    """The trainer function for a ``trainer:`` value (a TRAINERS key, or "module:function")."""
    from ..errors import FewstepError

    if not isinstance(name, str) or not name:
        raise FewstepError(f"config: 'trainer' must be one of {', '.join(TRAINERS)}")
    target = TRAINERS.get(name, name if ":" in name else None)
    if target is None:
        raise FewstepError(f"config: unknown trainer {name!r}; choose one of {', '.join(TRAINERS)}")
    from ..registry import resolve_object

    return resolve_object(target, what=f"trainer {name!r}")


def train_command(
    config: Path = typer.Argument(..., help="training config (YAML); relative paths inside it are relative to its folder"),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="continue from the newest checkpoint in out_dir"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
    set: List[str] = typer.Option([], "--set", help="key.sub=value overrides (paths relative to the current folder)"),
) -> None:
    """Train a model from a YAML config (single process, or DDP under accelerate launch / torchrun)."""
    from ..training.config import load_config

    cfg = load_config(config, set)
    fn = resolve_trainer(cfg.get("trainer"))
    result = fn(cfg, resume=resume, quiet=quiet)
    if not quiet and isinstance(result, dict) and _is_main():
        step = result.get("step")
        where = result.get("out_dir", "")
        val = result.get("val") or {}
        extra = "  ".join(f"{k}={v:.4g}" for k, v in val.items() if isinstance(v, (int, float)))
        typer.echo(f"done: step {step} in {where}" + (f"  {extra}" if extra else ""))


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"
