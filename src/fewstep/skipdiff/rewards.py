"""Terminal rewards for the fine-skip policy (no downloadable weights needed).

- faithful: r = 1/NIQE(SR) with the standard pristine model (96-px blocks; images >= 192 px);
- small images: the same 36 NSS features with a model fitted on the training HR photos with
  smaller blocks ("NIQE-ours", `fit_niqe_ours`), because the standard model cannot score 128² crops;
- optional fidelity guard: r -= λ·max(0, PSNR_ref - PSNR(SR, HR)), PSNR_ref = PSNR of the full
  (m = F) completion minus a margin, which makes the perception-distortion trade explicit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import FewstepError

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "skipdiff"


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """(3,H,W) or (1,3,H,W) float in [0,1] -> HxWx3 uint8."""
    if img.ndim == 4:
        img = img[0]
    return (img.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


def fit_niqe_ours(hr_dir: str | Path, block_size: int = 32, quiet: bool = True):
    """NIQE pristine model fitted on the HR photos in `hr_dir` with `block_size` blocks."""
    from ..datasets import list_images
    from ..metrics import fit_niqe_model

    return fit_niqe_model(list_images(hr_dir), block_size=block_size, quiet=quiet)


def niqe_ours(block_size: int = 32, hr_dir: str | Path | None = None):
    """The shipped NIQE-ours model (fitted on ../shared/data/photos/train), or a fresh fit."""
    from ..metrics import NiqeModel

    shipped = DATA_DIR / f"niqe_ours_b{block_size}.npz"
    if hr_dir is None and shipped.is_file():
        return NiqeModel.load(shipped)
    if hr_dir is None:
        raise FewstepError(f"no shipped NIQE model {shipped.name}; give reward.niqe_hr_dir to fit one")
    return fit_niqe_ours(hr_dir, block_size)


def niqe_score(img: np.ndarray, model=None) -> float:
    """NIQE with the standard model when the image is large enough, else `model` (NIQE-ours)."""
    from ..metrics import niqe

    if model is None and min(img.shape[:2]) < 192:
        raise FewstepError(f"standard NIQE needs >= 192 px, got {img.shape[0]}x{img.shape[1]}; use NIQE-ours")
    # basicsr flavour: the shipped NIQE-ours models were fitted with its features, and it scores
    # crops with flat blocks (clipped skies) instead of raising as MATLAB's definition does
    return float(niqe(img, model, flavour="basicsr"))


def build_reward(cfg: dict, train_hr=None):
    """cfg: {"kind": "inv_niqe" | "neg_niqe", "niqe": "standard" | "ours", "block_size": 32,
    "niqe_hr_dir": DIR (fit instead of the shipped model), "guard_lambda": 0.0, "guard_margin": 1.0}.

    Returns fn(images (M,3,H,W) in [0,1], hr (1,3,H,W)) -> (rewards (M,), psnr_y (M,)).
    """
    from ..metrics import psnr

    kind = cfg.get("kind", "inv_niqe")
    if kind not in ("inv_niqe", "neg_niqe"):
        raise FewstepError(f"config: reward.kind must be inv_niqe or neg_niqe, got {kind!r}")
    which = cfg.get("niqe", "ours")
    model = None
    if which == "ours":
        model = niqe_ours(int(cfg.get("block_size", 32)), cfg.get("niqe_hr_dir"))
    elif which != "standard":
        raise FewstepError(f"config: reward.niqe must be 'standard' or 'ours', got {which!r}")
    lam, margin = float(cfg.get("guard_lambda", 0.0)), float(cfg.get("guard_margin", 1.0))

    def fn(images: torch.Tensor, hr: torch.Tensor):
        ref = to_uint8(hr)
        arrs = [to_uint8(im) for im in images]
        q = np.array([niqe_score(a, model) for a in arrs])
        p = np.array([psnr(a, ref, crop_border=4, y_channel=True) for a in arrs])
        r = 1.0 / q if kind == "inv_niqe" else -q
        if lam > 0:
            r = r - lam * np.maximum(0.0, (p[-1] - margin) - p)
        return r, p

    return fn
