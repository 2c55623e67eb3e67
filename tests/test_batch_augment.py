"""The whole-batch augmentation draws what the per-clip audiomentations chain draws.

Each transform is run alone (its probability 1, the others 0) on the same clips by both
versions; the per-clip statistic it controls (gain in dB, SNR in dB, the share of energy a
filter removes) must come from the same distribution: a two-sample Kolmogorov-Smirnov test at
p > 0.001 (fixed seeds, so the test is deterministic), and the means within a stated margin.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from audiomentations import AddColorNoise, AddGaussianSNR, BandPassFilter, Gain, LowPassFilter
from scipy.stats import ks_2samp

from src.config import AugmentConfig
from src.features.augment import build_batch_augment, build_waveform_augment
from src.features.batch_augment import BatchAugment

RATE = 16000
CLIPS = 300
ALL_OFF = {"noise_p": 0, "colored_noise_p": 0, "gain_p": 0, "bandpass_p": 0, "lowpass_p": 0}


def clips(seed: int = 0, samples: int = 8000) -> np.ndarray:
    """White-noise clips of varied level, float32 ``(clips, samples)``."""
    rng = np.random.default_rng(seed)
    level = 10 ** rng.uniform(-2, -0.5, size=(CLIPS, 1))
    return (level * rng.standard_normal((CLIPS, samples))).astype(np.float32)


def per_clip(transform, waves: np.ndarray) -> np.ndarray:
    random.seed(1)
    np.random.seed(1)
    return np.stack([transform(w, sample_rate=RATE) for w in waves])


def on_batch(only: dict, waves: np.ndarray) -> np.ndarray:
    cfg = AugmentConfig(**(ALL_OFF | only))
    out = BatchAugment(cfg, RATE)(torch.from_numpy(waves), torch.Generator().manual_seed(2))
    return out.numpy()


def gain_db(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return 20 * np.log10(np.abs(after).mean(1) / np.abs(before).mean(1))


def snr_db(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    noise = after - before
    return 10 * np.log10((before**2).mean(1) / (noise**2).mean(1))


def removed_share(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return 1 - (after.astype(np.float64) ** 2).sum(1) / (before.astype(np.float64) ** 2).sum(1)


def same_distribution(ours: np.ndarray, theirs: np.ndarray, mean_margin: float) -> None:
    assert ks_2samp(ours, theirs).pvalue > 0.001, (ours.mean(), theirs.mean())
    assert abs(ours.mean() - theirs.mean()) < mean_margin


@pytest.mark.parametrize(
    ("only", "theirs", "statistic", "margin"),
    [
        ({"gain_p": 1.0}, Gain(min_gain_db=-12, max_gain_db=12, p=1.0), gain_db, 1.0),
        ({"noise_p": 1.0}, AddGaussianSNR(min_snr_db=5, max_snr_db=30, p=1.0), snr_db, 1.0),
        ({"colored_noise_p": 1.0}, AddColorNoise(min_snr_db=5, max_snr_db=30, p=1.0), snr_db, 1.0),
        (
            {"lowpass_p": 1.0},
            LowPassFilter(min_cutoff_freq=2000, max_cutoff_freq=6000, p=1.0),
            removed_share,
            0.03,
        ),
        (
            {"bandpass_p": 1.0},
            BandPassFilter(
                min_center_freq=1600,
                max_center_freq=2000,
                min_bandwidth_fraction=1.4,
                max_bandwidth_fraction=1.9,
                p=1.0,
            ),
            removed_share,
            0.03,
        ),
    ],
    ids=["gain", "white-noise", "coloured-noise", "low-pass", "band-pass"],
)
def test_batch_transform_matches_per_clip_distribution(only, theirs, statistic, margin) -> None:
    waves = clips()
    same_distribution(
        statistic(waves, on_batch(only, waves)), statistic(waves, per_clip(theirs, waves)), margin
    )


def test_probabilities_and_shapes() -> None:
    """Each clip is changed with the configured probability; length, dtype, finiteness hold."""
    waves = clips(3)
    out = on_batch({"gain_p": 0.3}, waves)
    changed = ~np.all(np.isclose(out, waves), axis=1)
    assert out.shape == waves.shape and out.dtype == np.float32 and np.isfinite(out).all()
    assert abs(changed.mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / CLIPS)
    np.testing.assert_array_equal(on_batch({}, waves), waves)  # every p at 0: untouched


def test_reproducible_by_generator_and_silence_stays_finite() -> None:
    cfg = AugmentConfig()
    augment = BatchAugment(cfg, RATE)
    waves = torch.zeros(6, 4000)  # silence: an SNR relative to zero RMS adds nothing
    out = augment(waves, torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all() and torch.equal(out, torch.zeros_like(out))
    waves = torch.from_numpy(clips(4)[:6])
    first = augment(waves, torch.Generator().manual_seed(5))
    assert torch.equal(first, augment(waves, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, augment(waves, torch.Generator().manual_seed(6)))


def test_loader_chain_keeps_only_reverb_and_background_when_batch_on_device() -> None:
    cfg = AugmentConfig(batch_on_device=True)
    names = [type(t).__name__ for t in build_waveform_augment(cfg, RATE).chain.transforms]
    assert names == ["SimulatedReverb"]
    assert build_batch_augment(cfg, RATE) is not None
    assert build_batch_augment(AugmentConfig(), RATE) is None
    full = [
        type(t).__name__ for t in build_waveform_augment(AugmentConfig(), RATE).chain.transforms
    ]
    assert "Gain" in full and "LowPassFilter" in full
