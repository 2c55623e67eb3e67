"""Warnings for clips outside the range the model was built for.

A score is still given for such a clip, but the caller is told why it is less reliable: in the
API's ``warnings`` (``/api/predict`` and ``/api/predict_batch``) and per test file in the report.
(A clip that must not be scored at all, silent below ``data.silence_dbfs`` or shorter
than ``data.min_scored_seconds``, never gets this far: ``src.data.audio.unusable_reason`` sends a
test file's pairs to the fallback answer and the API refuses it with a 422.) A clip above that
floor but shorter than ``data.short_clip_seconds`` is scored best-effort and flagged
(:func:`short_clip_note`: column ``short_clip`` of ``submission_scores.csv``, the report, the
API's warnings). Each warning comes from the facts ``prepare`` records about a file
(``src.data.audio.clip_facts``: the manifest's columns, and the same facts of an upload):

- recorded below ``checks.min_sample_rate`` (16 kHz): band-limited (an 8 kHz telephone clip has
  nothing above 4 kHz), resampling cannot restore what the model listens to;
- less active speech than ``checks.min_speech_seconds`` (default: the model's embedding window,
  ``embed.window_seconds``): the embedding of a fraction of a window is noisy, with how short;
- more than ``checks.max_clipped_share`` of samples clipped (flat tops at the peak);
- samples coarser than ``checks.min_effective_bits`` (10 bits): an 8-bit file, or a quiet
  one that uses few of its file's levels (:func:`src.data.audio.effective_bits`), so
  quantisation noise is close to the voice's level;
- near-silence (RMS below ``checks.silence_dbfs``, default ``data.silence_dbfs``), with the real
  reason (digital silence, a constant DC offset and nothing else, or a very low level): with the
  default only for a manifest or bundle from before the refusal, or when ``checks.silence_dbfs``
  is set above ``data.silence_dbfs``;
- a multi-channel file whose downmix had to leave a channel out (silent, or cancelling).

Example
-------
>>> facts = {"sample_rate": 8000, "speech_seconds": 0.4, "duration": 0.5, "rms_dbfs": -20.0,
...          "peak": 0.5, "dc_offset": 0.0, "clipped_share": 0.0, "downmix": ""}
>>> for line in recording_warnings(facts, ChecksConfig(), 2.0, -80.0):
...     print(line)
recorded at 8000 Hz (< 16000 Hz): band-limited to 4.0 kHz, the model hears less of the voice
only 0.40 s of speech (< 2.00 s, the model's window): the embedding is unreliable
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from src.config import ChecksConfig
from src.data.audio import shown_below, silence_reason


def recording_warnings(
    facts: Mapping[str, Any],
    checks: ChecksConfig,
    window_seconds: float,
    silence_dbfs: float,
) -> list[str]:
    """What is out of range about one clip, in words (empty when nothing is).

    Parameters
    ----------
    facts
        :func:`src.data.audio.clip_facts` of the clip, or its manifest row (a missing fact is
        not checked: a manifest from before these columns existed).
    checks
        Thresholds (``checks.*``).
    window_seconds
        The model's embedding window (seconds): the default ``checks.min_speech_seconds``.
    silence_dbfs
        ``data.silence_dbfs``: the default ``checks.silence_dbfs``.
    """
    said: list[str] = []
    rate = _number(facts, "sample_rate")
    if rate is not None and rate < checks.min_sample_rate:
        said.append(
            f"recorded at {rate:.0f} Hz (< {checks.min_sample_rate} Hz): band-limited to "
            f"{rate / 2000:.1f} kHz, the model hears less of the voice"
        )
    floor = checks.silence_dbfs if checks.silence_dbfs is not None else silence_dbfs
    rms = _number(facts, "rms_dbfs")
    silent = rms is not None and rms < floor
    if silent:
        reason = silence_reason(
            rms, _number(facts, "peak") or 0.0, _number(facts, "dc_offset") or 0.0
        )
        said.append(f"silent or nearly (< {floor:g} dBFS): {reason}; the score is unreliable")
    needed = checks.min_speech_seconds if checks.min_speech_seconds is not None else window_seconds
    speech = _number(facts, "speech_seconds")
    if speech is None:
        speech = _number(facts, "duration")
    if not silent and speech is not None and speech < needed:
        what = (
            "the model's window"
            if checks.min_speech_seconds is None
            else "checks.min_speech_seconds"
        )
        said.append(
            f"only {speech:.2f} s of speech (< {needed:.2f} s, {what}): the embedding is unreliable"
        )
    clipped = _number(facts, "clipped_share")
    if clipped is not None and clipped > checks.max_clipped_share:
        said.append(
            f"clipped: {100 * clipped:.2f} % of samples saturated (> "
            f"{100 * checks.max_clipped_share:g} %): distorted speech"
        )
    bits = _number(facts, "effective_bits")
    if bits is not None and bits < checks.min_effective_bits:
        said.append(coarse_warning(bits, _number(facts, "peak"), checks.min_effective_bits))
    downmix = str(facts.get("downmix") or "")
    if downmix.startswith("channel "):
        said.append(f"multi-channel file: used {downmix}")
    return said


def coarse_warning(bits: float, peak: float | None, min_bits: float) -> str:
    """The warning for samples coarser than ``checks.min_effective_bits``, with the likely
    cause from the clip's peak (after DC removal, full scale 1): within 12 dB of full scale
    the file itself is coarsely coded (8-bit), below it the recording is too quiet for its
    file's levels.

    >>> print(coarse_warning(7.03, 0.002, 10.0))  # doctest: +NORMALIZE_WHITESPACE
    coarse samples: 7.03 effective bits (< 10 bits, checks.min_effective_bits): a quiet
    recording (peak 0.002) using about 130 of its file's levels; quantisation noise is close
    to the voice, the score is less reliable
    """
    levels = round(2.0**bits - 1)
    if peak is not None and peak >= 0.25:
        cause = f"a coarsely coded file (about {bits:.0f}-bit samples, {levels} levels)"
    else:
        level = f" (peak {peak:.2g})" if peak is not None else ""
        cause = f"a quiet recording{level} using about {levels} of its file's levels"
    return (
        f"coarse samples: {shown_below(bits, min_bits, 2)} effective bits (< {min_bits:g} bits, "
        f"checks.min_effective_bits): {cause}; quantisation noise is close to the voice, the "
        "score is less reliable"
    )


def short_clip_note(duration: float, short_clip_seconds: float) -> str | None:
    """The flag of a clip scored best-effort because it is short, or ``None`` when it is not:
    the one rule for ``submit`` (column ``short_clip``), the report and the API's warnings.

    Parameters
    ----------
    duration
        The clip's length (seconds of audio, the manifest's ``duration``).
    short_clip_seconds
        ``data.short_clip_seconds``: a shorter clip is flagged (the caller has already refused
        one under ``data.min_scored_seconds``).

    >>> short_clip_note(0.15, 0.2)
    'short clip: 0.15 s (< 0.2 s, data.short_clip_seconds): scored best-effort, less reliable'
    >>> short_clip_note(0.2, 0.2) is None
    True
    """
    if not duration < short_clip_seconds:
        return None
    shown = shown_below(duration, short_clip_seconds, 2)
    return (
        f"short clip: {shown} s (< {short_clip_seconds:g} s, data.short_clip_seconds): "
        "scored best-effort, less reliable"
    )


def _number(facts: Mapping[str, Any], key: str) -> float | None:
    """A numeric fact, or ``None`` when absent or not a number."""
    value = facts.get(key)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if number != number else number  # NaN: not recorded
