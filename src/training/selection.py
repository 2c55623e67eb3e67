"""How a fold's final model is chosen without looking at the fold's own OOF trials.

``train.selection`` picks one of two ways:

- ``holdout``: a small, gender-stratified share of the training folds' speakers is kept out of
  training; trials among their clips (shaped like the fold trials, ``folds.*`` settings) give the
  validation EER that picks ``best.pt`` and stops training early.
- ``average``: a fixed schedule on every training speaker; ``best.pt`` is the element-wise mean
  of the last ``train.average_last`` epochs' weights (WeSpeaker's ``avg_model``). No validation.

Either way fold ``k``'s OOF trials are scored by a model that saw them in no way.

Example
-------
>>> import pandas as pd
>>> files = pd.DataFrame({"speaker": list("abcdefgh"), "gender": list("MMMMFFFF")})
>>> len(holdout_speakers(files, 0.25, seed=1))
2
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from src.config import ExperimentConfig
from src.data.folds import make_trials

MIN_SPEAKERS_PER_GENDER = 2  # a gender with fewer training speakers gives none to validation


def holdout_speakers(files: pd.DataFrame, share: float, seed: int) -> list[str]:
    """About ``share`` of the speakers of ``files`` from each gender, chosen deterministically.

    A gender keeps at least one speaker for training; one with
    fewer than ``MIN_SPEAKERS_PER_GENDER`` gives none.
    """
    rng = np.random.default_rng(seed)
    chosen: list[str] = []
    by_gender = files.groupby(files["gender"].fillna("?"), sort=True)["speaker"]
    for _, speakers in by_gender:
        names = np.array(sorted(speakers.unique()))
        if names.size < MIN_SPEAKERS_PER_GENDER:
            continue
        count = min(max(1, round(share * names.size)), names.size - MIN_SPEAKERS_PER_GENDER + 1)
        chosen.extend(names[rng.permutation(names.size)[:count]].tolist())
    return sorted(chosen)


def holdout_split(
    cfg: ExperimentConfig, train_files: pd.DataFrame, fold: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Split the training folds' files into (training files, held-out files, held-out trials).

    Raises
    ------
    ValueError
        When too few speakers remain to hold any out, or their clips make no trial.
    """
    seed = cfg.seed * 1000 + 500 + fold
    held = set(holdout_speakers(train_files, cfg.train.holdout_speakers, seed))
    if len(held) < 2:
        raise ValueError(
            f"fold {fold}: too few training speakers to hold out a validation set "
            f"({train_files['speaker'].nunique()} speakers); set train.selection=average"
        )
    is_held = train_files["speaker"].isin(held)
    holdout = train_files[is_held]
    trials = make_trials(holdout, cfg.folds, seed)
    if trials.empty or trials["label"].nunique() < 2:
        raise ValueError(
            f"fold {fold}: the {len(held)} held-out speakers' clips make no usable validation "
            "trials; raise train.holdout_speakers or set train.selection=average"
        )
    if len(trials) > cfg.train.val_max_trials:
        trials = trials.sample(cfg.train.val_max_trials, random_state=cfg.seed).sort_index()
    return train_files[~is_held], holdout, trials.reset_index(drop=True)


def snapshot_path(fold_dir: Path, epoch: int) -> Path:
    """Where ``selection=average`` keeps the model weights after ``epoch`` (1-based)."""
    return fold_dir / "snapshots" / f"epoch{epoch:03d}.pt"


def averaged_epochs(epochs: int, average_last: int) -> list[int]:
    """The 1-based epochs whose weights are averaged into ``best.pt``.

    >>> averaged_epochs(10, 3)
    [8, 9, 10]
    """
    return list(range(max(1, epochs - average_last + 1), epochs + 1))


def average_state_dicts(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of model state dicts; integer buffers (BatchNorm counters) from the last.

    Raises
    ------
    ValueError
        When there is nothing to average or the dicts have different keys.
    """
    if not states:
        raise ValueError("no checkpoints to average")
    keys = list(states[-1])
    for state in states:
        if list(state) != keys:
            raise ValueError("checkpoints to average have different parameters")
    averaged = {}
    for key in keys:
        last = states[-1][key]
        if torch.is_floating_point(last):
            averaged[key] = torch.stack([s[key].float() for s in states]).mean(0).to(last.dtype)
        else:
            averaged[key] = last.clone()
    return averaged
