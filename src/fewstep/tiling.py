"""Tile plans and blending for processing images larger than a model's comfortable size.

A plan cuts an input of size (H, W) into overlapping square tiles; each tile is restored on its
own and the outputs are blended back with per-pixel weights:

* ``gaussian`` (default): along every side that overlaps a neighbour, a tile's weight rises from
  0 at its edge to 1 across the overlap following a Gaussian CDF (a smooth S-curve); elsewhere it
  is 1. Weights are exactly 0 where a tile's content ends, so disagreeing tiles cross-fade and
  no seam step can appear (a centred Gaussian bump, as some tools use, still leaves ~25% of
  its peak weight at the tile edge, hence a visible step);
* ``uniform``: every covered pixel has weight 1, i.e. overlaps are averaged, which is what the
  official ResShift `ImageSpliterTh` does (kept for parity; it shows seams, upstream issue #130).

Tile starts follow the official rule: range(0, L, stride), each start clipped to L - tile, then
de-duplicated. A side not longer than the tile is a single tile.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .progress import tick as progress_tick


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


def gaussian_ramp(n: int, overlap: int, *, rise_start: bool, rise_end: bool, device=None) -> torch.Tensor:
    """1-D weights of length n: a Gaussian-CDF ramp 0 -> 1 over `overlap` pixels at each end that
    borders a neighbour (evaluated at pixel centres, so never exactly 0), 1 elsewhere."""
    w = torch.ones(n, dtype=torch.float64, device=device)
    o = min(overlap, n)
    if o > 0:
        t = (torch.arange(o, dtype=torch.float64, device=device) + 0.5) / o
        k = torch.tensor(3.0, dtype=torch.float64)
        cdf = lambda v: 0.5 * (1 + torch.erf(v / 2 ** 0.5))  # noqa: E731
        ramp = (cdf(2 * k * t - k) - cdf(-k)) / (cdf(k) - cdf(-k))
        if rise_start:
            w[:o] = torch.minimum(w[:o], ramp)
        if rise_end:
            w[n - o:] = torch.minimum(w[n - o:], ramp.flip(0))
    return w.float()


class TileBlender:
    """Accumulates weighted tile outputs on an output canvas and normalises at the end."""

    def __init__(self, batch: int, channels: int, height: int, width: int, *, mode: str = "gaussian",
                 ramp: int = 0, device=None, dtype=torch.float32):
        if mode not in ("gaussian", "uniform"):
            raise ValueError(f"unknown tile blending {mode!r} (use 'gaussian' or 'uniform')")
        self.mode, self.ramp = mode, ramp
        self.canvas = torch.zeros(batch, channels, height, width, device=device, dtype=dtype)
        self.weight = torch.zeros(1, 1, height, width, device=device, dtype=dtype)

    def add(self, out: torch.Tensor, rows: slice, cols: slice) -> None:
        h, w = out.shape[-2:]
        H, W = self.canvas.shape[-2:]
        if self.mode == "uniform":
            wgt = torch.ones(h, w, device=out.device, dtype=self.canvas.dtype)
        else:  # ramp only on sides that are inside the image (a neighbour tile continues there)
            wy = gaussian_ramp(h, self.ramp, rise_start=rows.start > 0, rise_end=rows.stop < H, device=out.device)
            wx = gaussian_ramp(w, self.ramp, rise_start=cols.start > 0, rise_end=cols.stop < W, device=out.device)
            wgt = (wy[:, None] * wx[None, :]).to(self.canvas.dtype)
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
    plan = plan_tiles(h, w, tile, overlap)
    tiles = plan.tiles()
    blender = TileBlender(b, out_channels or c, h * scale, w * scale, mode=blend, ramp=plan.overlap * scale,
                          device=x.device)
    step = max(1, int(tile_batch))
    progress_tick("tile", 0, len(tiles))  # the web page's progress bar and cancel button
    with tqdm(total=len(tiles), desc="tiles", unit="tile", leave=False, disable=not progress or len(tiles) == 1) as bar:
        for i in range(0, len(tiles), step):
            group = tiles[i:i + step]
            crops = torch.cat([x[(slice(None), slice(None), *t.slices())] for t in group])
            out = fn(crops, group)
            for j, t in enumerate(group):
                blender.add(out[j * b:(j + 1) * b], *t.slices(scale))
            bar.update(len(group))
            progress_tick("tile", i + len(group), len(tiles))
    return blender.result()
