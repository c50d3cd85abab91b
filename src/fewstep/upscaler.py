"""The one object every model presents to the CLI, the evaluator and the Python API.

An `Upscaler` turns a low-resolution RGB image in [0, 1] into a restored image in [0, 1].
Models are described in `fewstep.registry` (``fewstep.load(name)`` builds one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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


def available() -> dict:
    """Registered models by name (thin wrapper over `fewstep.registry.models`)."""
    from .registry import models

    return models()


def load(name: str, **kwargs) -> Upscaler:
    """Build a registered model or a model folder (thin wrapper over `fewstep.registry.load`)."""
    from .registry import load as _load

    return _load(name, **kwargs)
