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

    def upscale(self, image, *, seed: int = 0, mask=None, value_range: tuple[float, float] | None = None):
        """Restore one image given as a numpy array, a PIL image, a torch tensor or a nested list.

        Input contract (see docs/api.md):
          * numpy / list: HxWx3 (HxW and HxWx1 gray are replicated to RGB). uint8 means 0..255,
            uint16 means 0..65535, float means 0..1; other dtypes (int64 from a list, say) need
            `value_range=(lo, hi)`, which also overrides the default of any dtype.
          * torch: (3,H,W) or (1,3,H,W), same value rules; PIL: any mode Pillow converts to RGB
            (16-bit gray "I;16" keeps 0..65535).
          * values outside the range, NaN/inf, an empty image or a wrong shape -> FewstepError.
        The result has the input's kind, layout, dtype and range (a list gives a numpy array; a PIL
        image gives an 8-bit RGB PIL image), `scale` times larger. `mask` (HxW, nonzero = hole) is
        for inpainting models.
        """
        import numpy as np
        import torch

        x, back = _to_unit_tensor(image, value_range)
        m = None
        if mask is not None:
            mk = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask)
            if mk.ndim == 3 and mk.shape[2] == 1:
                mk = mk[..., 0]
            if mk.shape != tuple(x.shape[-2:]):
                raise FewstepError(f"mask has shape {mk.shape}, expected {tuple(x.shape[-2:])} (the image's HxW)")
            m = torch.from_numpy((mk > 0).astype(np.float32))[None, None]
        with torch.no_grad():
            y = self.restore(x, seed=seed, mask=m).clamp(0, 1)
        return back(y)


def _to_unit_tensor(image, value_range):
    """(1,3,H,W) float32 tensor in [0, 1] from any accepted input, and the function that turns a
    result of the same layout back into the input's kind, dtype and range."""
    import numpy as np
    import torch

    kind = "numpy"
    if isinstance(image, torch.Tensor):
        kind = "torch"
        device, tdtype = image.device, image.dtype
        t = image.detach()
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim != 3 or t.shape[0] != 3:
            raise FewstepError(f"expected a (3,H,W) or (1,3,H,W) tensor, got shape {tuple(image.shape)}")
        lead4 = image.ndim == 4
        arr = t.cpu().permute(1, 2, 0).numpy() if t.dtype != torch.bfloat16 else t.float().cpu().permute(1, 2, 0).numpy()
    elif hasattr(image, "getbands") and hasattr(image, "mode"):  # a PIL image, without importing PIL
        kind = "pil"
        mode = image.mode
        if mode.startswith("I;16") or mode == "I":
            arr = np.asarray(image).astype(np.uint16) if mode != "I" else np.asarray(image)
            if mode == "I":
                arr = arr.astype(np.int64)
                if value_range is None:
                    value_range = (0, 65535)
        elif mode == "F":
            arr = np.asarray(image, dtype=np.float32)
        else:
            arr = np.asarray(image.convert("RGB"))
    else:
        if isinstance(image, (list, tuple)):
            kind = "list"
        try:
            arr = np.asarray(image)
        except (ValueError, TypeError) as e:
            raise FewstepError(f"cannot read the image as an array ({e})") from None
        if arr.dtype == object:
            raise FewstepError("the image is a ragged list or holds non-numbers; pass an HxWx3 numeric array")
    dtype = arr.dtype
    if arr.size == 0:
        raise FewstepError(f"empty image (shape {arr.shape})")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3):
        raise FewstepError(f"expected an HxWx3 RGB (or HxW gray) array, got shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if dtype == np.bool_ or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise FewstepError(f"image dtype {dtype} is not a number type; use uint8, uint16 or float")
    if value_range is None:
        if dtype == np.uint8:
            value_range = (0, 255)
        elif dtype == np.uint16:
            value_range = (0, 65535)
        elif np.issubdtype(dtype, np.floating):
            value_range = (0.0, 1.0)
        else:
            raise FewstepError(f"image dtype {dtype}: say what its numbers mean with value_range=(0, 255) or "
                               "(0, 65535), or convert it to uint8/uint16 (float means 0..1)")
    lo, hi = float(value_range[0]), float(value_range[1])
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise FewstepError(f"value_range={value_range!r}: needs two finite numbers lo < hi")
    f = arr.astype(np.float64)
    if not np.isfinite(f).all():
        raise FewstepError("image contains NaN or infinite values")
    vmin, vmax = float(f.min()), float(f.max())
    if vmin < lo or vmax > hi:
        hint = " (0..255 data? divide by 255 or pass value_range=(0, 255))" if np.issubdtype(dtype, np.floating) and vmax > 1 else ""
        raise FewstepError(f"image values {vmin:g}..{vmax:g} are outside the range {lo:g}..{hi:g} of a {dtype} "
                           f"image{hint}")
    if lo == 0:  # float32 v / hi, exactly as fewstep.imageio reads files: API and CLI give the same bytes
        unit = arr.astype(np.float32) / np.float32(hi)
    else:
        unit = ((f - lo) / (hi - lo)).astype(np.float32)
    x = torch.from_numpy(np.ascontiguousarray(unit)).permute(2, 0, 1)[None].contiguous()

    def back(y):
        y = y[0].permute(1, 2, 0).cpu().float().numpy()
        if np.issubdtype(dtype, np.integer):
            # float32 scale-and-round, as fewstep.imageio writes files
            out = np.clip(np.round(y * np.float32(hi - lo) + np.float32(lo)), lo, hi).astype(dtype)
        elif lo == 0 and hi == 1:
            out = y.astype(dtype)
        else:
            out = (y.astype(np.float64) * (hi - lo) + lo).astype(dtype)
        if kind == "torch":
            tt = torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1)
            tt = tt.to(device=device, dtype=tdtype)
            return tt[None] if lead4 else tt
        if kind == "pil":
            from PIL import Image

            return Image.fromarray(np.round((out - lo) / (hi - lo) * 255).clip(0, 255).astype(np.uint8), "RGB")
        return out

    return x, back


def available() -> dict:
    """Registered models by name (thin wrapper over `fewstep.registry.models`)."""
    from .registry import models

    return models()


def load(name: str, **kwargs) -> Upscaler:
    """Build a registered model or a model folder (thin wrapper over `fewstep.registry.load`)."""
    from .registry import load as _load

    return _load(name, **kwargs)
