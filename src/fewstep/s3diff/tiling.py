"""Latent tiling of the UNet pass exactly as the official S3Diff forward does it.

* tiling only when the latent area h*w exceeds tile^2; the tile shrinks to min(tile, h, w);
* starts at multiples of (tile - overlap), the last tile along each axis moved to end at the edge;
* tiles visited with x in the outer loop;
* blended with a Gaussian weight that is float64, outer(y_probs, x_probs), whose x midpoint is
  (T-1)/2 but whose y midpoint is T/2 (an asymmetry of the original, kept for parity);
* accumulated in float32 buffers: each float64 product is rounded when added.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import FewstepError


def gaussian_weights(tile: int, var: float = 0.01) -> torch.Tensor:
    """(T, T) float64 blend weights of the official code (asymmetric midpoints included)."""
    norm = math.sqrt(2 * math.pi * var)
    idx = np.arange(tile, dtype=np.float64)
    x_probs = np.exp(-(idx - (tile - 1) / 2) ** 2 / (tile * tile) / (2 * var)) / norm
    y_probs = np.exp(-(idx - tile / 2) ** 2 / (tile * tile) / (2 * var)) / norm
    return torch.from_numpy(np.outer(y_probs, x_probs))


def needs_tiling(h: int, w: int, tile: int) -> bool:
    return h * w > tile * tile


def _count(size: int, tile: int, overlap: int) -> int:
    n, cur = 0, 0
    while cur < size:
        cur = max(n * tile - overlap * n, 0) + tile
        n += 1
    return n


def tile_plan(h: int, w: int, tile: int = 96, overlap: int = 32) -> tuple[int, list[tuple[int, int]]]:
    """(effective tile, [(y0, x0), ...] in the official call order) for a latent of h x w."""
    if tile <= overlap or overlap < 0:
        raise FewstepError(f"latent tile {tile} must be larger than its overlap {overlap} (and overlap >= 0)")
    if not needs_tiling(h, w, tile):
        return 0, []
    t = min(tile, h, w)
    nx, ny = _count(w, t, overlap), _count(h, t, overlap)
    offsets = []
    for ix in range(nx):  # x outer, as the official loop
        for iy in range(ny):
            x0 = w - t if ix == nx - 1 else max(ix * (t - overlap), 0)
            y0 = h - t if iy == ny - 1 else max(iy * (t - overlap), 0)
            offsets.append((y0, x0))
    return t, offsets
