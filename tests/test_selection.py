"""Checkpoint selection never looks at the fold's own trials (honest OOF figures)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from src.data.cache import read_manifest
from src.data.folds import split_by_fold
from src.training.checkpoint import load_checkpoint
from src.training.selection import (
    average_state_dicts,
    holdout_speakers,
    snapshot_path,
)
from src.training.train import epoch_seed, train_stage
from tests.conftest import TINY, prepare_tiny

FAST = (*TINY, "train.epochs=3", "train.steps_per_epoch=2")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return prepare_tiny(tmp_path_factory.mktemp("select"), *FAST, seed=5)


def _fold_speakers(cfg, fold: int) -> set[str]:
    in_fold, _ = split_by_fold(read_manifest(cfg.paths.prep_dir), cfg.folds_dir, fold)
    return set(in_fold["speaker"])


def test_holdout_training_never_reads_the_fold_trials(tiny, tmp_path: Path) -> None:
    """Fold 0 trains and picks best.pt with its own trial file unreadable: it cannot peek."""
    trials = tiny.folds_dir / "trials_fold0.csv"
    saved = trials.read_bytes()
    trials.write_text("not,a,trial\nfile")
    holdout = tiny.model_copy(
        update={"train": tiny.train.model_copy(update={"selection": "holdout"})}
    )
    try:
        best = train_stage(holdout, 0, force=True)
    finally:
        trials.write_bytes(saved)
    state = load_checkpoint(best)
    oof_speakers = _fold_speakers(holdout, 0)
    trained, chose = set(state["speakers"]), set(state["validation_speakers"])
    assert chose and trained
    assert not (trained | chose) & oof_speakers
    assert not trained & chose
    validation = pd.read_csv(best.parent / "validation_trials.csv", dtype=str)
    used = set(validation["audio_1"]) | set(validation["audio_2"])
    manifest = read_manifest(holdout.paths.prep_dir).set_index("id")
    assert set(manifest.loc[list(used), "speaker"]) <= chose
    history = pd.read_csv(best.parent / "history.csv")
    assert history["val_eer"].between(0, 1).all()
    assert state["val_eer"] == pytest.approx(history["val_eer"].min())


def test_average_selection_is_the_mean_of_the_last_epochs(tiny) -> None:
    cfg = tiny.model_copy(
        update={"train": tiny.train.model_copy(update={"selection": "average", "average_last": 2})}
    )
    best = train_stage(cfg, 1, force=True)
    state = load_checkpoint(best)
    assert state["epochs_averaged"] == [2, 3] and state["validation_speakers"] == []
    assert set(state["speakers"]) == _fold_speakers(cfg, 0)  # all of them: none held out
    snapshots = [load_checkpoint(snapshot_path(best.parent, e)) for e in (2, 3)]
    for key, value in state["model"].items():
        if torch.is_floating_point(value):
            torch.testing.assert_close(value, (snapshots[0][key] + snapshots[1][key]) / 2)
    history = pd.read_csv(best.parent / "history.csv")
    assert len(history) == 3 and history["val_eer"].isna().all()  # fixed schedule, no peeking
    assert not (best.parent / "validation_trials.csv").exists()


def test_holdout_is_gender_stratified_and_deterministic() -> None:
    files = pd.DataFrame(
        {"speaker": [f"s{i}" for i in range(40)], "gender": ["M"] * 30 + ["F"] * 10}
    )
    chosen = holdout_speakers(files, 0.1, seed=3)
    assert chosen == holdout_speakers(files, 0.1, seed=3)
    assert chosen != holdout_speakers(files, 0.1, seed=4)
    genders = files.set_index("speaker").loc[chosen, "gender"]
    assert (genders == "M").sum() == 3 and (genders == "F").sum() == 1


def test_average_state_dicts_keeps_integer_buffers() -> None:
    a = {"w": torch.tensor([1.0, 3.0]), "n": torch.tensor(4)}
    b = {"w": torch.tensor([3.0, 5.0]), "n": torch.tensor(7)}
    mean = average_state_dicts([a, b])
    torch.testing.assert_close(mean["w"], torch.tensor([2.0, 4.0]))
    assert int(mean["n"]) == 7
    with pytest.raises(ValueError, match="different parameters"):
        average_state_dicts([a, {"w": a["w"]}])


def test_each_rank_and_epoch_draws_its_own_augmentation() -> None:
    seeds = {epoch_seed(tiny_cfg(), 0, e, r) for e in range(3) for r in range(4)}
    assert len(seeds) == 12
    assert epoch_seed(tiny_cfg(), 0, 1, 2) == epoch_seed(tiny_cfg(), 0, 1, 2)
    draws = []
    for rank in range(2):
        torch.manual_seed(epoch_seed(tiny_cfg(), 0, 0, rank))
        draws.append(torch.rand(4))
    assert not np.allclose(draws[0].numpy(), draws[1].numpy())


def tiny_cfg():
    from src.config import ExperimentConfig

    return ExperimentConfig()
