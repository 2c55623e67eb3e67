"""Deterministic demo data in the Zalo AI 2020 Voice Verification layout.

``generate_demo(root)`` writes a small data set so the pipeline runs on a machine with no data::

    root/train/<id>-<gender>-<age>/<id>-<n>.wav   training speakers, 8-16 clips each
    root/public-test/<20 letters/digits>.wav      clips of other (unseen) speakers
    root/public-test.csv                          audio_1,audio_2 (the trials to score)
    root/public-test-labels.csv                   audio_1,audio_2,label (answer key, same order)
    root/public-test-meta.csv                     file,speaker,gender,duration

Speech is synthesised with a source-filter model. Each speaker has a voice (f0 level and
range, vocal-tract length, formant "accent", spectral tilt, open quotient, breathiness,
jitter, shimmer, speaking rate, fixed nasal/sinus resonances); each clip says a new random
string of vowels with gliding formants, an intonation contour, pauses and noise bursts, so
identity is text-independent. Each clip is then recorded in a random session (sample rate,
channel colouring, reverberation, noise, loudness, mono or stereo) drawn from its own random
stream, independent of the speaker.

Identity is real but not trivial: on the default set a naive mean-MFCC cosine gets about 72%
of the public-test pairs right (AUC about 0.80), while LDA on clip MFCC statistics learned from
the training speakers gets about 92%; sample rate and loudness carry no speaker information.

Every random draw comes from a generator keyed by ``(seed, stream, ...)`` (see ``stream``), so
the same seed writes the same bytes, whatever the order of work.

This module is the entry (``generate_demo``, the ``python -m src.data.demo`` command); the work
is in ``demo_voices`` (random streams, voices, sessions, synthesis and recording),
``demo_layout`` (the train and public-test folders, written by parallel clip jobs) and
``demo_trials`` (the public-test pairs).

Example
-------
>>> summary = generate_demo(Path("input"), n_speakers=6, clips_per_speaker=4)  # doctest: +SKIP
>>> summary["train_clips"]  # doctest: +SKIP
24
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

from tqdm import tqdm

from src.data.demo_layout import write_test, write_train
from src.data.demo_trials import make_trials, sample_trials
from src.data.demo_voices import (
    LAYOUT_COUNTS,
    MAX_SECONDS,
    MIN_SECONDS,
    PROFILES,
    SAMPLE_RATES,
    STREAM_LAYOUT,
    STREAM_PAIRS,
    STREAM_TEST_VOICE,
    STREAM_TRAIN_VOICE,
    clip_counts,
    make_speakers,
    stream,
)
from src.util.io import write_csv
from src.util.logs import setup_logging

# the entry: names the tests and callers import from here (the work is in the modules above)
__all__ = [
    "MAX_SECONDS",
    "MIN_SECONDS",
    "PROFILES",
    "SAMPLE_RATES",
    "generate_demo",
    "main",
    "make_trials",
    "sample_trials",
]

logger = logging.getLogger(__name__)

OUTPUT_NAMES = (
    "train",
    "public-test",
    "public-test.csv",
    "public-test-labels.csv",
    "public-test-meta.csv",
)


def check_arguments(
    n_speakers: int, clips_per_speaker: int, n_test_speakers: int, test_clips: int, seed: int
) -> None:
    problems = []
    if n_speakers < 2:
        problems.append(f"n_speakers={n_speakers} (need >= 2)")
    if clips_per_speaker < 2:
        problems.append(f"clips_per_speaker={clips_per_speaker} (need >= 2)")
    if n_test_speakers < 2:
        problems.append(f"n_test_speakers={n_test_speakers} (need >= 2)")
    if test_clips < 2:
        problems.append(f"test_clips_per_speaker={test_clips} (need >= 2)")
    if seed < 0:
        problems.append(f"seed={seed} (need >= 0)")
    if problems:
        raise ValueError("invalid demo settings: " + ", ".join(problems))


def clear_outputs(root: Path, overwrite: bool) -> None:
    """Refuse to mix with an earlier data set unless ``overwrite``; then remove its files."""
    existing = [root / name for name in OUTPUT_NAMES if (root / name).exists()]
    if existing and not overwrite:
        names = ", ".join(path.name for path in existing)
        raise FileExistsError(
            f"{root} already holds a data set ({names}); pass overwrite=True (--overwrite)"
        )
    for path in existing:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


STAGED_SUFFIX = ".demo-partial"  # the runner writes the demo here first, then moves it in


def generate_demo(
    root: Path,
    n_speakers: int = 40,
    clips_per_speaker: int = 12,
    n_test_speakers: int = 12,
    test_clips_per_speaker: int = 6,
    seed: int = 0,
    overwrite: bool = False,
    profile: str = "demo",
    n_pairs: int | None = None,
    workers: int = 1,
) -> dict[str, int | float]:
    """Write a demo data set in the Zalo layout under ``root`` and return its counts.

    Training speakers get ``clips_per_speaker`` +- a third clips (same total); test speakers
    are other people, ``test_clips_per_speaker`` clips each. The same ``seed`` writes the
    same bytes, whatever ``workers``. Raises ``FileExistsError`` if ``root`` already holds a
    data set and not ``overwrite``.

    ``profile`` picks clip lengths and sample rates (:data:`PROFILES`: ``demo``, or ``zalo`` for
    the real data's spread); ``n_pairs`` samples that many trials instead of listing every
    same-speaker pair (a Zalo-sized test); ``workers`` processes synthesise clips in parallel.
    """
    check_arguments(n_speakers, clips_per_speaker, n_test_speakers, test_clips_per_speaker, seed)
    root = Path(root)
    clear_outputs(root, overwrite)
    started = time.perf_counter()
    train = make_speakers(seed, STREAM_TRAIN_VOICE, 1, n_speakers)
    test = make_speakers(seed, STREAM_TEST_VOICE, n_speakers + 1, n_test_speakers)
    counts = clip_counts(stream(seed, STREAM_LAYOUT, LAYOUT_COUNTS), n_speakers, clips_per_speaker)
    total = int(counts.sum()) + n_test_speakers * test_clips_per_speaker
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose from {sorted(PROFILES)}")
    shape = PROFILES[profile]
    with tqdm(total=total, desc="demo clips", unit="clip", disable=None) as progress:
        train_seconds = write_train(root / "train", train, counts, seed, progress, shape, workers)
        meta = write_test(
            root / "public-test", test, test_clips_per_speaker, seed, progress, shape, workers
        )
    pair_rng = stream(seed, STREAM_PAIRS)
    trials = (
        make_trials(pair_rng, meta) if n_pairs is None else sample_trials(pair_rng, meta, n_pairs)
    )
    write_csv(root / "public-test.csv", trials[["audio_1", "audio_2"]])
    write_csv(root / "public-test-labels.csv", trials)
    write_csv(root / "public-test-meta.csv", meta)
    summary: dict[str, int | float] = {
        "train_speakers": n_speakers,
        "train_clips": int(counts.sum()),
        "train_hours": round(train_seconds / 3600, 3),
        "test_speakers": n_test_speakers,
        "test_clips": len(meta),
        "test_hours": round(float(meta["duration"].sum()) / 3600, 3),
        "trials": len(trials),
        "same_speaker_trials": int(trials["label"].sum()),
    }
    shown = root.with_name(root.name.removesuffix(STAGED_SUFFIX))  # the name it is moved to
    logger.info("demo data in %s (%.1f s): %s", shown, time.perf_counter() - started, summary)
    return summary


def main(argv: list[str] | None = None) -> None:
    """``python -m src.data.demo OUT_DIR [--seed N] [--speakers N] ...``"""
    parser = argparse.ArgumentParser(description="Write a synthetic Zalo-layout data set.")
    parser.add_argument("out_dir", type=Path, help="where train/ and public-test/ go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--speakers", type=int, default=40, help="training speakers")
    parser.add_argument("--clips", type=int, default=12, help="mean clips per training speaker")
    parser.add_argument("--test-speakers", type=int, default=12)
    parser.add_argument("--test-clips", type=int, default=6, help="clips per test speaker")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier data set")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="demo")
    parser.add_argument("--pairs", type=int, default=None, help="sample this many trials")
    parser.add_argument("--workers", type=int, default=1, help="synthesis processes")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        generate_demo(
            args.out_dir,
            n_speakers=args.speakers,
            clips_per_speaker=args.clips,
            n_test_speakers=args.test_speakers,
            test_clips_per_speaker=args.test_clips,
            seed=args.seed,
            overwrite=args.overwrite,
            profile=args.profile,
            n_pairs=args.pairs,
            workers=args.workers,
        )
    except (FileExistsError, ValueError) as err:
        parser.error(str(err))  # exits with status 2


if __name__ == "__main__":
    main()
