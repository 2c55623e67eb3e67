"""A shifted test: a Zalo-layout folder whose public-test clips alone pass through another channel.

Each public-test clip is reverberated in a simulated room, band-limited to the telephone band
(300-3,400 Hz), resampled to 8 kHz and passed through a low-bit-rate MP3 round trip, then
written back as an 8 kHz 16-bit WAV under its own name. ``train/`` is a symbolic link to the
source's: the training audio is untouched. Everything is seeded (one generator per clip, from
``--seed`` and the clip's name), so the folder is the same on every run.

Usage::

    .venv/bin/python bench/shift_test.py --source ../shared/data/libri-zalo \
        --out /work/runs/adapt/libri-shifted [--seed 0]

The answer key and metadata files are copied (for local scoring only, as in the source).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import butter, fftconvolve, resample_poly, sosfiltfilt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.util.logs import setup_logging

log = logging.getLogger("bench.shift_test")
BAND = (300.0, 3400.0)  # telephone band, Hz
RATE = 8000  # the shifted clips' sample rate
RT60 = (0.3, 0.8)  # reverberation time range, s
DRR_DB = (0.0, 8.0)  # direct-to-reverberant ratio range, dB
MP3_COMPRESSION = 0.9  # libsndfile's MP3 compression level (0..1): about 16 kbit/s at 8 kHz
COPIED = (
    "public-test.csv",
    "public-test-labels.csv",
    "public-test-meta.csv",
    "sample_submission.csv",
)


def room_response(rng: np.random.Generator, rate: int) -> np.ndarray:
    """A unit direct path, then after 2-10 ms a noise tail decaying 60 dB over ``rt60``."""
    rt60, drr_db = rng.uniform(*RT60), rng.uniform(*DRR_DB)
    delay = int(rng.uniform(0.002, 0.010) * rate)
    length = int(rt60 * rate)
    t = np.arange(length) / rate
    tail = rng.standard_normal(length) * 10 ** (-3.0 * t / rt60)
    tail *= np.sqrt(10 ** (-drr_db / 10) / np.sum(tail**2))
    response = np.zeros(delay + length)
    response[0] = 1.0
    response[delay:] += tail
    return response


def shift_channel(wave: np.ndarray, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Reverberation, telephone band, 8 kHz and an MP3 round trip; the input's RMS is kept."""
    level = np.sqrt(np.mean(wave**2)) + 1e-12
    out = fftconvolve(wave, room_response(rng, rate))[: wave.size]
    sos = butter(4, BAND, btype="bandpass", fs=rate, output="sos")
    out = sosfiltfilt(sos, out)
    out = resample_poly(out, RATE, rate)
    out *= level / (np.sqrt(np.mean(out**2)) + 1e-12)
    out = np.clip(out, -0.99, 0.99).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, out, RATE, format="MP3", compression_level=MP3_COMPRESSION)
    buffer.seek(0)
    decoded, _ = sf.read(buffer, dtype="float32")
    return decoded[: out.size]


def clip_rng(seed: int, name: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def build(source: Path, out: Path, seed: int) -> int:
    """Write the shifted folder; returns the number of clips shifted."""
    (out / "public-test").mkdir(parents=True, exist_ok=True)
    train = out / "train"
    if not train.exists():
        train.symlink_to((source / "train").resolve(), target_is_directory=True)
    for name in COPIED:
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
    clips = sorted((source / "public-test").glob("*.wav"))
    for path in clips:
        wave, rate = sf.read(path, dtype="float64", always_2d=True)
        shifted = shift_channel(wave.mean(axis=1), rate, clip_rng(seed, path.name))
        sf.write(out / "public-test" / path.name, shifted, RATE, subtype="PCM_16")
    (out / "README.md").write_text(
        f"Shifted copy of {source} (bench/shift_test.py, seed {seed}): public-test clips "
        f"reverberated (RT60 {RT60} s), band-passed {BAND} Hz, {RATE} Hz, MP3 round trip "
        f"(compression {MP3_COMPRESSION}); train/ links to the source's, untouched.\n"
    )
    return len(clips)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    setup_logging()
    count = build(args.source, args.out, args.seed)
    log.info("%d public-test clips shifted into %s", count, args.out)


if __name__ == "__main__":
    main()
