"""The speaker embedder: waveform in, one embedding per utterance out.

``LogMel -> SpecAugment (training only) -> timm backbone -> pooling -> dropout -> Linear +
BatchNorm1d``. The classification heads (``heads.py``) sit on top during training only.

Example
-------
>>> from src.config import FeaturesConfig, ModelConfig
>>> embedder = build_embedder(FeaturesConfig(), ModelConfig(width=0.25), sample_rate=16000)
>>> embedder.eval()(torch.zeros(2, 32000)).shape
torch.Size([2, 256])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from src.config import FeaturesConfig, ModelConfig
from src.features.logmel import LogMel, SpecAugment
from src.model_zoo.backbones import backbone_output_shape, build_backbone
from src.model_zoo.pooling import AttentiveStatsPooling, StatsPooling, build_pooling


def l2_normalise(embeddings: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Unit-length rows: ``(batch, dim)`` -> ``(batch, dim)``; cosine scoring is then a dot."""
    return F.normalize(embeddings, p=2.0, dim=-1, eps=eps)


class SpeakerEmbedder(nn.Module):
    """Waveform ``(batch, samples)`` -> unnormalised embedding ``(batch, embedding_dim)``.

    Parameters
    ----------
    front_end : LogMel
        Waveform to ``(batch, n_mels, frames)``.
    specaugment : SpecAugment
        Masks applied in training mode only.
    backbone : nn.Module
        ``(batch, 1, n_mels, frames)`` -> ``(batch, channels, freq', frames')``.
    pooling : StatsPooling | AttentiveStatsPooling
        Feature map -> ``(batch, pooling.output_dim)``.
    embedding_dim : int
        Width of the embedding.
    drop_rate : float
        Dropout on the pooled vector, before the embedding layer.
    channels_last : bool
        Feed the backbone channels-last tensors (its weights should be channels-last too).
    """

    def __init__(
        self,
        front_end: LogMel,
        specaugment: SpecAugment,
        backbone: nn.Module,
        pooling: StatsPooling | AttentiveStatsPooling,
        embedding_dim: int,
        drop_rate: float = 0.0,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.front_end = front_end
        self.specaugment = specaugment
        self.backbone = backbone
        self.pooling = pooling
        self.dropout = nn.Dropout(drop_rate)
        self.embedding = nn.Sequential(
            nn.Linear(pooling.output_dim, embedding_dim), nn.BatchNorm1d(embedding_dim)
        )
        self.embedding_dim = embedding_dim
        self.channels_last = channels_last

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        features = self.specaugment(self.front_end(waveform))  # (batch, mels, frames)
        # front-end and pooling compute in float32; follow the weights if the model was cast
        dtype = self.embedding[0].weight.dtype
        features = features.unsqueeze(1).to(dtype)  # (batch, 1, mels, frames)
        if self.channels_last:
            features = features.contiguous(memory_format=torch.channels_last)
        feature_map = self.backbone(features)  # (batch, channels, freq', frames')
        pooled = self.dropout(self.pooling(feature_map)).to(dtype)  # (batch, pooling.output_dim)
        return self.embedding(pooled)  # (batch, embedding_dim)


def build_embedder(
    features_cfg: FeaturesConfig, model_cfg: ModelConfig, sample_rate: int
) -> SpeakerEmbedder:
    """Assemble a :class:`SpeakerEmbedder` from the ``features`` and ``model`` config sections."""
    backbone, _ = build_backbone(model_cfg)
    channels, freq = backbone_output_shape(backbone, features_cfg.n_mels)
    return SpeakerEmbedder(
        front_end=LogMel(features_cfg, sample_rate),
        specaugment=SpecAugment(features_cfg.specaugment),
        backbone=backbone,
        pooling=build_pooling(model_cfg, channels, freq),
        embedding_dim=model_cfg.embedding_dim,
        drop_rate=model_cfg.drop_rate,
        channels_last=model_cfg.channels_last,
    )
