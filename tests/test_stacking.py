"""Second level: pair features, fold-wise stacking, adversarial validation (synthetic tables)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

import src.stacking.stack as stack_module
from src.config import StackConfig
from src.stacking.adversarial import adversarial_validation, single_feature_auc
from src.stacking.features import (
    MissingIdError,
    audio_table,
    feature_table,
    metadata_features,
    score_features,
)
from src.stacking.inputs import StageInputError
from src.stacking.models import fit_pair_model, load_pair_model, pair_model_suffix
from src.stacking.stack import combine, cross_fit, plan_folds, run_stack, stack_stage
from tests.fixtures.stack_inputs import write_synthetic_inputs


def small_inputs(tmp_path, **kwargs):
    options = dict(n_folds=3, train_speakers=90, test_speakers=40, trials_per_fold=700)
    options |= dict(n_test_pairs=600, clips_per_speaker=8)
    return write_synthetic_inputs(tmp_path, **(options | kwargs))


def tiny_manifest() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": ["train/a/1.wav", "train/b/2.wav", "train/c/3.wav"],
            "name": ["1.wav", "2.wav", "3.wav"],
            "split": "train",
            "duration": [1.5, 6.0, 3.0],
            "bytes": [48044, 384044, 48044],
            "frames": [24000, 96000, 48000],
            "sample_rate": [16000, 16000, 8000],
            "channels": [1, 2, 1],
            "rms_dbfs": [-20.0, -30.0, -np.inf],
            "snr_db": [12.0, 25.0, np.nan],
        }
    )


def test_features_are_symmetric():
    table = audio_table(tiny_manifest())
    pairs = pd.DataFrame(
        {
            "audio_1": ["train/a/1.wav", "train/b/2.wav"],
            "audio_2": ["train/b/2.wav", "train/c/3.wav"],
            "cosine": [0.4, 0.1],
            "asnorm": [2.0, -1.0],
            "q_norm_1": [9.0, 10.0],
            "q_norm_2": [11.0, 8.0],
            "q_cohort_1": [0.1, 0.2],
            "q_cohort_2": [0.3, 0.0],
        }
    )
    swapped = pairs.rename(
        columns={
            "audio_1": "audio_2",
            "audio_2": "audio_1",
            "q_norm_1": "q_norm_2",
            "q_norm_2": "q_norm_1",
            "q_cohort_1": "q_cohort_2",
            "q_cohort_2": "q_cohort_1",
        }
    )
    p_male = pd.Series([0.9, 0.2, 0.6], index=table.index)

    def build(frame):
        meta = metadata_features(frame, table, p_male, "ids")
        return feature_table({"cnn": frame}, meta)

    forward, backward = build(pairs), build(swapped)
    pd.testing.assert_frame_equal(forward, backward[forward.columns])
    assert {"duration_min", "duration_log_ratio", "same_sample_rate", "gender_same_prob"} <= set(
        forward.columns
    )
    assert {"cnn__q_norm_min", "cnn__q_norm_gap", "cnn__q_cohort_max"} <= set(forward.columns)
    assert not any(c.endswith(("_1", "_2")) for c in forward.columns)
    assert forward.loc[0, "bytes_per_second_log_ratio"] == pytest.approx(np.log(2), abs=0.01)
    assert np.isnan(forward.loc[1, "rms_dbfs_min"])  # -inf loudness becomes missing


def test_missing_ids_are_named():
    table = audio_table(tiny_manifest())
    pairs = pd.DataFrame({"audio_1": ["train/a/1.wav"], "audio_2": ["train/zz/9.wav"]})
    with pytest.raises(MissingIdError, match=r"train/zz/9\.wav"):
        metadata_features(pairs, table, None, "OOF audio ids")


def test_per_fold_view_needs_fold_columns():
    scores = pd.DataFrame({"cosine": [0.1], "asnorm": [0.2], "cosine_fold0": [0.1]})
    with pytest.raises(KeyError, match="asnorm_fold0"):
        score_features(scores, "cnn", "_fold0")
    view = score_features(scores.assign(asnorm_fold0=0.3), "cnn", "_fold0")
    assert view["cnn__asnorm"].item() == 0.3


def test_fold_plan_never_trains_on_the_predicted_fold():
    for folds in ([0, 1], [0, 1, 2], [0, 1, 2, 3, 4]):
        plan = plan_folds(folds)
        assert sorted(s.fold for s in plan) == folds
        for split in plan:
            assert split.fold not in split.train_folds
            assert set(split.train_folds) | {split.fold} == set(folds)
            assert set(split.valid_folds) <= set(split.train_folds)
    assert plan_folds([0, 1])[0].valid_folds == ()  # K=2: random rows of the one training fold
    with pytest.raises(ValueError, match="at least 2 folds"):
        plan_folds([3])


def test_cross_fit_keeps_each_fold_out_of_its_own_model(monkeypatch):
    rng = np.random.default_rng(0)
    folds = np.repeat(np.arange(4), 150)
    labels = rng.integers(0, 2, folds.size)
    features = pd.DataFrame({"fold_marker": folds, "signal": labels + rng.normal(size=folds.size)})
    seen = []

    def spy(cfg, x_fit, y_fit, x_valid, y_valid, seed):
        model = fit_pair_model(cfg, x_fit, y_fit, x_valid, y_valid, seed)
        record = {"trained": set(x_fit[:, 0]) | set(x_valid[:, 0]), "predicted": []}
        seen.append(record)
        original = model.predict

        def predict(x):
            record["predicted"].append(set(x[:, 0]))
            return original(x)

        model.predict = predict
        return model

    monkeypatch.setattr(stack_module, "fit_pair_model", spy)
    test_view = features.iloc[:10].assign(fold_marker=-1)
    result = cross_fit(
        features, labels, folds, dict.fromkeys(range(4), test_view), StackConfig(), seed=0
    )
    assert len(seen) == 4
    for split, record in zip(result.splits, seen, strict=True):
        oof_predicted = record["predicted"][0]
        assert oof_predicted == {split.fold}
        assert split.fold not in record["trained"]
    assert np.isfinite(result.oof).all() and result.test.shape == (10,)


def test_stack_beats_a_single_noisy_score(tmp_path, caplog):
    cfg = small_inputs(tmp_path, gender_head=True)
    with caplog.at_level(logging.INFO):
        result = run_stack(cfg, [cfg.paths.outputs / "cnn"])
    single = result.metrics["experiments"]["cnn"]["asnorm"]
    stack = result.metrics["stack"]
    assert stack["eer"] < single["eer"] - 0.03
    assert stack["best_accuracy"] > single["best_accuracy"] + 0.02
    out = cfg.paths.outputs / "stack"
    for name in ("oof_predictions.csv", "test_predictions.csv", "importances.csv", "metrics.json"):
        assert (out / name).is_file()
    assert (out / "config.yaml").is_file() and (out / "adversarial.json").is_file()
    oof = pd.read_csv(out / "oof_predictions.csv")
    assert list(oof.columns) == ["fold", "audio_1", "audio_2", "label", "prob", "prob_bundle"]
    test = pd.read_csv(out / "test_predictions.csv")
    public = pd.read_csv(cfg.paths.input / "public-test.csv")
    assert test[["audio_1", "audio_2"]].equals(public)
    assert test["prob"].between(0, 1).all()
    importances = pd.read_csv(out / "importances.csv")
    assert "gender_same_prob" in set(importances["feature"])
    assert (importances["kind"] == stack_module.IMPORTANCE_KINDS[cfg.stack.model]).all()


def test_the_logistic_stacker_does_not_extrapolate_beyond_its_training_range(tmp_path):
    rng = np.random.default_rng(1)
    x = np.column_stack([rng.uniform(0, 1, 500), rng.normal(size=500), np.full(500, np.nan)])
    y = (x[:, 0] + 0.3 * rng.normal(size=500) > 0.5).astype(int)
    model = fit_pair_model(StackConfig(model="logistic"), x[:400], y[:400], x[400:], y[400:], 0)
    far = np.array([[100.0, 0.0, np.nan], [-50.0, 0.0, 3.0]])
    edge = np.array(
        [[np.percentile(x[:, 0], 99.5), 0.0, np.nan], [np.percentile(x[:, 0], 0.5), 0.0, 0]]
    )
    np.testing.assert_allclose(model.predict(far), model.predict(edge), atol=1e-12)
    path = tmp_path / "model.json"
    path.write_text(model.to_text())
    np.testing.assert_allclose(load_pair_model(path).predict(far), model.predict(far), atol=1e-12)


def test_blend_averages_its_members_and_reads_back_from_text(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 4))
    y = (x[:, 0] + 0.5 * x[:, 1] * x[:, 2] + rng.normal(scale=0.5, size=600) > 0).astype(int)
    fit_args = (x[:400], y[:400], x[400:500], y[400:500])
    cfg = StackConfig(model="blend", n_estimators=60)
    blend = fit_pair_model(cfg, *fit_args, seed=0)
    members = [
        fit_pair_model(cfg.model_copy(update={"model": kind}), *fit_args, seed=0)
        for kind in ("lightgbm", "logistic")
    ]
    held_out = x[500:]
    expected = np.mean([m.predict(held_out) for m in members], axis=0)
    np.testing.assert_allclose(blend.predict(held_out), expected, atol=1e-12)
    path = tmp_path / f"model{pair_model_suffix(blend.kind)}"
    path.write_text(blend.to_text())
    np.testing.assert_allclose(load_pair_model(path).predict(held_out), expected, atol=1e-9)
    assert blend.importance().sum() == pytest.approx(1.0) and blend.rounds == members[0].rounds


def test_scores_only_logistic_and_rank_average(tmp_path):
    cfg = small_inputs(tmp_path, experiments=("cnn", "resnet"))
    cfg.stack.use_metadata = False
    cfg.stack.model = "logistic"
    cfg.stack.average = "rank"
    stack_stage(cfg)
    importances = pd.read_csv(cfg.paths.outputs / "stack" / "importances.csv")
    assert set(importances["model"]) == {"cnn", "resnet"}
    assert importances["feature"].str.contains("__").all()  # scores (and q_) only
    metrics = pd.read_json(cfg.paths.outputs / "stack" / "metrics.json", typ="series")
    assert set(metrics["experiments"]) == {"cnn", "resnet"}
    assert set(metrics["stackers"]) == {"cnn", "resnet"}


def test_stack_is_deterministic(tmp_path):
    cfg = small_inputs(tmp_path, n_folds=2, trials_per_fold=500)
    first = run_stack(cfg, [cfg.paths.outputs / "cnn"], tmp_path / "a")
    second = run_stack(cfg, [cfg.paths.outputs / "cnn"], tmp_path / "b")
    np.testing.assert_array_equal(first.oof["prob"], second.oof["prob"])
    np.testing.assert_array_equal(first.test["prob"], second.test["prob"])


def test_stack_names_ids_missing_from_the_manifest(tmp_path):
    cfg = small_inputs(tmp_path)
    manifest_path = cfg.paths.prep_dir / "manifest.csv"
    manifest = pd.read_csv(manifest_path)
    lost = manifest.loc[manifest["split"] == "test", "name"].iloc[0]
    manifest[manifest["name"] != lost].to_csv(manifest_path, index=False)
    with pytest.raises(MissingIdError, match=lost):
        stack_stage(cfg)


def test_experiments_on_different_trials_are_refused(tmp_path):
    cfg = small_inputs(tmp_path, experiments=("cnn", "resnet"))
    path = cfg.paths.outputs / "resnet" / "oof_scores.csv"
    pd.read_csv(path).iloc[:-5].to_csv(path, index=False)
    with pytest.raises(StageInputError, match="different OOF trials"):
        stack_stage(cfg)


def test_combine_rank_and_probability():
    a, b = np.array([0.1, 0.9, 0.5]), np.array([0.2, 0.3, 0.4])
    np.testing.assert_allclose(combine([a, b], "probability"), [0.15, 0.6, 0.45])
    np.testing.assert_allclose(combine([a, b], "rank"), [1 / 3, 2.5 / 3, 2.5 / 3])


def test_adversarial_flags_a_shifted_feature():
    rng = np.random.default_rng(1)
    oof = pd.DataFrame({"duration_min": rng.lognormal(1.2, 0.3, 800), "same": rng.random(800)})
    test = pd.DataFrame({"duration_min": rng.lognormal(0.3, 0.3, 600), "same": rng.random(600)})
    table, summary = adversarial_validation(oof, test, StackConfig(), seed=0)
    assert summary["shifted_features"] == ["duration_min"]
    assert summary["auc"] > 0.9
    assert table.set_index("feature").loc["same", "auc"] < 0.6
    # a variance shift with the same mean is caught too
    wide = np.r_[rng.normal(0, 1, 500), rng.normal(0, 5, 500)]
    assert single_feature_auc(wide, np.repeat([0, 1], 500), seed=0) > 0.7


def test_a_constant_feature_is_never_called_shifted():
    """All clips at 16 kHz: sample-rate features cannot tell OOF from test (AUC 0.5), even
    with clip-disjoint splits whose test shares differ (pooled scores used to give ~0.57)."""
    from src.stacking.adversarial import clip_disjoint_splits, single_feature_auc

    rng = np.random.default_rng(0)
    n = 3000
    is_test = (np.arange(n) >= 1000).astype(np.int64)
    first = np.where(is_test, "t", "o") + rng.integers(0, 60, n).astype(str)
    second = np.where(is_test, "t", "o") + rng.integers(0, 60, n).astype(str)
    splits = clip_disjoint_splits(first, second, seed=1)
    assert single_feature_auc(np.full(n, 16000.0), is_test, splits=splits) == 0.5


def test_shift_warning_names_the_features_and_their_medians(caplog, tmp_path):
    from src.config import StackConfig
    from src.stacking.adversarial import write_adversarial

    rng = np.random.default_rng(0)
    oof = pd.DataFrame({"duration_min": rng.gamma(2, 1.3, 4000), "noise": rng.normal(size=4000)})
    test = pd.DataFrame({"duration_min": rng.gamma(2, 2.2, 4000), "noise": rng.normal(size=4000)})
    with caplog.at_level(logging.WARNING):
        summary = write_adversarial(oof, test, StackConfig(adversarial_warn_auc=0.6), 0, tmp_path)
    assert summary["top_features"][0]["feature"] == "duration_min"
    assert "duration_min (AUC" in caplog.text and "OOF median" in caplog.text
