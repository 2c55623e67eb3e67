"""Audio decoding: any format soundfile reads, conditioned, mixed to mono, resampled, checked.

Every problem with a file becomes an :class:`AudioError` whose message says what is wrong, so the
caller can log a skip or stop with a message that names the file.

Signal conditioning happens once, here, for every path (``prepare``, the API's uploads,
``pretrain``, which prepares its corpus the same way), so that how a voice was recorded does not
change the samples a model sees:

1. each channel's DC offset (its mean) is removed, before anything measures or normalises the
   clip: a constant offset from a cheap microphone gives the same samples as none, and peak
   normalisation no longer counts the offset as signal;
2. the channels are mixed down in a way that keeps the speech (:func:`downmix`): a channel far
   quieter than the loudest is left out, and when averaging would cancel the speech (channels in
   opposite phase) the loudest channel is used alone; the choice is recorded in words;
3. no sample is clipped at decode time: a float file louder than full scale keeps its waveform
   (every cache path peak-normalises it).

The offset removed, the downmix, the share of clipped (saturated) samples, the effective
resolution of the samples (:func:`effective_bits`: an 8-bit file, or a quiet one using few of
its file's levels) and the seconds of active speech are facts of the clip (:func:`clip_facts`:
the manifest's columns and the served bundle's per-upload facts), from which
:func:`recording_warnings` says when a clip is outside the range the model was built for.

Example
-------
>>> clip = decode_audio("a.wav", target_rate=16000)  # doctest: +SKIP
>>> clip.samples.dtype, clip.samples.ndim  # doctest: +SKIP
(dtype('float32'), 1)
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SUPPORTED_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
# part of prepare's fingerprint: bump it when decoding gives other samples from the same file
# (2: DC removal per channel, a downmix that keeps the speech, no clipping at decode time)
DECODE_VERSION = 2
SILENT_CHANNEL_DB = 40.0  # defaults of data.downmix_silent_db and data.downmix_cancel_db
CANCEL_DB = 6.0
GRID_BITS = 24  # the finest integer coding a float32 sample holds exactly (its 24-bit mantissa)
GRID_SCALE = np.float32(2 ** (GRID_BITS - 1))  # full scale 1.0 in steps of that grid
STREAM_CHUNK = 1 << 20  # samples per block of effective_bits: bounded memory on long clips
GCD_CHUNK = 4096  # samples per np.gcd.reduce: a full-resolution clip stops after the first


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
    dc_offset: float = 0.0  # the mean removed from the used channel(s), full scale = 1
    downmix: str = ""  # how the channels were mixed ("" for a mono file)
    clipped_share: float = 0.0  # share of samples saturated at the clip's peak (flat tops)
    speech_seconds: float = 0.0  # seconds of 25 ms frames within 30 dB of the loud ones
    effective_bits: float = math.nan  # log2 of the levels the samples span (NaN: not on a grid)

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


def read_channels(
    path: str | Path, max_seconds: float | None = None
) -> tuple[np.ndarray, sf._SoundFileInfo, bool]:
    """Read a file with soundfile as float32 ``(frames, channels)``.

    Returns ``(data, info, truncated)``; raises AudioError for unreadable or empty files.
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
    return data, info, stop is not None


def channel_rms(column: np.ndarray) -> float:
    """Root-mean-square of one channel (float64 accumulation, no copy)."""
    if column.size == 0:
        return 0.0
    return float(np.sqrt(np.einsum("i,i->", column, column, dtype=np.float64) / column.size))


def remove_dc(data: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Each channel of ``(frames, channels)`` as a contiguous float32 array without its mean.

    Every channel takes the same path (a contiguous copy, a float64 mean, a float32
    subtraction), so a channel gives the same samples whether it came alone (a mono file) or
    beside others. Returns ``(channels, offsets)``; ``offsets`` has shape ``(channels,)``.

    >>> cols, offsets = remove_dc(np.array([[0.1, 0.5], [0.3, 0.5]], dtype=np.float32))
    >>> offsets.round(3).tolist(), [[round(float(x), 3) for x in c] for c in cols]
    ([0.2, 0.5], [[-0.1, 0.1], [0.0, 0.0]])
    """
    columns, offsets = [], []
    for index in range(data.shape[1]):
        column = np.ascontiguousarray(data[:, index], dtype=np.float32)
        offset = np.float32(column.mean(dtype=np.float64))
        columns.append(column - offset)
        offsets.append(float(offset))
    return columns, np.asarray(offsets, dtype=np.float64)


def downmix(
    columns: list[np.ndarray],
    silent_db: float = SILENT_CHANNEL_DB,
    cancel_db: float = CANCEL_DB,
) -> tuple[np.ndarray, list[int], str]:
    """Mix DC-free channels to mono, keeping the speech; returns ``(mono, used, how)``.

    A channel more than ``silent_db`` below the loudest is left out (a dead or muted second
    microphone). The kept channels are averaged, unless the average is more than ``cancel_db``
    below what uncorrelated channels of their levels would give (``sqrt(sum rms^2) / n``): then
    the channels cancel (opposite phase, as a miswired balanced cable gives) and the loudest is
    used alone. ``used`` lists 0-based channel numbers; ``how`` says it in words with 1-based
    channel numbers ("" for mono, "mean of 2 channels", "channel 1: channel 2 silent", ...).
    A single channel is returned as it is, with no copy.
    """
    if len(columns) == 1:
        return columns[0], [0], ""
    levels = np.array([channel_rms(c) for c in columns])
    loudest = int(np.argmax(levels))  # the first on ties
    if levels[loudest] <= 0.0:  # every channel silent: the silence check says so
        return columns[0], [0], f"channel 1: all {len(columns)} channels silent"
    floor = levels[loudest] * 10.0 ** (-silent_db / 20.0)
    kept = [i for i, level in enumerate(levels) if level >= floor]
    silent = [i for i in range(len(columns)) if i not in kept]
    if len(kept) == 1:
        names = ", ".join(str(i + 1) for i in silent)
        gap = _db(levels[silent].max() / levels[loudest])
        level = "no signal" if gap == float("-inf") else f"{-gap:.0f} dB below"
        return (
            columns[loudest],
            [loudest],
            f"channel {loudest + 1}: channel {names} silent ({level})",
        )
    mono = np.mean(np.stack([columns[i] for i in kept], axis=1), axis=1, dtype=np.float32)
    expected = float(np.sqrt(np.sum(levels[kept] ** 2))) / len(kept)
    loss = -_db(channel_rms(mono) / expected)
    if loss > cancel_db:
        level = "silent" if loss == float("inf") else f"{loss:.0f} dB below their level"
        return (
            columns[loudest],
            [loudest],
            (
                f"channel {loudest + 1}: the channels cancel when averaged (opposite phase: "
                f"their mean is {level})"
            ),
        )
    dropped = f", channel {', '.join(str(i + 1) for i in silent)} silent" if silent else ""
    return mono, kept, f"mean of {len(kept)} channels{dropped}"


def _db(ratio: float) -> float:
    """An amplitude ratio in dB (-inf for 0)."""
    return 20.0 * np.log10(ratio) if ratio > 0 else float("-inf")


def clipped_share(column: np.ndarray, tolerance: float = 1e-3) -> float:
    """Share of samples saturated at the clip's peak: within ``tolerance`` of the largest
    magnitude and equal to the previous sample (a flat top). Scale-free, so a float file louder
    than full scale is not "clipped", while hard clipping at any level is.

    >>> wave = np.sin(np.linspace(0, 20, 2000)).astype(np.float32)
    >>> clipped_share(wave), round(clipped_share(np.clip(wave, -0.5, 0.5)), 2)
    (0.0, 0.66)
    """
    if column.size < 2:
        return 0.0
    magnitude = np.abs(column)
    peak = float(magnitude.max())
    if peak <= 0.0:
        return 0.0
    flat = (column[1:] == column[:-1]) & (magnitude[1:] >= peak * (1.0 - tolerance))
    return float(np.count_nonzero(flat)) / column.size


def effective_bits(column: np.ndarray) -> float:
    """Effective resolution of one channel as read from its file: log2 of the number of
    quantisation levels its samples span, ``log2((max - min) / step + 1)``.

    The samples are read on the finest grid a float32 sample holds exactly (integer codes of
    :data:`GRID_BITS` = 24 bits), and ``step`` is the greatest common divisor of their distances
    from the smallest one: the grid the file was actually coded on. So the file's subtype is
    taken into account without being named: a ``PCM_U8`` file steps by 2**16 codes and spans at
    most 2**8 levels (8 bits), a ``PCM_16`` file at full scale gives 16 bits, a ``PCM_16`` file
    with peak 0.002 about 7, and 8-bit audio stored in a 16-bit (or float) file is found
    at 8 bits all the same. The span from the lowest to the highest sample makes it
    independent of a DC offset. A channel whose samples are not all on the 24-bit grid has
    samples finer than 24 bits somewhere and no coding step to measure: ``NaN``, not estimated
    (the check skips it). That is a float file with arbitrary values, a ``PCM_32`` file, a lossy
    MP3 or Ogg decoded to float, but also coarse samples scaled by a float gain after they were
    quantised (their distinct values are not counted). A single click or spike widens the
    span, so it can hide otherwise coarse samples.

    Parameters
    ----------
    column
        ``(frames,)`` float samples as decoded (full scale 1.0), before DC removal or
        resampling (both move samples off the file's grid); not modified.

    Returns
    -------
    float
        Effective bits (``0.0`` for a constant channel, ``NaN`` when not on the grid or empty).

    >>> quiet = np.round(0.002 * np.sin(np.arange(8000) / 5.0) * 32768) / 32768
    >>> round(effective_bits(quiet.astype(np.float32)), 2)
    7.06
    >>> effective_bits(np.array([0.1, 0.123456789], dtype=np.float32))
    nan
    """
    if column.size == 0:
        return math.nan
    # block by block: a long clip is never copied whole (prepare holds few copies of a clip)
    low, high = math.inf, -math.inf
    for start in range(0, column.size, STREAM_CHUNK):
        codes = column[start : start + STREAM_CHUNK] * GRID_SCALE  # a power of two: exact
        if not np.array_equal(codes, np.rint(codes)):
            return math.nan
        low, high = min(low, float(codes.min())), max(high, float(codes.max()))
    span = int(high - low)
    if span == 0:
        return 0.0
    bits, step = 0, 0
    for start in range(0, column.size, STREAM_CHUNK):
        offsets = (column[start : start + STREAM_CHUNK] * GRID_SCALE - low).astype(np.int64)
        bits |= int(np.bitwise_or.reduce(offsets))
    floor = bits & -bits  # the power-of-two part of the gcd
    for start in range(0, column.size, STREAM_CHUNK):
        offsets = (column[start : start + STREAM_CHUNK] * GRID_SCALE - low).astype(np.int64)
        step = coding_step(offsets, step, floor)
        if step == floor:
            break
    return math.log2(span / step + 1)


def coding_step(offsets: np.ndarray, step: int = 0, floor: int | None = None) -> int:
    """Greatest common divisor of non-negative integer ``offsets`` (``(n,)`` int64, not all
    zero) and ``step`` (a gcd of earlier blocks; 0: none); ``floor``: the power-of-two part of
    the whole clip's gcd, when already known.

    Its power-of-two part is the lowest bit set in any offset (one vectorised OR: 2**8 for a
    16-bit file on the 24-bit grid, 2**16 for an 8-bit one); the rest is reduced
    :data:`GCD_CHUNK` samples at a time, stopping as soon as nothing but that power of two is
    left, which for an ordinary clip is after the first chunk.

    >>> coding_step(np.array([0, 512, 256, 1024], dtype=np.int64))
    256
    >>> coding_step(np.array([0, 768, 1536], dtype=np.int64))
    768
    """
    if floor is None:
        bits = int(np.bitwise_or.reduce(offsets))
        floor = bits & -bits  # the power-of-two part of the gcd
    for start in range(0, offsets.size, GCD_CHUNK):
        step = int(np.gcd.reduce(offsets[start : start + GCD_CHUNK], initial=step))
        if step == floor:
            break
    return step


def channels_bits(table: np.ndarray, used: list[int]) -> float:
    """The best :func:`effective_bits` of the channels ``used`` in the downmix of ``table``
    (``(frames, channels)``); ``NaN`` when none of them is on a coding grid."""
    found = [bits for bits in (effective_bits(table[:, i]) for i in used) if not math.isnan(bits)]
    return max(found) if found else math.nan


def speech_seconds(
    samples: np.ndarray, rate: int, frame_seconds: float = 0.025, range_db: float = 30.0
) -> float:
    """Seconds of active signal: 25 ms frames within ``range_db`` of the loud frames' energy
    (95th percentile). Relative to the clip itself, so a level change does not change it.
    """
    frame = max(1, int(rate * frame_seconds))
    n_frames = samples.size // frame
    if n_frames == 0:
        return 0.0
    frames = samples[: n_frames * frame].reshape(n_frames, frame)
    energy = np.einsum("ij,ij->i", frames, frames, dtype=np.float64) / frame
    loud = float(np.percentile(energy, 95))
    if loud <= 0.0:
        return 0.0
    active = np.count_nonzero(energy >= loud * 10.0 ** (-range_db / 10.0))
    return active * frame / rate


def check_samples(data: np.ndarray, source_rate: int, min_seconds: float) -> None:
    """Refuse non-finite or too short audio (files in ``prepare`` and uploads in ``serve``)."""
    if not np.isfinite(data).all():
        raise AudioError("audio contains NaN or infinite samples")
    duration = data.shape[0] / source_rate
    if duration < min_seconds:
        raise AudioError(f"too short: {duration:.3f} s < {min_seconds:g} s")


def decode_audio(
    path: str | Path,
    target_rate: int = 16000,
    min_seconds: float = 0.1,
    max_seconds: float | None = None,
    silence_dbfs: float | None = -70.0,
    silent_channel_db: float = SILENT_CHANNEL_DB,
    cancel_db: float = CANCEL_DB,
    min_scored_seconds: float | None = None,
) -> DecodedClip:
    """Decode, condition (DC removal, downmix), resample and validate one file.

    Raises AudioError for unsupported, corrupt, empty, too short, non-finite audio, and for a
    clip :func:`unusable_reason` refuses: silent (RMS below ``silence_dbfs`` once the DC offset
    is removed) or shorter than ``min_scored_seconds`` (``None`` turns either
    check off). Clips longer than ``max_seconds`` are truncated (``truncated`` is set).
    """
    data, info, truncated = read_channels(path, max_seconds)
    clip = describe_clip(
        data, int(info.samplerate), int(info.frames), target_rate, min_seconds, truncated,
        silent_channel_db, cancel_db,
    )  # fmt: skip
    reason = unusable_reason(clip, silence_dbfs, min_scored_seconds)
    if reason is not None:
        raise AudioError(reason)
    return clip


def shown_below(value: float, limit: float, decimals: int) -> str:
    """``value`` with at least ``decimals`` decimals and as many more as it takes to read
    below ``limit`` (a message never says "0.20 s (< 0.2 s)").

    >>> shown_below(0.1996, 0.2, 2), shown_below(-80.04, -80.0, 1), shown_below(0.15, 0.2, 2)
    ('0.1996', '-80.04', '0.15')
    """
    for places in range(decimals, decimals + 8):
        text = f"{value:.{places}f}"
        if float(text) < limit:
            return text
    return repr(value)


def unusable_reason(
    clip: DecodedClip, silence_dbfs: float | None, min_scored_seconds: float | None
) -> str | None:
    """Why a clip must not be scored, or ``None`` when it may be: the one rule for ``prepare``
    (a silent train clip is skipped; a silent or too short test file's pairs get the fallback
    answer) and the API (such an upload gets a 422).

    Parameters
    ----------
    clip
        The decoded clip (:func:`describe_clip`): its RMS and peak after DC removal, the offset
        removed and its seconds of active speech (:func:`speech_seconds`), unrounded.
    silence_dbfs
        ``data.silence_dbfs``: a clip with a lower RMS (dBFS) is silent; ``None``: not checked.
    min_scored_seconds
        ``data.min_scored_seconds``: a clip shorter than this (seconds of audio) is too short;
        ``None``: not checked.

    >>> silent = describe_clip(np.zeros(16000, np.float32), 16000, 16000, 16000, 0.1)
    >>> print(unusable_reason(silent, -80.0, 0.2))  # doctest: +NORMALIZE_WHITESPACE
    silent: RMS -inf dBFS, peak 0 (< -80 dBFS, data.silence_dbfs):
    digital silence (every sample is 0)
    >>> tone = np.sin(np.arange(2400, dtype=np.float32) / 4)  # 0.15 s
    >>> unusable_reason(describe_clip(tone, 16000, 2400, 16000, 0.1), -80.0, 0.2)
    'too short: 0.15 s (< 0.2 s, data.min_scored_seconds)'
    """
    rms, peak = clip.rms_dbfs, clip.peak
    if silence_dbfs is not None and rms < silence_dbfs:
        cause = silence_cause(peak, clip.dc_offset)
        return (
            f"silent: RMS {shown_below(rms, silence_dbfs, 1)} dBFS, peak {peak:.2g} "
            f"(< {silence_dbfs:g} dBFS, "
            f"data.silence_dbfs): {cause}"
        )
    seconds = clip.duration
    if min_scored_seconds is not None and seconds < min_scored_seconds:
        shown = shown_below(seconds, min_scored_seconds, 2)
        return f"too short: {shown} s (< {min_scored_seconds:g} s, data.min_scored_seconds)"
    return None


def describe_clip(
    data: np.ndarray,
    source_rate: int,
    source_frames: int,
    target_rate: int,
    min_seconds: float,
    truncated: bool = False,
    silent_channel_db: float = SILENT_CHANNEL_DB,
    cancel_db: float = CANCEL_DB,
) -> DecodedClip:
    """Condition, resample and measure decoded samples (files and uploads alike).

    Parameters
    ----------
    data
        ``(frames,)`` mono or ``(frames, channels)`` float samples at ``source_rate``; not
        modified.
    source_frames
        Frames the file holds (its header's count; more than ``data`` when truncated).

    Raises AudioError for non-finite or too short audio. The DC offset of every channel is
    removed before the downmix (:func:`remove_dc`, :func:`downmix`), so before any level or
    peak is measured; nothing is clipped. The effective resolution is measured on the samples
    as decoded, before DC removal (:func:`channels_bits`).
    """
    table = data if data.ndim == 2 else data[:, None]  # (frames, channels)
    check_samples(table, source_rate, min_seconds)
    columns, offsets = remove_dc(table)
    mono, used, how = downmix(columns, silent_channel_db, cancel_db)
    clipped = max(clipped_share(columns[i]) for i in used)
    samples = resample(mono, source_rate, target_rate)
    return DecodedClip(
        samples=samples,
        rate=target_rate,
        source_rate=source_rate,
        source_channels=table.shape[1],
        source_frames=source_frames,
        rms_dbfs=rms_dbfs(samples),
        peak=float(np.abs(samples).max()),
        snr_db=estimate_snr_db(samples, target_rate),
        truncated=truncated,
        dc_offset=float(offsets[used].mean()),
        downmix=how,
        clipped_share=clipped,
        speech_seconds=speech_seconds(samples, target_rate),
        effective_bits=channels_bits(table, used),
    )


def silence_reason(rms: float, peak: float, dc_offset: float) -> str:
    """Why a clip is (nearly) silent, in words, from its facts after DC removal.

    >>> silence_reason(float("-inf"), 0.0, 0.05)
    'only a constant DC offset of +0.0500 (no signal once it is removed)'
    """
    cause = silence_cause(peak, dc_offset)
    return cause if peak <= 0.0 else f"RMS {rms:.1f} dBFS, peak {peak:.2g}: {cause}"


def silence_cause(peak: float, dc_offset: float) -> str:
    """The likely cause of a (nearly) silent clip, in words, from its peak and DC offset.

    >>> silence_cause(0.0, 0.0)
    'digital silence (every sample is 0)'
    """
    if peak <= 0.0 and abs(dc_offset) > 0.0:
        return f"only a constant DC offset of {dc_offset:+.4f} (no signal once it is removed)"
    if peak <= 0.0:
        return "digital silence (every sample is 0)"
    removed = f"; a DC offset of {dc_offset:+.4f} was removed" if abs(dc_offset) >= 1e-3 else ""
    return (
        f"almost no signal (a muted or disconnected microphone, or a very quiet recording{removed})"
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
        "dc_offset": round(clip.dc_offset, 5),
        "downmix": clip.downmix,
        "clipped_share": round(clip.clipped_share, 5),
        "speech_seconds": round(clip.speech_seconds, 3),
        "effective_bits": round(clip.effective_bits, 2),
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
