"""Tiled VAE encoder/decoder for large images, with exact GroupNorm statistics.

Why not diffusers' `enable_tiling`: it normalises every tile with its own GroupNorm statistics and
blends the seams, which shifts colours and leaves seams. Here:

* only the high-resolution part is tiled (encoder: conv_in + down blocks; decoder: up blocks +
  output head). The latent-resolution part (mid block with its attention) runs untiled, so the
  attention is exact and cheap;
* tiles carry a halo wider than the receptive field of the tiled part, so every convolution is exact
  on the tile core;
* all tiles run in lock step (Python generators) and meet at every GroupNorm: the statistics are
  summed in float64 over the tile *cores* only (they partition the image), so each GroupNorm uses
  the statistics of the whole image, exactly.

Results equal the untiled modules up to float rounding. Tile offsets are multiples of 8 pixels in
the encoder so the stride-2 convolutions stay on the global grid.
"""

from __future__ import annotations

from typing import Generator

import torch
from torch import nn


def _plan(size: int, core: int) -> list[tuple[int, int]]:
    starts = list(range(0, size, core))
    return [(s, min(s + core, size)) for s in starts]


def _group_norm(x: torch.Tensor, gn: nn.GroupNorm, core: tuple[int, int, int, int]) -> Generator:
    """Yields partial sums over the core, receives (mean, var) of the whole image, returns GN(x)."""
    y0, y1, x0, x1 = core
    b, c = x.shape[:2]
    g = gn.num_groups
    xc = x[:, :, y0:y1, x0:x1].double().reshape(b, g, -1)
    mean, var = yield (xc.sum(-1), (xc * xc).sum(-1), xc.shape[-1])
    xg = x.float().reshape(b, g, -1)
    out = (xg - mean.float()[..., None]) * torch.rsqrt(var.float()[..., None] + gn.eps)
    out = out.reshape(x.shape)
    if gn.affine:
        out = out * gn.weight.float()[None, :, None, None] + gn.bias.float()[None, :, None, None]
    return out.to(x.dtype)


def _resnet(block: nn.Module, x: torch.Tensor, core) -> Generator:
    """diffusers ResnetBlock2D without time embedding (as in the VAE)."""
    h = yield from _group_norm(x, block.norm1, core)
    h = block.conv1(block.nonlinearity(h))
    h = yield from _group_norm(h, block.norm2, core)
    h = block.conv2(block.dropout(block.nonlinearity(h)))
    if block.conv_shortcut is not None:
        x = block.conv_shortcut(x.contiguous())
    return (x + h) / block.output_scale_factor


def _lockstep(gens: list[Generator]) -> list:
    """Drive generators that all yield GroupNorm partial sums at the same points."""
    results: list = [None] * len(gens)
    msgs = [next(g) for g in gens]
    while True:
        s1 = sum(m[0] for m in msgs)
        s2 = sum(m[1] for m in msgs)
        n = sum(m[2] for m in msgs)
        mean = s1 / n
        var = (s2 / n - mean * mean).clamp_min(0)
        new = []
        done = 0
        for i, g in enumerate(gens):
            try:
                new.append(g.send((mean, var)))
            except StopIteration as stop:
                results[i] = stop.value
                done += 1
        if done == len(gens):
            return results
        if done:
            raise RuntimeError("tiles left the lock step")  # all tiles run the same op sequence
        msgs = new


class TiledEncoder(nn.Module):
    """Drop-in for `vae.encoder(x)`; holds the encoder as `.encoder` (for functional_call names)."""

    def __init__(self, encoder: nn.Module, tile: int = 1024, halo: int = 96) -> None:
        super().__init__()
        self.encoder = encoder
        self.tile = max(64, tile // 64 * 64)
        self.halo = (halo + 7) // 8 * 8

    def _tile(self, x: torch.Tensor, core) -> Generator:
        enc = self.encoder
        h = enc.conv_in(x)
        for blk in enc.down_blocks:
            for res in blk.resnets:
                h = yield from _resnet(res, h, core)
            if blk.downsamplers is not None:
                for d in blk.downsamplers:
                    h = d(h)
                core = tuple(c // 2 for c in core)
        return h[:, :, core[0]:core[1], core[2]:core[3]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        H, W = x.shape[-2:]
        f = 2 ** sum(1 for b in enc.down_blocks if b.downsamplers is not None)
        gens, places = [], []
        for y0, y1 in _plan(H, self.tile):
            for x0, x1 in _plan(W, self.tile):
                ty0, tx0 = max(0, y0 - self.halo), max(0, x0 - self.halo)
                ty1, tx1 = min(H, y1 + self.halo), min(W, x1 + self.halo)
                gens.append(self._tile(x[:, :, ty0:ty1, tx0:tx1], (y0 - ty0, y1 - ty0, x0 - tx0, x1 - tx0)))
                places.append((y0 // f, y1 // f, x0 // f, x1 // f))
        parts = _lockstep(gens)
        h = torch.empty((x.shape[0], parts[0].shape[1], H // f, W // f), dtype=parts[0].dtype, device=x.device)
        for (a, b, c, d), p in zip(places, parts):
            h[:, :, a:b, c:d] = p
        h = enc.mid_block(h)
        h = enc.conv_norm_out(h)
        return enc.conv_out(enc.conv_act(h))


class TiledDecoder(nn.Module):
    """Drop-in for `vae.decoder(z)` (z after post_quant_conv)."""

    def __init__(self, decoder: nn.Module, tile: int = 224, halo: int = 16) -> None:
        super().__init__()
        self.decoder = decoder
        self.tile = max(8, tile)
        self.halo = halo

    def _tile(self, h: torch.Tensor, core) -> Generator:
        dec = self.decoder
        for blk in dec.up_blocks:
            for res in blk.resnets:
                h = yield from _resnet(res, h, core)
            if blk.upsamplers is not None:
                for u in blk.upsamplers:
                    h = u(h)
                core = tuple(c * 2 for c in core)
        h = yield from _group_norm(h, dec.conv_norm_out, core)
        h = dec.conv_out(dec.conv_act(h))
        return h[:, :, core[0]:core[1], core[2]:core[3]]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        dec = self.decoder
        h = dec.conv_in(z)
        up_dtype = next(iter(dec.up_blocks.parameters())).dtype
        h = dec.mid_block(h, None).to(up_dtype)
        H, W = h.shape[-2:]
        f = 2 ** sum(1 for b in dec.up_blocks if b.upsamplers is not None)
        gens, places = [], []
        for y0, y1 in _plan(H, self.tile):
            for x0, x1 in _plan(W, self.tile):
                ty0, tx0 = max(0, y0 - self.halo), max(0, x0 - self.halo)
                ty1, tx1 = min(H, y1 + self.halo), min(W, x1 + self.halo)
                gens.append(self._tile(h[:, :, ty0:ty1, tx0:tx1], (y0 - ty0, y1 - ty0, x0 - tx0, x1 - tx0)))
                places.append((y0 * f, y1 * f, x0 * f, x1 * f))
        parts = _lockstep(gens)
        out = torch.empty((z.shape[0], parts[0].shape[1], H * f, W * f), dtype=parts[0].dtype, device=z.device)
        for (a, b, c, d), p in zip(places, parts):
            out[:, :, a:b, c:d] = p
        return out
