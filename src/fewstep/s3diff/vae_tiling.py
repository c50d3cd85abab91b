"""Tiled VAE encoder/decoder for large images, with exact GroupNorm statistics.

Why not diffusers' `enable_tiling`: it normalises every tile with its own GroupNorm statistics and
blends the seams, which shifts colours and leaves seams. Here:

* only the high-resolution part is tiled (encoder: conv_in + down blocks; decoder: up blocks +
  output head). The latent-resolution part (mid block with its attention) runs untiled, so the
  attention is exact and cheap;
* tiles carry a halo at least as wide as the receptive field of the tiled part, so every
  convolution is exact on the tile core;
* all tiles run in lock step (Python generators) and meet at every GroupNorm: each tile reports
  the count, mean and sum of squared deviations of its *core* (the cores partition the image),
  combined in float64 (Chan's parallel formula), so each GroupNorm uses the statistics of the
  whole image, exactly.

Results equal the untiled modules up to float rounding. Tile offsets are multiples of 2^(number of
downsamplers) pixels in the encoder so the stride-2 convolutions stay on the global grid.

Memory (lock step keeps every tile's activations alive at each GroupNorm, so the sum over tiles
is what counts; a 2048^2 decode must fit a 24 GB machine with the full SD VAE):

* only per-group statistics (a few numbers) live across a yield, never a copy of the tile;
* a tile's activation is held by exactly one reference (`_Tile.h`), so a resnet's input is freed
  as soon as it is consumed; the 1x1 shortcut is applied right after the first GroupNorm, so the
  wide input does not wait for the second one;
* GroupNorm is applied with one fused multiply-add (as PyTorch's CPU kernel does), into a new
  tensor only where the input is still needed, else in place; SiLU runs in place;
* before every up/downsampler (and at the start) a tile is cropped to the margin the remaining
  convolutions need, so the halo (16 latent px = 128 full-resolution px in the decoder) does not
  grow with the resolution: the full-resolution stages carry a margin of only a few pixels;
* tiles are balanced (a 256 latent with tile 224 runs as 2 x 128, not 224 + 32), so one tile's
  temporaries are as small as the tile count allows.

Inference only: activations are modified in place, so `forward` runs without autograd.
"""

from __future__ import annotations

from typing import Generator

import torch
from torch import nn


def _plan(size: int, tile: int, align: int = 1) -> list[tuple[int, int]]:
    """Split [0, size) into ceil(size / tile) near-equal cores, starts on multiples of `align`
    (`tile` must be a multiple of `align`, so no core is larger than `tile`)."""
    n = -(-size // tile)
    step = -(-size // n)
    step = -(-step // align) * align
    return [(s, min(s + step, size)) for s in range(0, size, step)]


def _radius(conv: nn.Module) -> int:
    """How far (in input pixels) a convolution reaches beyond the output pixel, on either side."""
    conv = getattr(conv, "base_layer", conv)  # a modulated-LoRA wrapper (its LoRA conv has the same shape)
    if not isinstance(conv, nn.Conv2d) or not isinstance(conv.padding, tuple):
        raise TypeError(f"unsupported layer in a tiled VAE: {type(conv).__name__}")
    return max((k - 1) // 2 * d for k, d in zip(conv.kernel_size, conv.dilation))


def _resnets_radius(blk: nn.Module) -> int:
    r = 0
    for res in blk.resnets:
        r += _radius(res.conv1) + _radius(res.conv2)
        if res.conv_shortcut is not None:
            r += _radius(res.conv_shortcut)
    return r


def _decoder_margins(dec: nn.Module) -> tuple[int, list[int | None]] | None:
    """Margin (pixels around the core) the rest of the tiled decoder needs: at its start, and
    before each up block's upsampler. None if the layout is not the one handled here."""
    try:
        m = _radius(dec.conv_out)
        before_up: list[int | None] = [None] * len(dec.up_blocks)
        for i in reversed(range(len(dec.up_blocks))):
            blk = dec.up_blocks[i]
            if blk.upsamplers is not None:
                if len(blk.upsamplers) != 1:
                    return None
                u = blk.upsamplers[0]
                if u.use_conv_transpose or not u.interpolate or u.norm is not None:
                    return None
                r = _radius(u.conv) if u.use_conv else 0
                m = -(-(m + r) // 2)  # nearest x2 then the conv
                before_up[i] = m
            m += _resnets_radius(blk)
        return m, before_up
    except (AttributeError, TypeError):
        return None


def _encoder_margins(enc: nn.Module) -> tuple[int, list[int | None]] | None:
    """As `_decoder_margins` for the encoder's tiled part (conv_in + down blocks)."""
    try:
        m = 0  # the tiled part ends with the last down block; the rest runs untiled
        before_down: list[int | None] = [None] * len(enc.down_blocks)
        for i in reversed(range(len(enc.down_blocks))):
            blk = enc.down_blocks[i]
            if blk.downsamplers is not None:
                if len(blk.downsamplers) != 1:
                    return None
                d = blk.downsamplers[0]
                if d.norm is not None or not d.use_conv:
                    return None
                stride = max(getattr(d.conv, "base_layer", d.conv).stride)
                # stride-s conv: output core [c, e) reads input [s*c - r, s*(e-1) + r], plus the
                # one-pixel far-side zero pad of padding=0 downsamplers: s*m + 2r covers both sides
                m = stride * m + 2 * _radius(d.conv)
                before_down[i] = m
            m += _resnets_radius(blk)
        return m + _radius(enc.conv_in), before_down
    except (AttributeError, TypeError):
        return None


class _Tile:
    """One tile's activation and core (y0, y1, x0, x1) in its own coordinates. The activation is
    held here and nowhere else, so it is freed as soon as a step replaces it."""

    __slots__ = ("h", "core")

    def __init__(self, h: torch.Tensor, core: tuple[int, int, int, int]) -> None:
        self.h: torch.Tensor | None = h
        self.core = core

    def take(self) -> torch.Tensor:
        h, self.h = self.h, None
        return h

    def crop(self, margin: int | None, align: int = 1) -> None:
        """Keep the core plus `margin` pixels (rounded up to `align`, so crops stay on the grid of
        later stride-2 convolutions); pixels further out cannot reach the core any more."""
        if margin is None:
            return
        m = -(-margin // align) * align
        y0, y1, x0, x1 = self.core
        H, W = self.h.shape[-2:]
        a, b, c, d = max(0, y0 - m), min(H, y1 + m), max(0, x0 - m), min(W, x1 + m)
        if (a, b, c, d) != (0, H, 0, W):
            # a copy, not a view: a view would keep the wider tensor alive
            self.h = self.take()[:, :, a:b, c:d].clone()
            self.core = (y0 - a, y1 - a, x0 - c, x1 - c)

    def to_channels_last(self) -> None:
        """On CPU, oneDNN convolves NCHW input by first reordering it into a blocked copy (one
        extra input-sized buffer per conv); channels-last input is used as it is. All later ops
        (GroupNorm apply, SiLU, nearest upsampling, pad, crop) keep the layout."""
        if self.h.device.type == "cpu":
            self.h = self.take().contiguous(memory_format=torch.channels_last)

    def scale_core(self, num: int, den: int) -> None:
        self.core = tuple(c * num // den for c in self.core)


def _gn_stats(x: torch.Tensor, gn: nn.GroupNorm, core) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(count, mean, sum of squared deviations) per (batch, group) over the core, in float64.

    torch.var_mean (Welford) reads the strided core window directly: no tile-sized copy is made
    here, and only these few numbers live across the lock-step yield."""
    y0, y1, x0, x1 = core
    b, c = x.shape[:2]
    v = x[:, :, y0:y1, x0:x1].unflatten(1, (gn.num_groups, c // gn.num_groups))
    if v.dtype != torch.float32:  # bf16 statistics would be rounded to bf16; GroupNorm keeps them in fp32
        v = v.float()
    var, mean = torch.var_mean(v, dim=(2, 3, 4), correction=0)
    n = v[0, 0].numel()
    return n, mean.double(), var.double() * n


def _gn_apply(x: torch.Tensor, gn: nn.GroupNorm, mean: torch.Tensor, var: torch.Tensor,
              inplace: bool) -> torch.Tensor:
    """GN(x) = x * a + s per channel, a = rstd * weight, s = bias - mean * a (PyTorch's CPU kernel
    uses the same fused form). In place when the caller no longer needs x."""
    b, c = x.shape[:2]
    a = torch.rsqrt(var + gn.eps).repeat_interleave(c // gn.num_groups, dim=1)  # (b, c) float64
    s = -mean.repeat_interleave(c // gn.num_groups, dim=1) * a
    if gn.affine:
        a = a * gn.weight.double()
        s = s * gn.weight.double() + gn.bias.double()
    a, s = a.float()[..., None, None], s.float()[..., None, None]
    if x.dtype != torch.float32:
        return torch.addcmul(s, x.float(), a).to(x.dtype)
    if inplace:
        return x.mul_(a).add_(s)
    return torch.addcmul(s, x, a)


def _act(mod: nn.Module, h: torch.Tensor) -> torch.Tensor:
    if isinstance(mod, nn.SiLU):
        return torch.nn.functional.silu(h, inplace=True)
    return mod(h)


def _group_norm_act(t: _Tile, gn: nn.GroupNorm, act: nn.Module) -> Generator:
    """t.h <- act(GN(t.h)) with whole-image statistics (one lock-step meeting)."""
    mean, var = yield _gn_stats(t.h, gn, t.core)
    t.h = _act(act, _gn_apply(t.take(), gn, mean, var, inplace=True))


def _resnet(block: nn.Module, t: _Tile) -> Generator:
    """diffusers ResnetBlock2D without time embedding (as in the VAE), on t.h."""
    x = t.take()
    mean, var = yield _gn_stats(x, block.norm1, t.core)
    h = block.conv1(_act(block.nonlinearity, _gn_apply(x, block.norm1, mean, var, inplace=False)))
    if block.conv_shortcut is not None:
        x = block.conv_shortcut(x)  # now, so the wider input is gone at the next meeting
    mean, var = yield _gn_stats(h, block.norm2, t.core)
    h = _act(block.nonlinearity, _gn_apply(h, block.norm2, mean, var, inplace=True))
    h = block.conv2(block.dropout(h))
    h.add_(x)
    del x
    if block.output_scale_factor != 1:
        h.div_(block.output_scale_factor)
    t.h = h


def _lockstep(gens: list[Generator]) -> None:
    """Drive generators that all yield GroupNorm partial statistics at the same points."""
    msgs = [next(g) for g in gens]
    while True:
        n = sum(m[0] for m in msgs)
        mean = sum(m[0] * m[1] for m in msgs) / n
        m2 = sum(m[2] + m[0] * (m[1] - mean) ** 2 for m in msgs)
        var = (m2 / n).clamp_min(0)
        del msgs
        new = []
        done = 0
        for g in gens:
            try:
                new.append(g.send((mean, var)))
            except StopIteration:
                done += 1
        if done == len(gens):
            return
        if done:
            raise RuntimeError("tiles left the lock step")  # all tiles run the same op sequence
        msgs = new


class TiledEncoder(nn.Module):
    """Drop-in for `vae.encoder(x)`; holds the encoder as `.encoder` (for functional_call names)."""

    def __init__(self, encoder: nn.Module, tile: int = 1024, halo: int = 96) -> None:
        super().__init__()
        self.encoder = encoder
        self.factor = 2 ** sum(1 for b in encoder.down_blocks if b.downsamplers is not None)
        self.tile = max(64, tile // 64 * 64)
        self.halo = -(-halo // self.factor) * self.factor
        self._margins = _encoder_margins(encoder)

    def _tile(self, t: _Tile) -> Generator:
        enc = self.encoder
        start, before_down = self._margins or (None, [None] * len(enc.down_blocks))
        align = self.factor
        t.crop(start, align)
        t.to_channels_last()
        t.h = enc.conv_in(t.take())
        for i, blk in enumerate(enc.down_blocks):
            for res in blk.resnets:
                yield from _resnet(res, t)
            if blk.downsamplers is not None:
                t.crop(before_down[i], align)
                for d in blk.downsamplers:
                    t.h = d(t.take())
                t.scale_core(1, 2)
                align //= 2
        y0, y1, x0, x1 = t.core
        t.h = t.take()[:, :, y0:y1, x0:x1]

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        H, W = x.shape[-2:]
        f = self.factor
        tiles, places = [], []
        for y0, y1 in _plan(H, self.tile, f):
            for x0, x1 in _plan(W, self.tile, f):
                ty0, tx0 = max(0, y0 - self.halo), max(0, x0 - self.halo)
                ty1, tx1 = min(H, y1 + self.halo), min(W, x1 + self.halo)
                tiles.append(_Tile(x[:, :, ty0:ty1, tx0:tx1], (y0 - ty0, y1 - ty0, x0 - tx0, x1 - tx0)))
                places.append((y0 // f, y1 // f, x0 // f, x1 // f))
        _lockstep([self._tile(t) for t in tiles])
        p0 = tiles[0].h
        h = torch.empty((x.shape[0], p0.shape[1], H // f, W // f), dtype=p0.dtype, device=x.device)
        for (a, b, c, d), t in zip(places, tiles):
            h[:, :, a:b, c:d] = t.take()
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
        self._margins = _decoder_margins(decoder)

    def _tile(self, t: _Tile) -> Generator:
        dec = self.decoder
        start, before_up = self._margins or (None, [None] * len(dec.up_blocks))
        t.crop(start)
        t.to_channels_last()
        for i, blk in enumerate(dec.up_blocks):
            for res in blk.resnets:
                yield from _resnet(res, t)
            if blk.upsamplers is not None:
                t.crop(before_up[i])
                for u in blk.upsamplers:
                    t.h = u(t.take())
                t.scale_core(2, 1)
        yield from _group_norm_act(t, dec.conv_norm_out, dec.conv_act)
        t.h = dec.conv_out(t.take())
        y0, y1, x0, x1 = t.core
        t.h = t.take()[:, :, y0:y1, x0:x1]

    @torch.no_grad()
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        dec = self.decoder
        h = dec.conv_in(z)
        up_dtype = next(iter(dec.up_blocks.parameters())).dtype
        h = dec.mid_block(h, None).to(up_dtype)
        H, W = h.shape[-2:]
        f = 2 ** sum(1 for b in dec.up_blocks if b.upsamplers is not None)
        tiles, places = [], []
        for y0, y1 in _plan(H, self.tile):
            for x0, x1 in _plan(W, self.tile):
                ty0, tx0 = max(0, y0 - self.halo), max(0, x0 - self.halo)
                ty1, tx1 = min(H, y1 + self.halo), min(W, x1 + self.halo)
                tiles.append(_Tile(h[:, :, ty0:ty1, tx0:tx1], (y0 - ty0, y1 - ty0, x0 - tx0, x1 - tx0)))
                places.append((y0 * f, y1 * f, x0 * f, x1 * f))
        del h
        _lockstep([self._tile(t) for t in tiles])
        p0 = tiles[0].h
        out = torch.empty((z.shape[0], p0.shape[1], H * f, W * f), dtype=p0.dtype, device=z.device)
        for (a, b, c, d), t in zip(places, tiles):
            out[:, :, a:b, c:d] = t.take()
        return out
