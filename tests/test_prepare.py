"""The prepare stage on good data and on every kind of bad input."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from src.data.audio import AudioError, decode_audio
from src.data.cache import AudioCache, read_manifest
from src.data.prepare import prepare_stage
from src.data.zalo import DataLayoutError
from tests.conftest import config_for, write_tone


def run_prepare(root: Path, tmp_path: Path, *overrides: str):
    cfg = config_for(root, tmp_path, *overrides)
    prep = prepare_stage(cfg)
    return read_manifest(prep), pd.read_csv(prep / "bad_files.csv"), prep


def test_manifest_and_cache(zalo_root: Path, tmp_path: Path) -> None:
    manifest, bad, prep = run_prepare(zalo_root, tmp_path)
    assert len(bad) == 0
    assert (manifest["split"] == "train").sum() == 24 and (manifest["split"] == "test").sum() == 6
    assert set(manifest["sample_rate"]) == {16000, 44100, 48000}
    row = manifest[manifest["id"] == "train/100-M-20/100-1.wav"].iloc[0]
    assert (row["speaker"], row["gender"], row["age"]) == ("100", "M", "20")
    assert row["duration"] == pytest.approx(0.75, abs=1e-3)
    assert row["length"] == 12000 and row["frames"] == int(0.75 * 44100)
    cache = AudioCache(prep)
    clip = cache.samples(row["id"])
    assert clip.dtype == np.float32 and clip.size == 12000 and np.abs(clip).max() <= 1.0
    crop = cache.crop(row["id"], 20000, np.random.default_rng(0))  # longer than the clip: tiled
    assert crop.size == 20000


def test_rerun_reuses_and_change_redoes(zalo_root: Path, tmp_path: Path, caplog) -> None:
    run_prepare(zalo_root, tmp_path)
    caplog.clear()
    with caplog.at_level("INFO"):
        run_prepare(zalo_root, tmp_path)
    assert "reusing" in caplog.text
    write_tone(zalo_root / "train" / "100-M-20" / "100-9.wav", seconds=2.0)
    manifest, _, _ = run_prepare(zalo_root, tmp_path)
    assert "train/100-M-20/100-9.wav" in set(manifest["id"])


def test_stereo_is_mixed_down(zalo_root: Path, tmp_path: Path) -> None:
    write_tone(zalo_root / "train" / "100-M-20" / "stereo.wav", channels=2)
    write_tone(zalo_root / "train" / "100-M-20" / "eight.wav", channels=8)
    manifest, bad, _ = run_prepare(zalo_root, tmp_path)
    channels = manifest.set_index("name").loc[["stereo.wav", "eight.wav"], "channels"].tolist()
    assert channels == [2, 8] and len(bad) == 0


@pytest.mark.parametrize(
    ("name", "writer", "reason"),
    [
        ("empty.wav", lambda p: p.write_bytes(b""), "empty file"),
        ("corrupt.wav", lambda p: p.write_bytes(b"RIFF\x00\x00garbage" * 10), "corrupt"),
        ("truncated.wav", lambda p: p.write_bytes(write_tone(p).read_bytes()[:30]), "corrupt"),
        ("silent.wav", lambda p: sf.write(p, np.zeros(16000, np.float32), 16000), "silent"),
        ("short.wav", lambda p: sf.write(p, np.full(1, 0.5, np.float32), 16000), "too short"),
        ("nan.wav", lambda p: sf.write(p, np.full(9, np.nan, np.float32), 16000, "FLOAT"), "NaN"),
        ("zero.wav", lambda p: sf.write(p, np.zeros(0, np.float32), 16000), "zero-length|empty"),
        ("notes.txt", lambda p: p.write_text("hello"), "unsupported extension"),
    ],
)  # fmt: skip
def test_bad_training_file_is_skipped_with_reason(
    zalo_root, tmp_path, name, writer, reason
) -> None:
    path = zalo_root / "train" / "101-F-21" / name
    writer(path)
    manifest, bad, _ = run_prepare(zalo_root, tmp_path)
    assert name not in set(manifest["name"])
    row = bad[bad["path"] == str(path)]
    assert len(row) == 1 and pd.Series(row["reason"]).str.contains(reason, case=False).all()


def test_badly_named_speaker_folder_is_skipped(zalo_root: Path, tmp_path: Path) -> None:
    write_tone(zalo_root / "train" / "speaker_without_gender" / "a.wav")
    manifest, bad, _ = run_prepare(zalo_root, tmp_path)
    assert bad["reason"].str.contains("<id>-<gender>-<age>").any()
    assert "a.wav" not in set(manifest["name"])


def test_age_na_is_kept_as_text(zalo_root: Path, tmp_path: Path) -> None:
    write_tone(zalo_root / "train" / "777-F-NA" / "x.wav")
    manifest, _, _ = run_prepare(zalo_root, tmp_path)
    assert manifest.set_index("name").loc["x.wav", "age"] == "NA"


def test_exact_duplicates_are_kept_out_of_training(zalo_root: Path, tmp_path: Path) -> None:
    source = zalo_root / "train" / "100-M-20" / "100-0.wav"
    (zalo_root / "train" / "102-M-22" / "copy.wav").write_bytes(source.read_bytes())
    manifest, _, _ = run_prepare(zalo_root, tmp_path)
    row = manifest.set_index("name").loc["copy.wav"]
    assert row["status"] == "duplicate" and row["duplicate_of"] == "train/100-M-20/100-0.wav"


def test_missing_test_file_named_in_csv(zalo_root: Path, tmp_path: Path) -> None:
    """Fatal with data.strict_test; by default its pairs are listed for a fallback answer."""
    (zalo_root / "public-test" / "test002.wav").unlink()
    with pytest.raises(DataLayoutError, match="test002.wav"):
        run_prepare(zalo_root, tmp_path / "strict", "data.strict_test=true")
    _, _, prep = run_prepare(zalo_root, tmp_path)
    fallback = pd.read_csv(prep / "fallback_pairs.csv")
    assert len(fallback) and fallback["reason"].str.contains("test002.wav: not in the test").all()


def test_unreadable_test_file_named_in_csv(zalo_root: Path, tmp_path: Path) -> None:
    (zalo_root / "public-test" / "test003.wav").write_bytes(b"not audio at all")
    with pytest.raises(DataLayoutError, match=r"test003.wav.*bad_files.csv"):
        run_prepare(zalo_root, tmp_path / "strict", "data.strict_test=true")
    _, _, prep = run_prepare(zalo_root, tmp_path)
    fallback = pd.read_csv(prep / "fallback_pairs.csv")
    assert fallback["reason"].str.contains("test003.wav: corrupt").all()
    pairs = pd.read_csv(prep / "test_pairs.csv")
    assert "test003.wav" not in set(pairs["audio_1"]) | set(pairs["audio_2"])


def test_csv_missing_column_is_fatal(zalo_root: Path, tmp_path: Path) -> None:
    (zalo_root / "public-test.csv").write_text("audio_1,second\ntest000.wav,test001.wav\n")
    with pytest.raises(DataLayoutError, match="missing column"):
        run_prepare(zalo_root, tmp_path)


def test_csv_duplicate_rows_and_extra_columns_are_logged(zalo_root, tmp_path, caplog) -> None:
    (zalo_root / "public-test.csv").write_text(
        "audio_1,audio_2,note\ntest000.wav,test001.wav,a\ntest000.wav,test001.wav,a\n"
    )
    with caplog.at_level("WARNING"):
        _, _, prep = run_prepare(zalo_root, tmp_path)
    assert "duplicate row" in caplog.text and "extra column" in caplog.text
    assert len(pd.read_csv(prep / "test_pairs.csv")) == 2


def test_silent_or_too_short_test_file_gets_the_fallback(zalo_root, tmp_path) -> None:
    """The API's rule (src.data.audio.unusable_reason): such a file's pairs are not scored; a
    0.15 s clip is above the floor (data.min_scored_seconds, 0.1 s): kept, to be scored."""
    sf.write(zalo_root / "public-test" / "test001.wav", np.zeros(16000, np.float32), 16000)
    write_tone(zalo_root / "public-test" / "test002.wav", seconds=0.15)
    # 1.5 s, of which 0.1 s loud and the rest 45 dB below: little measured speech, but long
    # enough: scored (the rule is the clip's duration, not a relative speech measure)
    burst = 0.005 * np.sin(np.arange(24000, dtype=np.float32) / 3)
    burst[8000:9600] *= 178.0
    sf.write(zalo_root / "public-test" / "test003.wav", burst, 16000)
    write_tone(zalo_root / "public-test" / "test004.wav", seconds=0.09)  # < data.min_duration
    manifest, bad, prep = run_prepare(zalo_root, tmp_path)
    kept = manifest.set_index("name").loc["test003.wav"]
    assert kept["speech_seconds"] < 0.2 and kept["duration"] > 1.4
    assert manifest.set_index("name").loc["test002.wav", "duration"] == pytest.approx(0.15)
    assert not {"test001.wav", "test004.wav"} & set(manifest["name"])
    reasons = dict(zip(bad["path"].map(lambda p: Path(p).name), bad["reason"], strict=True))
    assert reasons["test001.wav"] == (
        "silent: RMS -inf dBFS, peak 0 (< -80 dBFS, data.silence_dbfs): digital silence (every "
        "sample is 0)"
    )
    assert reasons["test004.wav"] == "too short: 0.090 s < 0.1 s"
    assert "test002.wav" not in reasons
    fallback = pd.read_csv(prep / "fallback_pairs.csv")
    assert fallback["reason"].str.contains("test001.wav: silent|test004.wav: too short").all()
    pairs = pd.read_csv(prep / "test_pairs.csv")
    named = set(pairs["audio_1"]) | set(pairs["audio_2"])
    assert not {"test001.wav", "test004.wav"} & named and "test002.wav" in named
    # with the floor raised, a 0.15 s test file is unusable again (its pairs: the fallback)
    manifest, bad, _ = run_prepare(zalo_root, tmp_path / "strict", "data.min_scored_seconds=0.2")
    assert "test002.wav" not in set(manifest["name"])
    reasons = dict(zip(bad["path"].map(lambda p: Path(p).name), bad["reason"], strict=True))
    assert reasons["test002.wav"] == "too short: 0.15 s (< 0.2 s, data.min_scored_seconds)"
    # a train clip as short is kept: data.min_scored_seconds is about scoring
    write_tone(zalo_root / "train" / "100-M-20" / "short.wav", seconds=0.12)
    manifest, _, _ = run_prepare(zalo_root, tmp_path / "strict", "data.min_scored_seconds=0.2")
    assert "short.wav" in set(manifest["name"])


def test_resampling_and_long_clip_truncation(tmp_path: Path) -> None:
    path = write_tone(tmp_path / "long.wav", seconds=3.0, rate=96000)
    clip = decode_audio(path, 16000, max_seconds=2.0)
    assert clip.samples.size == 32000 and clip.truncated and clip.source_rate == 96000
    low = decode_audio(write_tone(tmp_path / "low.wav", rate=8000), 16000)
    assert low.samples.size == 16000


def test_decode_refuses_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="not found"):
        decode_audio(tmp_path / "nope.wav")


def test_unusable_reasons_read_below_their_threshold() -> None:
    """A clip just under a threshold is not printed as the threshold itself ("0.20 s (< 0.2 s)"):
    the value gets as many decimals as it takes (doctests are not collected by pytest)."""
    from src.data.audio import describe_clip, shown_below, unusable_reason

    tone = np.sin(np.arange(3197, dtype=np.float32) / 4)  # 0.1998 s at 16 kHz
    reason = unusable_reason(describe_clip(tone, 16000, 3197, 16000, 0.1), -80.0, 0.2)
    assert reason == "too short: 0.1998 s (< 0.2 s, data.min_scored_seconds)"
    hum = np.float32(10 ** (-80.04 / 20) * np.sqrt(2)) * np.sin(np.arange(16000) / 4)
    clip = describe_clip(hum.astype(np.float32), 16000, 16000, 16000, 0.1)
    assert -80.05 < clip.rms_dbfs < -80.0
    assert unusable_reason(clip, -80.0, 0.2).startswith("silent: RMS -80.04 dBFS")
    assert shown_below(0.15, 0.2, 2) == "0.15" and shown_below(float("-inf"), -80.0, 1) == "-inf"
    assert shown_below(float("nan"), 0.2, 2) == "nan"
