"""LaMa-style inpainting masks (Suvorov et al. 2022): irregular strokes, boxes, outpainting.

Masks are float32 HxW arrays with 1 = hole (to be inpainted), 0 = known. Parameter defaults are the
ones of ResShift's `configs/inpaint_lama256_imagenet.yaml` (`mask_kwargs`), for 256×256 images:

  irregular: max_angle 4, max_len 200, max_width 100, strokes 1..5
  box:       margin 10, side 30..150 px, boxes 1..4
  outpaint:  each side masked with probability 0.5, width U(4 %, 25 %) of the image side
  mixed:     one of the three with probabilities 1:1:1 (irregular_proba = box_proba = outpainting_proba = 1)

Measured hole coverage at 256×256 over seeds 0..299 (min / 5 % / mean / 95 % / max):
  irregular 0.03 / 0.10 / 0.43 / 0.75 / 0.88;  box 0.02 / 0.07 / 0.26 / 0.44 / 0.58;
  outpainting 0.04 / 0.08 / 0.27 / 0.51 / 0.59 (bounded by [0.04, 0.75] by construction);
  mixed 0.03 / 0.07 / 0.30 / 0.62 / 0.85.

Our choice where the config is silent: an outpainting mask always has at least one masked side
(one is picked uniformly if the coin flips chose none), so it is never empty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import FewstepError


@dataclass(frozen=True)
class IrregularParams:
    max_angle: int = 4
    max_len: int = 200
    max_width: int = 100
    min_times: int = 1
    max_times: int = 5
    max_segments: int = 5


@dataclass(frozen=True)
class BoxParams:
    margin: int = 10
    bbox_min_size: int = 30
    bbox_max_size: int = 150
    min_times: int = 1
    max_times: int = 4


@dataclass(frozen=True)
class OutpaintParams:
    min_padding_percent: float = 0.04
    max_padding_percent: float = 0.25
    side_prob: tuple[float, float, float, float] = (0.5, 0.5, 0.5, 0.5)  # left, top, right, bottom


@dataclass(frozen=True)
class MixedParams:
    irregular_proba: float = 1.0
    box_proba: float = 1.0
    outpainting_proba: float = 1.0


MASK_KINDS = ("irregular", "box", "outpainting", "mixed")


def irregular_mask(rng: np.random.Generator, h: int, w: int, p: IrregularParams = IrregularParams()) -> np.ndarray:
    """Random polyline strokes of random width: each stroke is 1..max_segments connected segments."""
    import cv2

    mask = np.zeros((h, w), np.float32)
    for i in range(int(rng.integers(p.min_times, p.max_times + 1))):
        x, y = int(rng.integers(w)), int(rng.integers(h))
        for _ in range(1 + int(rng.integers(p.max_segments))):
            # integer angles + 0.01 give a few dominant directions; odd strokes are mirrored (LaMa)
            angle = 0.01 + int(rng.integers(p.max_angle))
            if i % 2 == 0:
                angle = 2 * np.pi - angle
            length = 10 + int(rng.integers(p.max_len))
            width = 5 + int(rng.integers(p.max_width))
            nx = int(np.clip(x + length * np.sin(angle), 0, w))
            ny = int(np.clip(y + length * np.cos(angle), 0, h))
            cv2.line(mask, (x, y), (nx, ny), 1.0, width)
            x, y = nx, ny
    return mask


def box_mask(rng: np.random.Generator, h: int, w: int, p: BoxParams = BoxParams()) -> np.ndarray:
    """1..max_times axis-aligned boxes, kept `margin` pixels away from the border."""
    mask = np.zeros((h, w), np.float32)
    max_h = min(p.bbox_max_size, h - 2 * p.margin)
    max_w = min(p.bbox_max_size, w - 2 * p.margin)
    if max_h < 1 or max_w < 1:
        raise FewstepError(f"image {h}x{w} is too small for box masks with margin {p.margin}")
    for _ in range(int(rng.integers(p.min_times, p.max_times + 1))):
        bh = int(rng.integers(min(p.bbox_min_size, max_h), max_h + 1))
        bw = int(rng.integers(min(p.bbox_min_size, max_w), max_w + 1))
        y0 = int(rng.integers(p.margin, h - p.margin - bh + 1))
        x0 = int(rng.integers(p.margin, w - p.margin - bw + 1))
        mask[y0 : y0 + bh, x0 : x0 + bw] = 1.0
    return mask


def outpainting_mask(rng: np.random.Generator, h: int, w: int, p: OutpaintParams = OutpaintParams()) -> np.ndarray:
    """Mask strips along randomly chosen sides (left, top, right, bottom)."""
    mask = np.zeros((h, w), np.float32)
    sides = [bool(rng.uniform() < q) for q in p.side_prob]
    if not any(sides):
        sides[int(rng.integers(4))] = True
    for side, on in enumerate(sides):
        if not on:
            continue
        frac = float(rng.uniform(p.min_padding_percent, p.max_padding_percent))
        n = int(round(frac * (w if side in (0, 2) else h)))
        if n == 0:
            continue
        if side == 0:
            mask[:, :n] = 1
        elif side == 1:
            mask[:n, :] = 1
        elif side == 2:
            mask[:, w - n :] = 1
        else:
            mask[h - n :, :] = 1
    return mask


def random_mask(kind: str, size: int | tuple[int, int], seed: int = 0, params=None) -> np.ndarray:
    """A seeded mask: kind ∈ irregular | box | outpainting | mixed; size = S or (H, W)."""
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < 1 or w < 1:
        raise FewstepError(f"mask size must be positive, got {size}")
    rng = np.random.Generator(np.random.PCG64(int(seed)))
    if kind == "mixed":
        mp = params if isinstance(params, MixedParams) else MixedParams()
        probs = np.array([mp.irregular_proba, mp.box_proba, mp.outpainting_proba], dtype=np.float64)
        kind = ("irregular", "box", "outpainting")[int(rng.choice(3, p=probs / probs.sum()))]
        params = None
    if kind == "irregular":
        return irregular_mask(rng, h, w, params or IrregularParams())
    if kind == "box":
        return box_mask(rng, h, w, params or BoxParams())
    if kind == "outpainting":
        return outpainting_mask(rng, h, w, params or OutpaintParams())
    raise FewstepError(f"unknown mask kind {kind!r}; expected one of {', '.join(MASK_KINDS)}")


class MixedMaskGenerator:
    """Callable mask source for training: `gen(size, seed)` -> HxW float32 mask (1 = hole)."""

    def __init__(self, irregular_proba: float = 1.0, box_proba: float = 1.0, outpainting_proba: float = 1.0):
        if min(irregular_proba, box_proba, outpainting_proba) < 0 or irregular_proba + box_proba + outpainting_proba <= 0:
            raise FewstepError("mask probabilities must be >= 0 with a positive sum")
        self.params = MixedParams(irregular_proba, box_proba, outpainting_proba)

    def __call__(self, size: int | tuple[int, int], seed: int) -> np.ndarray:
        return random_mask("mixed", size, seed, self.params)
