"""Simulated room reverberation as an audiomentations transform (see ``augment.py``).

Kept apart from ``augment.py`` so that importing the training code does not import
audiomentations: only building an augmentation chain does.
"""

from __future__ import annotations

import random

import numpy as np
from audiomentations.core.transforms_interface import BaseWaveformTransform
from scipy.signal import fftconvolve


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
