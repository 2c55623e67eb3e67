"""The graph stacker behind the API: a whole public test sent as one batch gets the submission."""

from __future__ import annotations

import httpx
import numpy as np
import pandas as pd
import pytest

from src.config import ServeConfig
from src.serve.app import BackgroundServer, create_app
from src.serve.ensemble import BundleModel
from src.serve.predict import predict_folder


@pytest.fixture(scope="module")
def model(tiny_bundle) -> BundleModel:
    return BundleModel.load(tiny_bundle.bundle_dir)


def public_test_upload(cfg) -> tuple[list[tuple[str, tuple[str, bytes]]], str]:
    folder = cfg.paths.input / cfg.data.test_dir
    files = [("files", (p.name, p.read_bytes())) for p in sorted(folder.iterdir())]
    return files, (cfg.paths.input / cfg.data.test_csv).read_text(encoding="utf-8")


def post_batch(model: BundleModel, files, pairs: str, **form: str) -> httpx.Response:
    with (
        BackgroundServer(create_app(model, ServeConfig())) as server,
        httpx.Client(base_url=server.url, timeout=120) as client,
    ):
        return client.post("/api/predict_batch", files=files, data={"pairs": pairs, **form})


def test_whole_public_test_in_one_batch_gets_the_submissions_answers(tiny_bundle, model) -> None:
    """Every test clip and the test CSV in one request: the graph stacker's probability of each
    pair equals the stack's (test_predictions.csv) and its label the submission's."""
    assert model.graph is not None
    files, pairs = public_test_upload(tiny_bundle)
    response = post_batch(model, files, pairs)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["stacker"] == "graph" and body["graph_clips"] == len(files)
    results = pd.DataFrame(body["results"])
    assert (results["stacker"] == "graph").all()
    stack = pd.read_csv(tiny_bundle.stack_dir / "test_predictions.csv")
    submission = pd.read_csv(tiny_bundle.submission_path)
    np.testing.assert_allclose(results["probability"], stack["prob"], atol=1e-3)
    # the graph stacker is not the pairwise one: the answers differ from the bundle columns
    assert not np.allclose(results["probability"], stack["prob_bundle"], atol=1e-3)
    assert body["threshold"] == pytest.approx(model.graph.threshold)
    np.testing.assert_array_equal(results["label"], submission["label"])


def test_a_small_batch_gets_the_pairwise_stacker_and_says_so(tiny_bundle, model) -> None:
    files, _ = public_test_upload(tiny_bundle)
    few = files[:2]
    pairs = f"audio_1,audio_2\n{few[0][1][0]},{few[1][1][0]}\n"
    body = post_batch(model, few, pairs).json()
    assert body["stacker"] == "pairwise" and body["results"][0]["stacker"] == "pairwise"
    assert "serve.graph_min_share" in body["stacker_reason"]
    assert body["threshold"] == pytest.approx(model.threshold)
    forced = post_batch(model, few, pairs, stacker="graph").json()
    assert forced["stacker"] == "graph"
    assert forced["results"][0]["probability"] != pytest.approx(
        body["results"][0]["probability"], abs=1e-9
    )
    assert post_batch(model, few, pairs, stacker="best").status_code == 400


def test_predict_command_answers_a_folder_like_the_submission(tiny_bundle, tmp_path) -> None:
    out = tmp_path / "answers.csv"
    table = predict_folder(
        tiny_bundle,
        tiny_bundle.paths.input / tiny_bundle.data.test_dir,
        tiny_bundle.paths.input / tiny_bundle.data.test_csv,
        out,
    )
    written = pd.read_csv(out)
    submission = pd.read_csv(tiny_bundle.submission_path)
    assert written[["audio_1", "audio_2"]].equals(submission[["audio_1", "audio_2"]])
    np.testing.assert_array_equal(written["label"], submission["label"])
    assert (table["stacker"] == "graph").all()
    pairwise = predict_folder(
        tiny_bundle,
        tiny_bundle.paths.input / tiny_bundle.data.test_dir,
        tiny_bundle.paths.input / tiny_bundle.data.test_csv,
        tmp_path / "pairwise.csv",
        stacker="pairwise",
    )
    scores = pd.read_csv(tiny_bundle.submission_scores_path)
    np.testing.assert_allclose(pairwise["probability"], scores["bundle_probability"], atol=1e-6)


def test_predict_names_files_the_pair_list_lacks(tiny_bundle, tmp_path) -> None:
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("audio_1,audio_2\nnot-there.wav,also-missing.wav\n", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="not-there.wav"):
        predict_folder(
            tiny_bundle, tiny_bundle.paths.input / tiny_bundle.data.test_dir, pairs, tmp_path / "o"
        )


def test_graph_answers_need_the_bundles_held_out_clips(model) -> None:
    """The fold graphs' fixed rows came with the bundle: one per fold and graph run, of the
    sizes the stack stage recorded."""
    graph = model.graph
    assert graph is not None
    sizes = graph.description["graph"]["sizes"]
    for run, folds in graph.held_out.items():
        for fold, vectors in folds.items():
            assert vectors.shape[0] == sizes[str(fold)]["held_out"], (run, fold)
            np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_a_refused_pair_keeps_the_batchs_stacker_reason(tiny_bundle, model) -> None:
    """A silent clip fails its pairs with their own error; the batch's ``stacker_reason`` still
    says why its stacker answered (it was overwritten by the last refused pair's error)."""
    import io

    import soundfile as sf

    from src.config import ChecksConfig
    from src.serve.app import BundleService

    files, pairs = public_test_upload(tiny_bundle)
    uploads = {name: payload for _, (name, payload) in files}
    silent = io.BytesIO()
    sf.write(silent, np.zeros(model.sample_rate, dtype=np.float32), model.sample_rate, "PCM_16",
             format="WAV")  # fmt: skip
    uploads["silent.wav"] = silent.getvalue()
    table = pd.read_csv(io.StringIO(pairs), dtype=str)[["audio_1", "audio_2"]]
    table = pd.concat(
        [table, pd.DataFrame({"audio_1": ["silent.wav"], "audio_2": [table["audio_1"][0]]})],
        ignore_index=True,
    )
    batch = BundleService(model, ServeConfig(), ChecksConfig()).score_batch(uploads, table)
    assert batch.refused == 1 and "silent" in (batch.results[-1].error or "")
    assert batch.stacker == "graph"
    assert batch.stacker_reason.startswith(f"{len(files)} usable clips form the trial graph")


def test_predict_refuses_two_files_of_one_cleaned_name(tmp_path) -> None:
    from src.serve.predict import folder_clips

    (tmp_path / "a.wav").write_bytes(b"x")
    (tmp_path / " a.wav").write_bytes(b"y")
    with pytest.raises(ValueError, match="same name"):
        folder_clips(tmp_path, [".wav"])
