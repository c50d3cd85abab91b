"""JPEG compression round trip (OpenCV encoder, libjpeg-turbo 4:2:0 at quality q).

Real-ESRGAN uses a differentiable JPEG on GPU during training; a real encoder gives the same
artefacts without hand-written quantisation tables. Tensors on a GPU round-trip through the CPU.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import FewstepError


def jpeg_uint8(rgb: np.ndarray, quality: int) -> np.ndarray:
    """HxWx3 uint8 RGB -> JPEG-compressed HxWx3 uint8 RGB at the given quality (1..100)."""
    import cv2

    q = int(round(quality))
    if not 1 <= q <= 100:
        raise FewstepError(f"JPEG quality must be in 1..100, got {quality}")
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, q])
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 BGR
        raise FewstepError("OpenCV failed to encode a JPEG")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy()


def jpeg_tensor(img: torch.Tensor, quality: float) -> torch.Tensor:
    """img (3,H,W) float in [0,1] on any device -> JPEG round trip (values are multiples of 1/255)."""
    u8 = torch.clamp(torch.round(img.detach() * 255.0), 0, 255).to("cpu", torch.uint8)
    out = jpeg_uint8(u8.permute(1, 2, 0).numpy(), int(round(float(quality))))
    return torch.from_numpy(out).permute(2, 0, 1).to(device=img.device, dtype=img.dtype) / 255.0
