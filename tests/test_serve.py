"""The inference API: a real uvicorn server on loopback over a tiny untrained 2-fold experiment."""

from __future__ import annotations

import io
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from src.config import DataConfig, ExperimentConfig, load_config
from src.data.audio import from_int16
from src.data.prepare import _decode_job
from src.data.zalo import SourceFile
from src.inference.embed import embed_clips
from src.inference.metrics import balanced_threshold, equal_error_rate
from src.inference.score import score_pairs
from src.serve import model as model_module
from src.serve.app import BackgroundServer, create_app
from src.serve.model import VerificationModel, WaveformClips, as_cached, decision_threshold
from src.serve.uploads import decode_upload
from tests.fixtures.untrained_experiment import write_untrained_experiment

RATE = 16000
TINY = [
    "model.backbone=resnet18", "model.width=0.125", "model.embedding_dim=32", "folds.n_folds=2",
    "embed.window_seconds=1.0", "embed.hop_seconds=0.5", "score.asnorm_top_k=10",
    "serve.max_upload_mb=0.25", "serve.max_seconds=4", "train.device=cpu",
]  # fmt: skip


def tiny_config(root: Path, *overrides: str) -> ExperimentConfig:
    return load_config(None, [f"paths.outputs={root / 'outputs'}", *TINY, *overrides])


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
def served(tmp_path_factory: pytest.TempPathFactory):
    cfg = tiny_config(tmp_path_factory.mktemp("serve"))
    write_untrained_experiment(cfg, cohort_speakers=12, clips_per_speaker=2, test_pairs=50)
    model = VerificationModel.load(cfg)
    with (
        BackgroundServer(create_app(model, cfg)) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        yield client, model, cfg


def predict(client: httpx.Client, one: bytes, two: bytes, name_2: str = "b.wav") -> httpx.Response:
    return client.post("/api/predict", files={"audio_1": ("a.wav", one), "audio_2": (name_2, two)})


def test_health(served) -> None:
    client, _, cfg = served
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["experiment"] == cfg.experiment
    assert body["folds"] == 2
    scores = pd.read_csv(cfg.experiment_dir / "test_scores.csv")["asnorm"].to_numpy()
    assert body["threshold"] == pytest.approx(balanced_threshold(scores, 0.5))


def test_valid_pair_gets_label_and_score(served) -> None:
    client, model, _ = served
    response = predict(client, encode(voice()), encode(noise()))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["label"] in (0, 1)
    assert np.isfinite(body["score"])
    assert body["label"] == int(body["score"] >= model.threshold.value)
    assert body["warnings"] == []


def test_identical_clips_score_higher_than_different_ones(served) -> None:
    client, _, _ = served
    clip = encode(voice())
    same = predict(client, clip, clip).json()["score"]
    different = predict(client, clip, encode(noise())).json()["score"]
    assert same > different


def test_other_formats_rates_and_channels(served) -> None:
    client, _, _ = served
    different = predict(client, encode(voice()), encode(noise())).json()["score"]
    stereo = np.stack([voice(rate=44100), voice(rate=44100)], axis=1)
    as_flac = predict(client, encode(voice()), encode(stereo, 44100, "FLAC"), "b.flac")
    assert as_flac.status_code == 200, as_flac.text
    as_ogg = predict(client, encode(voice()), encode(voice(rate=22050), 22050, "OGG"), "b.ogg")
    assert as_ogg.status_code == 200, as_ogg.text
    assert as_flac.json()["score"] > different  # the same voice, resampled and mixed down


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
    client, _, _ = served
    data, status, reason = BAD_UPLOADS[case]
    response = predict(client, encode(voice()), data)
    assert response.status_code == status, response.text
    assert reason in response.json()["detail"]
    assert "audio_2" in response.json()["detail"] or status == 413
    assert predict(client, encode(voice()), encode(noise())).status_code == 200


def test_missing_field_is_422(served) -> None:
    client, _, _ = served
    response = client.post("/api/predict", files={"audio_1": ("a.wav", encode(voice()))})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "audio_2"]


def test_silent_clip_is_scored_with_a_warning(served) -> None:
    client, _, _ = served
    response = predict(client, encode(voice()), encode(np.zeros(RATE, np.float32)))
    assert response.status_code == 200, response.text
    assert np.isfinite(response.json()["score"])
    assert "audio_2 is silent" in response.json()["warnings"][0]


def test_concurrent_clients_get_the_same_answers(served) -> None:
    client, _, _ = served
    pair = (encode(voice(seed=3)), encode(noise(seed=4)))
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: predict(client, *pair), range(8)))
    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["score"] for r in responses}) == 1


def test_health_answers_while_a_pair_is_scored(served, monkeypatch) -> None:
    client, model, _ = served
    original = model.predict

    def slow_predict(wave_1: np.ndarray, wave_2: np.ndarray) -> tuple[int, float]:
        time.sleep(1.5)
        return original(wave_1, wave_2)

    monkeypatch.setattr(model, "predict", slow_predict)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(predict, client, encode(voice()), encode(noise()))
        time.sleep(0.3)
        started = time.perf_counter()
        assert client.get("/health").status_code == 200
        assert time.perf_counter() - started < 1.0
        assert not pending.done()
        assert pending.result().status_code == 200


def test_score_is_the_fold_mean_asnorm_of_the_score_stage(served) -> None:
    _, model, cfg = served
    waves = [as_cached(voice(2.2, seed=5)), as_cached(noise(1.3, seed=6))]
    per_fold = []
    for fold in model.folds:
        clips = WaveformClips({"t1": waves[0], "t2": waves[1]})
        vectors, norms = embed_clips(fold.extractor, clips, ["t1", "t2"], cfg.embed, RATE)
        emb = {
            "vectors": np.concatenate([vectors, fold.cohort]),
            "norms": np.concatenate([norms, np.ones(len(fold.cohort), np.float32)]),
            "role": np.array(["test", "test"] + ["cohort"] * len(fold.cohort)),
            "speaker": np.array(["", ""] + [f"s{i}" for i in range(len(fold.cohort))]),
        }
        pairs = pd.DataFrame({"audio_1": ["t1"], "audio_2": ["t2"]})
        scored = score_pairs(emb, pairs, cfg.score.asnorm_top_k, {"t1": 0, "t2": 1})
        per_fold.append(float(scored["asnorm"].iloc[0]))
    assert model.score(voice(2.2, seed=5), noise(1.3, seed=6)) == pytest.approx(
        np.mean(per_fold), abs=1e-4
    )


def test_upload_decodes_like_the_prepare_cache(tmp_path: Path) -> None:
    stereo = np.stack([voice(1.3, rate=44100), 0.5 * voice(1.3, freq=200, rate=44100)], axis=1)
    path = tmp_path / "clip.flac"
    sf.write(path, stereo, 44100)
    source = SourceFile("test/clip.flac", "clip.flac", str(path), "test", "", "", "")
    _, cached, _, error = _decode_job((source, DataConfig()))
    assert error == ""
    upload = decode_upload(path.read_bytes(), RATE, max_seconds=10.0)
    np.testing.assert_array_equal(as_cached(upload.samples), from_int16(cached))


def test_load_errors_name_the_missing_stage(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    with pytest.raises(FileNotFoundError, match="run the train/embed/score stages first"):
        VerificationModel.load(cfg)
    write_untrained_experiment(cfg, cohort_speakers=4, clips_per_speaker=1, test_pairs=10)
    for missing in ("fold1/best.pt", "fold0/embeddings.npz", "test_scores.csv"):
        path = cfg.experiment_dir / missing
        if missing == "test_scores.csv":  # no OOF scores either: nothing to place a threshold
            path.unlink()
        else:
            shutil.move(path, tmp_path / "aside")
        with pytest.raises(FileNotFoundError, match=f"{Path(missing).name}.*run the train"):
            VerificationModel.load(cfg)
        if missing != "test_scores.csv":
            shutil.move(tmp_path / "aside", path)


def test_threshold_falls_back_to_the_oof_eer(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    cfg.experiment_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 50)
    scores = rng.normal(size=100) + 2 * labels
    pd.DataFrame({"label": labels, "asnorm": scores}).to_csv(
        cfg.experiment_dir / "oof_scores.csv", index=False
    )
    threshold = decision_threshold(cfg)
    assert threshold.value == pytest.approx(equal_error_rate(scores, labels)[1])
    assert "EER" in threshold.source


def test_fold_independent_extractor_is_loaded_once(tmp_path: Path, monkeypatch) -> None:
    cfg = tiny_config(tmp_path, "extractor.kind=resemblyzer", "folds.n_folds=3")
    write_untrained_experiment(cfg, cohort_speakers=4, clips_per_speaker=1, test_pairs=10)

    class Shared:
        fold_independent = True
        dim = cfg.model.embedding_dim
        calls = 0

        def embed(self, waves: np.ndarray) -> np.ndarray:
            Shared.calls += 1
            vectors = np.ones((len(waves), self.dim), np.float32)
            vectors[:, 0] += waves.std(axis=1)
            return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    built: list[int] = []
    monkeypatch.setattr(
        model_module, "build_extractor", lambda _cfg, fold: built.append(fold) or Shared()
    )
    model = VerificationModel.load(cfg)
    assert built == [0]
    assert len(model.folds) == 3
    assert np.isfinite(model.score(voice(0.8), noise(0.8)))
    assert Shared.calls == 1  # both clips are one window of the same length: one batch
