"""Model zoo: timm backbones, temporal pooling, the speaker embedder and margin-softmax heads."""

from src.model_zoo.backbones import backbone_output_shape, build_backbone, is_resnet_family
from src.model_zoo.embedder import SpeakerEmbedder, build_embedder, l2_normalise
from src.model_zoo.heads import (
    AAMSoftmax,
    GenderHead,
    HeadOutput,
    Softmax,
    SubCenterAAM,
    build_gender_head,
    build_head,
    margin_at_epoch,
)
from src.model_zoo.pooling import AttentiveStatsPooling, StatsPooling, build_pooling

__all__ = [
    "AAMSoftmax",
    "AttentiveStatsPooling",
    "GenderHead",
    "HeadOutput",
    "Softmax",
    "SpeakerEmbedder",
    "StatsPooling",
    "SubCenterAAM",
    "backbone_output_shape",
    "build_backbone",
    "build_embedder",
    "build_gender_head",
    "build_head",
    "build_pooling",
    "is_resnet_family",
    "l2_normalise",
    "margin_at_epoch",
]
