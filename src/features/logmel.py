"""Log-mel front-end and SpecAugment as torch modules that run batched on the training device.

The mel filterbank uses the HTK mel scale (``mel = 2595 * log10(1 + hz / 700)``) with triangular
filters laid on the FFT bin frequencies in Hz and no area normalisation (the torchaudio
``melscale_fbanks(mel_scale="htk", norm=None)`` convention, close to Kaldi's fbank). A constant
per-band gain would be removed by the mean normalisation anyway.

Example
-------
>>> from src.config import FeaturesConfig
>>> logmel = LogMel(FeaturesConfig(), sample_rate=16000)
>>> logmel(torch.zeros(2, 32000)).shape  # 2 s at 16 kHz, 10 ms hop
torch.Size([2, 80, 201])
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from src.config import FeaturesConfig, SpecAugmentConfig


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(
    n_mels: int, n_fft: int, sample_rate: int, fmin: float, fmax: float
) -> np.ndarray:
    """Triangular HTK-mel filters, shape ``(n_mels, n_fft // 2 + 1)``, float32.

    Filter ``k`` rises linearly (in Hz) from mel point ``k`` to ``k + 1`` and falls to ``k + 2``,
    with ``n_mels + 2`` points equally spaced in mel between ``fmin`` and ``fmax``.
    """
    if not 0 <= fmin < fmax <= sample_rate / 2:
        raise ValueError(
            f"need 0 <= fmin < fmax <= sample_rate / 2, got fmin={fmin}, fmax={fmax}, "
            f"sample_rate={sample_rate}"
        )
    bin_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)  # (bins,)
    points_hz = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    left, centre, right = points_hz[:-2, None], points_hz[1:-1, None], points_hz[2:, None]
    rising = (bin_hz[None, :] - left) / (centre - left)
    falling = (right - bin_hz[None, :]) / (right - centre)
    return np.clip(np.minimum(rising, falling), 0.0, None).astype(np.float32)  # (mels, bins)


class LogMel(nn.Module):
    """Waveform to mean-normalised log-mel spectrogram.

    Steps: optional pre-emphasis, STFT (hann window of ``win_ms``, ``hop_ms`` hop, ``n_fft``
    points, centred frames), power spectrum, mel filterbank, ``log(mel + eps)``, and subtraction
    of each utterance's mean over time (per mel band). The computation always runs in float32,
    also inside ``torch.autocast``. Inputs of one batch must have the same length (crops or
    windows); padding would leak into the mean.

    Parameters
    ----------
    cfg : FeaturesConfig
        ``n_mels``, ``win_ms``, ``hop_ms``, ``n_fft``, ``fmin``, ``fmax``, ``preemphasis``.
    sample_rate : int
        Sample rate of the input waveform in Hz.
    eps : float
        Floor added to the mel energies before the log.

    Shapes: ``(batch, samples)`` -> ``(batch, n_mels, 1 + samples // hop)``.
    """

    def __init__(self, cfg: FeaturesConfig, sample_rate: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.win_length = round(sample_rate * cfg.win_ms / 1000)
        self.hop_length = round(sample_rate * cfg.hop_ms / 1000)
        if not 0 < self.win_length <= cfg.n_fft:
            raise ValueError(
                f"window of {cfg.win_ms} ms is {self.win_length} samples; it must be in "
                f"1..n_fft={cfg.n_fft}"
            )
        if self.hop_length <= 0:
            raise ValueError(f"hop_ms={cfg.hop_ms} gives a hop of {self.hop_length} samples")
        self.n_fft = cfg.n_fft
        self.n_mels = cfg.n_mels
        self.preemphasis = cfg.preemphasis
        self.eps = eps
        fmax = cfg.fmax if cfg.fmax is not None else sample_rate / 2
        filters = mel_filterbank(cfg.n_mels, cfg.n_fft, sample_rate, cfg.fmin, fmax)
        # derived from the config, so kept out of checkpoints
        self.register_buffer("filters", torch.from_numpy(filters), persistent=False)
        window = torch.hann_window(self.win_length, dtype=torch.float32)
        self.register_buffer("window", window, persistent=False)

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for an input of ``num_samples`` samples."""
        return 1 + num_samples // self.hop_length

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.ndim != 2:
            raise ValueError(f"expected (batch, samples), got shape {tuple(waveform.shape)}")
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            return self._log_mel(waveform.float())

    def _log_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        if self.preemphasis > 0:
            waveform = torch.cat(
                [waveform[:, :1], waveform[:, 1:] - self.preemphasis * waveform[:, :-1]], dim=1
            )
        # reflect padding needs more samples than the pad; very short inputs are zero-padded
        pad_mode = "reflect" if waveform.shape[1] > self.n_fft // 2 else "constant"
        spectrum = torch.stft(
            waveform,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window.float(),  # buffers stay float32 even after model.half()
            center=True,
            pad_mode=pad_mode,
            return_complex=True,
        )  # (batch, bins, frames)
        power = spectrum.real.square() + spectrum.imag.square()
        mel = torch.matmul(self.filters.float(), power)  # (batch, mels, frames)
        log_mel = torch.log(mel + self.eps)
        return log_mel - log_mel.mean(dim=-1, keepdim=True)


class SpecAugment(nn.Module):
    """Random frequency and time masks, a different draw per example, in training mode only.

    Each of ``freq_masks`` masks covers ``U{0..freq_width}`` adjacent mel bands at a uniform
    position, likewise for time. Masked cells are set to 0, which is the per-band mean of a
    mean-normalised log-mel. Draws use the torch generator of the input's device, so results
    repeat under ``torch.manual_seed``.

    Shapes: ``(batch, n_mels, frames)`` -> same.
    """

    def __init__(self, cfg: SpecAugmentConfig) -> None:
        super().__init__()
        self.freq_masks = cfg.freq_masks
        self.freq_width = cfg.freq_width
        self.time_masks = cfg.time_masks
        self.time_width = cfg.time_width

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return features
        batch, n_mels, frames = features.shape
        keep = torch.ones(batch, n_mels, frames, dtype=torch.bool, device=features.device)
        if self.freq_masks and self.freq_width:
            band = _random_masks(batch, n_mels, self.freq_masks, self.freq_width, features.device)
            keep &= ~band[:, :, None]
        if self.time_masks and self.time_width:
            span = _random_masks(batch, frames, self.time_masks, self.time_width, features.device)
            keep &= ~span[:, None, :]
        return features * keep


def _random_masks(
    batch: int, size: int, count: int, max_width: int, device: torch.device
) -> torch.Tensor:
    """Union of ``count`` random spans per example, boolean ``(batch, size)``."""
    width = torch.randint(0, min(max_width, size) + 1, (batch, count, 1), device=device)
    start = torch.floor(torch.rand(batch, count, 1, device=device) * (size - width + 1)).long()
    position = torch.arange(size, device=device)  # (size,)
    inside = (position >= start) & (position < start + width)  # (batch, count, size)
    return inside.any(dim=1)
