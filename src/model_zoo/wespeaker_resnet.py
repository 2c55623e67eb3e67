"""A ResNet with WeSpeaker's module and parameter names, so its checkpoints load strictly.

The layout is WeSpeaker's ``wespeaker/models/resnet.py`` (ResNet18/34 with basic blocks,
``m_channels`` 32, a 3x3 stride-1 stem and no max-pool, temporal statistics pooling, one
embedding layer ``seg_1``): the parameters are ``conv1``, ``bn1``, ``layer{1..4}.{i}.conv1``/
``bn1``/``conv2``/``bn2``/``shortcut.{0,1}`` and ``seg_1``. A downloaded ``avg_model.pt`` of the
VoxCeleb ResNet34 (80 fbank bins, 256-d embedding) therefore loads with no key missing or left
over; its training head (``projection.*``) is dropped on load, and named in the log.

Input is a Kaldi fbank ``(batch, frames, bins)``; output the embedding ``(batch, embed_dim)``.

Example
-------
>>> encoder = WeSpeakerResNet(depth=34, feat_dim=80, embed_dim=256).eval()
>>> encoder(torch.zeros(2, 100, 80)).shape
torch.Size([2, 256])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BLOCKS_PER_STAGE = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
STATS_EPS = 1e-7  # variance floor of WeSpeaker's TSTP pooling


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a (1x1 conv + BN when reshaping) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class TemporalStatsPooling(nn.Module):
    """Mean and standard deviation over time of ``(batch, channels, freq, frames)``, flattened:
    ``(batch, 2 * channels * freq)`` (WeSpeaker's TSTP; no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=-1).flatten(start_dim=1)
        std = torch.sqrt(x.var(dim=-1) + STATS_EPS).flatten(start_dim=1)
        return torch.cat([mean, std], dim=1)


class WeSpeakerResNet(nn.Module):
    """WeSpeaker's ResNet18/34 speaker encoder: fbank ``(batch, frames, feat_dim)`` -> embedding.

    Parameters
    ----------
    depth : int
        18 or 34.
    feat_dim : int
        Fbank bins of the input (80 for the public VoxCeleb models).
    embed_dim : int
        Embedding size (256 for the public VoxCeleb ResNet34).
    m_channels : int
        Width of the first stage; stages are 1, 2, 4 and 8 times it.
    """

    def __init__(
        self, depth: int = 34, feat_dim: int = 80, embed_dim: int = 256, m_channels: int = 32
    ) -> None:
        super().__init__()
        if depth not in BLOCKS_PER_STAGE:
            raise ValueError(f"WeSpeaker ResNet depth {depth}: choose from {BLOCKS_PER_STAGE}")
        self.feat_dim, self.embed_dim = feat_dim, embed_dim
        self.stats_dim = stats_dim(feat_dim, m_channels)
        self.conv1 = nn.Conv2d(1, m_channels, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m_channels)
        in_planes = m_channels
        stages = []
        for index, blocks in enumerate(BLOCKS_PER_STAGE[depth]):
            planes, stride = m_channels * 2**index, 1 if index == 0 else 2
            layers = []
            for block_stride in [stride] + [1] * (blocks - 1):
                layers.append(BasicBlock(in_planes, planes, block_stride))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = TemporalStatsPooling()
        self.seg_1 = nn.Linear(2 * self.stats_dim, embed_dim)
        self.seg_bn_1 = nn.Identity()  # WeSpeaker's single-embedding-layer variant
        self.seg_2 = nn.Identity()

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        x = fbank.transpose(1, 2).unsqueeze(1)  # (batch, 1, feat_dim, frames)
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (batch, C, feat/8, frames/8)
        return self.seg_1(self.pool(x))


def stats_dim(feat_dim: int, m_channels: int) -> int:
    """Channels times frequency bins after the last stage (WeSpeaker's ``stats_dim``)."""
    return int(feat_dim / 8) * m_channels * 8
