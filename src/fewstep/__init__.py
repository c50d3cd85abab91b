"""fewstep: few-step diffusion image super-resolution and restoration.

    import fewstep
    up = fewstep.load("fewstep-small")
    out = up.upscale(rgb_uint8_array, seed=0)

Models and their options: `fewstep.registry` (``fewstep.registry.models()``).
"""

from .errors import FewstepError
from .upscaler import Upscaler, available, load

__version__ = "0.1.0"
__all__ = ["FewstepError", "Upscaler", "available", "load", "__version__"]
