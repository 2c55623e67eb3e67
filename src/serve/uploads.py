"""Decoding uploaded audio in memory: any format soundfile reads, mono, one sample rate, checked.

The same steps as ``prepare`` (``src.data.audio.decode_audio``) without touching the disk, with
the limits of a server: every problem is an :class:`UploadError` carrying the HTTP status to
answer with and a reason a client can act on.

========================================  ======
problem                                   status
========================================  ======
empty file, no samples                    400
corrupt data, NaN / infinite samples      400
shorter than ``data.min_duration``        400
longer than ``serve.max_seconds``         400
larger than ``serve.max_upload_mb``       413
not a format soundfile can open           415
========================================  ======

A silent or too short clip decodes here: its facts let the caller refuse it by ``prepare``'s rule
(``src.data.audio.unusable_reason``: the API answers 422) or attach a warning with the reason
(``src.data.checks.recording_warnings``).

Example
-------
>>> upload = decode_upload(open("a.flac", "rb").read(), 16000, 120.0)  # doctest: +SKIP
>>> upload.samples.dtype, upload.samples.ndim  # doctest: +SKIP
(dtype('float32'), 1)
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from src.data.audio import (
    CANCEL_DB,
    SILENT_CHANNEL_DB,
    AudioError,
    DecodedClip,
    clip_facts,
    describe_clip,
)


class UploadError(ValueError):
    """An upload that cannot be scored: ``status`` is the HTTP status, the message the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class DecodedUpload:
    """A decoded upload (:class:`DecodedClip`: mono float32 at ``rate``, with what ``prepare``
    measures of a file) and the uploaded file's format and size."""

    clip: DecodedClip
    source_format: str
    n_bytes: int

    @property
    def samples(self) -> np.ndarray:
        return self.clip.samples

    @property
    def rms_dbfs(self) -> float:
        return self.clip.rms_dbfs

    @property
    def duration(self) -> float:
        return self.clip.duration

    def facts(self) -> dict[str, float | int | bool]:
        """The manifest's facts about this file (pair metadata features come from them)."""
        return clip_facts(self.clip, self.n_bytes)


def decode_upload(
    data: bytes,
    target_rate: int,
    max_seconds: float,
    min_seconds: float = 0.1,
    max_bytes: int | None = None,
    silent_channel_db: float = SILENT_CHANNEL_DB,
    cancel_db: float = CANCEL_DB,
) -> DecodedUpload:
    """Decode one uploaded file, condition it and mix it to mono as ``prepare`` does
    (``src.data.audio.describe_clip``: DC removal, a downmix that keeps the speech; the
    ``data.downmix_*`` settings), and resample it to ``target_rate``.

    Raises :class:`UploadError` (see the module table) instead of truncating a long clip: a
    server should not score a different clip from the one it was sent.
    """
    if not data:
        raise UploadError(400, "empty file (0 bytes)")
    if max_bytes is not None and len(data) > max_bytes:
        raise UploadError(
            413, f"file too large: {len(data) / 2**20:.1f} MB > {max_bytes / 2**20:g} MB"
        )
    try:
        info = sf.info(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise UploadError(415, f"not a readable audio file ({_reason(err)})") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise UploadError(400, "no audio samples in the file")
    limit = int(max_seconds * info.samplerate)
    if info.frames > limit:
        raise UploadError(400, f"too long: {info.duration:.1f} s > {max_seconds:g} s")
    try:
        # one frame past the limit, in case the header understated the length
        frames, rate = sf.read(io.BytesIO(data), frames=limit + 1, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        raise UploadError(400, f"corrupt audio ({_reason(err)})") from None
    if frames.shape[0] == 0:
        raise UploadError(400, "no audio samples in the file")
    if frames.shape[0] > limit:
        raise UploadError(400, f"too long: more than {max_seconds:g} s")
    try:  # DC removal and a downmix that keeps the speech, as prepare's
        clip = describe_clip(
            frames, int(rate), int(info.frames), target_rate, min_seconds, False,
            silent_channel_db, cancel_db,
        )  # fmt: skip
    except AudioError as err:
        raise UploadError(400, str(err)) from None
    return DecodedUpload(clip, str(info.format), len(data))


def _reason(err: Exception) -> str:
    """libsndfile's own words, without the Python object repr it puts in front."""
    text = str(err)
    return text.split(": ", 1)[1] if text.startswith("Error ") and ": " in text else text
