"""Shared training engine: resumable checkpoints, EMA, AMP, accumulation, DDP via `accelerate`.

Light at import time; `accelerate`, `tensorboard` and `tqdm` are imported when training starts.
"""

from __future__ import annotations

from .config import apply_overrides, load_config
from .engine import Context, StepBatchSampler, Trainer, TrainSettings, TrainTask, export_safetensors, run_training
from .schedule import build_scheduler, lr_at

__all__ = [
    "Context", "StepBatchSampler", "Trainer", "TrainSettings", "TrainTask", "apply_overrides", "build_scheduler",
    "export_safetensors", "load_config", "lr_at", "run_training",
]
