"""Temporal pooling: a CNN feature map of any length to one fixed-size utterance vector.

Both poolings flatten channels x frequency into one feature axis, then pool over frames. They
compute in float32, also under autocast, so variances of half-precision maps stay accurate.

Example
-------
>>> pooling = StatsPooling(channels=128, freq=3)
>>> pooling(torch.randn(4, 128, 3, 7)).shape, pooling.output_dim
(torch.Size([4, 768]), 768)
"""

from __future__ import annotations

import torch
from torch import nn

from src.config import ModelConfig


def _frames_by_features(features: torch.Tensor) -> torch.Tensor:
    """``(batch, channels, freq, frames)`` or ``(batch, dim, frames)`` -> float32 3-d."""
    if features.ndim == 4:
        batch, channels, freq, frames = features.shape
        features = features.reshape(batch, channels * freq, frames)  # (batch, dim, frames)
    if features.ndim != 3:
        raise ValueError(f"expected a 3-d or 4-d feature map, got {tuple(features.shape)}")
    return features.float()


class StatsPooling(nn.Module):
    """Mean and standard deviation over frames.

    Shapes: ``(batch, channels, freq, frames)`` -> ``(batch, 2 * channels * freq)``.
    """

    def __init__(self, channels: int, freq: int = 1, eps: float = 1e-5) -> None:
        super().__init__()
        self.input_dim = channels * freq
        self.output_dim = 2 * self.input_dim
        self.eps = eps

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=features.device.type, enabled=False):
            features = _frames_by_features(features)  # (batch, dim, frames)
            mean = features.mean(dim=-1)
            variance = features.var(dim=-1, unbiased=False)
            std = torch.sqrt(variance.clamp(min=self.eps))
            return torch.cat([mean, std], dim=-1)  # (batch, 2 * dim)


class AttentiveStatsPooling(nn.Module):
    """ECAPA-TDNN attentive statistics pooling with global context.

    A small network scores every frame for every feature (channel-wise attention), given the
    frame and the utterance's plain mean and std; the softmax of the scores over frames weights
    the mean and std (Desplanques et al., 2020).

    Shapes: ``(batch, channels, freq, frames)`` -> ``(batch, 2 * channels * freq)``.
    """

    def __init__(
        self, channels: int, freq: int = 1, attention_dim: int = 128, eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.input_dim = channels * freq
        self.output_dim = 2 * self.input_dim
        self.eps = eps
        self.attention = nn.Sequential(
            nn.Conv1d(3 * self.input_dim, attention_dim, kernel_size=1),
            nn.ReLU(),
            nn.BatchNorm1d(attention_dim),
            nn.Tanh(),
            nn.Conv1d(attention_dim, self.input_dim, kernel_size=1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=features.device.type, enabled=False):
            features = _frames_by_features(features)  # (batch, dim, frames)
            frames = features.shape[-1]
            mean, std = self._weighted_stats(features, torch.full_like(features, 1.0 / frames))
            context = torch.cat(
                [
                    features,
                    mean[:, :, None].expand(-1, -1, frames),
                    std[:, :, None].expand(-1, -1, frames),
                ],
                dim=1,
            )  # (batch, 3 * dim, frames)
            weights = torch.softmax(self.attention(context), dim=-1)  # (batch, dim, frames)
            mean, std = self._weighted_stats(features, weights)
            return torch.cat([mean, std], dim=-1)  # (batch, 2 * dim)

    def _weighted_stats(
        self, features: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.sum(weights * features, dim=-1)
        variance = torch.sum(weights * features.square(), dim=-1) - mean.square()
        return mean, torch.sqrt(variance.clamp(min=self.eps))


def build_pooling(
    cfg: ModelConfig, channels: int, freq: int
) -> StatsPooling | AttentiveStatsPooling:
    """The pooling named by ``cfg.pooling`` for a ``(channels, freq)`` feature map."""
    if cfg.pooling == "attentive":
        return AttentiveStatsPooling(channels, freq)
    return StatsPooling(channels, freq)
