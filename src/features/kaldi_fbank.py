"""Kaldi-compatible log mel filterbank as a torch module (batched, runs on the training device).

The conventions are Kaldi's ``compute-fbank-feats`` (and ``kaldi-native-fbank``'s), which the
public speaker models (WeSpeaker, 3D-Speaker) were trained on:

- frames of ``win_ms`` every ``hop_ms`` with ``snip_edges`` (no padding: ``1 + (n - win) // hop``
  frames), each: dither (training only), DC offset removed, pre-emphasis
  (``x[i] -= k * x[i-1]``, ``x[0] -= k * x[0]``), window (hamming, povey, hanning, rectangular);
- an FFT of the window length rounded up to a power of two, power spectrum;
- triangular filters laid in Kaldi's mel scale (``1127 ln(1 + f / 700)``) between ``low_freq``
  and ``high_freq`` (0: Nyquist), on FFT bins below Nyquist;
- ``log(max(energy, float32 epsilon))``, then (``cmn``) each utterance's mean over time removed.

The waveform is multiplied by ``scale`` first (32768: Kaldi and WeSpeaker read int16 samples).
Output is ``(batch, frames, n_mels)``: time first, as those models take it.

Example
-------
>>> from src.config import FeaturesConfig
>>> fbank = KaldiFbank(FeaturesConfig(frontend="kaldi_fbank"), sample_rate=16000).eval()
>>> fbank(torch.zeros(2, 16000)).shape  # 1 s: 1 + (16000 - 400) // 160 frames
torch.Size([2, 98, 80])
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from src.config import FeaturesConfig, KaldiFbankConfig

FLOAT_EPSILON = float(np.finfo(np.float32).eps)


def kaldi_mel(hz: np.ndarray | float) -> np.ndarray:
    """Kaldi's mel scale."""
    return 1127.0 * np.log(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def kaldi_mel_banks(
    n_mels: int, padded_window: int, sample_rate: int, low_freq: float, high_freq: float
) -> np.ndarray:
    """Kaldi's triangular mel filters, ``(n_mels, padded_window // 2 + 1)``; the Nyquist bin is 0.

    Raises
    ------
    ValueError
        When the band edges are not ``0 <= low < high <= Nyquist``.
    """
    nyquist = sample_rate / 2
    high = high_freq if high_freq > 0 else nyquist + high_freq
    if not 0 <= low_freq < high <= nyquist:
        raise ValueError(
            f"Kaldi fbank needs 0 <= low_freq < high_freq <= {nyquist}; got low_freq={low_freq}, "
            f"high_freq={high_freq} (resolved {high})"
        )
    bins = padded_window // 2
    mel = kaldi_mel(np.arange(bins) * sample_rate / padded_window)  # (bins,)
    low, delta = kaldi_mel(low_freq), (kaldi_mel(high) - kaldi_mel(low_freq)) / (n_mels + 1)
    left = low + delta * np.arange(n_mels)[:, None]
    centre, right = left + delta, left + 2 * delta
    rising = (mel[None, :] - left) / (centre - left)
    falling = (right - mel[None, :]) / (right - centre)
    weights = np.where(mel[None, :] <= centre, rising, falling)
    weights = np.where((mel[None, :] > left) & (mel[None, :] < right), weights, 0.0)
    return np.pad(weights, ((0, 0), (0, 1))).astype(np.float32)  # Nyquist column: 0


def kaldi_window(kind: str, length: int) -> torch.Tensor:
    """Kaldi's analysis windows (symmetric, ``length - 1`` in the denominator)."""
    if kind == "rectangular":
        return torch.ones(length, dtype=torch.float64)
    phase = 2 * math.pi * torch.arange(length, dtype=torch.float64) / (length - 1)
    if kind == "hamming":
        return 0.54 - 0.46 * torch.cos(phase)
    hann = 0.5 - 0.5 * torch.cos(phase)
    if kind == "povey":
        return hann.pow(0.85)
    if kind == "hanning":
        return hann
    raise ValueError(f"unknown Kaldi window {kind!r}")


class KaldiFbank(nn.Module):
    """Waveform ``(batch, samples)`` at ``sample_rate`` -> log fbank ``(batch, frames, n_mels)``.

    Dither is added in training mode only (``features.kaldi.dither``, on the scaled waveform);
    in eval mode the output is deterministic. Inputs shorter than one window give one frame of
    the zero-padded input, so that every clip has an embedding.
    """

    def __init__(self, cfg: FeaturesConfig, sample_rate: int) -> None:
        super().__init__()
        kaldi: KaldiFbankConfig = cfg.kaldi
        self.win_length = round(sample_rate * cfg.win_ms / 1000)
        self.hop_length = round(sample_rate * cfg.hop_ms / 1000)
        if self.win_length < 2 or self.hop_length < 1:
            raise ValueError(f"win_ms={cfg.win_ms}, hop_ms={cfg.hop_ms} are too short")
        self.padded = 1 << (self.win_length - 1).bit_length()  # round up to a power of two
        self.n_mels = cfg.n_mels
        self.settings = kaldi
        banks = kaldi_mel_banks(
            cfg.n_mels, self.padded, sample_rate, kaldi.low_freq, kaldi.high_freq
        )
        # derived from the config, so kept out of checkpoints
        self.register_buffer("banks", torch.from_numpy(banks), persistent=False)
        window = kaldi_window(kaldi.window, self.win_length).float()
        self.register_buffer("window", window, persistent=False)

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for an input of ``num_samples`` samples (at least one)."""
        return max(1, 1 + (num_samples - self.win_length) // self.hop_length)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.ndim != 2:
            raise ValueError(f"expected (batch, samples), got shape {tuple(waveform.shape)}")
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            return self._fbank(waveform.float() * self.settings.scale)

    def _fbank(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.shape[1] < self.win_length:
            waveform = nn.functional.pad(waveform, (0, self.win_length - waveform.shape[1]))
        frames = waveform.unfold(1, self.win_length, self.hop_length)  # (batch, frames, win)
        if self.training and self.settings.dither > 0:
            frames = frames + self.settings.dither * torch.randn_like(frames)
        if self.settings.remove_dc_offset:
            frames = frames - frames.mean(dim=-1, keepdim=True)
        k = self.settings.preemphasis
        if k > 0:
            previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
            frames = frames - k * previous
        frames = frames * self.window.float()
        spectrum = torch.fft.rfft(frames, n=self.padded)  # (batch, frames, padded // 2 + 1)
        power = spectrum.real.square() + spectrum.imag.square()
        energies = torch.matmul(power, self.banks.float().T)  # (batch, frames, mels)
        log_fbank = torch.log(energies.clamp_min(FLOAT_EPSILON))
        if self.settings.cmn:
            log_fbank = log_fbank - log_fbank.mean(dim=1, keepdim=True)
        return log_fbank
