"""ResShift's denoiser: a guided-diffusion UNet with Swin layers (`UNetModelSwin` upstream).

Module and parameter names follow the released checkpoints exactly, so their state dicts load
without renaming. The quirks the checkpoints were trained with are kept on purpose:
  * Swin layers use GroupNorm (32 groups) on channel-first maps, a 1x1-conv MLP, and have no
    residual around the whole layer;
  * layers built at a resolution <= the window size (the coarsest level and the middle block)
    use window = that size and never shift, whatever the runtime size;
  * the shifted-window mask is the one the official `calculate_mask` really computes (it indexes
    a (1,1,H,W) label image as if it were (1,H,W,1)), not the textbook Swin mask; see
    `official_shift_mask`. It is built once per (H, W, device) and cached;
  * the timestep embedding is [cos, sin] of the raw integer index;
  * ResBlock scale-shift chunks are (scale, shift) in that order.
Attention runs through `scaled_dot_product_attention`. At inference (autograd off) the
elementwise ops run in place (`fewstep.nn.speed.INPLACE`), with bit-identical results.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import GroupNorm32, timestep_embedding
from ..nn.speed import chunked_mlp, chunked_mlp_ok, fast_upsample_ok, inplace_ok, upsample2x_conv3x3


def normalization(channels: int) -> nn.Module:
    return GroupNorm32(32, channels)


# --------------------------------------------------------------------------------------------
# guided-diffusion trunk
# --------------------------------------------------------------------------------------------
class TimestepBlock(nn.Module):
    """A module whose forward takes the timestep embedding as a second argument."""


class TimestepEmbedSequential(nn.Sequential):
    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Downsample(nn.Module):
    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x):
        if fast_upsample_ok(self.conv, x):  # same map, 2.25x fewer FLOPs (fewstep.nn.speed.FAST_UPSAMPLE)
            return upsample2x_conv3x3(x, self.conv)
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class ResBlock(TimestepBlock):
    def __init__(self, channels: int, emb_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.in_layers = nn.Sequential(normalization(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        self.out_layers = nn.Sequential(normalization(out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x, emb):
        if inplace_ok():  # inference: the same ops in place (bit-identical, fewer big allocations)
            h = self.in_layers[2](F.silu(self.in_layers[0](x), inplace=True))
            scale, shift = self.emb_layers(emb).type(h.dtype)[..., None, None].chunk(2, dim=1)
            h = self.out_layers[0](h).mul_(1 + scale).add_(shift)
            h = self.out_layers[3](self.out_layers[2](F.silu(h, inplace=True)))
            return h.add_(self.skip_connection(x))
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[..., None, None]
        scale, shift = emb_out.chunk(2, dim=1)
        h = self.out_layers[0](h) * (1 + scale) + shift
        for layer in self.out_layers[1:]:
            h = layer(h)
        return self.skip_connection(x) + h


# --------------------------------------------------------------------------------------------
# Swin layers (channel-first, GroupNorm)
# --------------------------------------------------------------------------------------------
def relative_position_index(window: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def official_shift_mask(height: int, width: int, window: int, shift: int, device=None) -> torch.Tensor:
    """The shifted-window attention mask exactly as ResShift's `calculate_mask` produces it.

    Upstream builds its region labels in a (1,1,H,W) tensor but slices it as if it were
    (1,H,W,1), and flattens each window after a transposing permute. The net result: the label
    depends on the row only (0 above H-window, 1 in [H-window, H-shift), 2 below), and within a
    window token p = a*window + b takes the label of window pixel (row b, column a). Only the
    bottom row of windows is ever masked. The released weights were trained with this mask.
    Returns (nW, N, N) with 0 / -100 entries.
    """
    rows = torch.arange(height, device=device)
    label = torch.zeros(height, dtype=torch.long, device=device)
    label[rows >= height - window] = 1
    label[rows >= height - shift] = 2
    grid = label[:, None].expand(height, width)
    nh, nw = height // window, width // window
    win = grid.reshape(nh, window, nw, window).permute(0, 2, 1, 3)  # (nh, nw, a, b) = pixel (row a, col b)
    tokens = win.transpose(-1, -2).reshape(nh * nw, window * window)  # token a*w+b <- pixel (row b, col a)
    diff = tokens[:, :, None] != tokens[:, None, :]
    return diff.float() * -100.0


class WindowAttention(nn.Module):
    def __init__(self, dim: int, window: int, num_heads: int):
        super().__init__()
        self.window, self.num_heads = window, num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=True)
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def bias(self) -> torch.Tensor:
        n = self.window * self.window
        idx = self.relative_position_index.reshape(-1)
        return self.relative_position_bias_table[idx].reshape(n, n, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x: (B, nW, N, C); mask: (nW, N, N) or None."""
        b, nw, n, c = x.shape
        qkv = self.qkv(x).reshape(b * nw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B*nW, heads, N, d)
        bias = self.bias().to(q.dtype)[None]  # (1, heads, N, N)
        if mask is not None:
            bias = (bias + mask.to(q.dtype)[:, None]).repeat(b, 1, 1, 1)  # (B*nW, heads, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.transpose(1, 2).reshape(b, nw, n, c)
        return self.proj(out)


class SwinBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float, resolution: int):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = normalization(dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.norm2 = normalization(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Conv2d(dim, hidden, 1))
        self.mlp.add_module("act", nn.GELU())
        self.mlp.add_module("fc2", nn.Conv2d(hidden, dim, 1))
        if shift > 0:
            # Stored in the released files but never read by their forward; kept so that our
            # state dict is key-for-key the official one.
            self.register_buffer("attn_mask", official_shift_mask(resolution, resolution, window, shift), persistent=True)
        self._mask_cache: dict[tuple, torch.Tensor] = {}

    def mask_for(self, h: int, w: int, device) -> torch.Tensor | None:
        if self.shift == 0:
            return None
        key = (h, w, str(device))
        if key not in self._mask_cache:
            self._mask_cache[key] = official_shift_mask(h, w, self.window, self.shift, device=device)
        return self._mask_cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        ws, s = self.window, self.shift
        shortcut = x
        x = self.norm1(x)
        if s:
            x = torch.roll(x, shifts=(-s, -s), dims=(2, 3))
        win = x.reshape(b, c, h // ws, ws, w // ws, ws).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, ws * ws, c)
        win = self.attn(win, self.mask_for(h, w, x.device))
        x = win.reshape(b, h // ws, w // ws, ws, ws, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)
        if s:
            x = torch.roll(x, shifts=(s, s), dims=(2, 3))
        if inplace_ok():  # x is a fresh tensor here (window merge / roll), the MLP output too
            x = x.add_(shortcut)
            h = self.norm2(x)
            if chunked_mlp_ok(h):  # the wide hidden map in cache-sized pieces (fewstep.nn.speed)
                return chunked_mlp(h, self.mlp.fc1, self.mlp.act, self.mlp.fc2).add_(x)
            return self.mlp(h).add_(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class Conv1x1Proj(nn.Module):
    """`patch_embed` / `patch_unembed` with patch size 1: a 1x1 conv (key `.proj`)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.proj = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        return self.proj(x)


class SwinLayer(nn.Module):
    """Upstream `BasicLayer`: embed (1x1) -> Swin blocks -> unembed (1x1); no outer residual."""

    def __init__(self, in_chans: int, embed_dim: int, num_heads: int, window: int, depth: int,
                 resolution: int, mlp_ratio: float):
        super().__init__()
        if resolution <= window:  # decided at construction, kept at any runtime size
            window, allow_shift = resolution, False
        else:
            allow_shift = True
        # registration order = the released files' key order (embed, unembed, then blocks)
        self.patch_embed = Conv1x1Proj(in_chans, embed_dim)
        self.patch_unembed = Conv1x1Proj(embed_dim, in_chans)
        self.blocks = nn.ModuleList(
            SwinBlock(embed_dim, num_heads, window, (window // 2) if (allow_shift and i % 2) else 0, mlp_ratio, resolution)
            for i in range(depth))
        self.window = window

    def forward(self, x):
        x = self.patch_embed(x)
        for blk in self.blocks:
            x = blk(x)
        return self.patch_unembed(x)


# --------------------------------------------------------------------------------------------
# the UNet
# --------------------------------------------------------------------------------------------
def _per_level(value: int | Sequence[int], levels: int) -> list[int]:
    return [int(value)] * levels if isinstance(value, int) else [int(v) for v in value]


class SwinUNet(nn.Module):
    """`UNetModelSwin` with the official constructor arguments (config dicts load as they are)."""

    def __init__(self, image_size: int = 64, in_channels: int = 3, model_channels: int = 160,
                 out_channels: int = 3, num_res_blocks: int | Sequence[int] = 2,
                 attention_resolutions: Sequence[int] = (64, 32, 16, 8), dropout: float = 0.0,
                 channel_mult: Sequence[int] = (1, 2, 2, 4), conv_resample: bool = True, dims: int = 2,
                 use_fp16: bool = False, num_heads: int = 1, num_head_channels: int = 32,
                 use_scale_shift_norm: bool = True, resblock_updown: bool = False, swin_depth: int = 2,
                 swin_embed_dim: int = 192, window_size: int = 8, mlp_ratio: float = 2.0,
                 patch_norm: bool = False, cond_lq: bool = True, cond_mask: bool = False,
                 lq_size: int | None = None, **unused):
        super().__init__()
        # Options the released models never change; refuse the ones we do not implement.
        if not (conv_resample and dims == 2 and use_scale_shift_norm and not resblock_updown and not patch_norm):
            raise ValueError("SwinUNet supports conv_resample, dims=2, scale-shift norm, no resblock_updown, no patch_norm")
        lq_size = image_size if lq_size is None else lq_size
        levels = len(channel_mult)
        nrb = _per_level(num_res_blocks, levels)
        self.image_size, self.model_channels, self.cond_lq, self.cond_mask = image_size, model_channels, cond_lq, cond_mask
        self.in_channels, self.out_channels, self.lq_size = in_channels, out_channels, lq_size
        emb_dim = model_channels * 4
        heads = swin_embed_dim // num_head_channels if num_head_channels > 0 else num_heads

        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        # LR conditioning: concatenated directly when it matches the latent size, else reduced by
        # log2(lq_size / image_size) stride-2 stages (widths 16, 32, ...).
        lq_ch = 3 + int(cond_mask)
        if not cond_lq:
            self.feature_extractor, extra = None, 0
        elif lq_size == image_size:
            self.feature_extractor, extra = nn.Identity(), lq_ch
        else:
            stages = int(round(math.log2(lq_size / image_size)))
            if 2 ** stages * image_size != lq_size:
                raise ValueError(f"lq_size {lq_size} must be image_size {image_size} times a power of 2")
            layers, cin, c = [], lq_ch, 16
            for _ in range(stages):
                layers += [nn.Conv2d(cin, c, 3, padding=1), nn.SiLU(), Downsample(c, 2 * c)]
                cin = c = 2 * c
            self.feature_extractor, extra = nn.Sequential(*layers), cin

        def swin(ch: int, ds: int) -> SwinLayer:
            return SwinLayer(ch, swin_embed_dim, heads, window_size, swin_depth, ds, mlp_ratio)

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels + extra, model_channels, 3, padding=1))])
        chans, ch, ds = [model_channels], model_channels, image_size
        for level, mult in enumerate(channel_mult):
            for j in range(nrb[level]):
                layers = [ResBlock(ch, emb_dim, mult * model_channels, dropout)]
                ch = mult * model_channels
                if ds in attention_resolutions and j == 0:
                    layers.append(swin(ch, ds))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != levels - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                chans.append(ch)
                ds //= 2

        self.middle_block = TimestepEmbedSequential(ResBlock(ch, emb_dim, ch, dropout), swin(ch, ds), ResBlock(ch, emb_dim, ch, dropout))

        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(nrb[level] + 1):
                layers = [ResBlock(ch + chans.pop(), emb_dim, model_channels * mult, dropout)]
                ch = model_channels * mult
                if ds in attention_resolutions and i == 0:
                    layers.append(swin(ch, ds))
                if level and i == nrb[level]:
                    layers.append(Upsample(ch))
                    ds *= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(normalization(ch), nn.SiLU(), nn.Conv2d(model_channels, out_channels, 3, padding=1))
        # every level's map must tile into windows: the latent side must divide by this
        self.latent_multiple = window_size * 2 ** (levels - 1)

    @property
    def dtype(self) -> torch.dtype:
        return self.time_embed[0].weight.dtype

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, lq: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: scaled latent x_t; timesteps: raw integer indices; lq: LR image in [-1,1]; mask: 1 = hole."""
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.device)).type(self.dtype)
        if lq is not None:
            if self.feature_extractor is None:
                raise ValueError("this model was built with cond_lq=False")
            if mask is not None:
                lq = torch.cat([lq, mask], dim=1)
            x = torch.cat([x, self.feature_extractor(lq.type(self.dtype))], dim=1)
        h = x.type(self.dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.type(x.dtype))
