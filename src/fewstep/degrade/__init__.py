"""Synthetic degradations for training and test sets.

    from fewstep.degrade import degrade, degrade_batch, imresize, PRESETS
    lr = degrade(hr_uint8, preset="resshift-test", scale=4, seed=0)

Presets: resshift (Real-ESRGAN second order), resshift-test (mild, test-set synthesis), s3diff,
bicubic (MATLAB ×1/scale), faceir (GFPGAN-style). Also LaMa-style masks (`random_mask`).

Names are resolved lazily so that `fewstep --help` (which imports `fewstep.degrade.testset`) does
not pay for torch/OpenCV here.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "PRESETS": "presets",
    "MixedMaskGenerator": "masks",
    "random_mask": "masks",
    "degrade": "pipeline",
    "degrade_batch": "pipeline",
    "degrade_one": "pipeline",
    "get_preset": "pipeline",
    "imresize": "resize",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
