"""Speaker-disjoint folds and trial lists: disjointness, balance, shape, determinism."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src.config import FoldsConfig
from src.data.folds import assign_folds, folds_stage, make_trials, trial_summary


def synthetic_files(n_speakers: int = 30, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_speakers):
        gender = "M" if s % 3 else "F"
        for c in range(int(rng.integers(3, 12))):
            rows.append(
                {"id": f"train/{s}-{gender}-30/{c}.wav", "speaker": str(s), "gender": gender}
            )
    return pd.DataFrame(rows)


def test_folds_are_speaker_disjoint_and_gender_stratified() -> None:
    files = synthetic_files()
    folds = assign_folds(files, 5, seed=1)
    assert folds["speaker"].is_unique and set(folds["fold"]) == set(range(5))
    per_fold = folds.groupby(["fold", "gender"]).size().unstack()
    assert (per_fold.max() - per_fold.min()).max() <= 1
    files_per_fold = folds.groupby("fold")["n_files"].sum()
    assert files_per_fold.max() - files_per_fold.min() <= 12


def test_too_few_speakers_is_an_error() -> None:
    with pytest.raises(ValueError, match="cannot fill"):
        assign_folds(synthetic_files(3), 5, seed=0)


def test_trials_balanced_and_within_fold() -> None:
    files = synthetic_files(12)
    cfg = FoldsConfig(same_gender_negative_share=0.8)
    trials = make_trials(files, cfg, seed=3)
    speaker = dict(zip(files["id"], files["speaker"], strict=True))
    same = trials["audio_1"].map(speaker) == trials["audio_2"].map(speaker)
    assert (same == trials["label"].astype(bool)).all()
    assert trials["label"].mean() == pytest.approx(0.5, abs=1e-9)
    assert not (trials["audio_1"] == trials["audio_2"]).any()
    canon = trials.apply(lambda r: tuple(sorted((r["audio_1"], r["audio_2"]))), axis=1)
    assert canon.is_unique
    summary = trial_summary(trials, files)
    assert 0.6 <= summary["same_gender_negative_share"] <= 0.95
    assert summary["pairs_per_file_max"] <= 2 * cfg.pairs_per_file_max


def test_trials_deterministic_and_seed_dependent() -> None:
    files = synthetic_files(10)
    cfg = FoldsConfig()
    pd.testing.assert_frame_equal(make_trials(files, cfg, 5), make_trials(files, cfg, 5))
    assert not make_trials(files, cfg, 5).equals(make_trials(files, cfg, 6))


def test_folds_stage_end_to_end(tmp_path: Path) -> None:
    from src.data.prepare import prepare_stage
    from tests.conftest import config_for, make_zalo

    root = make_zalo(tmp_path / "data", n_speakers=10, clips=4)
    cfg = config_for(root, tmp_path, "folds.n_folds=2")
    prepare_stage(cfg)
    folds_stage(cfg)
    folds = pd.read_csv(cfg.folds_dir / "folds.csv", dtype={"speaker": str})
    assert len(folds) == 10
    first = {k: (cfg.folds_dir / f"trials_fold{k}.csv").read_bytes() for k in range(2)}
    for k in range(2):
        trials = pd.read_csv(cfg.folds_dir / f"trials_fold{k}.csv")
        speakers = set(trials["audio_1"].str.split("/").str[1].str.split("-").str[0])
        assert speakers <= set(folds.loc[folds["fold"] == k, "speaker"])
    folds_stage(cfg, force=True)  # deterministic rerun
    assert first == {k: (cfg.folds_dir / f"trials_fold{k}.csv").read_bytes() for k in range(2)}
