"""The cheap waveform augmentations on a whole batch, on the training device.

With ``augment.batch_on_device``, band-pass, low-pass, white and coloured noise at an SNR and
gain leave the loader workers (``augment.py``, audiomentations, one clip at a time) and run here
on the batch of crops after it reaches the GPU; reverb and background noise stay in the workers,
as do the crop reads of the int16 cache. Use it when the loader is the limit
(``bench/gpu_check.py`` reports ``data_wait_share``).

Each transform draws its parameters per clip from the same distributions as the audiomentations
transform it replaces (0.43, read for names and conventions; no code taken):

- ``BandPassFilter`` / ``LowPassFilter``: Butterworth magnitude responses, centre or cut-off
  frequency uniform on the mel scale (``2595 log10(1 + f / 700)``), roll-off 12, 18 or 24 dB
  per octave (order 2-4), band width a uniform fraction of the centre frequency. Applied as a
  zero-phase gain on the spectrum (``rfft`` of the crop) instead of a causal IIR filter: the
  same magnitude, without the phase shift;
- ``AddGaussianSNR``: noise of standard deviation ``rms / 10^(snr / 20)``, SNR uniform in dB;
- ``AddColorNoise``: noise whose power changes by ``f_decay`` dB per octave (uniform in
  -6..6), scaled to the drawn SNR;
- ``Gain``: a factor ``10^(gain_db / 20)``, gain uniform in dB.

The order is the loader chain's (band-pass, low-pass, noise, coloured noise, gain), and each
transform's SNR is measured on the signal it receives, as audiomentations does. Draws come from
one ``torch.Generator`` per epoch (seeded by the training loop), so a run is reproducible on one
device (CPU and CUDA draw different numbers).

Example
-------
>>> from src.config import AugmentConfig
>>> augment = BatchAugment(AugmentConfig(), sample_rate=16000)
>>> augment(torch.zeros(4, 16000), torch.Generator().manual_seed(0)).shape
torch.Size([4, 16000])
"""

from __future__ import annotations

import math

import torch

from src.config import AugmentConfig

ROLLOFF_ORDERS = (2, 3, 4)  # 12, 18, 24 dB/octave: audiomentations' default roll-off range


def hz_to_mel(hz: float | torch.Tensor) -> float | torch.Tensor:
    """O'Shaughnessy's mel scale (the one audiomentations draws frequencies on)."""
    if isinstance(hz, torch.Tensor):
        return 2595.0 * torch.log10(1.0 + hz / 700.0)
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (torch.pow(10.0, mel / 2595.0) - 1.0)


class BatchAugment:
    """Waveforms ``(batch, samples)`` -> augmented waveforms of the same shape, on their device.

    Parameters
    ----------
    cfg : AugmentConfig
        Probabilities and ranges (``bandpass_p``, ``lowpass_p``, ``noise_p``, ``noise_snr_db``,
        ``colored_noise_p``, ``gain_p``, ``gain_db``), shared with the loader chain.
    sample_rate : int
        Sample rate of the waveforms (Hz).
    """

    def __init__(self, cfg: AugmentConfig, sample_rate: int) -> None:
        self.cfg, self.sample_rate = cfg, sample_rate
        nyquist = sample_rate / 2
        # the loader chain's frequency ranges (augment.py), capped below Nyquist the same way
        self.bandpass_centre = (min(1600.0, 0.4 * nyquist), min(2000.0, 0.5 * nyquist))
        self.bandpass_fraction = (1.4, 1.9)
        self.lowpass_cutoff = (min(2000.0, 0.5 * nyquist), min(6000.0, 0.9 * nyquist))

    def __call__(self, waves: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if waves.ndim != 2:
            raise ValueError(f"expected waveforms (batch, samples), got shape {tuple(waves.shape)}")
        waves = waves.float()
        draw = Draws(waves.shape[0], waves.device, generator)
        cfg = self.cfg
        response = self.band_limits(draw, waves.shape[1])  # (batch, bins) or None
        if response is not None:
            spectrum = torch.fft.rfft(waves, dim=1)  # (batch, bins)
            waves = torch.fft.irfft(spectrum * response, n=waves.shape[1], dim=1)
        low, high = cfg.noise_snr_db
        on = draw.chance(cfg.noise_p)
        if bool(on.any()):
            noise = draw.normal(waves.shape)
            waves = waves + on[:, None] * noise * noise_scale(waves, draw.uniform(low, high))
        on = draw.chance(cfg.colored_noise_p)
        if bool(on.any()):
            noise = self.coloured_noise(draw, waves.shape)
            waves = waves + on[:, None] * noise * noise_scale(waves, draw.uniform(low, high))
        on = draw.chance(cfg.gain_p)
        gain_db = torch.where(on, draw.uniform(*cfg.gain_db), torch.zeros_like(on, dtype=float))
        waves = waves * torch.pow(10.0, gain_db / 20.0).to(waves.dtype)[:, None]
        return torch.nan_to_num(waves, nan=0.0, posinf=0.0, neginf=0.0)

    def band_limits(self, draw: Draws, n_samples: int) -> torch.Tensor | None:
        """Product of the drawn band-pass and low-pass magnitude responses, ``(batch, bins)``
        (1 where a clip gets neither), or None when no clip gets one."""
        freqs = torch.fft.rfftfreq(n_samples, 1.0 / self.sample_rate).to(draw.device)  # (bins,)
        freqs = freqs.to(torch.float64)
        bandpass, lowpass = draw.chance(self.cfg.bandpass_p), draw.chance(self.cfg.lowpass_p)
        centre = mel_to_hz(draw.uniform(*(hz_to_mel(f) for f in self.bandpass_centre)))
        width = centre * draw.uniform(*self.bandpass_fraction)
        low_edge, high_edge = centre - width / 2, (centre + width / 2).clamp(max=freqs[-1] * 0.9999)
        band_order = draw.order()
        cutoff = mel_to_hz(draw.uniform(*(hz_to_mel(f) for f in self.lowpass_cutoff)))
        low_order = draw.order()
        if not bool(bandpass.any() or lowpass.any()):
            return None
        band = butterworth_lowpass(freqs, high_edge, band_order) * butterworth_highpass(
            freqs, low_edge, band_order
        )
        low = butterworth_lowpass(freqs, cutoff, low_order)
        ones = torch.ones_like(band)
        response = torch.where(bandpass[:, None], band, ones) * torch.where(
            lowpass[:, None], low, ones
        )
        return response.to(torch.float32)

    def coloured_noise(self, draw: Draws, shape: torch.Size) -> torch.Tensor:
        """Unit-RMS noise whose power changes by ``f_decay`` dB per octave (per clip)."""
        decay = draw.uniform(-6.0, 6.0)  # dB/octave, AddColorNoise's default range
        spectrum = torch.fft.rfft(draw.normal(shape), dim=1)  # (batch, bins)
        freqs = torch.fft.rfftfreq(shape[1], 1.0 / self.sample_rate).to(draw.device)
        freqs = freqs.to(torch.float64).clamp(min=freqs[1].item() if len(freqs) > 1 else 1.0)
        # power ~ f^(decay / (10 log10 2)), so amplitude ~ f^(decay / (20 log10 2))
        exponent = decay / (20.0 * math.log10(2.0))
        amplitude = torch.pow(freqs[None, :], exponent[:, None]).to(torch.float32)
        noise = torch.fft.irfft(spectrum * amplitude, n=shape[1], dim=1)
        return noise / rms(noise).clamp(min=1e-12)[:, None]


class Draws:
    """Per-clip random draws from one generator on the batch's device."""

    def __init__(self, size: int, device: torch.device, generator: torch.Generator | None) -> None:
        self.size, self.device, self.generator = size, device, generator

    def uniform(self, low: float, high: float) -> torch.Tensor:
        """``(batch,)`` float64 uniform in ``[low, high)``."""
        u = torch.rand(self.size, generator=self.generator, device=self.device, dtype=float)
        return low + (high - low) * u

    def chance(self, p: float) -> torch.Tensor:
        """``(batch,)`` bool, each True with probability ``p``."""
        return torch.rand(self.size, generator=self.generator, device=self.device) < p

    def order(self) -> torch.Tensor:
        """``(batch,)`` Butterworth order drawn from :data:`ROLLOFF_ORDERS`."""
        low, high = ROLLOFF_ORDERS[0], ROLLOFF_ORDERS[-1] + 1
        draw = torch.randint(low, high, (self.size,), generator=self.generator, device=self.device)
        return draw.to(torch.float64)

    def normal(self, shape: torch.Size) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, device=self.device)


def butterworth_lowpass(freqs: torch.Tensor, cutoff: torch.Tensor, order: torch.Tensor):
    """``|H(f)| = 1 / sqrt(1 + (f / fc)^(2n))``: ``(bins,)``, ``(batch,)`` -> ``(batch, bins)``."""
    ratio = freqs[None, :] / cutoff[:, None]
    return torch.rsqrt(1.0 + torch.pow(ratio, 2.0 * order[:, None]))


def butterworth_highpass(freqs: torch.Tensor, cutoff: torch.Tensor, order: torch.Tensor):
    """``|H(f)| = 1 / sqrt(1 + (fc / f)^(2n))`` (0 at DC)."""
    ratio = cutoff[:, None] / freqs[None, :].clamp(min=1e-6)
    return torch.rsqrt(1.0 + torch.pow(ratio, 2.0 * order[:, None]))


def rms(waves: torch.Tensor) -> torch.Tensor:
    """Root mean square per row, ``(batch, samples)`` -> ``(batch,)``."""
    return torch.sqrt(torch.mean(waves.float() ** 2, dim=1))


def noise_scale(waves: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
    """Noise RMS for ``snr_db`` over each clip's RMS (amplitude SNR), ``(batch, 1)``."""
    return (rms(waves) / torch.pow(10.0, snr_db / 20.0).to(waves.dtype))[:, None]
