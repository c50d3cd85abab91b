"""The one object every model presents to the CLI, the evaluator and the Python API.

An `Upscaler` turns a low-resolution RGB image in [0, 1] into a restored image in [0, 1].
Models register a factory under a name (``fewstep.load(name)``); the factory is imported lazily,
so that ``import fewstep`` stays cheap and optional dependencies (diffusers, ...) are only needed
by the models that use them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .errors import FewstepError

if TYPE_CHECKING:  # torch/numpy are imported where used, so `import fewstep` stays fast
    import numpy as np
    import torch


class Upscaler:
    """Base class: subclasses implement `restore` on float tensors.

    Attributes:
        name:  registry name ("fewstep-small", "bicubic", "realsr-v3", ...).
        scale: output size / input size (1 for inpainting and face restoration).
        nfe:   network evaluations per image (0 for classical methods), for reports.
    """

    name: str = "upscaler"
    scale: int = 4
    nfe: int = 0
    needs_mask: bool = False

    def restore(self, lr: torch.Tensor, *, seed: int = 0, mask: torch.Tensor | None = None) -> torch.Tensor:
        """lr: (1, 3, h, w) float in [0, 1] -> (1, 3, h*scale, w*scale) float in [0, 1]."""
        raise NotImplementedError

    def upscale(self, image: np.ndarray, *, seed: int = 0, mask: np.ndarray | None = None) -> np.ndarray:
        """Convenience for arrays: HxWx3 uint8 (or float in [0, 1]) -> HxWx3 uint8."""
        import numpy as np
        import torch

        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise FewstepError(f"expected an HxWx3 RGB array, got shape {arr.shape}")
        x = torch.from_numpy(arr.astype(np.float32) / (255.0 if arr.dtype == np.uint8 else 1.0))
        x = x.permute(2, 0, 1)[None]
        m = None
        if mask is not None:
            m = torch.from_numpy((np.asarray(mask) > 0).astype(np.float32))[None, None]
        with torch.no_grad():
            y = self.restore(x, seed=seed, mask=m)[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy()
        return np.round(y * 255.0).astype(np.uint8)


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: how to build it and a one-line description for `fewstep weights`."""

    name: str
    factory: str  # "module.path:function" -> function(**kwargs) -> Upscaler
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, factory: str, description: str) -> None:
    _REGISTRY[name] = ModelEntry(name, factory, description)


def available() -> dict[str, ModelEntry]:
    _register_builtin()
    return dict(_REGISTRY)


def load(name: str, **kwargs) -> Upscaler:
    """Build the registered model `name` (kwargs: weights=DIR, device=..., dtype=..., ...).

    `name` may also be a model folder (one holding `fewstep_model.json`), e.g. a trained export.
    """
    from pathlib import Path

    if (Path(name) / "fewstep_model.json").is_file():
        # resolved by name like every model factory, so this module (which the models import for
        # `Upscaler`) imports no model module back
        return _resolve(FOLDER_LOADER)(name, **kwargs)
    entries = available()
    if name not in entries:
        raise FewstepError(f"unknown model {name!r}; available: {', '.join(sorted(entries))}")
    factory: Callable[..., Upscaler] = _resolve(entries[name].factory)
    return factory(name=name, **_accepted_options(name, factory, kwargs))


FOLDER_LOADER = "fewstep.model_folder:load_folder"  # builds a model folder (fewstep_model.json)


def _resolve(target: str) -> Callable:
    """"module.path:function" -> the function."""
    module_name, func_name = target.split(":")
    return getattr(importlib.import_module(module_name), func_name)


# Options every caller may pass; a model that has no use for them simply does not get them.
_GENERIC_OPTIONS = {"quiet", "weights", "device", "dtype", "steps"}


def _accepted_options(name: str, factory: Callable, kwargs: dict) -> dict:
    """Check `kwargs` against the factory's signature: generic options it does not take are
    dropped, any other unknown option is a one-line error listing the ones it has."""
    import inspect

    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    unknown = sorted(k for k in kwargs if k not in params and k not in _GENERIC_OPTIONS)
    if unknown:
        options = ", ".join(k for k in params if k != "name")
        raise FewstepError(f"model {name!r} has no option {', '.join(unknown)} (options: {options})")
    return {k: v for k, v in kwargs.items() if k in params}


_BUILTIN_DONE = False


def _register_builtin() -> None:
    """Each subsystem lists its models in a `MODELS` table in its `models.py`; read them once."""
    global _BUILTIN_DONE
    if _BUILTIN_DONE:
        return
    _BUILTIN_DONE = True
    for pkg in ("fewstep.baselines", "fewstep.resshift", "fewstep.s3diff", "fewstep.skipdiff"):
        try:
            mod = importlib.import_module(pkg + ".models")
        except ModuleNotFoundError as e:  # subsystem not present yet / optional
            if e.name and e.name.startswith(pkg):
                continue
            raise
        for name, factory, description in mod.MODELS:
            register(name, factory, description)
