"""DEResNet: the degradation estimator S3Diff borrows from MM-RealSR.

Two independent branches (0 = blur, 1 = noise) score the *native-resolution* LR image in [0, 1];
the forward returns (B, 2) = [blur, noise], each in [0, 1]. Module names follow the released
`de_net.pth` state dict so it loads with strict=True.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn



class ResidualBlockNoBN(nn.Module):
    """conv3x3 -> ReLU -> conv3x3, plus identity (res_scale 1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x)))


class DEResNet(nn.Module):
    """MM-RealSR degradation-degree estimator (config of MMRealSRGAN_x4: feats 64,64,64,128)."""

    def __init__(self, num_in_ch: int = 3, num_degradation: int = 2,
                 num_feats: tuple[int, ...] = (64, 64, 64, 128), num_blocks: tuple[int, ...] = (2, 2, 2, 2),
                 downscales: tuple[int, ...] = (1, 1, 2, 1)) -> None:
        super().__init__()
        n_stage = len(num_feats)
        self.conv_first = nn.ModuleList(nn.Conv2d(num_in_ch, num_feats[0], 3, 1, 1) for _ in range(num_degradation))
        self.body = nn.ModuleList()
        for _ in range(num_degradation):
            layers: list[nn.Module] = []
            for stage in range(n_stage):
                layers += [ResidualBlockNoBN(num_feats[stage]) for _ in range(num_blocks[stage])]
                nxt = num_feats[min(stage + 1, n_stage - 1)]
                if downscales[stage] == 2:
                    layers.append(nn.Conv2d(num_feats[stage], nxt, 3, 2, 1))
                elif stage < n_stage - 1 and num_feats[stage] != nxt:
                    layers.append(nn.Conv2d(num_feats[stage], nxt, 3, 1, 1))
            self.body.append(nn.Sequential(*layers))
        self.fc_degree = nn.ModuleList(
            nn.Sequential(nn.Linear(num_feats[-1], 512), nn.ReLU(inplace=True), nn.Linear(512, 1), nn.Sigmoid())
            for _ in range(num_degradation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        degrees = []
        for conv, body, fc in zip(self.conv_first, self.body, self.fc_degree):
            feat = body(conv(x)).mean(dim=(2, 3))  # global average pool: one score per image
            degrees.append(fc(feat).squeeze(-1))
        return torch.stack(degrees, dim=1)


def load_deresnet(path: str | Path) -> DEResNet:
    """Build DEResNet and load `de_net.pth` (plain or `params`-wrapped state dict, strict)."""
    from ..checkpoint import load_state_dict, read_state_dict

    net = load_state_dict(DEResNet(), read_state_dict(path), str(path))
    return net.eval().requires_grad_(False)
