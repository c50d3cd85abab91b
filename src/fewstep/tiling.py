"""Tile plans and blending for processing images larger than a model's comfortable size.

A plan cuts an input of size (H, W) into overlapping square tiles; each tile is restored on its
own and the outputs are blended back with per-pixel weights:

* ``gaussian`` (default): each tile's weight is a separable Gaussian bump centred on the tile,
  so overlaps cross-fade smoothly and no seam step appears;
* ``uniform``: every covered pixel has weight 1, i.e. overlaps are averaged, which is what the
  official ResShift `ImageSpliterTh` does (kept for parity; it shows seams, upstream issue #130).

Tile starts follow the official rule: range(0, L, stride), each start clipped to L - tile, then
de-duplicated. A side not longer than the tile is a single tile.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    if stride <= 0:
        raise ValueError("tile stride must be positive")
    starts: list[int] = []
    for s in range(0, length, stride):
        s = min(s, length - tile)
        if s not in starts:
            starts.append(s)
    return starts


@dataclass(frozen=True)
class Tile:
    top: int
    left: int
    height: int
    width: int

    def slices(self, scale: int = 1) -> tuple[slice, slice]:
        return (slice(self.top * scale, (self.top + self.height) * scale),
                slice(self.left * scale, (self.left + self.width) * scale))


@dataclass(frozen=True)
class TilePlan:
    height: int
    width: int
    tile: int
    overlap: int

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    def tiles(self) -> list[Tile]:
        th, tw = min(self.tile, self.height), min(self.tile, self.width)
        return [Tile(t, l, th, tw)
                for t in tile_starts(self.height, self.tile, self.stride)
                for l in tile_starts(self.width, self.tile, self.stride)]


def plan_tiles(height: int, width: int, tile: int | None, overlap: int = 32) -> TilePlan:
    """`tile=None`/0 means one tile covering the image."""
    if not tile or tile <= 0:
        return TilePlan(height, width, max(height, width), 0)
    if overlap < 0 or overlap >= tile:
        raise ValueError(f"tile overlap must be in [0, tile), got {overlap} for tile {tile}")
    return TilePlan(height, width, tile, overlap)


def gaussian_weight(h: int, w: int, *, sigma_frac: float = 0.3, device=None) -> torch.Tensor:
    """Separable Gaussian bump (h, w), peak 1 at the centre, sigma = sigma_frac * size."""
    def axis(n: int) -> torch.Tensor:
        x = torch.arange(n, dtype=torch.float32, device=device) + 0.5 - n / 2
        return torch.exp(-0.5 * (x / (sigma_frac * n)) ** 2)

    return axis(h)[:, None] * axis(w)[None, :]


class TileBlender:
    """Accumulates weighted tile outputs on an output canvas and normalises at the end."""

    def __init__(self, batch: int, channels: int, height: int, width: int, *, mode: str = "gaussian",
                 device=None, dtype=torch.float32):
        if mode not in ("gaussian", "uniform"):
            raise ValueError(f"unknown tile blending {mode!r} (use 'gaussian' or 'uniform')")
        self.mode = mode
        self.canvas = torch.zeros(batch, channels, height, width, device=device, dtype=dtype)
        self.weight = torch.zeros(1, 1, height, width, device=device, dtype=dtype)

    def add(self, out: torch.Tensor, rows: slice, cols: slice) -> None:
        h, w = out.shape[-2:]
        if self.mode == "uniform":
            wgt = torch.ones(h, w, device=out.device, dtype=self.canvas.dtype)
        else:
            wgt = gaussian_weight(h, w, device=out.device).to(self.canvas.dtype)
        self.canvas[:, :, rows, cols] += out.to(self.canvas.dtype) * wgt
        self.weight[:, :, rows, cols] += wgt

    def result(self) -> torch.Tensor:
        return self.canvas / self.weight


def run_tiled(x: torch.Tensor, fn, *, scale: int, tile: int | None, overlap: int = 32, blend: str = "gaussian",
              tile_batch: int = 1, progress: bool = False, out_channels: int | None = None) -> torch.Tensor:
    """Apply `fn` tile by tile and blend: x (B,C,H,W) -> (B,C',H*scale,W*scale).

    `fn(crops, tiles)` gets the crops of up to `tile_batch` tiles concatenated along the batch
    dimension (tile-major: crops[j*B:(j+1)*B] is tile j) and returns their outputs in that order.
    """
    from tqdm import tqdm

    b, c, h, w = x.shape
    tiles = plan_tiles(h, w, tile, overlap).tiles()
    blender = TileBlender(b, out_channels or c, h * scale, w * scale, mode=blend, device=x.device)
    step = max(1, int(tile_batch))
    with tqdm(total=len(tiles), desc="tiles", unit="tile", leave=False, disable=not progress or len(tiles) == 1) as bar:
        for i in range(0, len(tiles), step):
            group = tiles[i:i + step]
            crops = torch.cat([x[(slice(None), slice(None), *t.slices())] for t in group])
            out = fn(crops, group)
            for j, t in enumerate(group):
                blender.add(out[j * b:(j + 1) * b], *t.slices(scale))
            bar.update(len(group))
    return blender.result()
