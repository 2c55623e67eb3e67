"""Test-set adaptation (src/inference/adapt.py) and the score stage's ``score.adapt`` switch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import silhouette_samples

from src.inference.adapt import (
    adapted_scores,
    cluster_report,
    pseudo_speakers,
    silhouettes,
    target_cohort_norm,
    within_scatter,
)
from src.inference.score import score_stage
from src.stacking.graph import similarity
from src.util.io import read_json
from tests.conftest import config_for

DIMS = 16


def speaker_vectors(
    rng: np.random.Generator, speakers: int, clips: int, spread: float = 0.35
) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors of ``speakers`` x ``clips`` around random centres, and their speakers."""
    centres = rng.normal(size=(speakers, DIMS))
    labels = np.repeat(np.arange(speakers), clips)
    vectors = centres[labels] + spread * rng.normal(size=(labels.size, DIMS))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), labels


def test_silhouettes_match_scikit_learn() -> None:
    vectors, _ = speaker_vectors(np.random.default_rng(0), 5, 6, spread=0.8)
    labels = np.random.default_rng(1).integers(0, 7, vectors.shape[0])
    labels[0] = 99  # a cluster of one clip: silhouette 0, as scikit-learn defines it
    want = silhouette_samples(vectors.astype(np.float64), labels, metric="cosine")
    np.testing.assert_allclose(silhouettes(similarity(vectors), labels), want, atol=1e-5)


def test_pseudo_speakers_find_separated_speakers_without_labels() -> None:
    vectors, speakers = speaker_vectors(np.random.default_rng(2), 12, 5)
    found = pseudo_speakers(vectors)
    report = cluster_report(found, speakers.astype(str))
    assert found.clusters == 12 and report["purity"] == 1.0 and report["pair_recall"] == 1.0
    assert found.kept == vectors.shape[0]


def test_pseudo_speakers_leave_out_clips_of_no_cluster() -> None:
    rng = np.random.default_rng(3)
    vectors, _ = speaker_vectors(rng, 6, 5)
    # one clip each of 4 more speakers: orthogonal to each other and to the 6 speakers' means
    centres = np.stack([vectors[5 * s : 5 * s + 5].mean(axis=0) for s in range(6)])
    basis = np.linalg.qr(centres.T.astype(np.float64))[0]  # (dims, 6)
    strays = rng.normal(size=(DIMS, 4))
    strays = np.linalg.qr(strays - basis @ (basis.T @ strays))[0].T.astype(np.float32)
    found = pseudo_speakers(np.concatenate([vectors, strays]))
    assert (found.labels[-4:] == -1).all() and found.clusters == 6


def test_within_scatter_is_the_pooled_within_speaker_scatter() -> None:
    vectors, labels = speaker_vectors(np.random.default_rng(4), 3, 4)
    labels = labels.copy()
    labels[0] = -1  # not labelled: left out
    scatter, count = within_scatter(vectors, labels)
    want = np.zeros((DIMS, DIMS))
    for speaker in range(3):
        rows = vectors[labels == speaker].astype(np.float64)
        centred = rows - rows.mean(axis=0)
        want += centred.T @ centred
    assert count == 11
    np.testing.assert_allclose(scatter, want, atol=1e-10)


def test_target_cohort_norm_matches_a_pair_by_pair_computation() -> None:
    rng = np.random.default_rng(5)
    vectors, _ = speaker_vectors(rng, 4, 5)
    left, right = rng.integers(0, 20, 30), rng.integers(0, 20, 30)
    top_k = 6
    got = target_cohort_norm(vectors, left, right, top_k)
    sims = vectors.astype(np.float64) @ vectors.T.astype(np.float64)

    def stats(a: int, b: int) -> tuple[float, float]:
        others = np.sort(np.delete(sims[a], sorted({a, b})))[::-1][:top_k]
        return others.mean(), others.std()

    want = []
    for a, b in zip(left, right, strict=True):
        (mean_a, std_a), (mean_b, std_b) = stats(a, b), stats(b, a)
        want.append(0.5 * ((sims[a, b] - mean_a) / std_a + (sims[a, b] - mean_b) / std_b))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["whiten", "wccn", "cohort", "wccn_cohort"])
def test_adapted_scores_do_not_depend_on_the_order_of_the_target_clips(method: str) -> None:
    rng = np.random.default_rng(6)
    target, _ = speaker_vectors(rng, 8, 5)
    train, train_speakers = speaker_vectors(rng, 10, 4)
    left, right = rng.integers(0, 40, 50), rng.integers(0, 40, 50)
    scores, _ = adapted_scores(method, target, left, right, train, train_speakers, top_k=10)
    order = rng.permutation(40)
    where = np.argsort(order)  # clip i is now row where[i]
    shuffled, _ = adapted_scores(
        method, target[order], where[left], where[right], train, train_speakers, top_k=10
    )
    np.testing.assert_allclose(shuffled, scores, rtol=1e-4, atol=1e-4)


def test_an_unknown_method_names_the_choices() -> None:
    vectors, labels = speaker_vectors(np.random.default_rng(7), 3, 3)
    with pytest.raises(ValueError, match="wccn"):
        adapted_scores("plda", vectors, np.array([0]), np.array([1]), vectors, labels)


# ---- the score stage with the switch, on synthetic embeddings (no model)


def write_fold_inputs(cfg, seed: int = 0) -> None:
    """Two folds' ``embeddings.npz`` (held-out, test and cohort clips of separate speakers),
    their OOF trials, the test pairs and an answer key, as the earlier stages write them."""
    rng = np.random.default_rng(seed)
    test, test_speakers = speaker_vectors(rng, 6, 5)
    names = [f"t{i:02d}.wav" for i in range(test.shape[0])]
    test_pairs = pd.DataFrame(
        [(names[a], names[b]) for a in range(30) for b in range(a + 1, 30) if (a + b) % 4 == 0],
        columns=["audio_1", "audio_2"],
    )
    cfg.paths.prep_dir.mkdir(parents=True, exist_ok=True)
    test_pairs.to_csv(cfg.paths.prep_dir / "test_pairs.csv", index=False)
    same = [test_speakers[names.index(a)] == test_speakers[names.index(b)] for a, b in
            zip(test_pairs["audio_1"], test_pairs["audio_2"], strict=True)]  # fmt: skip
    cfg.paths.input.mkdir(parents=True, exist_ok=True)
    test_pairs.assign(label=np.array(same, dtype=int)).to_csv(
        cfg.paths.input / "public-test-labels.csv", index=False
    )
    cfg.folds_dir.mkdir(parents=True, exist_ok=True)
    for fold in range(2):
        held, held_speakers = speaker_vectors(rng, 7, 4)
        cohort, cohort_speakers = speaker_vectors(rng, 9, 4)
        ids = [f"f{fold}/c{i:02d}" for i in range(held.shape[0])]
        trials = pd.DataFrame(
            [(ids[a], ids[b], int(held_speakers[a] == held_speakers[b]))
             for a in range(28) for b in range(a + 1, 28) if (a * b + fold) % 3 == 0],
            columns=["audio_1", "audio_2", "label"],
        )  # fmt: skip
        trials.to_csv(cfg.folds_dir / f"trials_fold{fold}.csv", index=False)
        out = cfg.fold_dir(fold)
        out.mkdir(parents=True, exist_ok=True)
        np.savez(
            out / "embeddings.npz",
            ids=np.array([*ids, *(f"public-test/{n}" for n in names),
                          *(f"train/s{i}" for i in range(36))]),
            role=np.array(["oof"] * 28 + ["test"] * 30 + ["cohort"] * 36),
            speaker=np.array([*(f"h{fold}-{s}" for s in held_speakers), *[""] * 30,
                              *(f"s{fold}-{s}" for s in cohort_speakers)]),
            vectors=np.concatenate([held, test, cohort]),
            norms=np.ones(94, dtype=np.float32),
        )  # fmt: skip


def scored(cfg) -> dict[str, pd.DataFrame]:
    score_stage(cfg, force=True)
    return {
        name: pd.read_csv(cfg.experiment_dir / f"{name}_scores.csv") for name in ("oof", "test")
    }


def test_the_switch_off_adds_nothing_and_on_changes_no_other_column(tmp_path: Path) -> None:
    off = config_for(tmp_path / "data", tmp_path, "folds.n_folds=2", "score.asnorm_top_k=5")
    write_fold_inputs(off)
    plain = scored(off)
    plain_metrics = read_json(off.experiment_dir / "metrics.json")
    assert not any("adapted" in c for t in plain.values() for c in t.columns)
    assert "adapt" not in plain_metrics and "adapted" not in plain_metrics["oof"]
    on = off.model_copy(update={"score": off.score.model_copy(update={"adapt": "wccn_cohort"})})
    adapted = scored(on)
    for name, table in plain.items():
        pd.testing.assert_frame_equal(adapted[name][table.columns], table)  # unchanged, bitwise
    assert {"adapted", "adapted_fold0", "adapted_fold1"} <= set(adapted["test"].columns)
    metrics = read_json(on.experiment_dir / "metrics.json")
    assert metrics["oof"]["cosine"] == plain_metrics["oof"]["cosine"]
    assert 0 <= metrics["oof"]["adapted"]["eer"] <= 1
    assert "accuracy_balanced" in metrics["test"]["adapted"]
    held_out = metrics["adapt"]["folds"]["0"]["oof"]
    assert held_out["speakers"] == 7 and held_out["clusters"] >= 1


@pytest.mark.parametrize("method", ["wccn", "cohort", "wccn_cohort", "whiten"])
def test_no_target_label_reaches_the_adapted_scores(tmp_path: Path, method: str) -> None:
    """Held-out speakers in embeddings.npz, OOF trial labels and the answer key permuted (test
    clips given speakers too): every adapted score is unchanged, bit for bit."""
    cfg = config_for(
        tmp_path / "data", tmp_path, "folds.n_folds=2", "score.asnorm_top_k=5",
        f"score.adapt={method}",
    )  # fmt: skip
    write_fold_inputs(cfg)
    before = scored(cfg)
    rng = np.random.default_rng(11)
    for fold in range(2):
        path = cfg.fold_dir(fold) / "embeddings.npz"
        with np.load(path) as data:
            emb = {k: data[k] for k in data.files}
        speaker = emb["speaker"].copy()
        held = np.flatnonzero(emb["role"] == "oof")
        speaker[held] = rng.permutation(speaker[held])
        speaker[emb["role"] == "test"] = [f"x{i % 3}" for i in range(30)]
        np.savez(path, **(emb | {"speaker": speaker}))
        trials_path = cfg.folds_dir / f"trials_fold{fold}.csv"
        trials = pd.read_csv(trials_path)
        trials.assign(label=rng.permutation(trials["label"].to_numpy())).to_csv(
            trials_path, index=False
        )
    key_path = cfg.paths.input / "public-test-labels.csv"
    key = pd.read_csv(key_path)
    key.assign(label=1 - key["label"].to_numpy()).to_csv(key_path, index=False)
    after = scored(cfg)
    assert not after["oof"]["label"].equals(before["oof"]["label"])  # the labels did change
    for name, table in before.items():
        columns = [c for c in table.columns if c.startswith("adapted")]
        assert columns
        pd.testing.assert_frame_equal(after[name][columns], table[columns])


def test_export_refuses_a_run_scored_with_adaptation(tmp_path: Path) -> None:
    from src.serve.export import check_not_adapted

    cfg = config_for(tmp_path / "data", tmp_path)
    adapted = cfg.model_copy(update={"score": cfg.score.model_copy(update={"adapt": "wccn"})})
    check_not_adapted({"plain": cfg})
    with pytest.raises(ValueError, match="score.adapt"):
        check_not_adapted({"plain": cfg, "adapted_run": adapted})


def test_the_stack_reads_the_adapted_column_only_where_a_run_has_it() -> None:
    from src.stacking.features import score_features

    plain = pd.DataFrame({"cosine": [0.5], "asnorm": [1.0], "cosine_fold0": [0.4],
                          "asnorm_fold0": [0.9]})  # fmt: skip
    assert list(score_features(plain, "run", "_fold0").columns) == ["run__cosine", "run__asnorm"]
    adapted = plain.assign(adapted=[2.0], adapted_fold0=[3.0])
    features = score_features(adapted, "run", "_fold0")
    assert list(features.columns) == ["run__cosine", "run__asnorm", "run__adapted"]
    assert features["run__adapted"].tolist() == [3.0]  # fold 0's own view, as for asnorm
    with pytest.raises(KeyError, match="adapted_fold1"):
        score_features(adapted, "run", "_fold1")


def test_the_report_section_compares_clusters_with_the_held_out_speakers() -> None:
    from src.report.report import adaptation_markdown

    fold = {"oof": {"clips": 30, "speakers": 7, "clusters": 6, "clips_kept": 28, "purity": 0.9,
                    "pair_recall": 0.8}, "test": {"clips": 40, "clusters": 9}}  # fmt: skip
    runs = {"cam": {"method": "wccn", "folds": {"1": fold, "0": fold},
                    "eer": {"cosine": 0.05, "asnorm": 0.04, "adapted": 0.03}}}  # fmt: skip
    text = "\n".join(adaptation_markdown(runs))
    assert "## Test-set adaptation" in text and "`score.adapt=wccn`" in text
    assert "adapted 3.0 %" in text and "| 0 | 30 | 7 | 6 | 28 | 90.0 % | 80.0 % | 40 | 9 |" in text


def test_the_shifted_test_is_seeded_and_leaves_training_audio_alone(tmp_path: Path) -> None:
    import soundfile as sf

    from bench.shift_test import build
    from tests.conftest import make_zalo

    source = make_zalo(tmp_path / "source", n_speakers=2, clips=2, n_test=3)
    first, second = tmp_path / "a", tmp_path / "b"
    assert build(source, first, seed=1) == build(source, second, seed=1) == 3
    for path in sorted((source / "public-test").glob("*.wav")):
        shifted, rate = sf.read(first / "public-test" / path.name)
        assert rate == 8000 and shifted.size == round(sf.info(path).duration * 8000)
        assert (first / "public-test" / path.name).read_bytes() == (
            second / "public-test" / path.name
        ).read_bytes()
    assert (first / "train").resolve() == (source / "train").resolve()
    assert (first / "public-test.csv").read_bytes() == (source / "public-test.csv").read_bytes()
