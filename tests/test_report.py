"""The report stage on synthetic first-level scores and a stack."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from src.report.report import duration_answer, duration_bin, gender_pairing, report_stage
from src.stacking.stack import stack_stage
from tests.fixtures.stack_inputs import write_synthetic_inputs


def synthetic(tmp_path, **kwargs):
    options = dict(n_folds=3, train_speakers=90, test_speakers=40, trials_per_fold=600)
    return write_synthetic_inputs(tmp_path, **(options | dict(n_test_pairs=500) | kwargs))


def test_report_writes_its_files(tmp_path):
    cfg = synthetic(tmp_path)
    cfg.stack.num_threads = 1
    stack_stage(cfg)
    report_stage(cfg)
    out = cfg.paths.outputs / "report"
    for name in ("metrics.json", "det.png", "score_histograms.png", "summary.md"):
        assert (out / name).stat().st_size > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["main_source"] == "stack" and metrics["test_labels"]
    assert set(metrics["sources"]) == {"cnn/cosine", "cnn/asnorm", "stack", "stack/served bundle"}
    for entry in metrics["sources"].values():
        assert set(entry["policies"]) == {"balanced", "oof_accuracy", "eer"}
        assert 0.5 < entry["policies"]["balanced"]["test_accuracy"] <= 1.0
        assert entry["policies"]["balanced"]["test_positive_share"] == 0.5
    by_duration = pd.read_csv(out / "by_duration.csv")
    assert by_duration["n"].sum() == len(pd.read_csv(cfg.paths.outputs / "cnn" / "oof_scores.csv"))
    by_gender = pd.read_csv(out / "by_gender.csv")
    assert set(by_gender["gender_pair"]) <= {"MM", "FF", "MF", "unknown"}
    assert (by_gender.set_index("gender_pair").loc["MF", "n_same"]) == 0
    summary = (out / "summary.md").read_text()
    assert "It fails" in summary and "when the shorter clip is short" in summary
    assert "same-gender pairs" in summary


def test_report_without_stack_or_labels(tmp_path):
    cfg = synthetic(tmp_path, test_labels=False)
    report_stage(cfg)
    metrics = json.loads((cfg.paths.outputs / "report" / "metrics.json").read_text())
    assert metrics["main_source"] == "cnn/cosine" and not metrics["test_labels"]
    assert "test_accuracy" not in metrics["sources"]["cnn/asnorm"]["policies"]["eer"]
    summary = (cfg.paths.outputs / "report" / "summary.md").read_text()
    assert "It fails more on short clips" in summary  # synthetic score noise grows on short clips


def test_duration_bins_and_gender_pairs():
    bins = duration_bin(np.array([0.15, 0.5, 1.0, 2.5, 9.0, np.nan]))
    # 0-0.5 s: the pairs with a short clip (data.short_clip_seconds) get a row of their own
    assert list(bins[:5]) == ["0-0.5 s", "0.5-1 s", "1-2 s", "2-3 s", ">=8 s"]
    assert pd.isna(bins[5])
    pairs = gender_pairing(
        pd.Series(["M", "F", "F", "NA", None]), pd.Series(["M", "F", "M", "M", "F"])
    )
    assert pairs.tolist() == ["MM", "FF", "MF", "unknown", "unknown"]
    table = pd.DataFrame(
        {"shorter_clip": ["0-1 s", ">=8 s"], "n": [100, 100], "accuracy": [0.7, 0.9]}
    )
    assert "more on short clips" in duration_answer(table)


def test_report_says_when_the_answer_key_does_not_match(tmp_path):
    cfg = synthetic(tmp_path)
    key = cfg.paths.input / "public-test-labels.csv"
    pd.read_csv(key).iloc[:-3].to_csv(key, index=False)  # three pairs short
    report_stage(cfg)
    out = cfg.paths.outputs / "report"
    metrics = json.loads((out / "metrics.json").read_text())
    assert not metrics["test_labels"] and "lacks 3 of the 500" in metrics["answer_key_problem"]
    assert "## Answer key" in (out / "summary.md").read_text()


def test_report_scores_only_the_fallback_rows_as_missing(tmp_path, caplog):
    """A source that lacks exactly the fallback rows (``fallback_pairs.csv``) gets test figures on
    the rest; one that lacks any other row (a stale or truncated table) gets none, with a
    warning, rather than figures said to leave out fallback answers."""
    import logging

    cfg = synthetic(tmp_path)
    scores = cfg.paths.outputs / "cnn" / "test_scores.csv"
    table = pd.read_csv(scores)
    table.drop(index=[3, 7]).to_csv(scores, index=False)  # two rows lost, no fallback file
    with caplog.at_level(logging.WARNING):
        report_stage(cfg, force=True)
    out = cfg.paths.outputs / "report"
    metrics = json.loads((out / "metrics.json").read_text())
    cosine = metrics["sources"]["cnn/cosine"]
    assert "test_pairs_scored" not in cosine and "test_accuracy" not in cosine["policies"]["eer"]
    assert "cnn/cosine test rows differ from public-test.csv" in caplog.text
    assert "scored 498 of the 500" not in (out / "summary.md").read_text()

    fallback = table.loc[[3, 7], ["audio_1", "audio_2"]].assign(row=[3, 7], reason="x: silent")
    fallback[["row", "audio_1", "audio_2", "reason"]].to_csv(
        cfg.paths.prep_dir / "fallback_pairs.csv", index=False
    )  # the same two rows, now answered by the fallback
    report_stage(cfg, force=True)
    metrics = json.loads((out / "metrics.json").read_text())
    cosine = metrics["sources"]["cnn/cosine"]
    assert (cosine["test_pairs_scored"], cosine["test_pairs"]) == (498, 500)
    assert "test_accuracy" in cosine["policies"]["eer"]
    assert "scored 498 of the 500 public-test pairs" in (out / "summary.md").read_text()


def test_report_without_labels_has_no_line_on_partial_test_columns(tmp_path):
    """Without an answer key there are no TEST columns, so the summary says nothing of theirs
    when fallback rows were left unscored (metrics.json still counts the scored pairs)."""
    cfg = synthetic(tmp_path, test_labels=False)
    scores = cfg.paths.outputs / "cnn" / "test_scores.csv"
    table = pd.read_csv(scores)
    table.drop(index=[3]).to_csv(scores, index=False)
    fallback = table.loc[[3], ["audio_1", "audio_2"]].assign(row=3, reason="x: silent")
    fallback[["row", "audio_1", "audio_2", "reason"]].to_csv(
        cfg.paths.prep_dir / "fallback_pairs.csv", index=False
    )
    report_stage(cfg)
    out = cfg.paths.outputs / "report"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sources"]["cnn/cosine"]["test_pairs_scored"] == 499
    summary = (out / "summary.md").read_text()
    assert "TEST acc" not in summary and "TEST columns of sources" not in summary
    assert "1 pair(s) name a test file with no usable audio" in summary
