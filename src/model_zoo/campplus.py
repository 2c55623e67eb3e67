"""CAM++: a densely connected TDNN with context-aware masking, in 3D-Speaker's parameter names.

Written from the paper (Wang, Zheng, Chen, Zhang, Lu & Yan, "CAM++: A Fast and Efficient Network
for Speaker Verification Using Context-Aware Masking", Interspeech 2023, arXiv:2303.00332) and
3D-Speaker's published model description (``speakerlab/models/campplus``), whose module and
parameter names it keeps so that 3D-Speaker checkpoints (e.g. ``campplus_cn_en_common.pt``,
192-d, or the VoxCeleb CAM++, 512-d) load with ``strict=True``:

- ``head`` (the front convolution module, FCM): a 3x3 convolution (32 channels), two stages of
  two residual blocks that halve the frequency axis (``layer1``, ``layer2``), and a 3x3
  convolution with stride 2 in frequency (``conv2``): ``(batch, bins, frames)`` becomes
  ``(batch, 32 * bins / 8, frames)`` at the input frame rate;
- ``xvector``: a TDNN layer (kernel 5, stride 2: half the frame rate), three densely connected
  blocks of 12, 24 and 16 CAM layers (growth 32, bottleneck 128, kernel 3, dilation 1, 2, 2)
  each followed by a transit layer halving the channels, batch norm + ReLU (``out_nonlinear``),
  mean and standard-deviation pooling (``stats``) and the embedding layer (``dense``: a 1x1
  convolution and batch norm without affine parameters).

A CAM layer (``cam_layer``) multiplies the output of its local kernel-3 convolution
(``linear_local``) by a sigmoid mask computed (``linear1``, ReLU, ``linear2``) from the sum of
the utterance mean and the mean of the 100-frame segment each frame lies in (the last segment
averages only the frames it has). The standard deviation of the pooling is the unbiased one, as
upstream, with its divisor floored at 1, so that a feature map of one frame gives a standard
deviation of 0 rather than NaN (an input of 1 or 2 fbank frames leaves one frame after the
stride-2 TDNN layer): no input length can make the network, or its ONNX graph, return NaN.

Input is a Kaldi fbank ``(batch, frames, bins)``; output the embedding ``(batch, embed_dim)``.

Example
-------
>>> encoder = CAMPPlus(feat_dim=80, embed_dim=192).eval()
>>> encoder(torch.zeros(2, 100, 80)).shape
torch.Size([2, 192])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FCM_CHANNELS = 32  # channels of the front convolution module
TDNN_CHANNELS = 128  # the first TDNN layer's output ("init_channels")
GROWTH = 32  # channels each CAM layer adds to its block
BOTTLENECK = 4  # bottleneck width of a CAM layer, in multiples of GROWTH
BLOCKS = ((12, 3, 1), (24, 3, 2), (16, 3, 2))  # (layers, kernel, dilation) per dense block
SEGMENT_FRAMES = 100  # the CAM mask's segment pooling


def norm_relu(channels: int) -> nn.Sequential:
    """Batch norm then ReLU: a ``Sequential`` with 3D-Speaker's names (``batchnorm``, ``relu``)."""
    layers = nn.Sequential()
    layers.add_module("batchnorm", nn.BatchNorm1d(channels))
    layers.add_module("relu", nn.ReLU())
    return layers


class BasicResBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a residual; ``stride`` applies to frequency only."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=(stride, 1), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=(stride, 1), bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class FCM(nn.Module):
    """Front convolution module: ``(batch, bins, frames)`` -> ``(batch, 32 * bins // 8, frames)``.

    Frequency is divided by 8 (two residual stages with stride 2, then ``conv2``); time keeps its
    resolution.
    """

    def __init__(self, feat_dim: int = 80, channels: int = FCM_CHANNELS) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.layer1 = nn.Sequential(
            BasicResBlock(channels, channels, 2), BasicResBlock(channels, channels)
        )
        self.layer2 = nn.Sequential(
            BasicResBlock(channels, channels, 2), BasicResBlock(channels, channels)
        )
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.out_channels = channels * (feat_dim // 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x.unsqueeze(1))))  # (batch, C, bins, frames)
        out = self.layer2(self.layer1(out))
        out = F.relu(self.bn2(self.conv2(out)))  # (batch, C, bins / 8, frames)
        return out.flatten(1, 2)  # (batch, C * bins / 8, frames)


class TDNNLayer(nn.Module):
    """A 1-D convolution over time (``linear``) then batch norm + ReLU (``nonlinear``)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1
    ) -> None:
        super().__init__()
        self.linear = nn.Conv1d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
            bias=False,
        )  # fmt: skip
        self.nonlinear = norm_relu(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x))


def segment_means(x: torch.Tensor, segment: int = SEGMENT_FRAMES) -> torch.Tensor:
    """Each frame replaced by the mean of its ``segment``-frame segment, ``(batch, C, frames)``.

    Segments start at frame 0; the last one averages only the frames it has.
    """
    means = F.avg_pool1d(x, kernel_size=segment, stride=segment, ceil_mode=True)
    return means.repeat_interleave(segment, dim=-1)[..., : x.shape[-1]]


class CAMLayer(nn.Module):
    """Context-aware masking: a local convolution scaled by a mask from utterance and segment
    context (the paper's Section 2.2)."""

    def __init__(
        self, bn_channels: int, out_channels: int, kernel_size: int, dilation: int,
        reduction: int = 2,
    ) -> None:  # fmt: skip
        super().__init__()
        padding = (kernel_size - 1) // 2 * dilation
        self.linear_local = nn.Conv1d(
            bn_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False
        )
        self.linear1 = nn.Conv1d(bn_channels, bn_channels // reduction, 1)
        self.linear2 = nn.Conv1d(bn_channels // reduction, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = self.linear_local(x)
        context = x.mean(dim=-1, keepdim=True) + segment_means(x)
        mask = torch.sigmoid(self.linear2(F.relu(self.linear1(context))))
        return local * mask


class CAMDenseTDNNLayer(nn.Module):
    """BN-ReLU, 1x1 bottleneck (``linear1``), BN-ReLU, CAM layer: ``GROWTH`` new channels."""

    def __init__(
        self, in_channels: int, out_channels: int, bn_channels: int, kernel_size: int,
        dilation: int,
    ) -> None:  # fmt: skip
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"CAM layers need an odd kernel size, got {kernel_size}")
        self.nonlinear1 = norm_relu(in_channels)
        self.linear1 = nn.Conv1d(in_channels, bn_channels, 1, bias=False)
        self.nonlinear2 = norm_relu(bn_channels)
        self.cam_layer = CAMLayer(bn_channels, out_channels, kernel_size, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))


class CAMDenseTDNNBlock(nn.ModuleList):
    """``num_layers`` CAM layers (``tdnnd1``, ``tdnnd2``, ...), each fed every earlier output
    (dense connectivity): ``in_channels`` -> ``in_channels + num_layers * out_channels``."""

    def __init__(
        self, num_layers: int, in_channels: int, out_channels: int, bn_channels: int,
        kernel_size: int, dilation: int,
    ) -> None:  # fmt: skip
        super().__init__()
        for i in range(num_layers):
            layer = CAMDenseTDNNLayer(
                in_channels + i * out_channels, out_channels, bn_channels, kernel_size, dilation
            )
            self.add_module(f"tdnnd{i + 1}", layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = torch.cat([x, layer(x)], dim=1)
        return x


class TransitLayer(nn.Module):
    """BN-ReLU (``nonlinear``) then a 1x1 convolution (``linear``) changing the channels."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.nonlinear = norm_relu(in_channels)
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.nonlinear(x))


class StatsPool(nn.Module):
    """Mean and unbiased standard deviation over time: ``(batch, C, frames)`` -> ``(batch, 2C)``.

    The divisor of the variance is ``max(frames - 1, 1)``; the frame count is read from the
    tensor (not a Python number), so an ONNX graph keeps it dynamic.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=2)  # explicit axes: the ONNX exporter misreads -1 after a dynamic slice
        frames = torch.ones_like(x[:1, :1]).sum(dim=2)  # (1, 1): the length, as a tensor
        variance = (x - mean.unsqueeze(2)).square().sum(dim=2) / (frames - 1).clamp_min(1)
        return torch.cat([mean, variance.sqrt()], dim=1)


class DenseLayer(nn.Module):
    """The embedding layer: a 1x1 convolution (``linear``) and batch norm without affine
    parameters (``nonlinear.batchnorm``), on a pooled vector ``(batch, C)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)
        self.nonlinear = nn.Sequential()
        self.nonlinear.add_module("batchnorm", nn.BatchNorm1d(out_channels, affine=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x.unsqueeze(-1)).squeeze(-1))


class CAMPPlus(nn.Module):
    """CAM++ encoder: fbank ``(batch, frames, feat_dim)`` -> embedding ``(batch, embed_dim)``.

    Parameters
    ----------
    feat_dim : int
        Fbank bins of the input (80 for 3D-Speaker's public models); a multiple of 8.
    embed_dim : int
        Embedding size (192 for ``campplus_cn_en_common.pt``, 512 for the VoxCeleb CAM++).

    Raises
    ------
    ValueError
        ``feat_dim`` not a multiple of 8 (the front module divides frequency by 8).
    """

    def __init__(self, feat_dim: int = 80, embed_dim: int = 192) -> None:
        super().__init__()
        if feat_dim % 8:
            raise ValueError(f"CAM++ needs fbank bins divisible by 8; got {feat_dim}")
        self.feat_dim, self.embed_dim = feat_dim, embed_dim
        self.head = FCM(feat_dim)
        self.xvector = nn.Sequential()
        self.xvector.add_module("tdnn", TDNNLayer(self.head.out_channels, TDNN_CHANNELS, 5, 2))
        channels = TDNN_CHANNELS
        for index, (layers, kernel, dilation) in enumerate(BLOCKS, start=1):
            block = CAMDenseTDNNBlock(
                layers, channels, GROWTH, BOTTLENECK * GROWTH, kernel, dilation
            )
            self.xvector.add_module(f"block{index}", block)
            channels += layers * GROWTH
            self.xvector.add_module(f"transit{index}", TransitLayer(channels, channels // 2))
            channels //= 2
        self.xvector.add_module("out_nonlinear", norm_relu(channels))
        self.xvector.add_module("stats", StatsPool())
        self.xvector.add_module("dense", DenseLayer(2 * channels, embed_dim))
        for module in self.modules():  # 3D-Speaker's initialisation of fresh weights
            if isinstance(module, nn.Conv1d | nn.Linear):
                nn.init.kaiming_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        return self.xvector(self.head(fbank.transpose(1, 2)))  # (batch, embed_dim)
