"""Does the served answer move with how a clip was recorded? Re-answer pairs with one clip altered.

For a sample of test pairs, the second clip is sent again as it would arrive from another
recording chain, and the bundle answers each altered pair as the API would (the upload is encoded
as a float WAV file and decoded by ``decode_upload``, the server's own path):

==============================  ==========================================================
alteration                      what it imitates
==============================  ==========================================================
gain x0.25, gain x4             a quieter or louder input (float WAV: nothing clips)
DC +0.05                        a constant offset from a cheap phone or USB microphone
silent second channel           a stereo file with a dead second microphone
opposite-phase second channel   a stereo file whose channels cancel when averaged
==============================  ==========================================================

Decoding removes the DC offset and mixes channels so the speech survives
(``src.data.audio.describe_clip``), so gain and channel layout give the same decoded samples and
a bundle whose stacker leaves the recording-condition features out (the default,
``export.recording_features=false``) gives exactly the same probability. A DC offset is removed
up to float rounding of the stored file (a few samples of the int16 cache may differ by one
step), so its probability may move in the last digits; the answer (the label) must not change.

The unaltered baseline is the same clip encoded the same way, so every difference comes from the
alteration alone.

Example
-------
>>> table = invariance_table(model, waves, pairs)  # doctest: +SKIP
>>> summarise_invariance(table)  # doctest: +SKIP
[{'alteration': 'gain x0.25', 'pairs': 16, 'answers_changed': 0, ...}, ...]
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pandas as pd
import soundfile as sf

from .ensemble import BundleModel, Clip
from .uploads import decode_upload

Alteration = Callable[[np.ndarray], np.ndarray]

ALTERATIONS: dict[str, Alteration] = {
    "gain x0.25": lambda wave: wave * np.float32(0.25),
    "gain x4": lambda wave: wave * np.float32(4.0),
    "DC +0.05": lambda wave: wave + np.float32(0.05),
    "silent second channel": lambda wave: np.stack([wave, np.zeros_like(wave)], axis=1),
    "opposite-phase second channel": lambda wave: np.stack([wave, -wave], axis=1),
}
# alterations after which decoding gives bit-identical samples: the probability must not move
SAME_SAMPLES = ("gain x0.25", "gain x4", "silent second channel", "opposite-phase second channel")


def float_wav(wave: np.ndarray, rate: int) -> bytes:
    """``wave`` (``(samples,)`` or ``(samples, channels)``) as a 32-bit float WAV file."""
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def upload_clip(model: BundleModel, data: bytes) -> Clip:
    """An encoded file decoded as the API decodes an upload (the bundle's data settings)."""
    settings = model.stack_cfg.data
    upload = decode_upload(
        data,
        model.sample_rate,
        max_seconds=settings.max_duration,
        min_seconds=settings.min_duration,
        silent_channel_db=settings.downmix_silent_db,
        cancel_db=settings.downmix_cancel_db,
    )
    return Clip(upload.samples, upload.facts())


def invariance_table(
    model: BundleModel,
    waves: dict[str, np.ndarray],
    pairs: pd.DataFrame,
    alterations: dict[str, Alteration] | None = None,
) -> pd.DataFrame:
    """Each pair's answer with its second clip as it is and under each alteration.

    Parameters
    ----------
    model
        The loaded bundle.
    waves
        Mono float32 waveforms at ``model.sample_rate`` by clip name (``(samples,)`` each).
    pairs
        ``audio_1``, ``audio_2``: names in ``waves``.
    alterations
        Name -> function of a waveform (default :data:`ALTERATIONS`).

    Returns
    -------
    One row per pair and alteration: ``audio_1``, ``audio_2``, ``alteration``,
    ``probability``, ``label`` (unaltered), ``altered_probability``, ``altered_label``,
    ``changed`` (the label moved).
    """
    alterations = ALTERATIONS if alterations is None else alterations
    rate = model.sample_rate
    clips = {name: upload_clip(model, float_wav(waves[name], rate)) for name in waves}
    rows = []
    for first, second in zip(pairs["audio_1"], pairs["audio_2"], strict=True):
        # one pair per call, as /api/predict answers it: the same batch of two clips of the same
        # lengths each time, so any difference comes from the decoded samples alone
        base = model.answer_pair(clips[first], clips[second])
        for alteration, alter in alterations.items():
            altered_clip = upload_clip(model, float_wav(alter(waves[second]), rate))
            altered = model.answer_pair(clips[first], altered_clip)
            rows.append(
                {
                    "audio_1": first,
                    "audio_2": second,
                    "alteration": alteration,
                    "probability": base["probability"],
                    "label": base["label"],
                    "altered_probability": altered["probability"],
                    "altered_label": altered["label"],
                }
            )
    table = pd.DataFrame(rows)
    table["changed"] = table["label"] != table["altered_label"]
    return table


def summarise_invariance(table: pd.DataFrame) -> list[dict]:
    """Per alteration: pairs, answers changed, the largest probability change."""
    rows = []
    for alteration, part in table.groupby("alteration", sort=False):
        moved = (part["altered_probability"] - part["probability"]).abs()
        rows.append(
            {
                "alteration": alteration,
                "pairs": len(part),
                "answers_changed": int(part["changed"].sum()),
                "max_probability_change": float(moved.max()),
            }
        )
    return rows
