"""Audio decoding: any format soundfile reads, mixed to mono, resampled to one rate, checked.

Every problem with a file becomes an :class:`AudioError` whose message says what is wrong, so the
caller can log a skip or stop with a message that names the file.

Example
-------
>>> clip = decode_audio("a.wav", target_rate=16000)  # doctest: +SKIP
>>> clip.samples.dtype, clip.samples.ndim  # doctest: +SKIP
(dtype('float32'), 1)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SUPPORTED_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")


class AudioError(ValueError):
    """A file that cannot be used as audio, with the reason in the message."""


@dataclass(frozen=True)
class DecodedClip:
    """A decoded clip: mono float32 samples at ``rate`` plus facts about the source file."""

    samples: np.ndarray  # (samples,) float32 in [-1, 1]
    rate: int
    source_rate: int
    source_channels: int
    source_frames: int
    rms_dbfs: float
    peak: float
    snr_db: float
    truncated: bool

    @property
    def duration(self) -> float:
        return self.samples.size / self.rate


def file_md5(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def rms_dbfs(samples: np.ndarray) -> float:
    """Root-mean-square level in dB relative to full scale (-inf for digital silence)."""
    if samples.size == 0:
        return float("-inf")
    # float64 accumulation without a float64 copy of the clip (einsum buffers in small blocks)
    power = float(np.einsum("i,i->", samples, samples, dtype=np.float64)) / samples.size
    return 10.0 * np.log10(power) if power > 0 else float("-inf")


def estimate_snr_db(samples: np.ndarray, rate: int, frame_seconds: float = 0.025) -> float:
    """Rough SNR: loud-frame energy (90th percentile) over quiet-frame energy (10th)."""
    frame = max(1, int(rate * frame_seconds))
    n_frames = samples.size // frame
    if n_frames < 4:
        return 0.0
    frames = samples[: n_frames * frame].reshape(n_frames, frame)
    energy = np.einsum("ij,ij->i", frames, frames) / frame  # no squared copy of the clip
    loud, quiet = np.percentile(energy, [90, 10])
    return float(10.0 * np.log10((loud + 1e-12) / (quiet + 1e-12)))


def resample(samples: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """High-quality resampling with soxr (a no-op when the rates match)."""
    if source_rate == target_rate:
        return samples.astype(np.float32, copy=False)
    resampled = soxr.resample(samples, source_rate, target_rate, quality="HQ")
    return resampled.astype(np.float32, copy=False)


def read_mono(
    path: str | Path, max_seconds: float | None = None
) -> tuple[np.ndarray, sf._SoundFileInfo, bool]:
    """Read a file with soundfile and mix it down to mono float32.

    Returns ``(samples, info, truncated)``; raises AudioError for unreadable or empty files.
    """
    path = Path(path)
    if path.suffix.lower() not in SUPPORTED_EXTENSIONS:
        raise AudioError(
            f"unsupported extension {path.suffix or '(none)'!r}; expected one of "
            f"{', '.join(SUPPORTED_EXTENSIONS)}"
        )
    if not path.is_file():
        raise AudioError("file not found")
    if path.stat().st_size == 0:
        raise AudioError("empty file (0 bytes)")
    try:
        info = sf.info(str(path))
        stop = None
        if max_seconds is not None and info.frames > max_seconds * info.samplerate:
            stop = int(max_seconds * info.samplerate)
        data, _ = sf.read(str(path), dtype="float32", always_2d=True, stop=stop)
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        raise AudioError(f"corrupt or unreadable audio: {err}") from None
    if data.shape[0] == 0:
        raise AudioError("zero-length audio (no samples)")
    # one channel: a view, not a copy (a long clip is held once, not twice)
    mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    return mono, info, stop is not None


def validated_resample(
    mono: np.ndarray, source_rate: int, target_rate: int, min_seconds: float
) -> np.ndarray:
    """Refuse non-finite or too short audio, resample it and clip it to [-1, 1].

    The checks every decoding path shares (files in ``prepare``, uploads in ``serve``). At the
    target rate already, ``mono`` itself is clipped in place and returned (no copy).
    """
    if not np.isfinite(mono).all():
        raise AudioError("audio contains NaN or infinite samples")
    duration = mono.size / source_rate
    if duration < min_seconds:
        raise AudioError(f"too short: {duration:.3f} s < {min_seconds:g} s")
    samples = resample(mono, source_rate, target_rate)
    np.clip(samples, -1.0, 1.0, out=samples)
    return samples


def decode_audio(
    path: str | Path,
    target_rate: int = 16000,
    min_seconds: float = 0.1,
    max_seconds: float | None = None,
    silence_dbfs: float | None = -70.0,
) -> DecodedClip:
    """Decode, mix to mono, resample and validate one file.

    Raises AudioError for unsupported, corrupt, empty, too short, non-finite or silent audio
    (RMS below ``silence_dbfs``; ``None`` turns that check off).
    Clips longer than ``max_seconds`` are truncated (``truncated`` is set).
    """
    mono, info, truncated = read_mono(path, max_seconds)
    clip = describe_clip(
        mono, int(info.samplerate), int(info.channels), int(info.frames), target_rate,
        min_seconds, truncated,
    )  # fmt: skip
    if silence_dbfs is not None and clip.rms_dbfs < silence_dbfs:
        raise AudioError(f"silent: RMS {clip.rms_dbfs:.1f} dBFS below {silence_dbfs} dBFS")
    return clip


def describe_clip(
    mono: np.ndarray,
    source_rate: int,
    source_channels: int,
    source_frames: int,
    target_rate: int,
    min_seconds: float,
    truncated: bool = False,
) -> DecodedClip:
    """Validate and resample decoded mono samples and measure them (files and uploads alike)."""
    samples = validated_resample(mono, source_rate, target_rate, min_seconds)
    return DecodedClip(
        samples=samples,
        rate=target_rate,
        source_rate=source_rate,
        source_channels=source_channels,
        source_frames=source_frames,
        rms_dbfs=rms_dbfs(samples),
        peak=float(np.abs(samples).max()),
        snr_db=estimate_snr_db(samples, target_rate),
        truncated=truncated,
    )


def clip_facts(clip: DecodedClip, n_bytes: int) -> dict[str, float | int | bool]:
    """What the manifest records about a decoded file, rounded as it is stored there; the served
    bundle's metadata features come from here too, so they equal the pipeline's."""
    return {
        "duration": round(clip.duration, 4),
        "sample_rate": clip.source_rate,
        "channels": clip.source_channels,
        "frames": clip.source_frames,
        "bytes": n_bytes,
        "rms_dbfs": round(clip.rms_dbfs, 2),
        "peak": round(clip.peak, 4),
        "snr_db": round(clip.snr_db, 2),
        "truncated": clip.truncated,
    }


def peak_normalise(samples: np.ndarray, peak: float = 0.95) -> np.ndarray:
    """Scale a clip so its largest magnitude is ``peak`` (digital silence is left as it is)."""
    largest = float(np.abs(samples).max()) if samples.size else 0.0
    if largest <= 0.0:
        return samples
    return (samples * (peak / largest)).astype(np.float32, copy=False)


def to_int16(samples: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] to int16 for the cache."""
    scaled = np.clip(samples, -1.0, 1.0)
    scaled *= 32767.0  # in place: one float temporary for a long clip, not three
    np.rint(scaled, out=scaled)
    return scaled.astype(np.int16)


def from_int16(samples: np.ndarray) -> np.ndarray:
    """int16 cache samples back to float32 in [-1, 1]."""
    out = samples.astype(np.float32)
    out /= 32767.0  # in place: no second float copy of a long clip
    return out
