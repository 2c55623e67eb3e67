"""Voices, sessions and clip synthesis of the demo data (see ``src.data.demo``).

A source-filter model: each speaker's ``Voice`` drives a glottal source through a vocal tract of
gliding formants; each clip is then recorded in a random ``Session`` (sample rate, channel
colouring, reverberation, noise, loudness, mono or stereo). Every random draw comes from a
generator keyed by ``(seed, stream, ...)`` (see ``stream``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import soxr
from scipy import ndimage, signal

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
