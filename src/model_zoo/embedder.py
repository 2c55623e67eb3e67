"""The speaker embedder: waveform in, one embedding per utterance out.

``model.architecture`` picks the network; each has its front-end inside, so training and
embedding compute the same thing:

- ``timm``: ``LogMel or KaldiFbank -> SpecAugment (training only) -> timm backbone -> pooling ->
  dropout -> Linear + BatchNorm1d``;
- ``wespeaker_resnet34`` / ``wespeaker_resnet18``: ``features front-end -> SpecAugment ->
  WeSpeakerResNet`` (WeSpeaker's parameter names, so its checkpoints load strictly);
- ``ge2e``: Resemblyzer's GE2E LSTM with its own mel front-end (``features`` is not used);
- ``campplus``: ``Kaldi fbank -> SpecAugment -> CAMPPlus`` (3D-Speaker's CAM++ and names).

The encoder architectures (WeSpeaker ResNet, CAM++) can repeat a short input end to end up to
``model.repeat_pad_seconds`` before the front-end, and keep named layers frozen in training
(``freeze``: no gradient, batch-norm statistics kept).

The classification heads (``heads.py``) sit on top during training only.

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
from src.features.kaldi_fbank import KaldiFbank
from src.features.logmel import LogMel, SpecAugment
from src.model_zoo.backbones import backbone_output_shape, build_backbone
from src.model_zoo.campplus import CAMPPlus
from src.model_zoo.ge2e import EMBEDDING_DIM as GE2E_DIM
from src.model_zoo.ge2e import GE2EEncoder
from src.model_zoo.pooling import AttentiveStatsPooling, StatsPooling, build_pooling
from src.model_zoo.wespeaker_resnet import WeSpeakerResNet


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
        front_end: LogMel | KaldiFbank,
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

    frames_axis = 2  # of the features: (batch, mels, frames)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.embed_features(self.features(waveform))

    def features(self, waveform: torch.Tensor) -> torch.Tensor:
        """The front-end's ``(batch, mels, frames)`` (an ONNX export starts after it)."""
        features = self.front_end(waveform)
        if isinstance(self.front_end, KaldiFbank):
            features = features.transpose(1, 2)  # time-first fbank -> (batch, mels, frames)
        return features

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        """``(batch, mels, frames)`` -> ``(batch, embedding_dim)``: all after the front-end."""
        features = self.specaugment(features)  # (batch, mels, frames)
        # front-end and pooling compute in float32; follow the weights if the model was cast
        dtype = self.embedding[0].weight.dtype
        features = features.unsqueeze(1).to(dtype)  # (batch, 1, mels, frames)
        if self.channels_last:
            features = features.contiguous(memory_format=torch.channels_last)
        feature_map = self.backbone(features)  # (batch, channels, freq', frames')
        pooled = self.dropout(self.pooling(feature_map)).to(dtype)  # (batch, pooling.output_dim)
        return self.embedding(pooled)  # (batch, embedding_dim)


def repeat_to_length(waveform: torch.Tensor, min_samples: int) -> torch.Tensor:
    """``(batch, samples)`` repeated end to end and cut to ``min_samples`` when shorter; longer
    inputs are returned unchanged."""
    length = waveform.shape[1]
    if length >= min_samples or length == 0:
        return waveform
    return waveform.repeat(1, -(-min_samples // length))[:, :min_samples]


class EncoderEmbedder(nn.Module):
    """Front-end -> SpecAugment (training only) -> an encoder taking ``(batch, frames, bins)``.

    Shapes: waveform ``(batch, samples)`` -> embedding ``(batch, encoder.embed_dim)``.

    Parameters
    ----------
    min_samples : int
        An input shorter than this is repeated end to end up to it before the front-end
        (``model.repeat_pad_seconds``); 0: never.
    """

    def __init__(
        self,
        front_end: LogMel | KaldiFbank,
        specaugment: SpecAugment,
        encoder: nn.Module,
        min_samples: int = 0,
    ) -> None:
        super().__init__()
        self.front_end = front_end
        self.specaugment = specaugment
        self.encoder = encoder
        self.embedding_dim = encoder.embed_dim
        self.min_samples = min_samples
        self.frozen: list[nn.Module] = []  # kept in eval mode (see freeze)

    frames_axis = 1  # of the features: (batch, frames, mels)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.embed_features(self.features(waveform))

    def features(self, waveform: torch.Tensor) -> torch.Tensor:
        """The front-end's ``(batch, frames, mels)`` (an ONNX export starts after it)."""
        features = self.front_end(repeat_to_length(waveform, self.min_samples))
        if isinstance(self.front_end, LogMel):
            features = features.transpose(1, 2)  # (batch, frames, mels)
        return features

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        """``(batch, frames, mels)`` -> ``(batch, embed_dim)``: everything after the front-end."""
        masked = self.specaugment(features.transpose(1, 2)).transpose(1, 2)
        return self.encoder(masked.to(next(self.encoder.parameters()).dtype))

    def freeze(self, prefixes: list[str]) -> list[str]:
        """Freeze every submodule whose name starts with one of ``prefixes`` (e.g.
        ``encoder.head``): no gradients, and batch norm keeps its running statistics (the
        modules stay in eval mode in training). Returns the frozen parameter names.

        Raises
        ------
        ValueError
            A prefix that names no parameter (naming the top-level modules there are).
        """
        names = []
        for prefix in prefixes:
            matched = [
                (name, module)
                for name, module in self.named_modules()
                if name and (name == prefix or name.startswith(prefix + "."))
            ]
            params = [n for n, _ in self.named_parameters() if n.startswith(prefix + ".")]
            if not params:
                options = sorted({n.rsplit(".", 2)[0] for n, _ in self.named_parameters()})[:12]
                raise ValueError(
                    f"train.frozen_layers: {prefix!r} names no parameter of this model; e.g. "
                    f"{', '.join(options)}"
                )
            for _, module in matched:
                for param in module.parameters(recurse=False):
                    param.requires_grad_(False)
                self.frozen.append(module)
            names += params
        self.train(self.training)
        return names

    def train(self, mode: bool = True) -> EncoderEmbedder:
        super().train(mode)
        for module in self.frozen:
            module.eval()
        return self


def build_front_end(features_cfg: FeaturesConfig, sample_rate: int) -> LogMel | KaldiFbank:
    """The ``features.frontend`` module."""
    if features_cfg.frontend == "kaldi_fbank":
        return KaldiFbank(features_cfg, sample_rate)
    return LogMel(features_cfg, sample_rate)


def build_embedder(
    features_cfg: FeaturesConfig, model_cfg: ModelConfig, sample_rate: int
) -> nn.Module:
    """Assemble the embedder of ``model.architecture`` from the ``features`` and ``model``
    sections (random weights; see ``weights.py`` for pretrained ones).

    Raises
    ------
    ValueError
        A setting the architecture cannot take (GE2E: 16 kHz and 256-d only; WeSpeaker ResNet:
        fbank bins a multiple of 8; CAM++: Kaldi fbank, bins a multiple of 8;
        ``model.repeat_pad_seconds`` on an architecture other than these two).
    """
    architecture = model_cfg.architecture
    if architecture == "ge2e":
        if sample_rate != 16000 or model_cfg.embedding_dim != GE2E_DIM:
            raise ValueError(
                "model.architecture=ge2e needs data.sample_rate=16000 and model.embedding_dim="
                f"{GE2E_DIM}; got {sample_rate} and {model_cfg.embedding_dim}"
            )
        return GE2EEncoder(specaugment=SpecAugment(features_cfg.specaugment))
    front_end = build_front_end(features_cfg, sample_rate)
    specaugment = SpecAugment(features_cfg.specaugment)
    min_samples = round(model_cfg.repeat_pad_seconds * sample_rate)
    if architecture == "campplus":
        if features_cfg.frontend != "kaldi_fbank" or features_cfg.n_mels % 8:
            raise ValueError(
                "model.architecture=campplus takes Kaldi fbank with bins divisible by 8: set "
                f"features.frontend=kaldi_fbank and features.n_mels=80 (got "
                f"{features_cfg.frontend}, {features_cfg.n_mels})"
            )
        encoder = CAMPPlus(feat_dim=features_cfg.n_mels, embed_dim=model_cfg.embedding_dim)
        return EncoderEmbedder(front_end, specaugment, encoder, min_samples)
    if architecture.startswith("wespeaker_resnet"):
        if features_cfg.n_mels % 8:
            raise ValueError(
                f"{architecture} needs features.n_mels divisible by 8 (three stride-2 stages); "
                f"got {features_cfg.n_mels}"
            )
        encoder = WeSpeakerResNet(
            depth=int(architecture.removeprefix("wespeaker_resnet")),
            feat_dim=features_cfg.n_mels,
            embed_dim=model_cfg.embedding_dim,
            m_channels=model_cfg.wespeaker_channels,
        )
        return EncoderEmbedder(front_end, specaugment, encoder, min_samples)
    if min_samples:
        raise ValueError(
            f"model.repeat_pad_seconds is for the wespeaker_resnet* and campplus "
            f"architectures, not {architecture}"
        )
    return _build_timm_embedder(front_end, specaugment, features_cfg, model_cfg)


def _build_timm_embedder(
    front_end: LogMel | KaldiFbank,
    specaugment: SpecAugment,
    features_cfg: FeaturesConfig,
    model_cfg: ModelConfig,
) -> SpeakerEmbedder:
    backbone, _ = build_backbone(model_cfg)
    channels, freq = backbone_output_shape(backbone, features_cfg.n_mels)
    return SpeakerEmbedder(
        front_end=front_end,
        specaugment=specaugment,
        backbone=backbone,
        pooling=build_pooling(model_cfg, channels, freq),
        embedding_dim=model_cfg.embedding_dim,
        drop_rate=model_cfg.drop_rate,
        channels_last=model_cfg.channels_last,
    )
