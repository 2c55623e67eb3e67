"""Log-mel front-end, SpecAugment and waveform augmentation."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch

from src.config import AugmentConfig, FeaturesConfig, SpecAugmentConfig
from src.features.augment import SimulatedReverb, build_waveform_augment
from src.features.logmel import LogMel, SpecAugment, hz_to_mel, mel_filterbank, mel_to_hz

SAMPLE_RATE = 16000


def tone(seconds: float, hz: float = 440.0, batch: int = 1) -> torch.Tensor:
    time = torch.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * torch.sin(2 * torch.pi * hz * time)).repeat(batch, 1)  # (batch, samples)


def test_logmel_shape_and_frames() -> None:
    logmel = LogMel(FeaturesConfig(), SAMPLE_RATE)
    out = logmel(tone(2.0, batch=3))
    assert out.shape == (3, 80, 201)
    assert logmel.num_frames(32000) == 201
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_logmel_is_mean_normalised_over_time() -> None:
    out = LogMel(FeaturesConfig(), SAMPLE_RATE)(torch.randn(2, 16000))
    assert torch.allclose(out.mean(dim=-1), torch.zeros(2, 80), atol=1e-4)


def test_logmel_gain_invariant_and_tone_lands_in_its_band() -> None:
    cfg = FeaturesConfig(preemphasis=0.0)
    logmel = LogMel(cfg, SAMPLE_RATE)
    # a gain is a constant in the log domain, removed by the mean normalisation
    noise = torch.randn(1, 16000, generator=torch.Generator().manual_seed(0)) * 0.1
    assert torch.allclose(logmel(noise), logmel(noise * 10), atol=0.02)  # log(10) = 2.3
    spectrum = torch.stft(tone(1.0), 512, 160, 400, logmel.window, return_complex=True)
    energies = torch.matmul(logmel.filters, spectrum.abs().square()).mean(dim=-1)  # (1, mels)
    mel_points = np.linspace(hz_to_mel(cfg.fmin), hz_to_mel(cfg.fmax), cfg.n_mels + 2)
    centres_hz = mel_to_hz(mel_points)[1:-1]
    assert abs(centres_hz[int(energies.argmax())] - 440.0) < 30.0


def test_logmel_short_input_and_batch_independence() -> None:
    logmel = LogMel(FeaturesConfig(), SAMPLE_RATE)
    assert logmel(torch.randn(1, 100)).shape == (1, 80, 1)
    batch = torch.randn(3, 8000)
    assert torch.allclose(logmel(batch)[1], logmel(batch[1:2])[0], atol=1e-5)


def test_logmel_runs_float32_under_autocast() -> None:
    logmel = LogMel(FeaturesConfig(), SAMPLE_RATE)
    wave = torch.randn(2, 8000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = logmel(wave.bfloat16())
    assert out.dtype == torch.float32
    assert torch.allclose(out, logmel(wave.bfloat16().float()), atol=1e-4)


def test_logmel_rejects_bad_input_and_config() -> None:
    with pytest.raises(ValueError, match="batch, samples"):
        LogMel(FeaturesConfig(), SAMPLE_RATE)(torch.zeros(16000))
    with pytest.raises(ValueError, match="fmax"):
        LogMel(FeaturesConfig(fmax=9000.0), SAMPLE_RATE)


def test_filterbank_has_no_empty_band() -> None:
    filters = mel_filterbank(80, 512, SAMPLE_RATE, 20.0, 7600.0)
    assert filters.shape == (80, 257)
    assert (filters.max(axis=1) > 0).all() and (filters >= 0).all()


def test_specaugment_only_in_training_and_seeded() -> None:
    specaugment = SpecAugment(SpecAugmentConfig(freq_masks=2, freq_width=8, time_masks=2))
    features = torch.randn(4, 80, 200) + 5.0  # no natural zeros
    assert torch.equal(specaugment.eval()(features), features)
    specaugment.train()
    torch.manual_seed(3)
    first = specaugment(features)
    torch.manual_seed(3)
    again = specaugment(features)
    assert torch.equal(first, again)
    masked = first == 0
    assert masked.any() and (first[~masked] == features[~masked]).all()
    # masks are drawn per example
    assert not all(torch.equal(masked[0], masked[i]) for i in range(1, 4))
    # whole bands and whole frames: a masked band is masked at every frame
    band_masked = masked.all(dim=2)  # (batch, mels)
    frame_masked = masked.all(dim=1)  # (batch, frames)
    assert torch.equal(masked, band_masked[:, :, None] | frame_masked[:, None, :])
    assert int(band_masked.sum(dim=1).max()) <= 16 and int(frame_masked.sum(dim=1).max()) <= 20


def seeded(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)


def test_augment_none_when_disabled() -> None:
    assert build_waveform_augment(AugmentConfig(enabled=False), SAMPLE_RATE) is None


@pytest.mark.parametrize("length", [16000, 1234])
def test_augment_keeps_length_dtype_and_finiteness(length: int) -> None:
    cfg = AugmentConfig(
        noise_p=1.0, colored_noise_p=1.0, gain_p=1.0, bandpass_p=1.0, lowpass_p=1.0, reverb_p=1.0
    )
    augment = build_waveform_augment(cfg, SAMPLE_RATE)
    seeded(0)
    wave = tone(length / SAMPLE_RATE)[0].numpy().astype(np.float64)
    for samples in (wave, np.zeros(length)):
        out = augment(samples)
        assert out.shape == (length,) and out.dtype == np.float32 and np.isfinite(out).all()
    assert not np.allclose(augment(wave), wave)


def test_augment_repeats_under_the_same_seed_and_pickles() -> None:
    augment = build_waveform_augment(AugmentConfig(reverb_p=0.5, noise_p=0.5), SAMPLE_RATE)
    wave = np.random.default_rng(1).standard_normal(16000).astype(np.float32) * 0.1
    seeded(7)
    first = [augment(wave) for _ in range(4)]
    seeded(7)
    again = [pickle.loads(pickle.dumps(augment))(wave) for _ in range(4)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))


def test_simulated_reverb_keeps_level_and_spreads_energy() -> None:
    reverb = SimulatedReverb(min_rt60=0.5, max_rt60=0.5, min_drr_db=0.0, max_drr_db=0.0, p=1.0)
    seeded(0)
    click = np.zeros(16000, dtype=np.float32)
    click[100] = 1.0
    out = reverb(click, SAMPLE_RATE)
    assert out.shape == click.shape
    assert np.isclose(np.sqrt(np.mean(out**2)), np.sqrt(np.mean(click**2)), rtol=1e-3)
    assert np.abs(out[4000:]).max() > 0  # a tail 250 ms after the click


def test_augment_checks_folders(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="background_dir"):
        build_waveform_augment(AugmentConfig(background_dir=tmp_path / "none"), SAMPLE_RATE)


def test_a_clip_under_two_tenths_keeps_every_sample_in_its_window() -> None:
    """A 0.15 s clip is embedded from all 2,400 samples (rounding down to 0.1 s dropped a third);
    longer clips still round down to a multiple of 0.1 s so similar lengths share a batch."""
    from src.config import EmbedConfig
    from src.inference.windows import clip_windows

    for mode in ("full", "windows"):
        cfg = EmbedConfig(mode=mode, window_seconds=1.0, hop_seconds=0.5)
        assert [(w.start, w.length) for w in clip_windows(2400, cfg, 16000)] == [(0, 2400)]
        assert [w.length for w in clip_windows(5000, cfg, 16000)] == [4800]
