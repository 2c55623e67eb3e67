"""Backbones, pooling, heads and the speaker embedder on tiny synthetic inputs."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import LocalEntryNotFoundError
from torch import nn

from src.config import FeaturesConfig, HeadConfig, ModelConfig
from src.model_zoo import (
    AAMSoftmax,
    AttentiveStatsPooling,
    GenderHead,
    Softmax,
    StatsPooling,
    SubCenterAAM,
    backbone_output_shape,
    build_backbone,
    build_embedder,
    build_gender_head,
    build_head,
    l2_normalise,
    margin_at_epoch,
)
from src.model_zoo import backbones as backbones_module

TINY = {"backbone": "resnet18", "width": 0.125, "embedding_dim": 32}


def test_unknown_backbone_names_valid_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet181'.*resnet18"):
        build_backbone(ModelConfig(backbone="resnet181"))


def test_pretrained_offline_raises_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def offline_create_model(name: str, pretrained: bool = False, **kwargs: object) -> nn.Module:
        calls.append(pretrained)
        raise LocalEntryNotFoundError("cannot reach huggingface.co and no cached file")

    monkeypatch.setattr(backbones_module.timm, "create_model", offline_create_model)
    cfg = ModelConfig(backbone="resnet18", pretrained=True, width=1.0)
    with pytest.raises(RuntimeError, match=r"network access.*model\.pretrained=false"):
        build_backbone(cfg)
    assert calls == [True]


def test_pretrained_with_width_is_refused_before_any_download(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(backbones_module.timm, "create_model", pytest.fail)
    with pytest.raises(ValueError, match="width"):
        build_backbone(ModelConfig(pretrained=True, width=0.5))


def test_default_never_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    real = backbones_module.timm.create_model

    def spy(name: str, **kwargs: object) -> nn.Module:
        seen.update(kwargs)
        return real(name, **kwargs)

    monkeypatch.setattr(backbones_module.timm, "create_model", spy)
    build_backbone(ModelConfig(**TINY))
    assert seen["pretrained"] is False and seen["in_chans"] == 1


def test_resnet_width_and_speaker_stem() -> None:
    backbone, channels = build_backbone(ModelConfig(backbone="resnet18", width=0.5, stem_stride=1))
    assert channels == 256
    assert [backbone.get_submodule(f"layer{i}")[0].conv2.out_channels for i in range(1, 5)] == [
        32,
        64,
        128,
        256,
    ]
    assert backbone.conv1.stride == (1, 1) and isinstance(backbone.maxpool, nn.Identity)
    assert backbone_output_shape(backbone, n_mels=80, frames=16) == (256, 10)  # 80 / 8 bands
    timm_stem, _ = build_backbone(ModelConfig(backbone="resnet18", width=0.5, stem="timm"))
    assert backbone_output_shape(timm_stem, n_mels=80, frames=16) == (256, 3)  # 80 / 32
    strided, _ = build_backbone(ModelConfig(backbone="resnet18", width=0.5, stem_stride=2))
    assert backbone_output_shape(strided, n_mels=80, frames=16) == (256, 5)


def test_speaker_stem_on_bottleneck_resnet() -> None:
    backbone, channels = build_backbone(
        ModelConfig(backbone="resnet26", width=0.125, stem_stride=1)
    )
    assert channels == 256  # 64 * 0.125 * 4 (bottleneck expansion) at the last stage
    out = backbone(torch.randn(2, 1, 40, 50))
    assert out.shape == (2, 256, 5, 7)


def test_speaker_stem_falls_back_with_warning_for_other_families(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        backbone, channels = build_backbone(
            ModelConfig(backbone="mobilenetv3_small_050", width=0.5)
        )
    assert "ResNet-family" in caplog.text and "width" in caplog.text
    out = backbone(torch.randn(2, 1, 80, 64))
    assert out.ndim == 4 and out.shape[1] == channels


def test_pooling_dims() -> None:
    features = torch.randn(3, 16, 5, 20)  # (batch, channels, freq, frames)
    stats = StatsPooling(16, 5)
    attentive = AttentiveStatsPooling(16, 5, attention_dim=8)
    assert stats(features).shape == (3, stats.output_dim) == (3, 160)
    assert attentive(features).shape == (3, attentive.output_dim) == (3, 160)
    flat = features.reshape(3, 80, 20)
    expected = torch.cat([flat.mean(-1), flat.std(-1, unbiased=False)], dim=-1)
    assert torch.allclose(stats(features), expected, atol=1e-5)
    assert torch.isfinite(stats(torch.zeros(1, 4, 2, 1))).all()  # one frame, zero variance


def test_aam_at_margin_zero_is_scaled_cosine() -> None:
    torch.manual_seed(0)
    head = AAMSoftmax(embedding_dim=8, n_classes=5, margin=0.0, scale=30.0)
    embeddings, labels = torch.randn(6, 8), torch.randint(0, 5, (6,))
    cosine = F.normalize(embeddings) @ F.normalize(head.classifier.weight).T
    assert torch.allclose(head.logits(embeddings, labels), 30.0 * cosine, atol=1e-5)
    loss, accuracy = head(embeddings, labels)
    assert torch.isclose(loss, F.cross_entropy(30.0 * cosine, labels), atol=1e-5)
    assert 0.0 <= float(accuracy) <= 1.0


def test_aam_margin_lowers_only_the_target_logit() -> None:
    torch.manual_seed(0)
    head = AAMSoftmax(8, 5, margin=0.0, scale=10.0)
    embeddings, labels = torch.randn(6, 8), torch.randint(0, 5, (6,))
    plain = head.logits(embeddings, labels)
    head.set_margin(0.3)
    with_margin = head.logits(embeddings, labels)
    target = F.one_hot(labels, 5).bool()
    assert torch.equal(with_margin[~target], plain[~target])
    assert (with_margin[target] < plain[target]).all()


def test_aam_gradients_finite_at_identical_vectors() -> None:
    head = AAMSoftmax(4, 3, margin=0.2, easy_margin=False)
    embeddings = head.classifier.weight.detach()[:2].clone().requires_grad_(True)  # cos = 1
    head(embeddings, torch.tensor([0, 1])).loss.backward()
    assert torch.isfinite(embeddings.grad).all()


def test_subcenter_shapes_and_max_over_subcentres() -> None:
    head = SubCenterAAM(8, n_classes=4, subcenters=3, margin=0.0, scale=1.0)
    assert head.classifier.weight.shape == (12, 8)
    embeddings = torch.randn(5, 8)
    logits = head.logits(embeddings, torch.zeros(5, dtype=torch.long))
    cosine = F.normalize(embeddings) @ F.normalize(head.classifier.weight).T  # (5, 12)
    assert logits.shape == (5, 4)
    assert torch.allclose(logits, cosine.view(5, 4, 3).max(dim=-1).values, atol=1e-5)


def test_build_head_kinds_and_softmax_ignores_margin() -> None:
    assert isinstance(build_head(HeadConfig(kind="aam"), 8, 3), AAMSoftmax)
    assert isinstance(build_head(HeadConfig(kind="subcenter_aam"), 8, 3), SubCenterAAM)
    softmax = build_head(HeadConfig(kind="softmax", softmax_logits="linear"), 8, 3)
    assert isinstance(softmax, Softmax) and isinstance(softmax.classifier, nn.Linear)
    embeddings, labels = torch.randn(4, 8), torch.tensor([0, 1, 2, 0])
    before = softmax(embeddings, labels).loss
    softmax.set_margin(0.5)
    assert torch.equal(softmax(embeddings, labels).loss, before)


def test_margin_warmup_schedule() -> None:
    cfg = HeadConfig(margin=0.2, margin_warmup_epochs=4)
    values = [margin_at_epoch(cfg, epoch) for epoch in (-1, 0, 1, 2.5, 4, 10)]
    assert values == pytest.approx([0.0, 0.0, 0.05, 0.125, 0.2, 0.2])
    assert margin_at_epoch(HeadConfig(margin=0.3, margin_warmup_epochs=0), 0) == 0.3


def test_gender_head_ignores_unknown_labels() -> None:
    assert build_gender_head(HeadConfig(gender_weight=0.0), 8) is None
    head = build_gender_head(HeadConfig(gender_weight=0.1), 8)
    assert isinstance(head, GenderHead)
    embeddings = torch.randn(4, 8)
    loss, accuracy = head(embeddings, torch.tensor([1, -1, 0, -1]))
    known = head.linear(embeddings[[0, 2]])
    assert torch.isclose(loss, F.cross_entropy(known, torch.tensor([1, 0])))
    loss, accuracy = head(embeddings, torch.full((4,), -1))
    assert loss.item() == 0.0 and accuracy.item() == 0.0


@pytest.mark.parametrize("pooling", ["stats", "attentive"])
def test_embedder_output_shape(pooling: str) -> None:
    embedder = build_embedder(
        FeaturesConfig(n_mels=40), ModelConfig(**TINY, pooling=pooling), sample_rate=16000
    )
    embeddings = embedder(torch.randn(3, 8000))
    assert embeddings.shape == (3, 32)
    embedder.eval()
    one = embedder(torch.randn(1, 4000))
    assert one.shape == (1, 32)
    assert torch.allclose(l2_normalise(one).norm(dim=-1), torch.ones(1))


def test_tiny_model_fits_four_synthetic_speakers() -> None:
    torch.manual_seed(0)
    embedder = build_embedder(
        FeaturesConfig(n_mels=40), ModelConfig(**TINY, stem_stride=2), sample_rate=16000
    )
    head = build_head(HeadConfig(margin=0.1, scale=15.0), 32, 4)
    # each "speaker" is a harmonic voice at its own pitch, plus noise
    time = torch.arange(4000) / 16000
    pitches = torch.tensor([110.0, 170.0, 240.0, 330.0])
    labels = torch.arange(4).repeat(4)  # (16,)
    phase = torch.rand(16, 1) * 6.28
    voices = sum(
        torch.sin(2 * torch.pi * k * pitches[labels, None] * time + phase) / k for k in (1, 2, 3)
    )
    waves = 0.3 * voices + 0.05 * torch.randn(16, 4000)
    optimiser = torch.optim.Adam([*embedder.parameters(), *head.parameters()], lr=3e-3)
    losses = []
    for _ in range(8):
        optimiser.zero_grad()
        loss, _ = head(embedder(waves), labels)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
