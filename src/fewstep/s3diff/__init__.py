"""S3Diff: one-step degradation-guided super-resolution on SD-Turbo (arXiv 2409.17058).

    from fewstep.s3diff import S3DiffPipeline
    pipe = S3DiffPipeline.from_pretrained(sd_turbo_dir, s3diff_ckpt, de_net_ckpt)
    out = pipe(lr, encoder_noise=noise, color_fix="wavelet")

Names are resolved lazily so that importing the package (e.g. for the model registry) stays cheap.
"""

from __future__ import annotations

__all__ = ["S3DiffPipeline", "S3DiffModel", "DEResNet", "load_s3diff"]


def __getattr__(name: str):
    if name == "S3DiffPipeline":
        from .pipeline import S3DiffPipeline
        return S3DiffPipeline
    if name == "S3DiffModel":
        from .model import S3DiffModel
        return S3DiffModel
    if name == "DEResNet":
        from .deresnet import DEResNet
        return DEResNet
    if name == "load_s3diff":
        from .models import load_s3diff
        return load_s3diff
    raise AttributeError(name)
