"""The GE2E speaker encoder (Resemblyzer's LSTM) as a trainable model, front-end inside.

Everything Resemblyzer's ``VoiceEncoder.embed_utterance`` computes from a waveform is computed
here in torch, batched, so that the model fine-tuned per fold and the frozen extractor agree:

1. volume normalisation: gain up (never down) to -30 dBFS over the whole input;
2. partial utterances of 160 frames (1.6 s) at 1.3 per second, the last one kept when at least
   75 % of it is audio, the waveform zero-padded to the last partial (Resemblyzer's slicing);
3. power mel spectrogram: 25 ms periodic Hann window, 10 ms hop, centred frames with zero
   padding, 40 Slaney mel bands from 0 to 8 kHz with Slaney area normalisation (librosa's
   defaults, which Resemblyzer calls);
4. a 3-layer LSTM (256 units), the last layer's final hidden state, Linear 256, ReLU, L2 norm per
   partial; the utterance embedding is the mean of its partials.

In training mode, SpecAugment masks (``features.specaugment``) zero bands and frames of each
partial's power mel (zero power: silence, GE2E's input is not logarithmic); in eval mode the
model is exactly Resemblyzer's. Resemblyzer's long-silence trimming (webrtcvad) is not part of
the model: it changes the length of the input and has no gradient. The parameters are named as
in Resemblyzer's ``pretrained.pt`` (``lstm.*``, ``linear.*``), which ``load_ge2e_weights``
loads strictly.

Example
-------
>>> encoder = GE2EEncoder().eval()
>>> encoder(torch.zeros(2, 32000)).shape
torch.Size([2, 256])
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SAMPLE_RATE = 16000
N_FFT = 400  # 25 ms
HOP = 160  # 10 ms
N_MELS = 40
PARTIAL_FRAMES = 160  # 1.6 s
PARTIALS_PER_SECOND = 1.3
MIN_COVERAGE = 0.75
HIDDEN = 256
EMBEDDING_DIM = 256
LAYERS = 3
TARGET_DBFS = -30.0
INT16_MAX = 2**15 - 1


def slaney_mel(hz: np.ndarray) -> np.ndarray:
    """The Slaney (Auditory Toolbox) mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log_part, linear)


def slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(
        mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), mel * (200.0 / 3)
    )


def slaney_filterbank(n_mels: int, n_fft: int, sample_rate: int) -> np.ndarray:
    """Slaney-normalised triangular filters from 0 Hz to Nyquist, ``(n_mels, n_fft // 2 + 1)``."""
    bin_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = slaney_mel_to_hz(np.linspace(0.0, slaney_mel(sample_rate / 2), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - bin_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


def partial_starts(n_samples: int) -> list[int]:
    """First frame of each 160-frame partial of an ``n_samples`` input (Resemblyzer's slicing)."""
    n_frames = math.ceil((n_samples + 1) / HOP)
    step = round((SAMPLE_RATE / PARTIALS_PER_SECOND) / HOP)
    starts = list(range(0, max(1, n_frames - PARTIAL_FRAMES + step + 1), step))
    coverage = (n_samples - starts[-1] * HOP) / (PARTIAL_FRAMES * HOP)
    if coverage < MIN_COVERAGE and len(starts) > 1:
        starts.pop()
    return starts


class GE2EEncoder(nn.Module):
    """Waveform ``(batch, samples)`` at 16 kHz -> mean of unit partial embeddings ``(batch, 256)``.

    Parameters
    ----------
    volume_norm : bool
        Raise quiet inputs to -30 dBFS first (Resemblyzer's preprocessing); louder ones are kept.
    specaugment : nn.Module, optional
        Masks ``(batch, 40, frames)`` in training mode (a ``SpecAugment``); none by default.
    """

    def __init__(self, volume_norm: bool = True, specaugment: nn.Module | None = None) -> None:
        super().__init__()
        self.volume_norm = volume_norm
        self.specaugment = specaugment if specaugment is not None else nn.Identity()
        self.lstm = nn.LSTM(N_MELS, HIDDEN, LAYERS, batch_first=True)
        self.linear = nn.Linear(HIDDEN, EMBEDDING_DIM)
        filters = torch.from_numpy(slaney_filterbank(N_MELS, N_FFT, SAMPLE_RATE))
        self.register_buffer("filters", filters, persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

    def mel_partials(self, waveform: torch.Tensor) -> torch.Tensor:
        """``(batch, samples)`` -> ``(batch, partials, 160, 40)`` power mel frames."""
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            waveform = waveform.float()
            if self.volume_norm:
                waveform = raise_to_dbfs(waveform, TARGET_DBFS)
            starts = partial_starts(waveform.shape[1])
            needed = (starts[-1] + PARTIAL_FRAMES) * HOP
            if needed >= waveform.shape[1]:
                waveform = F.pad(waveform, (0, needed - waveform.shape[1]))
            spectrum = torch.stft(
                waveform,
                n_fft=N_FFT,
                hop_length=HOP,
                window=self.window.float(),
                center=True,
                pad_mode="constant",
                return_complex=True,
            )  # (batch, bins, frames)
            power = spectrum.real.square() + spectrum.imag.square()
            mel = torch.matmul(self.filters.float(), power).transpose(1, 2)  # (batch, frames, 40)
            return torch.stack([mel[:, s : s + PARTIAL_FRAMES] for s in starts], dim=1)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.ndim != 2:
            raise ValueError(f"expected (batch, samples), got shape {tuple(waveform.shape)}")
        partials = self.mel_partials(waveform)
        batch, count = partials.shape[:2]
        dtype = self.linear.weight.dtype
        frames = partials.reshape(batch * count, PARTIAL_FRAMES, N_MELS)
        frames = self.specaugment(frames.transpose(1, 2)).transpose(1, 2)  # training only
        _, (hidden, _) = self.lstm(frames.to(dtype))
        embeddings = F.relu(self.linear(hidden[-1]))  # (batch * partials, 256)
        embeddings = F.normalize(embeddings.float(), dim=1, eps=1e-12)
        return embeddings.reshape(batch, count, EMBEDDING_DIM).mean(dim=1)


def raise_to_dbfs(waveform: torch.Tensor, target_dbfs: float) -> torch.Tensor:
    """Gain each row up to ``target_dbfs`` RMS (int16 full scale); rows already louder, or
    silent, are unchanged."""
    rms = waveform.mul(INT16_MAX).square().mean(dim=1, keepdim=True).sqrt()
    level = 20 * torch.log10(rms.clamp_min(1e-12) / INT16_MAX)
    gain_db = (target_dbfs - level).clamp_min(0.0)
    gain = torch.where(rms > 0, torch.pow(10.0, gain_db / 20), torch.ones_like(rms))
    return waveform * gain


def resemblyzer_weights_path() -> Path:
    """The GE2E weights (``pretrained.pt``) shipped inside the ``resemblyzer`` wheel.

    The package is located with ``importlib.util.find_spec``, never imported: its
    ``__init__`` imports webrtcvad and librosa, which the default install
    (``requirements-ge2e.txt``, ``--no-deps``) leaves out since only this file is read.

    Raises
    ------
    RuntimeError
        When the wheel is not installed or lacks the file (the message says how to install it).
    """
    spec = importlib.util.find_spec("resemblyzer")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(folders[0]) / "pretrained.pt" if folders else None
    if path is None or not path.is_file():
        raise RuntimeError(
            "model.architecture=ge2e with pretrained weights needs the resemblyzer wheel's "
            "pretrained.pt, which is not installed; install it: .venv/bin/pip install --no-deps "
            "-r requirements-ge2e.txt (bash scripts/setup_env.sh does)"
        )
    return path


def load_ge2e_weights(encoder: GE2EEncoder, path: Path | None = None) -> None:
    """Load Resemblyzer's ``pretrained.pt`` (or a file in its layout) strictly into ``encoder``."""
    path = path or resemblyzer_weights_path()
    state = torch.load(path, map_location="cpu", weights_only=False)
    weights = state.get("model_state", state) if isinstance(state, dict) else state
    encoder.load_state_dict({k: v for k, v in weights.items() if not k.startswith("similarity_")})
