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

import random
from pathlib import Path

import numpy as np
from audiomentations import (
    AddBackgroundNoise,
    AddColorNoise,
    AddGaussianSNR,
    ApplyImpulseResponse,
    BandPassFilter,
    Compose,
    Gain,
    LowPassFilter,
)
from audiomentations.core.transforms_interface import BaseWaveformTransform
from scipy.signal import fftconvolve

from src.config import AugmentConfig


class SimulatedReverb(BaseWaveformTransform):
    """Convolve with a synthetic room impulse response; keeps length and RMS level.

    The response is a unit direct path followed, after a short pre-delay, by Gaussian noise whose
    amplitude decays by 60 dB over ``rt60`` seconds; the tail is scaled to a direct-to-reverberant
    energy ratio drawn in ``[min_drr_db, max_drr_db]``. About 1 ms per 2 s clip on one core.

    Parameters
    ----------
    min_rt60, max_rt60 : float
        Range of reverberation times in seconds.
    min_drr_db, max_drr_db : float
        Range of direct-to-reverberant energy ratios in dB (low = more reverberant).
    p : float
        Probability of applying the transform.
    """

    supports_multichannel = False

    def __init__(
        self,
        min_rt60: float = 0.15,
        max_rt60: float = 0.8,
        min_drr_db: float = -3.0,
        max_drr_db: float = 12.0,
        p: float = 0.5,
    ) -> None:
        super().__init__(p)
        if not 0 < min_rt60 <= max_rt60:
            raise ValueError(f"need 0 < min_rt60 <= max_rt60, got {min_rt60}, {max_rt60}")
        if min_drr_db > max_drr_db:
            raise ValueError(f"need min_drr_db <= max_drr_db, got {min_drr_db}, {max_drr_db}")
        self.min_rt60 = min_rt60
        self.max_rt60 = max_rt60
        self.min_drr_db = min_drr_db
        self.max_drr_db = max_drr_db

    def randomize_parameters(self, samples: np.ndarray, sample_rate: int) -> None:
        super().randomize_parameters(samples, sample_rate)
        if self.parameters["should_apply"]:
            self.parameters["rt60"] = random.uniform(self.min_rt60, self.max_rt60)
            self.parameters["drr_db"] = random.uniform(self.min_drr_db, self.max_drr_db)
            self.parameters["predelay"] = random.uniform(0.002, 0.010)

    def impulse_response(self, sample_rate: int) -> np.ndarray:
        """The response for the current parameters, float32 ``(taps,)``."""
        rt60 = self.parameters["rt60"]
        delay = max(1, round(self.parameters["predelay"] * sample_rate))
        tail_length = max(1, round(rt60 * sample_rate))
        time = np.arange(tail_length) / sample_rate
        tail = np.random.standard_normal(tail_length) * np.exp(-3.0 * np.log(10.0) * time / rt60)
        tail *= np.sqrt(10.0 ** (-self.parameters["drr_db"] / 10.0) / np.sum(tail**2))
        response = np.zeros(delay + tail_length)
        response[0] = 1.0
        response[delay:] = tail
        return response.astype(np.float32)

    def apply(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        reverberant = fftconvolve(samples, self.impulse_response(sample_rate))[: len(samples)]
        dry_rms = np.sqrt(np.mean(np.square(samples, dtype=np.float64)))
        wet_rms = np.sqrt(np.mean(np.square(reverberant, dtype=np.float64)))
        if wet_rms > 0:
            reverberant = reverberant * (dry_rms / wet_rms)
        return reverberant.astype(np.float32)


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
