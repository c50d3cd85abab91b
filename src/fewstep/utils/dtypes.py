"""The dtype names fewstep accepts (`--dtype`, model options, export configs) and their torch dtypes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import FewstepError

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = ("fp32", "bf16", "fp16")  # the short names, in the order the docs list them
_ALIASES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
            "fp16": "float16", "float16": "float16"}


def torch_dtype(dtype: str | torch.dtype, *, what: str = "dtype") -> torch.dtype:
    """"fp32"/"float32", "bf16"/"bfloat16", "fp16"/"float16" (or a torch.dtype) -> the torch dtype;
    anything else is a one-line error naming `what` (the option) and the valid names."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = _ALIASES.get(str(dtype).lower()) if isinstance(dtype, str) else None
    if name is None:
        raise FewstepError(f"{what} must be one of {', '.join(DTYPE_NAMES)}, got {dtype!r}")
    return getattr(torch, name)
