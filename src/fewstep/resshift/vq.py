"""The VQ autoencoders ResShift diffuses in (CompVis LDM "vq-f4" and the f8 face model).

Names follow the released files (`encoder.down.0.block.0.conv1`, `quantize.embedding`, ...).
`encode` returns the continuous latent (no quantisation), `decode` quantises first — that is
what the official sampler does and the released models expect. The mid-block attention runs
through `scaled_dot_product_attention`, so a 512x512 latent does not allocate an N x N matrix.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.speed import fast_upsample_ok, inplace_ok, upsample2x_conv3x3


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, ch, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _norm(cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        ip = inplace_ok()  # inference: SiLU and the residual add in place (bit-identical)
        h = self.conv1(F.silu(self.norm1(x), inplace=ip))
        h = self.conv2(self.dropout(F.silu(self.norm2(h), inplace=ip)))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return h.add_(skip) if ip else skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions (q, k, v, proj_out are 1x1 convs)."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = _norm(ch)
        self.q, self.k, self.v = nn.Conv2d(ch, ch, 1), nn.Conv2d(ch, ch, 1), nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        hn = self.norm(x)
        # contiguous (tokens, channels) layout: with a transposed view, CPU SDPA falls back to the
        # math kernel and materialises the N x N scores (37 GB for a 256x256 latent)
        q, k, v = (m(hn).reshape(b, 1, c, h * w).transpose(-1, -2).contiguous() for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # scale c^-0.5, as upstream
        # out of place on purpose: proj_out's output is channels-last strided (from the transposed
        # tokens), and `x + out` is contiguous, which the next GroupNorm's rounding depends on
        return x + self.proj_out(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric zero pad, as upstream


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        if fast_upsample_ok(self.conv, x):  # same map, 2.25x fewer FLOPs (fewstep.nn.speed.FAST_UPSAMPLE)
            return upsample2x_conv3x3(x, self.conv)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: `block` (a list) plus an optional `downsample`/`upsample`."""

    def __init__(self):
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()


class _Mid(nn.Module):
    def __init__(self, ch: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(ch, ch, dropout)
        self.attn_1 = AttnBlock(ch)
        self.block_2 = ResnetBlock(ch, ch, dropout)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


def _nrb(num_res_blocks: int | Sequence[int], levels: int) -> list[int]:
    return [int(num_res_blocks)] * levels if isinstance(num_res_blocks, int) else list(num_res_blocks)


class Encoder(nn.Module):
    def __init__(self, *, ch: int, ch_mult: Sequence[int], num_res_blocks, in_channels: int, z_channels: int,
                 double_z: bool = False, dropout: float = 0.0, attn_resolutions: Sequence[int] = (), resolution: int = 256,
                 **unused):
        super().__init__()
        if attn_resolutions:
            raise ValueError("attention inside the resolution levels is not used by the released models")
        nrb = _nrb(num_res_blocks, len(ch_mult))
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        cin = ch
        for i, mult in enumerate(ch_mult):
            level = _Level()
            for _ in range(nrb[i]):
                level.block.append(ResnetBlock(cin, ch * mult, dropout))
                cin = ch * mult
            if i != len(ch_mult) - 1:
                level.downsample = Downsample(cin)
            self.down.append(level)
        self.mid = _Mid(cin, dropout)
        self.norm_out = _norm(cin)
        self.conv_out = nn.Conv2d(cin, 2 * z_channels if double_z else z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h), inplace=inplace_ok()))


class Decoder(nn.Module):
    def __init__(self, *, ch: int, out_ch: int, ch_mult: Sequence[int], num_res_blocks, z_channels: int,
                 dropout: float = 0.0, attn_resolutions: Sequence[int] = (), resolution: int = 256, **unused):
        super().__init__()
        nrb = _nrb(num_res_blocks, len(ch_mult))
        cin = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, cin, 3, padding=1)
        self.mid = _Mid(cin, dropout)
        levels: list[_Level] = []
        for i in reversed(range(len(ch_mult))):  # the deepest level is processed first
            level = _Level()
            for _ in range(nrb[i] + 1):
                level.block.append(ResnetBlock(cin, ch * ch_mult[i], dropout))
                cin = ch * ch_mult[i]
            if i != 0:
                level.upsample = Upsample(cin)
            levels.insert(0, level)  # stored by level index: up.0 is the finest
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(cin)
        self.conv_out = nn.Conv2d(cin, out_ch, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h), inplace=inplace_ok()))


class VectorQuantizer(nn.Module):
    """Nearest-codebook quantisation (squared L2 as |z|^2 + |e|^2 - 2 z.e, ties -> lowest index)."""

    def __init__(self, n_embed: int, embed_dim: int, beta: float = 0.25):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)
        self.beta = beta

    def codes(self, z: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
        """Indices (B, H, W); the distance matrix is built in row chunks to bound memory."""
        b, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)
        emb = self.embedding.weight.to(flat.dtype)
        e2 = (emb ** 2).sum(1)
        out = torch.empty(flat.shape[0], dtype=torch.long, device=z.device)
        for i in range(0, flat.shape[0], chunk):
            f = flat[i:i + chunk]
            d = (f ** 2).sum(1, keepdim=True) + e2 - 2 * f @ emb.t()
            out[i:i + chunk] = d.argmin(1)
        return out.reshape(b, h, w)

    def forward(self, z: torch.Tensor):
        """Returns (z_q in straight-through form, commitment+codebook loss, codes)."""
        idx = self.codes(z)
        zq = self.embedding(idx).permute(0, 3, 1, 2).to(z.dtype)
        loss = self.beta * ((zq.detach() - z) ** 2).mean() + ((zq - z.detach()) ** 2).mean()
        return z + (zq - z).detach(), loss, idx


class VQModel(nn.Module):
    """`VQModelTorch` with the official constructor arguments (embed_dim, n_embed, ddconfig)."""

    def __init__(self, embed_dim: int, n_embed: int, ddconfig: dict, remap=None, sane_index_shape: bool = False,
                 **unused):
        super().__init__()
        if remap is not None:
            raise ValueError("codebook remapping is not supported")
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.quantize = VectorQuantizer(n_embed, embed_dim)
        z = ddconfig["z_channels"]
        self.quant_conv = nn.Conv2d(z, embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z, 1)
        self.embed_dim = embed_dim
        self.downsample_factor = 2 ** (len(ddconfig["ch_mult"]) - 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image in [-1, 1] -> continuous latent (encoder + quant_conv, NO quantisation)."""
        return self.quant_conv(self.encoder(x))

    def decode(self, z: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        """Latent -> image (quantises first unless told not to; output is not clamped)."""
        if not force_not_quantize:
            z = self.quantize(z)[0]
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: torch.Tensor):
        """Training forward: (reconstruction, codebook loss)."""
        zq, loss, _ = self.quantize(self.encode(x))
        return self.decoder(self.post_quant_conv(zq)), loss
