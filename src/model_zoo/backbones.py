"""Backbone registry: any timm CNN as a 1-channel spectrogram feature extractor.

``build_backbone(cfg)`` returns a module mapping ``(batch, 1, n_mels, frames)`` to
``(batch, channels, freq', frames')`` and its ``channels``. Weights are random unless
``cfg.pretrained`` is true; nothing is ever downloaded by default.

Two options apply to the ResNet family only (everything timm builds with its ``ResNet`` class
from ``timm/models/resnet.py``: resnet*, resnet*d, resnet*t, seresnet*, resnext*, ecaresnet*,
wide_resnet*, ...):

- ``width`` scales the four stage widths (timm's ``channels`` argument): resnet18 at width 0.5
  has stages (32, 64, 128, 256), the classic ThinResNet widths.
- ``stem: speaker`` downsamples the 80 mel bands less: the stem becomes one 3x3 convolution with
  ``stem_stride`` and ``channels[0]`` outputs, and the max-pool is removed (ImageNet stems
  downsample by 4 before the first stage). ``stem_stride=1`` keeps full resolution (the
  ThinResNet recipe, for GPUs); the default 2 halves it, about 4x cheaper on a CPU. The first
  block's input convolution is rebuilt when its input width changes.

For other families ``stem: speaker`` and ``width != 1`` fall back to the model's own stem and
widths, with a logged warning, so that ``backbone: efficientnet_b0`` works without other edits.

Example
-------
>>> from src.config import ModelConfig
>>> backbone, channels = build_backbone(ModelConfig(backbone="resnet18", width=0.25))
>>> channels
128
"""

from __future__ import annotations

import difflib
import logging
from functools import lru_cache
from typing import TYPE_CHECKING

import torch
from torch import nn

from src.config import ModelConfig

if TYPE_CHECKING:
    from timm.models.resnet import ResNet

# timm (and torchvision behind it) is imported where a backbone is built, not at import time:
# a fully cached rerun never builds one and saves seconds of start-up


def __getattr__(name: str) -> object:
    """``backbones.timm``: the timm module, imported on first use."""
    if name == "timm":
        import timm

        return timm
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


log = logging.getLogger(__name__)

RESNET_STAGE_CHANNELS = (64, 128, 256, 512)
SUGGESTED_BACKBONES = ("resnet18", "resnet34", "resnet10t", "resnet50", "efficientnet_b0")


@lru_cache(maxsize=1)
def _resnet_family() -> frozenset[str]:
    import timm

    return frozenset(timm.list_models(module="resnet"))


def is_resnet_family(name: str) -> bool:
    """Whether ``name`` (optionally with a ``.pretrained_tag``) is built by timm's ResNet class."""
    return name.split(".", 1)[0] in _resnet_family()


def scaled_channels(width: float) -> tuple[int, ...]:
    """ResNet stage widths times ``width`` (at least 4 channels each)."""
    return tuple(max(4, round(channels * width)) for channels in RESNET_STAGE_CHANNELS)


def build_backbone(cfg: ModelConfig) -> tuple[nn.Module, int]:
    """Create the timm feature extractor named by ``cfg.backbone``.

    Parameters
    ----------
    cfg : ModelConfig
        ``backbone``, ``pretrained``, ``stem``, ``stem_stride``, ``width``, ``channels_last``.

    Returns
    -------
    backbone : nn.Module
        ``(batch, 1, n_mels, frames)`` -> ``(batch, channels, freq', frames')``.
    channels : int
        Channel count of the output.

    Raises
    ------
    ValueError
        Unknown backbone name (the message lists close matches and common choices), or a width
        other than 1 together with pretrained weights.
    RuntimeError
        Pretrained weights requested but not downloadable (offline, no local cache).
    """
    import timm
    from timm.models.resnet import ResNet

    name = cfg.backbone
    if not timm.is_model(name):
        raise ValueError(_unknown_backbone_message(name))
    resnet = is_resnet_family(name)
    kwargs: dict[str, object] = {}
    if cfg.width != 1.0:
        if not resnet:
            log.warning(
                "model.width=%s applies to ResNet-family backbones only; %s (not a ResNet) "
                "keeps its own widths (set model.width=1 to silence this)",
                cfg.width,
                name,
            )
        elif cfg.pretrained:
            raise ValueError(
                f"model.width={cfg.width} changes the layer shapes, so pretrained weights cannot "
                "be loaded; set model.width=1 or model.pretrained=false"
            )
        else:
            kwargs["channels"] = scaled_channels(cfg.width)
    model = _create(name, cfg.pretrained, **kwargs)
    if cfg.stem == "speaker":
        if resnet and isinstance(model, ResNet):
            _use_speaker_stem(model, cfg.stem_stride)
            if cfg.pretrained:
                log.info("stem: speaker re-initialises the stem of pretrained %s", name)
        else:
            log.warning(
                "model.stem=speaker applies to ResNet-family backbones only; %s (not a ResNet) "
                "keeps its timm stem (set model.stem=timm to silence this)",
                name,
            )
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    channels, _ = backbone_output_shape(model, n_mels=64)  # some timm heads add a conv
    return model, channels


def backbone_output_shape(backbone: nn.Module, n_mels: int, frames: int = 64) -> tuple[int, int]:
    """``(channels, freq')`` of the backbone's output for ``n_mels`` input bands (a dry run)."""
    was_training = backbone.training
    backbone.eval()
    parameter = next(backbone.parameters())
    probe = torch.zeros(1, 1, n_mels, frames, device=parameter.device, dtype=parameter.dtype)
    with torch.no_grad():
        output = backbone(probe)
    backbone.train(was_training)
    if output.ndim != 4:
        raise ValueError(
            f"backbone output has shape {tuple(output.shape)}; a (batch, channels, freq, frames) "
            "feature map is needed, so use a CNN backbone"
        )
    return int(output.shape[1]), int(output.shape[2])


def _create(name: str, pretrained: bool, **kwargs: object) -> nn.Module:
    import timm

    try:
        return timm.create_model(
            name, pretrained=pretrained, in_chans=1, num_classes=0, global_pool="", **kwargs
        )
    except Exception as err:
        if pretrained and _is_download_error(err):
            raise RuntimeError(
                f"could not load pretrained weights for {name!r}: {err}. Pretrained weights need "
                "network access to the Hugging Face Hub or a local Hugging Face cache holding "
                "them (HF_HOME; set HF_HUB_OFFLINE=1 to skip network retries). Set "
                "model.pretrained=false to train from scratch."
            ) from err
        raise


def _is_download_error(err: BaseException) -> bool:
    if isinstance(err, OSError | ConnectionError | TimeoutError):  # includes hub cache misses
        return True
    origin = type(err).__module__.split(".", 1)[0]
    return origin in {"huggingface_hub", "httpx", "httpcore", "requests", "urllib3"}


def _unknown_backbone_message(name: str) -> str:
    import timm

    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    choices = list(dict.fromkeys([*close, *SUGGESTED_BACKBONES]))
    return (
        f"unknown backbone {name!r}; valid choices include {', '.join(choices)} "
        "(any CNN name from timm.list_models())"
    )


def _use_speaker_stem(model: ResNet, stride: int) -> None:
    """Replace the stem by a 3x3 conv with ``stride`` and no max-pool (in place)."""
    first_block = model.layer1[0]
    stem_channels = _block_out_channels(first_block) // first_block.expansion  # channels[0]
    model.conv1 = nn.Conv2d(1, stem_channels, 3, stride=stride, padding=1, bias=False)
    model.bn1 = nn.BatchNorm2d(stem_channels)
    model.maxpool = nn.Identity()
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    if first_block.conv1.in_channels != stem_channels:
        _rewire_first_block(first_block, stem_channels)


def _block_out_channels(block: nn.Module) -> int:
    last_conv = block.conv3 if hasattr(block, "conv3") else block.conv2
    return last_conv.out_channels


def _rewire_first_block(block: nn.Module, in_channels: int) -> None:
    """Give the first stage's first block ``in_channels`` inputs (stride 1 in timm's ResNet)."""
    block.conv1 = _conv_like(block.conv1, in_channels)
    if block.downsample is None:
        return
    if in_channels == _block_out_channels(block):
        block.downsample = None  # identity shortcut fits now
        return
    for index, layer in enumerate(block.downsample):
        if isinstance(layer, nn.Conv2d):
            block.downsample[index] = _conv_like(layer, in_channels)
            return


def _conv_like(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    return new
