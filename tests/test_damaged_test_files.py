"""A damaged test file costs its pairs, not the submission (data.strict_test keeps the error)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from src.data.demo import generate_demo
from src.data.zalo import DataLayoutError
from tests.conftest import TINY, config_for


def damaged_data(root: Path) -> tuple[Path, str]:
    """Tiny demo data whose first test file is not audio."""
    generate_demo(root, n_speakers=8, clips_per_speaker=4, n_test_speakers=2,
                  test_clips_per_speaker=3, seed=0)  # fmt: skip
    pairs = pd.read_csv(root / "public-test.csv")
    name = str(pairs["audio_1"].iloc[0])
    (root / "public-test" / name).write_bytes(b"this is not a wav file")
    return root, name


def test_damaged_test_file_gets_fallback_answers(tmp_path: Path) -> None:
    from src.data.folds import folds_stage
    from src.data.prepare import prepare_stage
    from src.runner import run_pipeline

    root, damaged = damaged_data(tmp_path / "data")
    strict = config_for(root, tmp_path / "strict", *TINY, "data.strict_test=true")
    with pytest.raises(DataLayoutError, match=damaged):
        prepare_stage(strict)

    cfg = config_for(root, tmp_path, *TINY, "train.epochs=1", "train.steps_per_epoch=2",
                     "train.average_last=1", "stack.graph_features=false")  # fmt: skip
    prepare_stage(cfg)
    expected = pd.read_csv(root / "public-test.csv")
    names_it = (expected["audio_1"] == damaged) | (expected["audio_2"] == damaged)
    fallback = pd.read_csv(cfg.paths.prep_dir / "fallback_pairs.csv")
    assert fallback["row"].tolist() == list(expected.index[names_it])
    assert fallback["reason"].str.startswith(f"{damaged}: ").all()
    scored = pd.read_csv(cfg.paths.prep_dir / "test_pairs.csv")
    assert len(scored) == len(expected) - names_it.sum() and damaged not in set(scored["audio_1"])

    folds_stage(cfg)
    run_pipeline(cfg, ["train", "embed", "score", "stack", "submit", "report"])
    submission = pd.read_csv(cfg.submission_path)
    pd.testing.assert_frame_equal(submission[["audio_1", "audio_2"]], expected)
    scores = pd.read_csv(cfg.submission_scores_path, keep_default_na=False)
    flagged = scores["fallback"] != ""
    assert flagged.tolist() == names_it.tolist()
    assert (submission.loc[flagged, "label"] == 1).all()  # the balanced policy's prior (50 %)
    assert set(submission["label"]) <= {0, 1}
    summary = (cfg.report_dir / "summary.md").read_text()
    assert f"{names_it.sum()} pair(s) name a test file with no usable audio" in summary
    import json

    metrics = json.loads((cfg.report_dir / "metrics.json").read_text())
    stack = metrics["sources"]["stack"]  # test figures on the scored pairs, not dropped
    assert stack["test_pairs_scored"] == len(scored) and stack["test_pairs"] == len(expected)
    assert "test_accuracy" in stack["policies"]["balanced"]
    assert f"scored {len(scored)} of the {len(expected)} public-test pairs" in summary
    key = pd.read_csv(root / "public-test-labels.csv")  # the leaderboard's figure: every row
    written = metrics["submission"]
    assert written["rows"] == len(expected)
    assert written["test_accuracy"] == pytest.approx((submission["label"] == key["label"]).mean())
    assert "The written submission" in summary


def cut_test_file(root: Path, name: str, seconds: float) -> None:
    """Cut a test file to its first ``seconds`` of audio, in place."""
    import soundfile as sf

    wave, rate = sf.read(root / "public-test" / name, dtype="float32")
    sf.write(root / "public-test" / name, wave[: int(seconds * rate)], rate)


def test_short_test_clip_is_scored_and_flagged_and_one_under_the_floor_falls_back(
    tmp_path: Path,
) -> None:
    """0.15 s (over data.min_scored_seconds, 0.1 s; under data.short_clip_seconds, 0.2 s): its
    pairs are scored and flagged in column short_clip; 0.08 s (under data.min_duration): the
    fallback answers its pairs, unflagged."""
    from src.data.folds import folds_stage
    from src.data.prepare import prepare_stage
    from src.runner import run_pipeline

    root = tmp_path / "data"
    generate_demo(root, n_speakers=8, clips_per_speaker=4, n_test_speakers=2,
                  test_clips_per_speaker=3, seed=0)  # fmt: skip
    expected = pd.read_csv(root / "public-test.csv")
    short = str(expected["audio_1"].iloc[0])
    others = sorted(set(expected["audio_1"]) | set(expected["audio_2"]) - {short})
    tiny = next(
        n
        for n in others
        if ((expected == short).any(axis=1) & (expected == n).any(axis=1)).sum() == 0
    )
    cut_test_file(root, short, 0.15)
    cut_test_file(root, tiny, 0.08)
    cfg = config_for(root, tmp_path, *TINY, "train.epochs=1", "train.steps_per_epoch=2",
                     "train.average_last=1", "stack.graph_features=false")  # fmt: skip
    prepare_stage(cfg)
    folds_stage(cfg)
    run_pipeline(cfg, ["train", "embed", "score", "stack", "submit", "report"])
    scores = pd.read_csv(cfg.submission_scores_path, keep_default_na=False)
    names_short = ((expected["audio_1"] == short) | (expected["audio_2"] == short)).to_numpy()
    names_tiny = ((expected["audio_1"] == tiny) | (expected["audio_2"] == tiny)).to_numpy()
    assert names_short.any() and names_tiny.any()
    assert (scores["fallback"] != "").tolist() == names_tiny.tolist()
    assert scores.loc[names_tiny, "fallback"].str.startswith(f"{tiny}: too short").all()
    assert (scores["short_clip"] != "").tolist() == names_short.tolist()
    assert (
        scores.loc[names_short, "short_clip"]
        .eq(
            f"{short}: short clip: 0.15 s (< 0.2 s, data.short_clip_seconds): scored best-effort, "
            "less reliable"
        )
        .all()
    )
    assert pd.to_numeric(scores.loc[names_short, "score"]).notna().all()
    summary = (cfg.report_dir / "summary.md").read_text()
    assert f"{names_short.sum()} pair(s) name a test clip shorter than" in summary
    warnings = pd.read_csv(cfg.report_dir / "file_warnings.csv")
    assert warnings.loc[warnings["name"] == short, "warning"].str.startswith("short clip:").any()
