"""The same voice gets the same decoded samples and features however it was recorded: DC offset,
level, channel layout; out-of-range clips get warnings; the recording features are a named group
that the served stacker leaves out by default. Every expected value is the unaltered clip's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from src.config import ChecksConfig, DataConfig, ExportConfig
from src.data.audio import AudioError, decode_audio, describe_clip, downmix, remove_dc
from src.data.checks import recording_warnings
from src.data.prepare import _decode_job
from src.data.zalo import SourceFile
from src.serve.bundle import BundleError
from src.serve.export import export_stage
from src.stacking.features import (
    FEATURE_GROUPS,
    RECORDING_FEATURES,
    content_columns,
    feature_group,
    pair_metadata_features,
)
from src.stacking.stack import run_stack
from tests.fixtures.stack_inputs import write_synthetic_inputs

RATE = 16000


def voice(seconds: float = 2.0, rate: int = RATE, seed: int = 0, freq: float = 140.0) -> np.ndarray:
    """A buzzy harmonic tone with a little noise, on the int16 grid, peak about 0.25."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wave = sum(np.sin(2 * np.pi * freq * h * t) / h for h in range(1, 8))
    wave = 0.12 * wave + 0.01 * rng.standard_normal(t.size)
    return (np.round(wave * 32767) / 32767).astype(np.float32)


ALTERED = {
    "gain x0.25": lambda w: w * np.float32(0.25),
    "gain x4": lambda w: w * np.float32(4.0),
    "silent second channel": lambda w: np.stack([w, np.zeros_like(w)], axis=1),
    "opposite-phase second channel": lambda w: np.stack([w, -w], axis=1),
}


def decode_file(tmp_path: Path, wave: np.ndarray, name: str, split: str = "test", rate=RATE):
    """The prepare stage's decoding of a float WAV file: (cached int16 samples, facts, warning)."""
    path = tmp_path / f"{name.replace(' ', '_')}.wav"
    sf.write(path, wave, rate, subtype="FLOAT")
    source = SourceFile(f"{split}/{path.name}", path.name, str(path), split, "", "", "")
    _, cached, facts, error = _decode_job((source, DataConfig()))
    return cached, facts, error


@pytest.mark.parametrize("alteration", list(ALTERED))
def test_gain_and_channel_layout_give_the_unaltered_cached_samples(tmp_path, alteration) -> None:
    wave = voice()
    expected, base_facts, _ = decode_file(tmp_path, wave, "original")
    cached, facts, warning = decode_file(tmp_path, ALTERED[alteration](wave), alteration)
    np.testing.assert_array_equal(cached, expected)
    assert warning == ""
    assert facts["duration"] == base_facts["duration"]
    assert facts["speech_seconds"] == base_facts["speech_seconds"]
    if "channel" in alteration:
        assert facts["downmix"].startswith("channel 1:")
        assert facts["rms_dbfs"] == base_facts["rms_dbfs"]


def test_a_dc_offset_is_removed_before_peak_normalisation_and_kept_in_the_manifest(
    tmp_path,
) -> None:
    wave = voice()
    expected, base_facts, _ = decode_file(tmp_path, wave, "original")
    for offset in (0.05, -0.1):
        cached, facts, _ = decode_file(tmp_path, wave + np.float32(offset), f"dc{offset}")
        # the file stores x + offset in float32, so x's last bits are rounded away: at most a
        # few samples of the int16 cache move by one step
        steps = np.abs(cached.astype(np.int32) - expected)
        assert steps.max() <= 1 and np.count_nonzero(steps) <= cached.size // 1000
        assert facts["dc_offset"] == pytest.approx(offset + base_facts["dc_offset"], abs=1e-4)
        assert facts["rms_dbfs"] == pytest.approx(base_facts["rms_dbfs"], abs=0.01)
        assert facts["snr_db"] == pytest.approx(base_facts["snr_db"], abs=0.01)


def test_the_manifest_has_the_conditioning_columns() -> None:
    from src.data.prepare import MANIFEST_COLUMNS

    assert {"dc_offset", "downmix", "clipped_share", "speech_seconds"} <= set(MANIFEST_COLUMNS)


def test_decoding_does_not_change_the_callers_samples() -> None:
    wave = voice() + np.float32(0.1)
    kept = wave.copy()
    describe_clip(wave, RATE, wave.size, RATE, 0.1)
    np.testing.assert_array_equal(wave, kept)


def test_downmix_keeps_the_speech_and_says_which_channel_and_why() -> None:
    x, y = voice(seed=1), voice(seed=2, freq=173.0)
    columns, _ = remove_dc(np.stack([x, y], axis=1))
    mono, used, how = downmix(columns)
    assert used == [0, 1] and how == "mean of 2 channels"
    # a partly cancelling pair (second channel -0.6 x): the mean loses more than 6 dB
    columns, _ = remove_dc(np.stack([x, -0.6 * x], axis=1))
    mono, used, how = downmix(columns)
    assert used == [0] and "cancel" in how and "opposite phase" in how
    np.testing.assert_array_equal(mono, columns[0])
    # the loudest channel is used whichever it is; a silent one is named
    columns, _ = remove_dc(np.stack([np.zeros_like(x), x], axis=1))
    mono, used, how = downmix(columns)
    assert used == [1] and how == "channel 2: channel 1 silent (no signal)"
    # three channels, one dead: the other two are averaged and the dead one named
    columns, _ = remove_dc(np.stack([x, y, 1e-4 * x], axis=1))
    _, used, how = downmix(columns)
    assert used == [0, 1] and how == "mean of 2 channels, channel 3 silent"


def test_opposite_phase_stereo_is_no_longer_silent(tmp_path) -> None:
    """Averaging would give digital silence; the clip decodes like its first channel."""
    wave = voice()
    path = tmp_path / "opposite.wav"
    sf.write(path, np.stack([wave, -wave], axis=1), RATE, subtype="FLOAT")
    clip = decode_audio(path, RATE, silence_dbfs=-80.0)
    assert clip.rms_dbfs > -30 and "cancel" in clip.downmix


@pytest.mark.parametrize(
    ("wave", "reason"),
    [
        (np.zeros(RATE, np.float32), "digital silence (every sample is 0)"),
        (np.full(RATE, 0.05, np.float32), "only a constant DC offset of +0.0500"),
        (np.full(RATE, 0.05, np.float32) + 1e-6 * voice(1.0), "almost no signal"),
    ],
)
def test_a_silent_training_clip_is_skipped_with_the_real_reason(tmp_path, wave, reason) -> None:
    path = tmp_path / "quiet.wav"
    sf.write(path, wave, RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match="silent") as caught:
        decode_audio(path, RATE, silence_dbfs=-80.0)
    assert reason in str(caught.value)
    _, _, warning = decode_file(tmp_path, wave, "quiet_test")  # a test file: kept, warned
    assert reason in warning


def test_clipping_is_measured_on_flat_tops_not_on_loudness(tmp_path) -> None:
    wave = voice()
    _, loud, _ = decode_file(tmp_path, wave * np.float32(8.0), "loud")  # float: above 1.0, intact
    _, clipped, _ = decode_file(tmp_path, np.clip(wave, -0.12, 0.12), "clipped")
    assert loud["clipped_share"] == 0.0
    assert clipped["clipped_share"] > 0.01
    said = recording_warnings(clipped, ChecksConfig(), 1.0, -80.0)
    assert any(line.startswith("clipped: ") for line in said)
    assert recording_warnings(loud, ChecksConfig(), 1.0, -80.0) == []


def test_out_of_range_clips_are_named_with_how_far_and_thresholds_are_settings(tmp_path) -> None:
    _, phone, _ = decode_file(tmp_path, voice(rate=8000), "phone", rate=8000)
    # 0.5 s: usable (data.min_scored_seconds is 0.2 s), shorter than the model's window
    _, short, _ = decode_file(tmp_path, voice(0.5), "short")
    _, good, _ = decode_file(tmp_path, voice(3.0), "good")
    checks = ChecksConfig()
    assert recording_warnings(good, checks, 2.0, -80.0) == []
    said = recording_warnings(phone, checks, 2.0, -80.0)
    assert said == [
        "recorded at 8000 Hz (< 16000 Hz): band-limited to 4.0 kHz, the model hears less of "
        "the voice"
    ]
    said = recording_warnings(short, checks, 2.0, -80.0)
    assert len(said) == 1 and said[0].startswith("only 0.50 s of speech (< 2.00 s, the model's")
    relaxed = ChecksConfig(min_sample_rate=8000, min_speech_seconds=0.1)
    assert recording_warnings(phone, relaxed, 2.0, -80.0) == []
    assert recording_warnings(short, relaxed, 2.0, -80.0) == []


def test_every_metadata_feature_is_in_one_named_group() -> None:
    table = pd.DataFrame(
        {
            "duration": [2.0],
            "bytes": [64044],
            "frames": [32000],
            "sample_rate": [16000],
            "channels": [1],
            "rms_dbfs": [-20.0],
            "snr_db": [30.0],
        }
    )
    columns = list(pair_metadata_features(table, table).columns)
    groups = {feature_group(c) for c in columns}
    assert groups == set(FEATURE_GROUPS)
    assert set(content_columns(columns)) == {c for c in columns if c.startswith("duration")}
    assert set(columns) - set(content_columns(columns)) == RECORDING_FEATURES
    assert feature_group("cnn__asnorm") == feature_group("fused__g_log_rank_min") == "content"


@pytest.mark.parametrize("recording", [False, True])
def test_the_bundle_stacker_leaves_the_recording_group_out_by_default(tmp_path, recording) -> None:
    cfg = write_synthetic_inputs(
        tmp_path, n_folds=3, train_speakers=60, test_speakers=20, trials_per_fold=300,
        n_test_pairs=200, clips_per_speaker=6,
    )  # fmt: skip
    cfg = cfg.model_copy(update={"export": ExportConfig(recording_features=recording)})
    assert ExportConfig().recording_features is False
    result = run_stack(cfg, [cfg.paths.outputs / "cnn"])
    stacker = pd.read_json(cfg.stack_dir / "stacker" / "stacker.json", typ="series")
    served = set(stacker["groups"][0]["columns"])
    assert bool(served & RECORDING_FEATURES) is recording
    assert {"duration_min", "cnn__asnorm"} <= served
    variants = result.metrics["bundle_stackers"]
    assert set(variants) == {"with_recording", "content_only"}
    chosen = "with_recording" if recording else "content_only"
    assert result.metrics["bundle_stacker"]["eer"] == variants[chosen]["eer"]
    assert result.metrics["bundle_stacker"]["recording_features"] is recording
    # export alone after flipping the key would pack the other stacker: refused, saying what to do
    flipped = cfg.model_copy(update={"export": ExportConfig(recording_features=not recording)})
    with pytest.raises(BundleError, match="run the stack stage with export.recording_features"):
        export_stage(flipped)
