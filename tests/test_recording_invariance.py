"""End to end over HTTP: the served bundle gives the unaltered clip's answer whatever the gain,
DC offset or channel layout of the upload, and warns about clips outside the model's range."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pandas as pd
import pytest
import soxr

from src.config import ServeConfig
from src.data.cache import AudioCache
from src.serve.app import BackgroundServer, create_app
from src.serve.ensemble import BundleModel
from src.serve.invariance import ALTERATIONS, SAME_SAMPLES, float_wav

RATE = 16000


@pytest.fixture(scope="module")
def served(tiny_bundle):
    model = BundleModel.load(tiny_bundle.bundle_dir)
    with (
        BackgroundServer(create_app(model, ServeConfig(max_seconds=30))) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        yield client, model


@pytest.fixture(scope="module")
def test_waves(tiny_bundle) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Three test pairs and their clips (the prepare cache, at peak 0.19: x4 stays below 1)."""
    pairs = pd.read_csv(tiny_bundle.submission_scores_path, dtype={"audio_1": str, "audio_2": str})
    pairs = pairs[["audio_1", "audio_2"]].head(3)
    cache = AudioCache(tiny_bundle.paths.prep_dir)
    ids = cache.manifest[cache.manifest["split"] == "test"].set_index("name")["id"]
    names = set(pairs["audio_1"]) | set(pairs["audio_2"])
    return pairs, {n: cache.samples(ids[n]) * np.float32(0.2) for n in names}


def predict(client: httpx.Client, one: bytes, two: bytes) -> dict:
    response = client.post(
        "/api/predict", files={"audio_1": ("a.wav", one), "audio_2": ("b.wav", two)}
    )
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("alteration", list(ALTERATIONS))
def test_an_altered_recording_gets_the_unaltered_answer(served, test_waves, alteration) -> None:
    client, _ = served
    pairs, waves = test_waves
    for first, second in zip(pairs["audio_1"], pairs["audio_2"], strict=True):
        one = float_wav(waves[first], RATE)
        expected = predict(client, one, float_wav(waves[second], RATE))
        got = predict(client, one, float_wav(ALTERATIONS[alteration](waves[second]), RATE))
        assert got["label"] == expected["label"]
        if alteration in SAME_SAMPLES:  # the same decoded samples: the same probability
            assert got["probability"] == expected["probability"]
            assert got["scores"] == expected["scores"]
        else:  # DC: removed up to the float rounding of the stored file
            assert got["probability"] == pytest.approx(expected["probability"], abs=1e-4)
        if "channel" in alteration:
            assert any(
                w.startswith("audio_2: multi-channel file: used channel 1") for w in got["warnings"]
            )


def test_out_of_range_uploads_are_answered_with_a_warning_saying_why(served, test_waves) -> None:
    client, model = served
    pairs, waves = test_waves
    first, second = pairs.iloc[0]
    one = float_wav(waves[first], RATE)
    assert predict(client, one, float_wav(waves[second], RATE))["warnings"] == []
    phone = soxr.resample(waves[second], RATE, 8000).astype(np.float32)
    said = predict(client, one, float_wav(phone, 8000))["warnings"]
    assert any(w.startswith("audio_2: recorded at 8000 Hz (< 16000 Hz)") for w in said)
    window = max(run.cfg.embed.window_seconds for run in model.runs)
    middle = waves[second].size // 2  # 0.6 s of speech: above data.min_scored_seconds (0.2 s)
    short = waves[second][middle - int(0.3 * RATE) : middle + int(0.3 * RATE)]
    said = predict(client, one, float_wav(short, RATE))["warnings"]
    assert any(w.startswith("audio_2: only 0.") for w in said), said
    assert any(f"s of speech (< {window:.2f} s, the model's window)" in w for w in said), said
    clipped = np.clip(waves[second] * np.float32(20), -0.5, 0.5)
    said = predict(client, one, float_wav(clipped, RATE))["warnings"]
    assert any(w.startswith("audio_2: clipped: ") for w in said)
    # a clip with nothing but a DC offset is silent once it is removed: refused, with the reason
    dc_only = float_wav(np.full(RATE, 0.05, np.float32), RATE)
    refused = client.post(
        "/api/predict", files={"audio_1": ("a.wav", one), "audio_2": ("b.wav", dc_only)}
    )
    assert refused.status_code == 422, refused.text
    assert "only a constant DC offset of +0.0500" in refused.json()["detail"]


def test_batch_answers_and_warnings_per_pair(served, test_waves) -> None:
    client, _ = served
    pairs, waves = test_waves
    first, second = pairs.iloc[0]
    files = [
        ("files", ("a.wav", float_wav(waves[first], RATE))),
        ("files", ("b.wav", float_wav(waves[second], RATE))),
        (
            "files",
            (
                "b_opposite.wav",
                float_wav(ALTERATIONS["opposite-phase second channel"](waves[second]), RATE),
            ),
        ),
    ]
    asked = [["a.wav", "b.wav"], ["a.wav", "b_opposite.wav"]]
    response = client.post("/api/predict_batch", files=files, data={"pairs": json.dumps(asked)})
    assert response.status_code == 200, response.text
    plain, opposite = response.json()["results"]
    assert opposite["probability"] == plain["probability"] and opposite["label"] == plain["label"]
    assert plain["warnings"] == []
    assert any(
        w.startswith("b_opposite.wav: multi-channel file: used channel 1")
        for w in opposite["warnings"]
    )
    assert response.json()["warnings"] == opposite["warnings"]


def test_export_checks_the_bundle_it_writes(tiny_bundle) -> None:
    manifest = json.loads((tiny_bundle.bundle_dir / "manifest.json").read_text())
    found = manifest["invariance"]
    assert found["recording_features"] is False and found["pairs"] > 0
    assert [row["alteration"] for row in found["alterations"]] == list(ALTERATIONS)
    assert all(row["answers_changed"] == 0 for row in found["alterations"])
    table = pd.read_csv(tiny_bundle.bundle_dir / "invariance.csv")
    same = table[table["alteration"].isin(SAME_SAMPLES)]
    assert (same["probability"] == same["altered_probability"]).all()


def test_the_report_shows_both_bundle_stackers_the_invariance_and_file_warnings(
    tiny_bundle,
) -> None:
    from src.report.report import report_stage

    report_stage(tiny_bundle)
    summary = (tiny_bundle.report_dir / "summary.md").read_text()
    section = summary.split("## Recording conditions", 1)[1]
    assert "without the recording group (content only)" in section
    assert "with the recording group (level, SNR" in section
    assert "| opposite-phase second channel |" in section
    warnings = pd.read_csv(tiny_bundle.report_dir / "file_warnings.csv")
    assert list(warnings.columns) == ["name", "warning"]
