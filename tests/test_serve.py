"""The inference API: a real uvicorn server on loopback serving a tiny exported bundle."""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from src.config import DataConfig, ServeConfig
from src.data.audio import from_int16
from src.data.prepare import _decode_job
from src.data.zalo import SourceFile
from src.serve.app import BackgroundServer, create_app
from src.serve.ensemble import BundleModel, as_cached
from src.serve.uploads import decode_upload

RATE = 16000
LIMITS = ServeConfig(max_upload_mb=0.25, max_seconds=4)


def encode(
    wave: np.ndarray, rate: int = RATE, fmt: str = "WAV", subtype: str | None = None
) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def voice(seconds: float = 1.5, freq: float = 140.0, rate: int = RATE, seed: int = 0) -> np.ndarray:
    """A buzzy harmonic tone with a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wave = sum(np.sin(2 * np.pi * freq * h * t) / h for h in range(1, 8))
    return (0.2 * wave + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def noise(seconds: float = 1.5, seed: int = 1) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).standard_normal(int(seconds * RATE))).astype(
        np.float32
    )


@pytest.fixture(scope="module")
def model(tiny_bundle) -> BundleModel:
    return BundleModel.load(tiny_bundle.bundle_dir)


@pytest.fixture(scope="module")
def served(model):
    with (
        BackgroundServer(create_app(model, LIMITS)) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        yield client, model


def predict(client: httpx.Client, one: bytes, two: bytes, name_2: str = "b.wav") -> httpx.Response:
    return client.post("/api/predict", files={"audio_1": ("a.wav", one), "audio_2": (name_2, two)})


def test_health(served) -> None:
    client, model = served
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["runs"] == ["cnn", "cnn_small"]
    assert body["folds"] == 2 and body["runtime"] == "torch"
    assert body["threshold"] == pytest.approx(model.manifest["threshold"]["value"])
    assert "balanced" in body["threshold_source"] and body["pending"] == 0


def test_valid_pair_gets_label_probability_and_scores(served) -> None:
    client, model = served
    response = predict(client, encode(voice()), encode(noise()))
    assert response.status_code == 200, response.text
    body = response.json()
    assert 0.0 <= body["probability"] <= 1.0
    assert body["label"] == int(body["probability"] >= model.threshold)
    assert set(body["scores"]) == {"cnn", "cnn_small"}
    assert all(np.isfinite(v["asnorm"]) for v in body["scores"].values())
    assert body["warnings"] == []


def test_other_formats_rates_and_channels(served) -> None:
    client, _ = served
    stereo = np.stack([voice(rate=44100), voice(rate=44100)], axis=1)
    as_flac = predict(client, encode(voice()), encode(stereo, 44100, "FLAC"), "b.flac")
    assert as_flac.status_code == 200, as_flac.text
    as_ogg = predict(client, encode(voice()), encode(voice(rate=22050), 22050, "OGG"), "b.ogg")
    assert as_ogg.status_code == 200, as_ogg.text


BAD_UPLOADS = {
    "not audio": (b"this is a text file, not audio " * 10, 415, "not a readable audio file"),
    "empty": (b"", 400, "empty file"),
    "corrupt": (encode(noise(), fmt="FLAC")[:4000], 400, "corrupt audio"),
    "nan": (encode(np.full(RATE, np.nan, np.float32), subtype="FLOAT"), 400, "NaN"),
    "too short": (encode(voice(0.05)), 400, "too short"),
    "too long": (encode(voice(5.0), fmt="FLAC"), 400, "too long"),
    "file too large": (encode(noise(1.0), subtype="FLOAT") * 5, 413, "file too large"),
    "request too large": (bytes(2 << 20), 413, "request too large"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_upload_is_refused_and_server_keeps_serving(served, case: str) -> None:
    client, _ = served
    data, status, reason = BAD_UPLOADS[case]
    response = predict(client, encode(voice()), data)
    assert response.status_code == status, response.text
    assert reason in response.json()["detail"]
    assert "audio_2" in response.json()["detail"] or status == 413
    assert predict(client, encode(voice()), encode(noise())).status_code == 200


def test_missing_field_is_422(served) -> None:
    client, _ = served
    response = client.post("/api/predict", files={"audio_1": ("a.wav", encode(voice()))})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "audio_2"]


def test_silent_clip_is_refused_with_its_level(served) -> None:
    """prepare's rule (data.silence_dbfs): its test file would get the fallback, not a score."""
    client, _ = served
    response = predict(client, encode(voice()), encode(np.zeros(RATE, np.float32)))
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == (
        "audio_2: not scored: silent: RMS -inf dBFS, peak 0 (< -80 dBFS, data.silence_dbfs): "
        "digital silence (every sample is 0)"
    )
    hum = encode(voice() * np.float32(1e-4), subtype="FLOAT")  # about -95 dBFS: a muted input
    clip = decode_upload(hum, RATE, max_seconds=10.0).clip
    assert -100 < clip.rms_dbfs < -90 and clip.peak > 0
    response = predict(client, hum, encode(voice()))
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == (
        f"audio_1: not scored: silent: RMS {clip.rms_dbfs:.1f} dBFS, peak {clip.peak:.2g} "
        "(< -80 dBFS, data.silence_dbfs): almost no signal (a muted or disconnected microphone, "
        "or a very quiet recording)"
    )
    assert predict(client, encode(voice()), encode(noise())).status_code == 200


def test_short_clip_is_scored_with_a_warning_and_one_under_the_floor_refused(served) -> None:
    """0.15 s of speech is above data.min_scored_seconds (0.1 s) but under
    data.short_clip_seconds (0.2 s): scored best-effort with a warning, not refused; 0.09 s is
    under data.min_duration (0.1 s): a bad upload (400); 0.5 s gets today's window warning."""
    client, _ = served
    response = predict(client, encode(voice(0.15)), encode(voice()))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["label"] in (0, 1) and 0.0 <= body["probability"] <= 1.0
    assert body["warnings"][0] == (
        "audio_1: short clip: 0.15 s (< 0.2 s, data.short_clip_seconds): scored best-effort, "
        "less reliable"
    )
    tiny = predict(client, encode(voice(0.09)), encode(voice()))
    assert tiny.status_code == 400, tiny.text
    assert "too short" in tiny.json()["detail"]
    short = predict(client, encode(voice()), encode(voice(0.5)))
    assert short.status_code == 200, short.text
    assert short.json()["warnings"][0].startswith("audio_2: only 0.50 s of speech (< ")


COARSE = "effective bits (< 10 bits, checks.min_effective_bits)"


def test_coarse_uploads_are_scored_with_a_warning_naming_their_effective_bits(served) -> None:
    """An 8-bit (PCM_U8) file and a quiet 16-bit one (peak 0.002: about 7 bits) get the
    warning, in /api/predict and /api/predict_batch; a normal 16-bit file gets none."""
    client, _ = served
    wave = voice(seed=5)
    loud = wave * np.float32(0.9 / np.abs(wave).max())
    quiet = wave * np.float32(0.002 / np.abs(wave).max())
    clips = {
        "a.wav": encode(voice()),
        "normal.wav": encode(loud),
        "eight_bit.wav": encode(loud, subtype="PCM_U8"),
        "quiet.wav": encode(quiet),
    }
    causes = {"eight_bit.wav": "about 8-bit samples", "quiet.wav": "a quiet recording (peak 0.002)"}
    normal = predict(client, clips["a.wav"], clips["normal.wav"])
    assert normal.status_code == 200, normal.text
    assert normal.json()["warnings"] == []
    for name, cause in causes.items():
        response = predict(client, clips["a.wav"], clips[name])
        assert response.status_code == 200, response.text
        (said,) = response.json()["warnings"]
        assert said.startswith("audio_2: coarse samples: ") and COARSE in said and cause in said
    files = [("files", (name, data)) for name, data in clips.items()]
    pairs = "audio_1,audio_2\na.wav,normal.wav\na.wav,eight_bit.wav\nquiet.wav,a.wav\n"
    response = client.post("/api/predict_batch", files=files, data={"pairs": pairs})
    assert response.status_code == 200, response.text
    plain, eight_bit, coarse = (r["warnings"] for r in response.json()["results"])
    assert plain == []
    assert len(eight_bit) == 1 and eight_bit[0].startswith("eight_bit.wav: coarse samples: ")
    assert len(coarse) == 1 and coarse[0].startswith("quiet.wav: coarse samples: ")
    assert all(COARSE in w for w in response.json()["warnings"])


def test_concurrent_clients_get_the_same_answers(served) -> None:
    client, _ = served
    pair = (encode(voice(seed=3)), encode(noise(seed=4)))
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: predict(client, *pair), range(8)))
    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["probability"] for r in responses}) == 1


def test_batch_embeds_each_clip_once_and_answers_like_single_pairs(served, monkeypatch) -> None:
    client, model = served
    clips = {"a.wav": encode(voice(seed=1)), "b.wav": encode(noise(seed=2)), "c.flac": b"junk"}
    clips["d.wav"] = encode(voice(1.2, freq=180.0, seed=3))
    pairs = "audio_1,audio_2\na.wav,b.wav\na.wav,d.wav\nb.wav,d.wav\na.wav,c.flac\n"
    seen: list[int] = []
    original = model.first_level
    monkeypatch.setattr(
        model, "first_level", lambda c, n, p: seen.append(len(n)) or original(c, n, p)
    )
    files = [("files", (name, data)) for name, data in clips.items()]
    response = client.post("/api/predict_batch", files=files, data={"pairs": pairs})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert seen == [3]  # one pass over the three good clips for three pairs
    assert [r["error"] is None for r in results] == [True, True, True, False]
    assert "c.flac" in results[3]["error"] and results[3]["label"] is None
    assert response.json()["refused"] == 1
    single = predict(client, clips["a.wav"], clips["d.wav"]).json()
    # equal up to float noise: a clip embedded in another batch moves its cosines by ~1e-7,
    # which the blend's logistic member passes on (about 1e-9 here)
    assert results[1]["probability"] == pytest.approx(single["probability"], abs=1e-6)
    as_json = client.post(
        "/api/predict_batch", files=files, data={"pairs": '[["b.wav", "d.wav"]]'}
    ).json()
    assert as_json["results"][0]["probability"] == pytest.approx(results[2]["probability"])


def test_batch_refuses_only_the_pairs_with_an_unusable_clip(served) -> None:
    """A silent clip costs its pairs; a 0.15 s clip is scored, its pairs warned (short clip)."""
    client, _ = served
    clips = {"a.wav": encode(voice(seed=1)), "b.wav": encode(noise(seed=2))}
    clips["silent.wav"] = encode(np.zeros(RATE, np.float32))
    clips["short.wav"] = encode(voice(0.15, seed=3))
    pairs = "audio_1,audio_2\na.wav,b.wav\na.wav,silent.wav\nshort.wav,b.wav\nb.wav,a.wav\n"
    files = [("files", (name, data)) for name, data in clips.items()]
    response = client.post("/api/predict_batch", files=files, data={"pairs": pairs})
    assert response.status_code == 200, response.text
    body = response.json()
    results = body["results"]
    assert body["refused"] == 1
    assert [r["label"] is None for r in results] == [False, True, False, False]
    assert results[1]["error"] == (
        "silent.wav: not scored: silent: RMS -inf dBFS, peak 0 (< -80 dBFS, data.silence_dbfs): "
        "digital silence (every sample is 0)"
    )
    assert results[1]["probability"] is None
    assert results[2]["error"] is None and 0.0 <= results[2]["probability"] <= 1.0
    note = "short.wav: short clip: 0.15 s (< 0.2 s, data.short_clip_seconds): scored best-effort"
    assert results[2]["warnings"][0].startswith(note)
    assert not any(w.startswith("short.wav") for w in results[0]["warnings"])
    assert any(w.startswith(note) for w in body["warnings"])
    single = predict(client, clips["a.wav"], clips["b.wav"]).json()
    assert results[0]["error"] is None and results[0]["label"] == single["label"]
    assert results[0]["probability"] == pytest.approx(single["probability"], abs=1e-6)


@pytest.mark.parametrize(
    ("pairs", "status", "reason"),
    [
        ("audio_1,audio_2\na.wav,zzz.wav\n", 400, "not sent"),
        ("first,second\na.wav,a.wav\n", 400, "audio_1,audio_2"),
        ("[[1, 2, 3]]", 400, "two file names"),
        ("audio_1,audio_2\n", 400, "no pairs"),
    ],
)
def test_bad_batch_requests_are_refused(served, pairs: str, status: int, reason: str) -> None:
    client, _ = served
    files = [("files", ("a.wav", encode(voice())))]
    response = client.post("/api/predict_batch", files=files, data={"pairs": pairs})
    assert response.status_code == status, response.text
    assert reason in response.json()["detail"]


def test_health_answers_while_busy_and_a_full_queue_gets_503(model, monkeypatch) -> None:
    gate = threading.Event()
    original = model.answer

    def held_answer(clips, pairs):
        gate.wait(20)
        return original(clips, pairs)

    monkeypatch.setattr(model, "answer", held_answer)
    limits = ServeConfig(max_pending=1)
    with (
        BackgroundServer(create_app(model, limits)) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
        ThreadPoolExecutor(1) as pool,
    ):
        pending = pool.submit(predict, client, encode(voice()), encode(noise()))
        deadline = time.monotonic() + 10
        while client.get("/health").json()["pending"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        started = time.perf_counter()
        assert client.get("/health").json()["pending"] == 1
        assert time.perf_counter() - started < 1.0  # not queued behind the model
        refused = predict(client, encode(voice()), encode(noise()))
        assert refused.status_code == 503 and "busy" in refused.json()["detail"]
        gate.set()
        assert pending.result().status_code == 200


def test_upload_decodes_like_the_prepare_cache(tmp_path: Path) -> None:
    stereo = np.stack([voice(1.3, rate=44100), 0.5 * voice(1.3, freq=200, rate=44100)], axis=1)
    path = tmp_path / "clip.flac"
    sf.write(path, stereo, 44100)
    source = SourceFile("test/clip.flac", "clip.flac", str(path), "test", "", "", "")
    _, cached, facts, error = _decode_job((source, DataConfig()))
    assert error == ""
    upload = decode_upload(path.read_bytes(), RATE, max_seconds=10.0)
    np.testing.assert_array_equal(as_cached(upload.samples), from_int16(cached))
    assert upload.facts() | {"md5": facts["md5"]} == facts  # the metadata features' inputs


def test_answers_equal_the_pipeline_over_http(tiny_bundle, model) -> None:
    """Every test pair, sent as its original files: the bundle stacker's probabilities that the
    pipeline wrote beside its submission, and the same labels."""
    expected = pd.read_csv(tiny_bundle.submission_scores_path)
    folder = tiny_bundle.paths.input / tiny_bundle.data.test_dir
    with (
        BackgroundServer(create_app(model, ServeConfig())) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        answers = [
            predict(client, (folder / a).read_bytes(), (folder / b).read_bytes(), b).json()
            for a, b in zip(expected["audio_1"], expected["audio_2"], strict=True)
        ]
    got = np.array([a["probability"] for a in answers])
    np.testing.assert_allclose(got, expected["bundle_probability"], atol=1e-6)
    # labels equal, except where the pipeline's probability is the threshold itself (a balanced
    # threshold over an odd number of pairs is one of them): there float noise decides
    threshold = answers[0]["threshold"]
    clear = (expected["bundle_probability"] - threshold).abs().to_numpy() > 1e-6
    assert clear.sum() >= len(expected) - 1
    labels = np.array([a["label"] for a in answers])
    np.testing.assert_array_equal(labels[clear], expected["bundle_label"].to_numpy()[clear])
    assert expected["bundle_probability"].nunique() > 2  # not a constant stacker
