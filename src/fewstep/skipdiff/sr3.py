"""SR3-style pixel-space conditional DDPM (the base model SkipDiff drives).

Input cat([bicubic-up LR, x_t]) in [-1, 1] (6 channels); output ε̂. The noise level enters as the
continuous √ᾱ through a sinusoidal embedding + MLP, added as a per-channel bias in every ResBlock
(SR3/WaveGrad "FeatureWiseAffine" without the scale), so the network runs on any re-spaced grid.
The released SR3 UNet is 64 channels x [1,2,4,8,8]; `SR3UNet` keeps its shape but is configurable
down to a CPU-trainable size.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, FewstepError
from ..upscaler import Upscaler
from ..utils.padding import pad_to_multiple


def noise_level_embedding(level: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Sinusoidal embedding of a continuous level in [0, 1]; `scale` spreads it over the
    frequencies (a raw √ᾱ in [0, 1] would only excite the lowest ones)."""
    half = dim // 2
    freqs = torch.exp(-math.log(1e4) * torch.arange(half, dtype=torch.float32, device=level.device) / half)
    args = level.float()[:, None] * scale * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], -1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int, dropout: float, groups: int):
        super().__init__()
        self.n1 = nn.GroupNorm(min(groups, cin), cin)
        self.c1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(emb, cout)
        self.n2 = nn.GroupNorm(min(groups, cout), cout)
        self.drop = nn.Dropout(dropout)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, e):
        h = self.c1(F.silu(self.n1(x)))
        h = h + self.film(e)[:, :, None, None]
        h = self.c2(self.drop(F.silu(self.n2(h))))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(min(groups, ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.out = nn.Conv2d(ch, ch, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        y = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.out(y.transpose(-1, -2).reshape(b, c, h, w))


class SR3UNet(nn.Module):
    """A small SR3 UNet. `forward(x6, sqrt_abar) -> eps` with x6 = cat([cond, x_t])."""

    def __init__(self, in_channel: int = 6, out_channel: int = 3, inner_channel: int = 32,
                 channel_mults: tuple = (1, 2, 4), res_blocks: int = 1, attn_res: tuple = (),
                 dropout: float = 0.0, norm_groups: int = 8, image_size: int = 64, scale: int = 4,
                 residual: bool = False):
        super().__init__()
        self.config = dict(in_channel=in_channel, out_channel=out_channel, inner_channel=inner_channel,
                           channel_mults=list(channel_mults), res_blocks=res_blocks, attn_res=list(attn_res),
                           dropout=dropout, norm_groups=norm_groups, image_size=image_size, scale=scale,
                           residual=bool(residual))
        self.scale = scale
        # residual=True: the chain's clean signal is HR - bicubic (SRDiff-style) instead of HR (SR3);
        # the sampler adds the condition back in `CosineChain.to_image`
        self.residual = bool(residual)
        C, emb = inner_channel, inner_channel * 4
        self.emb_dim = C
        self.mlp = nn.Sequential(nn.Linear(C, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.inp = nn.Conv2d(in_channel, C, 3, padding=1)
        self.down = nn.ModuleList()
        chans, ch, res = [C], C, image_size
        for i, mult in enumerate(channel_mults):
            for _ in range(res_blocks):
                self.down.append(nn.ModuleList([ResBlock(ch, C * mult, emb, dropout, norm_groups),
                                                SelfAttention(C * mult, norm_groups) if res in attn_res else nn.Identity()]))
                ch = C * mult
                chans.append(ch)
            if i < len(channel_mults) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                chans.append(ch)
                res //= 2
        self.mid1 = ResBlock(ch, ch, emb, dropout, norm_groups)
        self.mid_attn = SelfAttention(ch, norm_groups)
        self.mid2 = ResBlock(ch, ch, emb, dropout, norm_groups)
        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(channel_mults))):
            for _ in range(res_blocks + 1):
                self.up.append(nn.ModuleList([ResBlock(ch + chans.pop(), C * mult, emb, dropout, norm_groups),
                                              SelfAttention(C * mult, norm_groups) if res in attn_res else nn.Identity()]))
                ch = C * mult
            if i > 0:
                self.up.append(nn.Conv2d(ch, ch, 3, padding=1))  # after a nearest x2 upsample
                res *= 2
        self.out = nn.Sequential(nn.GroupNorm(min(norm_groups, ch), ch), nn.SiLU(), nn.Conv2d(ch, out_channel, 3, padding=1))
        self.levels = len(channel_mults) - 1

    def forward(self, x: torch.Tensor, sqrt_abar: torch.Tensor) -> torch.Tensor:
        mult = 2 ** self.levels
        h0, w0 = x.shape[-2:]
        x, _ = pad_to_multiple(x, mult)  # any image size: pad to a multiple of the UNet's stride
        e = self.mlp(noise_level_embedding(sqrt_abar.to(x.device), self.emb_dim))
        h = self.inp(x)
        hs = [h]
        for layer in self.down:
            if isinstance(layer, nn.ModuleList):
                h = layer[1](layer[0](h, e))
            else:
                h = layer(h)
            hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, e)), e)
        for layer in self.up:
            if isinstance(layer, nn.ModuleList):
                h = layer[1](layer[0](torch.cat([h, hs.pop()], 1), e))
            else:
                h = layer(F.interpolate(h, scale_factor=2, mode="nearest"))
        return self.out(h)[..., :h0, :w0]


# ---------------------------------------------------------------------------------------------
DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "data" / "skipdiff" / "sr3_small.safetensors"


def save_sr3(model: SR3UNet, path: str | Path) -> None:
    """Weights as safetensors, the architecture as JSON metadata."""
    import json

    from safetensors.torch import save_file

    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(sd, str(path), metadata={"sr3_config": json.dumps(model.config)})


def load_sr3(path: str | Path) -> SR3UNet:
    import json

    from ..checkpoint import load_state_dict, read_safetensors

    sd, meta = read_safetensors(path)
    if "sr3_config" not in meta:
        raise CheckpointError(f"{path}: no sr3_config metadata (not an SR3 weight file from fewstep)")
    model = load_state_dict(SR3UNet(**json.loads(meta["sr3_config"])), sd, str(path))
    return model.eval()


class SR3SkipDiff(Upscaler):
    """SR3 + SkipDiff as an `Upscaler` (registry names skipdiff-sr3 / sr3-small)."""

    def __init__(self, unet: SR3UNet, *, policy="fixed", m: int = 10, mode: str = "reset", steps: int | None = None,
                 coarse: int = 10, fine: int = 10, policy_path: str | None = None, name: str = "skipdiff-sr3",
                 device: str = "cpu"):
        from .chain import CosineChain
        from .policy import FixedPolicy, load_policy
        from .sampler import SkipDiffSampler

        self.unet = unet.to(device).eval()
        self.name, self.scale, self.device = name, unet.scale, device
        self.chain = CosineChain(coarse * fine)
        self.sampler = SkipDiffSampler(self.chain, coarse=coarse, fine=fine, mode=mode)
        self.steps = steps
        if steps is not None:  # plain sampling (re-spaced cosine grid of `steps` levels)
            self.policy, self.nfe = None, int(steps)
        elif policy == "fixed":
            self.policy, self.nfe = FixedPolicy(int(m)), self.sampler.coarse_nfe + int(m)
        elif policy in ("bandit", "ppo"):
            if not policy_path:
                raise FewstepError(f"policy={policy} needs policy_path=FILE (train it with fewstep train configs/skipdiff_policy.yaml)")
            self.policy, self.nfe = load_policy(policy_path, policy), self.sampler.coarse_nfe + fine
        else:
            raise FewstepError(f"unknown skipdiff policy {policy!r} (fixed, bandit, ppo)")

    @torch.no_grad()
    def restore(self, lr: torch.Tensor, *, seed: int = 0, mask=None) -> torch.Tensor:
        lr = lr.to(self.device).float()
        if self.policy is None:
            out, nfe = self.sampler.plain(self.unet, lr, self.steps, seed=seed)
        else:
            out, nfe = self.sampler(self.unet, lr, policy=self.policy, seed=seed)
        self.last_nfe = int(nfe[0])
        return out


def load_folder(folder, weights=None, device: str = "cpu", dtype: str = "fp32", name: str | None = None, **kwargs):
    """A model folder written by the SR3 trainer: `fewstep_model.json` (type "sr3", the weight file,
    sampler options) beside the weights. Options given here override the card's."""
    from ..model_folder import read_card

    card = read_card(folder)
    for key in ("quiet", "tile", "overlap", "blend", "tile_batch"):  # whole-image sampler: no tiling, no bar
        kwargs.pop(key, None)
    opts = {**card.get("options", {}), **kwargs}
    return build(name or card.get("name", Path(folder).name), weights=Path(folder) / card.get("weights_file", DEFAULT_WEIGHTS.name),
                 device=device, dtype=dtype, **opts)


def build(name: str = "skipdiff-sr3", weights: str | Path | None = None, device: str = "cpu", dtype: str = "fp32",
          quiet: bool = True, **options) -> SR3SkipDiff:
    """Registry factory: weights=DIR containing sr3_small.safetensors, or the file itself (default: the
    shipped file). `quiet` is accepted like every factory's; the sampler shows no progress bar."""
    if dtype not in ("fp32", "float32"):
        raise FewstepError(f"{name}: only dtype=fp32 is supported (got {dtype})")
    path = Path(weights) / DEFAULT_WEIGHTS.name if weights else DEFAULT_WEIGHTS
    if weights and Path(weights).is_file():
        path = Path(weights)
    for key in ("m", "coarse", "fine", "steps"):
        if key in options and options[key] is not None:
            options[key] = int(options[key])
    if name == "sr3-small" and options.get("steps") is None:
        options["steps"] = 100
    return SR3SkipDiff(load_sr3(path), name=name, device=device, **options)
