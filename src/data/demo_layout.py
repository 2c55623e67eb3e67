"""The demo data's Zalo layout: clips written as ``train/<id>-<gender>-<age>/<id>-<n>.wav`` and
``public-test/<20 letters/digits>.wav``, synthesised by parallel clip jobs (see ``src.data.demo``).
"""

from __future__ import annotations

import io
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from tqdm import tqdm

from src.data.demo_voices import (
    LAYOUT_TEST_NAMES,
    PROFILES,
    STREAM_LAYOUT,
    STREAM_TEST_CLIP,
    STREAM_TEST_SESSION,
    STREAM_TRAIN_CLIP,
    STREAM_TRAIN_SESSION,
    Profile,
    Speaker,
    clip_seconds,
    make_session,
    record,
    stream,
    synthesise,
)

NAME_ALPHABET = np.array(list(string.ascii_letters + string.digits))


def write_clip(
    path: Path,
    speaker: Speaker,
    clip_rng: np.random.Generator,
    session_rng: np.random.Generator,
    profile: Profile = PROFILES["demo"],
) -> float:
    """Synthesise, record and write one clip; return its duration in seconds."""
    session = make_session(session_rng, profile)
    speech = synthesise(clip_rng, speaker.voice, clip_seconds(clip_rng, profile))
    audio = record(session_rng, speech, session)
    buffer = io.BytesIO()  # soundfile syncs files to disk on close; one write is faster
    sf.write(buffer, audio, session.sample_rate, subtype="PCM_16", format="WAV")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return audio.shape[0] / session.sample_rate


# --------------------------------------------------------------------------------------------
# Layout: train folders, public test, trials


@dataclass(frozen=True)
class ClipJob:
    """One clip to write: where, whose voice, and the keys of its two random streams."""

    path: Path
    speaker: Speaker
    seed: int
    clip_stream: int
    session_stream: int
    index: int
    clip: int
    profile: Profile


def run_clip_job(job: ClipJob) -> float:
    """Write one clip (in any process: its draws depend on its keys alone); its seconds."""
    clip_rng = stream(job.seed, job.clip_stream, job.index, job.clip)
    session_rng = stream(job.seed, job.session_stream, job.index, job.clip)
    return write_clip(job.path, job.speaker, clip_rng, session_rng, job.profile)


def run_clip_jobs(jobs: list[ClipJob], workers: int, progress: tqdm) -> list[float]:
    """Every job's seconds, in order; ``workers`` > 1 spreads them over processes (same bytes)."""
    if workers <= 1:
        seconds = []
        for job in jobs:
            seconds.append(run_clip_job(job))
            progress.update()
        return seconds
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers) as pool:
        seconds = []
        for value in pool.map(run_clip_job, jobs, chunksize=16):
            seconds.append(value)
            progress.update()
        return seconds


def write_train(
    folder: Path,
    speakers: list[Speaker],
    counts: np.ndarray,
    seed: int,
    progress: tqdm,
    profile: Profile = PROFILES["demo"],
    workers: int = 1,
) -> float:
    """Write ``train/<id>-<gender>-<age>/<id>-<n>.wav``; return the total seconds of audio."""
    jobs = [
        ClipJob(
            folder / speaker.folder / f"{speaker.speaker_id}-{clip + 1}.wav",
            speaker,
            seed,
            STREAM_TRAIN_CLIP,
            STREAM_TRAIN_SESSION,
            index,
            clip,
            profile,
        )
        for index, (speaker, count) in enumerate(zip(speakers, counts, strict=True))
        for clip in range(count)
    ]
    return float(sum(run_clip_jobs(jobs, workers, progress)))


def random_names(rng: np.random.Generator, count: int, length: int = 20) -> list[str]:
    """Distinct ``<letters/digits>.wav`` names, distinct even on case-insensitive disks."""
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < count:
        name = "".join(rng.choice(NAME_ALPHABET, length)) + ".wav"
        if name.lower() not in seen:
            seen.add(name.lower())
            names.append(name)
    return names


def write_test(
    folder: Path,
    speakers: list[Speaker],
    clips: int,
    seed: int,
    progress: tqdm,
    profile: Profile = PROFILES["demo"],
    workers: int = 1,
) -> pd.DataFrame:
    """Write ``public-test/<name>.wav``; return meta rows (file, speaker, gender, duration)."""
    names = random_names(stream(seed, STREAM_LAYOUT, LAYOUT_TEST_NAMES), len(speakers) * clips)
    jobs = [
        ClipJob(
            folder / names[index * clips + clip],
            speaker,
            seed,
            STREAM_TEST_CLIP,
            STREAM_TEST_SESSION,
            index,
            clip,
            profile,
        )
        for index, speaker in enumerate(speakers)
        for clip in range(clips)
    ]
    seconds = run_clip_jobs(jobs, workers, progress)
    rows = [
        (job.path.name, job.speaker.speaker_id, job.speaker.gender, round(value, 4))
        for job, value in zip(jobs, seconds, strict=True)
    ]
    meta = pd.DataFrame(rows, columns=["file", "speaker", "gender", "duration"])
    return meta.sort_values("file", ignore_index=True)
