"""Tests of the demo data generator: layout, trial lists, determinism, audio, identity signal."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import soxr
from scipy.fft import dct

from src.data.demo import (
    MAX_SECONDS,
    MIN_SECONDS,
    PROFILES,
    SAMPLE_RATES,
    generate_demo,
    main,
    make_trials,
    sample_trials,
)

SMALL = {"n_speakers": 6, "clips_per_speaker": 4, "n_test_speakers": 4, "test_clips_per_speaker": 3}
FOLDER = re.compile(r"^(\d+)-([MF])-(\d+|NA)$")
TEST_NAME = re.compile(r"^[A-Za-z0-9]{20}\.wav$")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("demo")
    return root, generate_demo(root, seed=0, **SMALL)


def read_tables(root: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    trials = pd.read_csv(root / "public-test.csv")
    labels = pd.read_csv(root / "public-test-labels.csv")
    meta = pd.read_csv(root / "public-test-meta.csv")
    return trials, labels, meta


def all_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_train_layout_and_names(demo: tuple[Path, dict]) -> None:
    root, summary = demo
    folders = sorted((root / "train").iterdir())
    assert len(folders) == SMALL["n_speakers"] == summary["train_speakers"]
    total = 0
    for folder in folders:
        match = FOLDER.match(folder.name)
        assert match, folder.name
        speaker, _, age = match.groups()
        assert age == "NA" or 18 <= int(age) <= 70
        clips = sorted(p.name for p in folder.iterdir())
        assert all(re.fullmatch(rf"{speaker}-\d+\.wav", name) for name in clips), clips
        assert 3 <= len(clips) <= 5  # 4 +- a third
        total += len(clips)
    assert total == SMALL["n_speakers"] * SMALL["clips_per_speaker"] == summary["train_clips"]


def test_public_test_names(demo: tuple[Path, dict]) -> None:
    root, summary = demo
    names = sorted(p.name for p in (root / "public-test").iterdir())
    assert len(names) == SMALL["n_test_speakers"] * SMALL["test_clips_per_speaker"]
    assert len(names) == summary["test_clips"]
    assert all(TEST_NAME.match(name) for name in names), names
    assert len({name.lower() for name in names}) == len(names)


def test_trials_and_answer_key_agree(demo: tuple[Path, dict]) -> None:
    root, summary = demo
    trials, labels, meta = read_tables(root)
    assert list(trials.columns) == ["audio_1", "audio_2"]
    assert list(labels.columns) == ["audio_1", "audio_2", "label"]
    assert list(meta.columns) == ["file", "speaker", "gender", "duration"]
    pd.testing.assert_frame_equal(trials, labels[["audio_1", "audio_2"]])
    assert len(trials) == summary["trials"] and labels["label"].sum() * 2 == len(labels)
    on_disk = {p.name for p in (root / "public-test").iterdir()}
    assert set(trials["audio_1"]) | set(trials["audio_2"]) == on_disk == set(meta["file"])
    speaker = meta.set_index("file")["speaker"]
    same = speaker[labels["audio_1"]].to_numpy() == speaker[labels["audio_2"]].to_numpy()
    np.testing.assert_array_equal(same.astype(int), labels["label"].to_numpy())
    check_pairs(labels, meta)


def check_pairs(labels: pd.DataFrame, meta: pd.DataFrame) -> None:
    """No self pairs, no duplicates in either order, every file in several pairs, mixed genders."""
    assert (labels["audio_1"] != labels["audio_2"]).all()
    unordered = {frozenset(pair) for pair in zip(labels["audio_1"], labels["audio_2"], strict=True)}
    assert len(unordered) == len(labels)
    uses = pd.concat([labels["audio_1"], labels["audio_2"]]).value_counts()
    assert uses.min() >= 2
    gender = meta.set_index("file")["gender"]
    negatives = labels[labels["label"] == 0]
    same_gender = gender[negatives["audio_1"]].to_numpy() == gender[negatives["audio_2"]].to_numpy()
    assert 0 < same_gender.mean() < 1


def meta_table(speakers: int, clips: int) -> pd.DataFrame:
    """``public-test-meta.csv`` rows: ``clips`` files per speaker, genders alternating."""
    ids = np.repeat(np.arange(speakers), clips)
    return pd.DataFrame(
        {
            "file": [f"f{i:04d}.wav" for i in range(ids.size)],
            "speaker": ids,
            "gender": np.where(ids % 2, "F", "M"),
        }
    )


def test_make_trials_balances_larger_sets() -> None:
    rng = np.random.default_rng(3)
    meta = meta_table(speakers=10, clips=5)
    labels = make_trials(rng, meta)
    assert len(labels) == 2 * 10 * 10  # 10 pairs within each of 10 speakers, as many negatives
    assert labels["label"].mean() == 0.5
    check_pairs(labels, meta)
    uses = pd.concat([labels["audio_1"], labels["audio_2"]]).value_counts()
    assert uses.max() - uses.min() <= 2


def test_sample_trials_draws_balanced_distinct_pairs() -> None:
    """The sampler for Zalo-sized tests: half same-speaker, half different (half of those
    same-gender), no pair twice, no clip with itself."""
    rng = np.random.default_rng(4)
    meta = meta_table(speakers=40, clips=10)
    trials = sample_trials(rng, meta, 3000)
    assert len(trials) == 3000 and trials["label"].mean() == 0.5
    check_pairs(trials, meta)
    gender = dict(zip(meta["file"], meta["gender"], strict=True))
    negatives = trials[trials["label"] == 0]
    same_gender = (negatives["audio_1"].map(gender) == negatives["audio_2"].map(gender)).mean()
    assert same_gender == 0.5
    with pytest.raises(ValueError, match="same-speaker pairs"):
        sample_trials(rng, meta, 40 * 45 * 2 + 2)


def test_zalo_profile_and_parallel_synthesis_write_the_same_bytes(tmp_path: Path) -> None:
    tiny = {"n_speakers": 2, "clips_per_speaker": 2, "n_test_speakers": 2}
    serial = generate_demo(tmp_path / "one", profile="zalo", n_pairs=4, **tiny)
    parallel = generate_demo(tmp_path / "two", profile="zalo", n_pairs=4, workers=2, **tiny)
    assert serial == parallel and serial["trials"] == 4
    assert all_files(tmp_path / "one") == all_files(tmp_path / "two")
    zalo = PROFILES["zalo"]
    meta = pd.read_csv(tmp_path / "one" / "public-test-meta.csv")
    assert meta["duration"].between(zalo.min_seconds, zalo.max_seconds).all()


def test_same_seed_same_bytes_other_seed_differs(demo: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = demo
    again = generate_demo(tmp_path / "again", seed=0, **SMALL)
    first, second = all_files(root), all_files(tmp_path / "again")
    assert first.keys() == second.keys()
    assert all(first[name] == second[name] for name in first)
    assert again == demo[1]
    generate_demo(tmp_path / "other", seed=1, **SMALL)
    other = all_files(tmp_path / "other")
    shared = first.keys() & other.keys()
    assert all(first[name] != other[name] for name in shared if name.endswith(".wav"))
    assert first["public-test.csv"] != other["public-test.csv"]


def test_audio_formats_and_durations(demo: tuple[Path, dict]) -> None:
    root, _ = demo
    _, _, meta = read_tables(root)
    durations = meta.set_index("file")["duration"]
    for path in root.rglob("*.wav"):
        info = sf.info(path)
        assert info.samplerate in SAMPLE_RATES and info.subtype == "PCM_16"
        assert info.channels in (1, 2)
        assert MIN_SECONDS - 0.01 <= info.duration <= MAX_SECONDS + 0.01
        if path.parent.name == "public-test":
            assert durations[path.name] == pytest.approx(info.duration, abs=1e-3)


def test_test_speakers_are_not_training_speakers(demo: tuple[Path, dict]) -> None:
    root, _ = demo
    _, _, meta = read_tables(root)
    train_ids = {int(FOLDER.match(p.name).group(1)) for p in (root / "train").iterdir()}
    assert meta["speaker"].nunique() == SMALL["n_test_speakers"]
    assert not train_ids & set(meta["speaker"])
    assert set(meta["gender"]) == {"M", "F"}


def test_refuses_to_mix_with_an_earlier_set(tmp_path: Path) -> None:
    args = ["--speakers", "2", "--clips", "2", "--test-speakers", "2", "--test-clips", "2"]
    main([str(tmp_path), *args])
    assert (tmp_path / "public-test-labels.csv").exists()
    with pytest.raises(SystemExit):
        main([str(tmp_path), *args])
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_demo(tmp_path, n_speakers=2, clips_per_speaker=2, n_test_speakers=2)
    main([str(tmp_path), *args, "--overwrite", "--seed", "5"])
    with pytest.raises(ValueError, match="clips_per_speaker"):
        generate_demo(tmp_path / "bad", clips_per_speaker=1)


def mean_mfcc(path: Path) -> np.ndarray:
    """Naive speaker feature: mean of MFCC 1-19 over the loud frames, at 16 kHz."""
    audio, rate = sf.read(path, always_2d=True)
    audio = soxr.resample(audio.mean(axis=1), rate, 16000)
    starts = np.arange(0, audio.size - 400, 160)
    frames = audio[starts[:, None] + np.arange(400)] * np.hanning(400)  # (frames, 400)
    power = np.abs(np.fft.rfft(frames, 512)) ** 2  # (frames, 257)
    edges = np.linspace(0, 2840, 42)  # 40 triangles equally spaced on the mel scale
    centres_hz = 700 * (10 ** (edges / 2595) - 1)
    bins = np.fft.rfftfreq(512, 1 / 16000)
    rising = (bins - centres_hz[:-2, None]) / np.diff(centres_hz)[:-1, None]
    falling = (centres_hz[2:, None] - bins) / np.diff(centres_hz)[1:, None]
    mel = np.log(power @ np.clip(np.minimum(rising, falling), 0, None).T + 1e-10)
    energy = mel.mean(axis=1)
    return dct(mel[energy > energy.max() - 7], norm="ortho", axis=1)[:, 1:20].mean(axis=0)


def test_speaker_identity_is_a_real_but_imperfect_signal(demo: tuple[Path, dict]) -> None:
    root, _ = demo
    paths = sorted((root / "train").rglob("*.wav"))
    speakers = np.array([p.parent.name for p in paths])
    features = np.stack([mean_mfcc(p) for p in paths])
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    cosine = features @ features.T
    first, second = np.triu_indices(len(paths), k=1)
    same = speakers[first] == speakers[second]
    scores = cosine[first, second]
    assert scores[same].mean() - scores[~same].mean() > 0.1
    assert scores[same].min() < scores[~same].max()  # not trivially separable
    rates = {(s, sf.info(p).samplerate) for s, p in zip(speakers, paths, strict=True)}
    assert len(rates) > len(set(speakers))  # a speaker's clips come at several sample rates
