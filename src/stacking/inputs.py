"""Reading the files the second level stands on: first-level scores, the manifest, gender heads.

Every reader checks the contract it relies on and raises an error that names the file and what
is wrong, so a stage never trains on half-aligned tables.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from src.data.pairs import DataLayoutError, PairList, read_pair_list

from .features import SCORE_COLUMNS

log = logging.getLogger(__name__)

TRIAL_KEYS = ["fold", "audio_1", "audio_2"]
PAIR_KEYS = ["audio_1", "audio_2"]


class StageInputError(ValueError):
    """An input file that is missing or does not follow its contract."""


@dataclass(frozen=True)
class ExperimentScores:
    """One first-level experiment's score tables, as the score stage wrote them."""

    name: str
    oof: pd.DataFrame  # fold, audio_1, audio_2, label, cosine, asnorm, q_...
    test: pd.DataFrame  # audio_1, audio_2, cosine_fold{k}, asnorm_fold{k}, cosine, asnorm, q_...
    gender_oof: pd.Series | None  # p_male by manifest id
    gender_test: pd.DataFrame | None  # p_male, p_male_fold{k} by manifest id or file name

    @property
    def folds(self) -> list[int]:
        return sorted(int(f) for f in self.oof["fold"].unique())


def read_csv(path: Path, required: list[str], what: str) -> pd.DataFrame:
    """Read a CSV and check it has ``required`` columns; ids are kept as strings."""
    if not path.is_file():
        raise StageInputError(f"{what} not found: {path}")
    try:
        frame = pd.read_csv(path, dtype={"audio_1": str, "audio_2": str, "id": str, "name": str})
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise StageInputError(f"{what} {path} is not a readable CSV: {err}") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise StageInputError(f"{path}: missing columns {missing} (has {list(frame.columns)})")
    return frame


def _read_gender(path: Path, per_fold: list[int] | None = None) -> pd.DataFrame | None:
    """Gender predictions by id: ``p_male``, and ``p_male_fold{k}`` for the folds ``per_fold``."""
    if not path.is_file():
        return None
    columns = ["p_male", *(f"p_male_fold{k}" for k in per_fold or [])]
    frame = read_csv(path, ["id", *columns], "gender predictions (rerun `score` if old)")
    if frame["id"].duplicated().any():
        raise StageInputError(f"{path}: duplicated ids")
    return frame.set_index("id")[columns].astype(np.float64)


def load_experiment(directory: Path) -> ExperimentScores:
    """Read ``oof_scores.csv``, ``test_scores.csv`` and optional gender files of one experiment."""
    name = directory.name
    oof = read_csv(
        directory / "oof_scores.csv", [*TRIAL_KEYS, "label", *SCORE_COLUMNS], f"{name} OOF scores"
    )
    test = read_csv(directory / "test_scores.csv", [*PAIR_KEYS, *SCORE_COLUMNS], f"{name} test")
    for frame, file in ((oof, "oof_scores.csv"), (test, "test_scores.csv")):
        for column in [c for c in frame.columns if c not in (*TRIAL_KEYS, "label")]:
            if frame[column].isna().any():
                raise StageInputError(f"{directory / file}: column {column!r} has missing values")
    if not oof["label"].isin([0, 1]).all():
        raise StageInputError(f"{directory / 'oof_scores.csv'}: labels must be 0 or 1")
    oof["fold"] = oof["fold"].astype(int)
    gender_oof = _read_gender(directory / "gender_oof.csv")
    folds = sorted(int(f) for f in oof["fold"].unique())
    return ExperimentScores(
        name=name,
        oof=oof,
        test=test,
        gender_oof=None if gender_oof is None else gender_oof["p_male"],
        gender_test=_read_gender(directory / "gender_test.csv", folds),
    )


def align_experiments(experiments: list[ExperimentScores]) -> list[ExperimentScores]:
    """Reorder every experiment's OOF rows like the first one's; check test rows match.

    Raises
    ------
    StageInputError
        When the experiments were scored on different trials or test pairs.
    """
    if not experiments:
        raise StageInputError("no experiments to stack")
    reference = experiments[0]
    keys = reference.oof[TRIAL_KEYS]
    aligned = [reference]
    for other in experiments[1:]:
        oof = other.oof
        if not oof[TRIAL_KEYS].reset_index(drop=True).equals(keys.reset_index(drop=True)):
            # rows in another order: match them by key, which must then be unique
            indexed = oof.set_index(TRIAL_KEYS)
            for name, index in ((other.name, indexed.index), (reference.name, keys)):
                if index.duplicated().any():
                    raise StageInputError(
                        f"{name}: duplicated OOF trials (fold, audio_1, audio_2), so rows "
                        "of different experiments cannot be matched"
                    )
            wanted = pd.MultiIndex.from_frame(keys)
            missing = wanted.difference(indexed.index)
            extra = indexed.index.difference(wanted)
            if len(missing) or len(extra):
                raise StageInputError(
                    f"{other.name} and {reference.name} were scored on different OOF trials "
                    f"({len(missing)} missing, {len(extra)} extra)"
                )
            oof = indexed.reindex(wanted).reset_index()
        if not (oof["label"].to_numpy() == reference.oof["label"].to_numpy()).all():
            raise StageInputError(f"{other.name}: OOF labels differ from {reference.name}")
        if not other.test[PAIR_KEYS].equals(reference.test[PAIR_KEYS]):
            raise StageInputError(
                f"{other.name} and {reference.name}: test_scores.csv rows differ (pairs or order)"
            )
        aligned.append(
            ExperimentScores(other.name, oof, other.test, other.gender_oof, other.gender_test)
        )
    return aligned


def load_manifest(prep_dir: Path) -> pd.DataFrame:
    """The prepare stage's manifest with ids and names as strings."""
    return read_csv(
        prep_dir / "manifest.csv", ["id", "name", "split"], "manifest (run `prepare` first)"
    )


def mean_gender(series: list[pd.Series | None]) -> pd.Series | None:
    """Average ``p_male`` over the experiments that have a gender head (``None`` if none has).

    Averaging over experiments, never over folds: each entry is one model's view of a clip.
    """
    present = [s for s in series if s is not None]
    if not present:
        return None
    return pd.concat(present, axis=1).mean(axis=1)


def test_gender_view(tables: list[pd.DataFrame | None], fold: int | None) -> list[pd.Series | None]:
    """Each experiment's test ``p_male`` as fold ``fold``'s model saw it (``None``: fold mean)."""
    column = "p_male" if fold is None else f"p_male_fold{fold}"
    return [None if t is None else t[column] for t in tables]


def test_gender_by_name(p_male: pd.Series, manifest: pd.DataFrame) -> pd.Series:
    """Re-key test gender predictions by file name (they may be keyed by manifest id or name)."""
    test_rows = manifest[manifest["split"] == "test"]
    id_to_name = dict(zip(test_rows["id"], test_rows["name"], strict=True))
    renamed = [id_to_name.get(key, key) for key in p_male.index]
    out = pd.Series(p_male.to_numpy(), index=pd.Index(renamed, dtype=object), name="p_male")
    return out[~out.index.duplicated()]


def read_test_pairs(path: Path) -> pd.DataFrame:
    """``public-test.csv``: the pairs (file names, cleaned as ``prepare`` cleans them) a
    submission must label, in order."""
    return read_test_pair_list(path).pairs


def read_test_pair_list(path: Path) -> PairList:
    """``public-test.csv`` read by the one pair-list reader (:mod:`src.data.pairs`) that
    ``prepare`` uses: cleaned names to match, and the rows as written to repeat."""
    if not path.is_file():
        raise StageInputError(f"test pair list not found: {path}")
    try:
        return read_pair_list(path, log_rows=False)
    except DataLayoutError as err:
        raise StageInputError(str(err)) from None
