"""Threshold policies and the checked submission file."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from src.config import config_from_dict
from src.inference.metrics import best_accuracy, equal_error_rate
from src.stacking.submit import SubmissionError, check_submission, submit_stage
from src.stacking.threshold import apply_policy, balanced_labels


def test_balanced_labels_exact_share_with_ties_by_row_order():
    scores = np.array([0.5, 0.5, 0.5, 0.5, 0.9, 0.1])
    labels, threshold = balanced_labels(scores, 0.5)
    assert labels.tolist() == [1, 1, 0, 0, 1, 0]  # the 0.9, then the first two 0.5 rows
    assert threshold == 0.5
    rng = np.random.default_rng(0)
    for n, share in ((1001, 0.5), (50000, 0.5), (999, 0.3)):
        scores = np.round(rng.normal(size=n), 1)  # many ties
        assert balanced_labels(scores, share)[0].sum() == round(share * n)


def test_oof_policies_use_the_metric_thresholds():
    rng = np.random.default_rng(1)
    oof_labels = rng.integers(0, 2, 500)
    oof_scores = oof_labels + rng.normal(size=500)
    test = rng.normal(size=50)
    for policy, expected in (
        ("oof_accuracy", best_accuracy(oof_scores, oof_labels)[1]),
        ("eer", equal_error_rate(oof_scores, oof_labels)[1]),
    ):
        labels, threshold = apply_policy(policy, test, oof_scores, oof_labels)
        assert threshold == expected
        assert (labels == (test >= expected)).all()
    with pytest.raises(ValueError, match="balanced"):
        apply_policy("median", test, oof_scores, oof_labels)


def expected_pairs() -> pd.DataFrame:
    # duplicate row (a, b) on purpose: it must be kept twice, in place
    return pd.DataFrame({"audio_1": ["a", "c", "a", "e"], "audio_2": ["b", "d", "b", "f"]})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.iloc[:3], "1 missing"),
        (lambda t: pd.concat([t, t.iloc[[1]]]), "1 extra"),
        (lambda t: t.drop(index=2), "1 missing"),  # one of the duplicates
        (lambda t: t.iloc[[1, 0, 2, 3]], "out of order"),
        (lambda t: t.assign(audio_2=["b", "d", "b", "x"]), "missing"),
        (lambda t: t.assign(label=[1, 0, 2, 0]), "0 or 1"),
        (lambda t: t.assign(label=[1, 0, None, 0]), "0 or 1"),
    ],
)
def test_check_submission_refuses_mismatches(change, message):
    good = expected_pairs().assign(label=[1, 0, 1, 0])
    check_submission(good, expected_pairs())
    with pytest.raises(SubmissionError, match=message):
        check_submission(change(good).reset_index(drop=True), expected_pairs())


def stack_outputs(tmp_path, pairs: pd.DataFrame):
    cfg = config_from_dict(
        {"paths": {"input": str(tmp_path / "input"), "outputs": str(tmp_path / "outputs")}}
    )
    (tmp_path / "input").mkdir()
    expected_pairs().to_csv(tmp_path / "input" / "public-test.csv", index=False)
    stack = tmp_path / "outputs" / "stack"
    stack.mkdir(parents=True)
    pairs.assign(prob=np.linspace(0.9, 0.1, len(pairs))).to_csv(
        stack / "test_predictions.csv", index=False
    )
    pd.DataFrame({"label": [1, 0, 1, 0], "prob": [0.8, 0.3, 0.6, 0.4]}).to_csv(
        stack / "oof_predictions.csv", index=False
    )
    return cfg


@pytest.mark.parametrize("policy", ["balanced", "oof_accuracy", "eer"])
def test_submit_stage_writes_checked_files(tmp_path, policy):
    cfg = stack_outputs(tmp_path, expected_pairs())
    cfg.submit.policy = policy
    submit_stage(cfg)
    submission = pd.read_csv(tmp_path / "outputs" / "submission.csv")
    assert list(submission.columns) == ["audio_1", "audio_2", "label"]
    assert submission[["audio_1", "audio_2"]].equals(expected_pairs())
    scores = pd.read_csv(tmp_path / "outputs" / "submission_scores.csv", keep_default_na=False)
    assert list(scores.columns) == ["audio_1", "audio_2", "score", "label", "short_clip"]
    assert (scores["short_clip"] == "").all()  # no manifest: nothing is known to be short
    if policy == "balanced":
        assert submission["label"].tolist() == [1, 1, 0, 0]


def test_submit_stage_writes_nothing_on_mismatch(tmp_path):
    cfg = stack_outputs(tmp_path, expected_pairs().iloc[[0, 1, 3]])
    with pytest.raises(SubmissionError, match="missing"):
        submit_stage(cfg)
    assert not (tmp_path / "outputs" / "submission.csv").exists()
    assert not (tmp_path / "outputs" / "submission_scores.csv").exists()
    assert not list((tmp_path / "outputs").glob("*.tmp"))


def test_submit_from_a_first_level_score(tmp_path):
    cfg = stack_outputs(tmp_path, expected_pairs())
    exp = tmp_path / "outputs" / "cnn"
    exp.mkdir()
    expected_pairs().assign(cosine=[0.1, 0.2, 0.3, 0.4], asnorm=[4.0, 3.0, 2.0, 1.0]).to_csv(
        exp / "test_scores.csv", index=False
    )
    pd.DataFrame({"label": [1, 0], "cosine": [0.5, 0.1], "asnorm": [2.0, 0.0]}).to_csv(
        exp / "oof_scores.csv", index=False
    )
    cfg.submit.source = "first_level"
    cfg.submit.score = "cosine"
    submit_stage(cfg)
    submission = pd.read_csv(tmp_path / "outputs" / "submission.csv")
    assert submission["label"].tolist() == [0, 0, 1, 1]
