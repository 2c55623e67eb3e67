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

Example
-------
>>> summary = generate_demo(Path("input"), n_speakers=6, clips_per_speaker=4)  # doctest: +SKIP
>>> summary["train_clips"]  # doctest: +SKIP
24
"""

from __future__ import annotations

import argparse
import io
import itertools
import logging
import shutil
import string
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import soxr
from scipy import ndimage, signal
from tqdm import tqdm

from src.util.io import write_csv
from src.util.logs import setup_logging

logger = logging.getLogger(__name__)

SYNTH_RATE = 16_000  # speech is synthesised here, then resampled to the session's rate
FRAME = 160  # samples per 10 ms control frame at SYNTH_RATE
SAMPLE_RATES = (16_000, 44_100, 48_000)
SAMPLE_RATE_SHARES = (0.4, 0.3, 0.3)
STEREO_SHARE = 0.05
MIN_SECONDS, MAX_SECONDS = 0.5, 8.0
MEDIAN_SECONDS, LOG_SPREAD = 1.9, 0.6  # log-normal clip length: most clips are short


@dataclass(frozen=True)
class Profile:
    """Clip lengths (log-normal, clipped) and sample-rate shares of a generated data set."""

    median_seconds: float
    log_spread: float
    min_seconds: float
    max_seconds: float
    rate_shares: tuple[float, float, float]  # of SAMPLE_RATES


PROFILES = {
    # the demo: short clips, a third of them at 16 kHz
    "demo": Profile(MEDIAN_SECONDS, LOG_SPREAD, MIN_SECONDS, MAX_SECONDS, SAMPLE_RATE_SHARES),
    # the Zalo 2020 data: 0.43-63 s, median about 2.2 s, mostly 44.1/48 kHz phone recordings
    "zalo": Profile(2.2, 0.75, 0.43, 63.0, (0.05, 0.55, 0.40)),
}

# F1-F3 (Hz) of eight vowels of an adult male voice, after Hillenbrand et al. (1995).
VOWEL_FORMANTS = np.array(
    [
        [340, 2320, 3000],  # i  heed
        [430, 2030, 2680],  # ɪ  hid
        [580, 1800, 2600],  # ɛ  head
        [590, 1950, 2600],  # æ  had
        [770, 1330, 2520],  # ɑ  hod
        [650, 1000, 2540],  # ɔ  hawed
        [380, 1000, 2340],  # u  who'd
        [620, 1200, 2550],  # ʌ  hud
    ],
    dtype=np.float64,
)
# F4-F7 (Hz), vowel-independent; the upper ones keep 4-8 kHz at a natural level
UPPER_FORMANTS = np.array([3500.0, 4500.0, 5500.0, 6500.0])
BANDWIDTHS = np.array([60.0, 90.0, 130.0, 200.0, 260.0, 350.0, 450.0])  # F1-F7 (Hz)
N_FORMANTS = BANDWIDTHS.size
MAX_FORMANT = 0.47 * SYNTH_RATE

# Random streams: the first entropy word after the seed says what a generator is for.
STREAM_TRAIN_VOICE, STREAM_TEST_VOICE = 1, 2
STREAM_TRAIN_CLIP, STREAM_TEST_CLIP = 3, 4
STREAM_TRAIN_SESSION, STREAM_TEST_SESSION = 5, 6
STREAM_LAYOUT, STREAM_PAIRS = 7, 8
LAYOUT_COUNTS, LAYOUT_TEST_NAMES = 0, 3  # sub-streams of STREAM_LAYOUT (1, 2: speaker lists)

NAME_ALPHABET = np.array(list(string.ascii_letters + string.digits))
OUTPUT_NAMES = (
    "train",
    "public-test",
    "public-test.csv",
    "public-test-labels.csv",
    "public-test-meta.csv",
)


def stream(seed: int, *words: int) -> np.random.Generator:
    """Independent generator for one purpose, e.g. ``stream(seed, STREAM_TRAIN_CLIP, 3, 7)``.

    The words go in the spawn key, which (unlike a plain entropy list) keeps ``(7,)`` and
    ``(7, 0)`` or a large seed and a small seed plus words apart.
    """
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=words))


# --------------------------------------------------------------------------------------------
# Speakers and sessions


@dataclass(frozen=True)
class Voice:
    """What makes one synthetic speaker sound like themself (stable across clips)."""

    f0_hz: float  # mean fundamental frequency
    f0_range_st: float  # intonation range in semitones
    formant_scale: np.ndarray  # (7,) F1-F7 multipliers: vocal-tract length and shape
    vowel_offsets: np.ndarray  # (8, 3) relative F1-F3 shifts per vowel: the "accent"
    bandwidth_scale: float
    tilt: float  # one-pole low-pass coefficient on the glottal source (0 = bright)
    open_quotient: float  # open share of each glottal cycle
    breathiness: float  # aspiration noise level relative to the pulses
    jitter: float  # relative cycle-to-cycle f0 perturbation
    shimmer: float  # relative cycle-to-cycle amplitude perturbation
    rate: float  # speaking-rate multiplier
    cavities: tuple[tuple[float, float, float], ...]  # fixed (Hz, dB, Q) nasal/sinus colouring


@dataclass(frozen=True)
class Speaker:
    speaker_id: int
    gender: str  # "M" or "F"
    age: int | None  # None is written as "NA"
    voice: Voice

    @property
    def folder(self) -> str:
        age = "NA" if self.age is None else str(self.age)
        return f"{self.speaker_id}-{self.gender}-{age}"


@dataclass(frozen=True)
class Session:
    """How one clip was recorded; drawn independently of who is speaking."""

    sample_rate: int
    channels: int
    rms_dbfs: float
    snr_db: float
    noise_colour: float  # one-pole coefficient of the noise: 0 white, ~1 brown
    highpass_hz: float
    lowpass_hz: float | None
    peaks: tuple[tuple[float, float, float], ...]  # (frequency Hz, gain dB, Q) of EQ bumps
    reverb_rt60: float | None
    reverb_drr_db: float  # direct-to-reverberant energy ratio


def make_voice(rng: np.random.Generator, gender: str) -> Voice:
    """Draw a voice; men have lower f0 and longer vocal tracts (lower formants)."""
    male = gender == "M"
    vocal_tract = rng.uniform(0.86, 1.04) if male else rng.uniform(1.02, 1.2)
    return Voice(
        f0_hz=rng.uniform(85, 155) if male else rng.uniform(165, 255),
        f0_range_st=rng.uniform(1.5, 4.5),
        formant_scale=vocal_tract * (1 + rng.normal(0, 0.05, N_FORMANTS)),
        vowel_offsets=np.clip(rng.normal(0, 0.05, (len(VOWEL_FORMANTS), 3)), -0.12, 0.12),
        bandwidth_scale=rng.uniform(0.8, 1.5),
        tilt=rng.uniform(0.0, 0.75),
        open_quotient=rng.uniform(0.45, 0.75),
        breathiness=float(np.exp(rng.uniform(np.log(0.01), np.log(0.2)))),
        jitter=rng.uniform(0.003, 0.02),
        shimmer=rng.uniform(0.02, 0.12),
        rate=rng.uniform(0.8, 1.25),
        cavities=(
            (rng.uniform(2500, 5000), rng.uniform(-18, -8), rng.uniform(3, 6)),  # notch
            (rng.uniform(900, 3000), rng.uniform(4, 10), rng.uniform(1.5, 3)),  # bump
            (rng.uniform(250, 900), rng.uniform(-8, 8), rng.uniform(1, 2)),  # chest/nasal
        ),
    )


def make_speakers(seed: int, voice_stream: int, first_id: int, count: int) -> list[Speaker]:
    """``count`` speakers with ids from ``first_id``, half of each gender, ages 18-70 or NA."""
    layout = stream(seed, STREAM_LAYOUT, voice_stream)
    genders = layout.permutation(np.arange(count) % 2)
    speakers = []
    for index in range(count):
        gender = "F" if genders[index] else "M"
        age = None if layout.random() < 0.05 else int(layout.integers(18, 71))
        voice = make_voice(stream(seed, voice_stream, index), gender)
        speakers.append(Speaker(first_id + index, gender, age, voice))
    return speakers


def make_session(rng: np.random.Generator, profile: Profile = PROFILES["demo"]) -> Session:
    """Draw recording conditions: rate, channel, room, noise and loudness."""
    sample_rate = int(rng.choice(SAMPLE_RATES, p=profile.rate_shares))
    n_peaks = int(rng.integers(1, 3))
    peaks = tuple(
        (float(np.exp(rng.uniform(np.log(250), np.log(4000)))), rng.uniform(-4, 4), 1.0)
        for _ in range(n_peaks)
    )
    return Session(
        sample_rate=sample_rate,
        channels=2 if rng.random() < STEREO_SHARE else 1,
        rms_dbfs=rng.uniform(-35, -10),
        snr_db=10 + 30 * np.sqrt(rng.random()),  # 10-40 dB, mostly clean
        noise_colour=float(rng.choice([0.0, 0.9, 0.98], p=[0.2, 0.4, 0.4])),
        highpass_hz=rng.uniform(50, 250),
        lowpass_hz=rng.uniform(3400, 7600) if rng.random() < 0.3 else None,
        peaks=peaks,
        reverb_rt60=rng.uniform(0.15, 0.6) if rng.random() < 0.3 else None,
        reverb_drr_db=rng.uniform(0, 12),
    )


def clip_seconds(rng: np.random.Generator, profile: Profile = PROFILES["demo"]) -> float:
    """Log-normal clip length (demo: in [0.5, 8] s), rounded to whole 10 ms frames."""
    seconds = np.exp(rng.normal(np.log(profile.median_seconds), profile.log_spread))
    return round(float(np.clip(seconds, profile.min_seconds, profile.max_seconds)), 2)


def clip_counts(rng: np.random.Generator, n_speakers: int, mean: int) -> np.ndarray:
    """Clips per speaker, ``mean`` +- a third, mirrored so the total is ``n_speakers * mean``."""
    spread = mean // 3
    half = rng.integers(-spread, spread + 1, n_speakers // 2)
    offsets = np.concatenate([half, -half, np.zeros(n_speakers % 2, dtype=half.dtype)])
    return mean + rng.permutation(offsets)


# --------------------------------------------------------------------------------------------
# Speech synthesis at SYNTH_RATE


@dataclass(frozen=True)
class Tracks:
    """Per-frame control tracks of one utterance (10 ms frames)."""

    formants: np.ndarray  # (frames, 7) F1-F7 in Hz
    voicing: np.ndarray  # (frames,) glottal pulse amplitude
    bursts: np.ndarray  # (frames,) unvoiced noise amplitude
    f0: np.ndarray  # (frames,) fundamental frequency in Hz


def vowel_target(voice: Voice, vowel: int) -> np.ndarray:
    """F1-F7 (Hz) this speaker aims at for one vowel."""
    lower = VOWEL_FORMANTS[vowel] * (1 + voice.vowel_offsets[vowel])
    return np.minimum(np.concatenate([lower, UPPER_FORMANTS]) * voice.formant_scale, MAX_FORMANT)


def plan_utterance(rng: np.random.Generator, voice: Voice, n_frames: int) -> Tracks:
    """Random vowel string with pauses and noise bursts; formants glide between vowels.

    Adjacent vowels glide into each other over a quarter of each vowel; a vowel next to a
    pause or burst holds its target to that edge, and the formants stay put in the gap.
    """
    voicing, bursts = np.zeros(n_frames), np.zeros(n_frames)
    key_frames, key_formants = [], []
    position = int(rng.integers(0, n_frames // 5 + 1))  # leading silence
    speech_end = n_frames - int(rng.integers(0, n_frames // 8 + 1))  # trailing silence
    after_gap = True
    while position + 4 <= speech_end:
        end = min(position + max(4, round(rng.uniform(6, 18) / voice.rate)), speech_end)
        voicing[position:end] = rng.uniform(0.6, 1.0)
        edge = max(1, (end - position) // 4)
        target = vowel_target(voice, int(rng.integers(len(VOWEL_FORMANTS))))
        key_frames += [position if after_gap else position + edge, end - 1 - edge]
        key_formants += [target, target]
        position, gap = end, rng.random()  # < 0.25: pause, 0.25-0.45: noise burst, else vowel
        after_gap = gap < 0.45
        if after_gap:
            key_frames[-1] = end - 1
            length = int(rng.integers(5, 30) if gap < 0.25 else rng.integers(4, 12))
            if gap >= 0.25:
                bursts[position : position + length] = rng.uniform(0.1, 0.4)
            position += length
    return Tracks(
        hold_in_gaps(key_frames, key_formants, voicing > 0),
        voicing,
        bursts,
        f0_contour(rng, voice, n_frames),
    )


def hold_in_gaps(
    key_frames: list[int], key_formants: list[np.ndarray], vowel: np.ndarray
) -> np.ndarray:
    """Interpolate formant keys to every frame; outside vowels keep the last vowel's values."""
    keys, values = np.array(key_frames), np.array(key_formants)  # (keys,), (keys, formants)
    frames = np.arange(vowel.size)
    formants = np.stack([np.interp(frames, keys, values[:, k]) for k in range(N_FORMANTS)], axis=1)
    last_vowel_frame = np.maximum.accumulate(np.where(vowel, frames, 0))
    return formants[last_vowel_frame]  # (frames, formants)


def f0_contour(rng: np.random.Generator, voice: Voice, n_frames: int) -> np.ndarray:
    """Declining intonation with slow random movement, in Hz per frame."""
    position = np.linspace(0.0, 1.0, n_frames)
    declination = rng.uniform(0.5, 1.5) * voice.f0_range_st * (0.5 - position)
    knots = rng.normal(0, 0.6 * voice.f0_range_st, n_frames // 20 + 2)
    movement = np.interp(position, np.linspace(0, 1, knots.size), knots)
    semitones = rng.normal(0, 0.7) + declination + movement
    return voice.f0_hz * 2 ** (semitones / 12)


def to_samples(per_frame: np.ndarray, smooth: bool = True) -> np.ndarray:
    """Linear interpolation of a frame track to SYNTH_RATE samples (optionally smoothed)."""
    if smooth:
        kernel = np.array([0.25, 0.5, 0.25])
        per_frame = np.convolve(np.convolve(per_frame, kernel, "same"), kernel, "same")
    centres = (np.arange(per_frame.size) + 0.5) * FRAME
    return np.interp(np.arange(per_frame.size * FRAME), centres, per_frame)


def glottal_source(rng: np.random.Generator, voice: Voice, tracks: Tracks) -> np.ndarray:
    """Excitation: jittered, shimmered glottal-flow-derivative pulses, aspiration, bursts.

    The pulse shape is the derivative of the KLGLOTT88 flow ``t^2 - t^3`` over the open phase,
    driven by a phase accumulator so f0 can change every sample.
    """
    n_samples = tracks.f0.size * FRAME
    f0 = to_samples(tracks.f0, smooth=False)
    jitter = np.repeat(rng.normal(0, voice.jitter, n_samples // 80 + 1), 80)[:n_samples]
    phase = rng.random() + np.cumsum(f0 * (1 + jitter) / SYNTH_RATE)
    cycle = phase.astype(np.int64)
    open_time = (phase - cycle) / voice.open_quotient  # (samples,) 0-1 while the glottis is open
    is_open = open_time < 1
    pulses = np.where(is_open, 2 * open_time - 3 * open_time**2, 0.0)
    pulses *= 1 + rng.normal(0, voice.shimmer, cycle[-1] + 1)[cycle]
    pulses = signal.lfilter([1 - voice.tilt], [1, -voice.tilt], pulses)
    aspiration = voice.breathiness * np.where(is_open, 1.0, 0.3) * rng.normal(size=n_samples)
    voiced = to_samples(tracks.voicing) * (pulses + aspiration)
    return voiced + to_samples(tracks.bursts) * rng.normal(size=n_samples)


def resonator_sections(formants: np.ndarray, bandwidths: np.ndarray) -> np.ndarray:
    """Second-order sections of cascaded unit-DC-gain resonators (Klatt 1980).

    ``formants`` (frames, k) Hz and ``bandwidths`` (k,) Hz -> sos (frames, k, 6).
    """
    radius = np.exp(-np.pi * bandwidths / SYNTH_RATE)  # (k,)
    a1 = -2 * radius * np.cos(2 * np.pi * formants / SYNTH_RATE)  # (frames, k)
    a2 = np.broadcast_to(radius**2, a1.shape)
    sos = np.zeros((*formants.shape, 6))
    sos[..., 0] = 1 + a1 + a2
    sos[..., 3], sos[..., 4], sos[..., 5] = 1.0, a1, a2
    return sos


def vocal_tract(excitation: np.ndarray, formants: np.ndarray, voice: Voice) -> np.ndarray:
    """Filter the excitation by a time-varying formant cascade, block by block.

    Frames whose formants do not change (steady vowels, gaps) are filtered as one block;
    filter state is carried across blocks so the output is continuous.
    """
    sos = resonator_sections(formants, BANDWIDTHS * voice.bandwidth_scale)
    changes = np.flatnonzero(np.any(np.diff(formants, axis=0) != 0, axis=1)) + 1
    bounds = np.concatenate([[0], changes, [formants.shape[0]]])
    out = np.empty_like(excitation)
    state = np.zeros((formants.shape[1], 2))  # (sections, 2) transposed direct form II
    previous = 0
    for start, stop in itertools.pairwise(bounds):
        state = retune_state(state, sos[previous], sos[start])
        block = slice(start * FRAME, stop * FRAME)
        out[block], state = signal.sosfilt(sos[start], excitation[block], zi=state)
        previous = start
    return out


def retune_state(state: np.ndarray, old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Carry resonator state across a coefficient change so the output stays continuous.

    A resonator ``y[n] = b0 x[n] - a1 y[n-1] - a2 y[n-2]`` in transposed direct form II keeps
    ``z1 = -a1 y[n] - a2 y[n-1]`` and ``z2 = -a2 y[n]``. Re-expressing the last two outputs with
    the new ``a1`` (``a2`` is fixed by the bandwidth) lets the new filter go on from the actual
    past output, as a direct-form-I filter would, instead of reinterpreting stale state.
    """
    last_output = -state[:, 1] / old[:, 5]
    retuned = state.copy()
    retuned[:, 0] += (old[:, 4] - new[:, 4]) * last_output
    return retuned


def synthesise(rng: np.random.Generator, voice: Voice, seconds: float) -> np.ndarray:
    """Mono speech at SYNTH_RATE, ``seconds`` long, in arbitrary units."""
    tracks = plan_utterance(rng, voice, round(seconds * SYNTH_RATE / FRAME))
    speech = vocal_tract(glottal_source(rng, voice, tracks), tracks.formants, voice)
    cavities = [peaking_section(f, g, q, SYNTH_RATE) for f, g, q in voice.cavities]
    return signal.sosfilt(np.stack(cavities), speech)


# --------------------------------------------------------------------------------------------
# Recording session at the session's sample rate


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)) + 1e-20))


def peaking_section(freq: float, gain_db: float, q: float, sample_rate: int) -> np.ndarray:
    """One second-order peaking-EQ section (RBJ audio EQ cookbook) as an sos row."""
    amplitude = 10 ** (gain_db / 40)
    w0 = 2 * np.pi * freq / sample_rate
    alpha = np.sin(w0) / (2 * q)
    b = [1 + alpha * amplitude, -2 * np.cos(w0), 1 - alpha * amplitude]
    a = [1 + alpha / amplitude, -2 * np.cos(w0), 1 - alpha / amplitude]
    return np.concatenate([b, a]) / a[0]


def channel_filter(x: np.ndarray, session: Session) -> np.ndarray:
    """Microphone and line colouring: high-pass, EQ bumps, sometimes a band limit."""
    rate = session.sample_rate
    sections = [signal.butter(2, session.highpass_hz, "highpass", fs=rate, output="sos")]
    sections += [peaking_section(f, g, q, rate)[None] for f, g, q in session.peaks]
    if session.lowpass_hz is not None:
        sections.append(signal.butter(4, session.lowpass_hz, "lowpass", fs=rate, output="sos"))
    return signal.sosfilt(np.concatenate(sections), x)


def add_reverb(rng: np.random.Generator, x: np.ndarray, session: Session) -> np.ndarray:
    """Convolve with a direct path plus exponentially decaying noise (a simple room)."""
    rate, rt60 = session.sample_rate, session.reverb_rt60
    time_s = np.arange(int(rt60 * rate)) / rate
    tail = rng.normal(size=time_s.size) * np.exp(-6.91 * time_s / rt60)
    tail[: int(0.003 * rate)] = 0.0  # 3 ms until the first reflection
    tail *= 10 ** (-session.reverb_drr_db / 20) / np.sqrt(np.sum(tail**2))
    tail[0] = 1.0
    return signal.fftconvolve(x, tail)[: x.size]


def coloured_noise(rng: np.random.Generator, n_samples: int, colour: float) -> np.ndarray:
    noise = rng.normal(size=n_samples)
    return signal.lfilter([1.0], [1.0, -colour], noise) if colour else noise


def set_loudness(x: np.ndarray, target_rms: float, rate: int, ceiling: float = 0.99) -> np.ndarray:
    """Scale to ``target_rms``; peaks that would pass ``ceiling`` go through a limiter (AGC).

    Turning loud clips down instead would make the loudness of a clip depend on how peaky
    the voice is, i.e. on the speaker. The limiter's gain is a moving average of a moving
    minimum of the needed gain (10 ms windows), which never exceeds the gain a peak needs.
    """
    width = max(1, int(0.01 * rate))
    for _ in range(4):
        x = x * (target_rms / rms(x))
        needed = np.minimum(1.0, ceiling / np.maximum(np.abs(x), 1e-12))
        if needed.min() == 1.0:
            return x
        gain = ndimage.uniform_filter1d(ndimage.minimum_filter1d(needed, width), width)
        x = x * np.minimum(gain, needed)
    return x * min(1.0, ceiling / np.max(np.abs(x)))


def record(rng: np.random.Generator, speech: np.ndarray, session: Session) -> np.ndarray:
    """Speech at SYNTH_RATE -> what the session's device stored, (samples, channels) in [-1, 1]."""
    x = speech
    if session.sample_rate != SYNTH_RATE:
        x = soxr.resample(x, SYNTH_RATE, session.sample_rate)
    if session.reverb_rt60 is not None:
        x = add_reverb(rng, x, session)
    noise = coloured_noise(rng, x.size, session.noise_colour)  # room noise reaches the mic too
    x = channel_filter(x / rms(x) + noise * 10 ** (-session.snr_db / 20) / rms(noise), session)
    x = set_loudness(x, 10 ** (session.rms_dbfs / 20), session.sample_rate)
    if session.channels == 1:
        return x[:, None]
    delay = int(rng.integers(0, 20))
    other = np.concatenate([np.zeros(delay), x[: x.size - delay]]) * rng.uniform(0.7, 1.0)
    return np.stack([x, other], axis=1)


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


def pick_negatives(
    rng: np.random.Generator, first: np.ndarray, second: np.ndarray, gender: np.ndarray, count: int
) -> np.ndarray:
    """Choose ``count`` of the candidate pairs ``(first[i], second[i])``, spreading file use.

    Picks alternate between same-gender and cross-gender pairs while both remain, and always
    take a pair whose files have been used least so far.
    """
    if first.size < count:
        raise ValueError(f"only {first.size} different-speaker pairs for {count} negatives")
    same_gender = gender[first] == gender[second]
    tiebreak = rng.random(first.size)
    uses = np.zeros(int(max(first.max(), second.max())) + 1)
    free = np.ones(first.size, dtype=bool)
    chosen = np.empty(count, dtype=np.int64)
    for k in range(count):
        pool = free & (same_gender == (k % 2 == 0))
        if not pool.any():
            pool = free
        load = np.where(pool, uses[first] + uses[second] + tiebreak, np.inf)
        chosen[k] = pick = int(np.argmin(load))
        free[pick] = False
        uses[first[pick]] += 1
        uses[second[pick]] += 1
    return chosen


def make_trials(rng: np.random.Generator, meta: pd.DataFrame) -> pd.DataFrame:
    """Every same-speaker pair plus as many different-speaker pairs, shuffled.

    Returns columns ``audio_1, audio_2, label`` (1 = same speaker); no file is paired with
    itself and no pair appears twice (in either order).
    """
    files, speaker = meta["file"].to_numpy(), meta["speaker"].to_numpy()
    first, second = np.triu_indices(len(meta), k=1)
    same = speaker[first] == speaker[second]
    positives = np.flatnonzero(same)
    different = np.flatnonzero(~same)
    negatives = different[
        pick_negatives(
            rng, first[different], second[different], meta["gender"].to_numpy(), positives.size
        )
    ]
    chosen = rng.permutation(np.concatenate([positives, negatives]))
    return random_sides(rng, files, first[chosen], second[chosen], same[chosen].astype(int))


def random_sides(
    rng: np.random.Generator,
    files: np.ndarray,
    first: np.ndarray,
    second: np.ndarray,
    labels: np.ndarray,
) -> pd.DataFrame:
    """The trial table of index pairs, each pair's two files swapped with probability 1/2."""
    swap = rng.random(first.size) < 0.5
    left = np.where(swap, second, first)
    right = np.where(swap, first, second)
    return pd.DataFrame({"audio_1": files[left], "audio_2": files[right], "label": labels})


SMALL_TEST = 2000  # test files up to which sample_trials lists every candidate pair


def sample_trials(rng: np.random.Generator, meta: pd.DataFrame, n_pairs: int) -> pd.DataFrame:
    """``n_pairs`` trials, half same-speaker (drawn from all same-speaker pairs), half not
    (random different-speaker pairs, half of them same-gender), shuffled; for test sets too
    large to list every pair (Zalo's 2,789 files in 50,000 pairs). Same columns and rules as
    :func:`make_trials`."""
    files, speaker = meta["file"].to_numpy(), meta["speaker"].to_numpy()
    gender = meta["gender"].to_numpy()
    groups = [np.flatnonzero(speaker == s) for s in np.unique(speaker)]
    same = np.concatenate(
        [g[np.stack(np.triu_indices(g.size, k=1)).T] for g in groups if g.size > 1]
    )
    n_positive = n_pairs // 2
    if same.shape[0] < n_positive:
        raise ValueError(f"only {same.shape[0]} same-speaker pairs for {n_positive} positives")
    positives = same[rng.choice(same.shape[0], n_positive, replace=False)]
    wanted = n_pairs - n_positive
    negatives = sample_negatives(rng, speaker, gender, wanted)
    chosen = np.concatenate([positives, negatives])
    labels = np.concatenate([np.ones(n_positive, int), np.zeros(wanted, int)])
    order = rng.permutation(n_pairs)
    chosen, labels = chosen[order], labels[order]
    return random_sides(rng, files, chosen[:, 0], chosen[:, 1], labels)


def sample_negatives(
    rng: np.random.Generator, speaker: np.ndarray, gender: np.ndarray, count: int
) -> np.ndarray:
    """``count`` distinct different-speaker index pairs ``(i < j)``, half of them same-gender
    when the set has both genders (as many as exist, on a small set)."""
    n = speaker.size
    if n <= SMALL_TEST:  # list every candidate
        first, second = np.triu_indices(n, k=1)
        other = speaker[first] != speaker[second]
        first, second = first[other], second[other]
        if first.size < count:
            raise ValueError(f"only {first.size} different-speaker pairs for {count} negatives")
        same = gender[first] == gender[second]
        n_same = min(count // 2, int(same.sum()))
        n_same = max(n_same, count - int((~same).sum()))
        rows = np.concatenate(
            [
                rng.choice(np.flatnonzero(same), n_same, replace=False),
                rng.choice(np.flatnonzero(~same), count - n_same, replace=False),
            ]
        )
        return np.stack([first[rows], second[rows]], axis=1)
    both = np.unique(gender).size > 1
    parts = []
    for same_gender, wanted in ((True, count // 2 if both else count), (False, count - count // 2)):
        if not both and not same_gender:
            continue
        found = np.empty((0, 2), dtype=np.int64)
        while found.shape[0] < wanted:  # rejection sampling: millions of candidates
            draw = np.sort(rng.integers(0, n, size=(4 * wanted, 2)), axis=1)
            keep = (speaker[draw[:, 0]] != speaker[draw[:, 1]]) & (
                (gender[draw[:, 0]] == gender[draw[:, 1]]) == same_gender
            )
            found = np.unique(np.concatenate([found, draw[keep]]), axis=0)
        parts.append(found[rng.permutation(found.shape[0])[:wanted]])
    return np.concatenate(parts)


# --------------------------------------------------------------------------------------------
# Entry points


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
