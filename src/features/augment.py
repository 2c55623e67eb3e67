"""Waveform augmentation for training crops, built on audiomentations.

The chain follows a recording's path: room (reverb), background noise, channel (telephone-like
band-pass, low-pass), sensor noise (white and coloured), level (gain). There is no pitch shift:
it changes who is speaking.

Reverb uses real impulse responses when ``impulse_dir`` is set, otherwise :class:`SimulatedReverb`
(exponentially decaying noise as a room impulse response, convolved with
``scipy.signal.fftconvolve``). audiomentations' ``RoomSimulator`` is not used: it needs the
optional ``pyroomacoustics`` package, and its ray tracing costs far more than 20 ms per clip.

Seeding
-------
audiomentations draws its parameters from Python's ``random`` and its noise from NumPy's global
generator, so both must be seeded, in every process that augments. With a ``DataLoader``,
PyTorch already seeds ``random`` and NumPy's global generator differently in each worker from
its base seed (itself drawn from the torch generator, so ``torch.manual_seed`` fixes it); a loop
that wants to be explicit can pass::

    def worker_init_fn(worker_id: int) -> None:
        seed = torch.initial_seed() % 2**32  # differs per worker and per epoch
        random.seed(seed)
        np.random.seed(seed)

With ``workers=0`` the main process's ``seed_everything(seed)`` covers it. The same global state
then gives the same augmented output.

Example
-------
>>> from src.config import AugmentConfig
>>> augment = build_waveform_augment(AugmentConfig(), sample_rate=16000)
>>> augment(np.zeros(32000, dtype=np.float32)).shape
(32000,)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from src.config import AugmentConfig

if TYPE_CHECKING:
    from audiomentations import Compose
    from audiomentations.core.transforms_interface import BaseWaveformTransform

# audiomentations is imported where a chain is built (training), not at import time: a cached
# rerun that imports the train stage never builds one and saves its start-up


def __getattr__(name: str) -> object:
    """``SimulatedReverb`` (defined in ``reverb.py`` on audiomentations), imported on first use."""
    if name == "SimulatedReverb":
        from src.features.reverb import SimulatedReverb

        return SimulatedReverb
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class WaveformAugment:
    """A seeded-by-global-state augmentation chain bound to one sample rate.

    Calling it maps a mono float waveform ``(samples,)`` to a float32 waveform of the same length
    with finite values. Picklable, so it can be handed to ``DataLoader`` workers.
    """

    def __init__(self, chain: Compose, sample_rate: int) -> None:
        self.chain = chain
        self.sample_rate = sample_rate

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        if samples.ndim != 1:
            raise ValueError(f"expected a mono waveform (samples,), got shape {samples.shape}")
        length = len(samples)
        augmented = self.chain(samples.astype(np.float32, copy=False), self.sample_rate)
        if len(augmented) != length:  # guard: keep the crop length whatever a transform does
            augmented = np.pad(augmented[:length], (0, max(0, length - len(augmented))))
        return np.nan_to_num(augmented, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)

    def __repr__(self) -> str:
        return f"WaveformAugment(sample_rate={self.sample_rate}, chain={self.chain})"


def build_waveform_augment(cfg: AugmentConfig, sample_rate: int) -> WaveformAugment | None:
    """The training augmentation described by ``cfg``, or None when it is disabled.

    Parameters
    ----------
    cfg : AugmentConfig
        Probabilities and ranges; ``impulse_dir`` switches reverb to real impulse responses and
        ``background_dir`` adds background noise from a folder of audio files.
    sample_rate : int
        Sample rate of the waveforms it will be applied to.

    With ``cfg.batch_on_device`` the chain keeps reverb and background noise only: band-limiting,
    noise and gain run on the whole batch on the training device
    (:class:`src.features.batch_augment.BatchAugment`).
    """
    if not cfg.enabled:
        return None
    from audiomentations import (
        AddBackgroundNoise,
        AddColorNoise,
        AddGaussianSNR,
        BandPassFilter,
        Compose,
        Gain,
        LowPassFilter,
    )

    low_snr, high_snr = cfg.noise_snr_db
    low_gain, high_gain = cfg.gain_db
    chain = [_reverb(cfg)]
    if cfg.background_dir is not None:
        chain.append(
            AddBackgroundNoise(
                sounds_path=_existing_dir(cfg.background_dir, "background_dir"),
                min_snr_db=low_snr,
                max_snr_db=high_snr,
                p=cfg.background_p,
            )
        )
    if cfg.batch_on_device:
        return WaveformAugment(Compose(chain), sample_rate)
    nyquist = sample_rate / 2
    chain += [
        # telephone-like channel: roughly 300-3400 Hz
        BandPassFilter(
            min_center_freq=min(1600.0, 0.4 * nyquist),
            max_center_freq=min(2000.0, 0.5 * nyquist),
            min_bandwidth_fraction=1.4,
            max_bandwidth_fraction=1.9,
            p=cfg.bandpass_p,
        ),
        LowPassFilter(
            min_cutoff_freq=min(2000.0, 0.5 * nyquist),
            max_cutoff_freq=min(6000.0, 0.9 * nyquist),
            p=cfg.lowpass_p,
        ),
        AddGaussianSNR(min_snr_db=low_snr, max_snr_db=high_snr, p=cfg.noise_p),
        AddColorNoise(min_snr_db=low_snr, max_snr_db=high_snr, p=cfg.colored_noise_p),
        Gain(min_gain_db=low_gain, max_gain_db=high_gain, p=cfg.gain_p),
    ]
    return WaveformAugment(Compose(chain), sample_rate)


def build_batch_augment(cfg: AugmentConfig, sample_rate: int):
    """The whole-batch part of the augmentation (``augment.batch_on_device``), or None."""
    if not (cfg.enabled and cfg.batch_on_device):
        return None
    from src.features.batch_augment import BatchAugment

    return BatchAugment(cfg, sample_rate)


def _reverb(cfg: AugmentConfig) -> BaseWaveformTransform:
    from audiomentations import ApplyImpulseResponse

    from src.features.reverb import SimulatedReverb

    if cfg.impulse_dir is None:
        return SimulatedReverb(p=cfg.reverb_p)
    return ApplyImpulseResponse(
        ir_path=_existing_dir(cfg.impulse_dir, "impulse_dir"),
        p=cfg.reverb_p,
        leave_length_unchanged=True,
    )


def _existing_dir(path: Path, key: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"augment.{key} is not a folder: {path}")
    return path
