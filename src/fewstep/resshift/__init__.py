"""ResShift: residual shifting in a VQ latent space (NeurIPS 2023 / TPAMI journal version)."""

from .chain import ResShiftChain
from .checkpoint import load_unet, load_vq
from .unet import SwinUNet
from .vq import VQModel

__all__ = ["ResShiftChain", "SwinUNet", "VQModel", "ResShiftPipeline", "load_unet", "load_vq"]


def __getattr__(name):  # the pipeline pulls in tiling/imageio; import it on first use
    if name == "ResShiftPipeline":
        from .pipeline import ResShiftPipeline

        return ResShiftPipeline
    raise AttributeError(name)
