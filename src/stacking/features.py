"""Pair features for the second level: first-level scores plus metadata of both clips.

Every feature is symmetric in ``(audio_1, audio_2)``: a quantity measured on each clip becomes
its minimum, maximum and absolute gap (or an absolute log ratio), never "first" and "second".
All functions here are pure: they take tables and return tables.

OOF and test scores must mean the same thing. An OOF score comes from ONE first-level model that
did not see the trial's speakers. The test columns ``cosine_fold{k}`` are the same kind of number
(one model, unseen speakers), while the fold-mean ``cosine`` is an average of K models, with a
smaller spread. :func:`score_features` therefore takes a ``suffix`` so that the stage can build
one test view per fold model (``suffix="_fold{k}"``) and apply the stacker of fold ``k`` to it,
exactly how the OOF predictions of fold ``k`` were made (see ``stack.py``).

Example
-------
>>> import pandas as pd
>>> scores = pd.DataFrame({"cosine": [0.7], "asnorm": [2.0], "q_norm_1": [9.0], "q_norm_2": [11.0]})
>>> list(score_features(scores, "cnn").columns)  # doctest: +NORMALIZE_WHITESPACE
['cnn__cosine', 'cnn__asnorm', 'cnn__q_norm_min', 'cnn__q_norm_max', 'cnn__q_norm_gap']
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

SCORE_COLUMNS = ("cosine", "asnorm")
# score columns read when a run has them: ``adapted`` (``score.adapt``, src/inference/adapt.py)
OPTIONAL_SCORE_COLUMNS = ("adapted",)
PER_FOLD = re.compile(r"_fold\d+$")
# manifest columns that become pair features when present
META_COLUMNS = ("duration", "bytes", "frames", "sample_rate", "channels", "rms_dbfs", "snr_db")
LOG_FLOOR = 1e-3
# Named feature groups. "recording": how each clip was recorded, not who speaks in it (level,
# SNR, file size, frames per byte, channels, sample rate); on Zalo these can be a real cue (same
# phone, same session), for a deployed verifier they are a liability (the same person calls from
# another phone or room), so the exported bundle's stacker leaves them out unless
# ``export.recording_features``. "content": everything else (first-level scores, embedding
# quality, durations, predicted gender, trial-graph features).
RECORDING_FEATURES = frozenset(
    {
        "bytes_log_ratio", "frames_log_ratio", "bytes_per_second_log_ratio",
        "same_sample_rate", "same_channels", "sample_rate_min", "sample_rate_max",
        "rms_dbfs_min", "rms_dbfs_max", "rms_dbfs_gap", "snr_db_min", "snr_db_max", "snr_db_gap",
    }
)  # fmt: skip
FEATURE_GROUPS = ("content", "recording")
# quality columns with a point mass: a one-window clip's norm is exactly 1 up to float noise
# (0.99999994, 1.0000001), and a stacker must not split on that noise; decimals kept
ROUNDED = {"q_norm": 5}


def feature_group(column: str) -> str:
    """The named group of a pair-feature column: ``"recording"`` or ``"content"``.

    >>> feature_group("rms_dbfs_gap"), feature_group("cnn__asnorm"), feature_group("duration_min")
    ('recording', 'content', 'content')
    """
    return "recording" if column in RECORDING_FEATURES else "content"


def content_columns(columns: list[str]) -> list[str]:
    """``columns`` without the recording group, in their order."""
    return [c for c in columns if feature_group(c) == "content"]


class MissingIdError(KeyError):
    """Audio ids (or test file names) that a score table names but the manifest lacks."""

    def __str__(self) -> str:  # KeyError would print the message with quotes
        return str(self.args[0])


def _require(index: pd.Index, keys: pd.Series, what: str) -> None:
    missing = pd.Index(keys.unique()).difference(index)
    if len(missing):
        shown = ", ".join(map(str, missing[:5]))
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise MissingIdError(f"{len(missing)} {what} not found in the manifest: {shown}{more}")


def audio_table(manifest: pd.DataFrame, split: str | None = None, key: str = "id") -> pd.DataFrame:
    """Numeric per-file metadata indexed by ``key`` (``id``, or ``name`` for test files).

    Parameters
    ----------
    manifest
        The prepare stage's manifest (one row per audio file).
    split
        Keep only rows of this split (``"test"`` when looking test files up by name).
    key
        Column to index by; must be unique among the kept rows.
    """
    rows = manifest if split is None else manifest[manifest["split"] == split]
    duplicated = rows[key][rows[key].duplicated()]
    if len(duplicated):
        raise ValueError(f"manifest {key!r} is not unique: {list(duplicated.unique()[:5])}")
    columns = [c for c in META_COLUMNS if c in rows.columns]
    table = rows.set_index(key)[columns].apply(pd.to_numeric, errors="coerce")
    return table.replace([np.inf, -np.inf], np.nan).astype(np.float64)


def lookup(table: pd.DataFrame, keys: pd.Series, what: str) -> pd.DataFrame:
    """Rows of ``table`` for ``keys`` in order; raises :class:`MissingIdError` naming absentees."""
    _require(table.index, keys, what)
    return table.reindex(keys.to_numpy())


def _spread(name: str, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    return {
        f"{name}_min": np.minimum(x, y),
        f"{name}_max": np.maximum(x, y),
        f"{name}_gap": np.abs(x - y),
    }


def _log_ratio(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``|log x - log y|``: symmetric, 0 when equal."""
    return np.abs(np.log(np.maximum(x, LOG_FLOOR)) - np.log(np.maximum(y, LOG_FLOOR)))


def pair_metadata_features(first: pd.DataFrame, second: pd.DataFrame) -> pd.DataFrame:
    """Symmetric features of two aligned per-file metadata tables (rows are pairs).

    Example
    -------
    >>> a = pd.DataFrame({"duration": [2.0], "sample_rate": [16000]})
    >>> b = pd.DataFrame({"duration": [8.0], "sample_rate": [8000]})
    >>> pair_metadata_features(a, b)[["duration_min", "same_sample_rate"]].values.tolist()
    [[2.0, 0.0]]
    """

    def col(table: pd.DataFrame, name: str) -> np.ndarray:
        return table[name].to_numpy(dtype=np.float64)

    have = set(first.columns) & set(second.columns)
    out: dict[str, np.ndarray] = {}
    if "duration" in have:
        d1, d2 = col(first, "duration"), col(second, "duration")
        out |= _spread("duration", d1, d2)
        out["duration_log_ratio"] = _log_ratio(d1, d2)
    for name in ("bytes", "frames"):
        if name in have:
            out[f"{name}_log_ratio"] = _log_ratio(col(first, name), col(second, name))
    if {"bytes", "duration"} <= have:
        bps1 = col(first, "bytes") / np.maximum(col(first, "duration"), LOG_FLOOR)
        bps2 = col(second, "bytes") / np.maximum(col(second, "duration"), LOG_FLOOR)
        out["bytes_per_second_log_ratio"] = _log_ratio(bps1, bps2)
    for name in ("sample_rate", "channels"):
        if name in have:
            x, y = col(first, name), col(second, name)
            same = np.where(np.isnan(x) | np.isnan(y), np.nan, (x == y).astype(np.float64))
            out[f"same_{name}"] = same
    if "sample_rate" in have:
        x, y = col(first, "sample_rate"), col(second, "sample_rate")
        out |= {"sample_rate_min": np.minimum(x, y), "sample_rate_max": np.maximum(x, y)}
    for name in ("rms_dbfs", "snr_db"):
        if name in have:
            out |= _spread(name, col(first, name), col(second, name))
    return pd.DataFrame(out, index=first.index)


def q_column_groups(columns: list[str]) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """Split ``q_`` columns into per-side pairs (``q_x_1``/``q_x_2`` -> ``q_x``) and per-pair ones.

    Per-fold variants (``..._fold3``) are left out; :func:`score_features` picks them by suffix.
    """
    q_cols = [c for c in columns if c.startswith("q_") and not PER_FOLD.search(c)]
    sided: dict[str, tuple[str, str]] = {}
    for name in q_cols:
        if name.endswith("_1") and name[:-2] + "_2" in q_cols:
            sided[name[:-2]] = (name, name[:-2] + "_2")
    used = {c for pair in sided.values() for c in pair}
    single = [c for c in q_cols if c not in used]
    return sided, single


def _column(scores: pd.DataFrame, name: str, suffix: str) -> np.ndarray:
    """``name + suffix`` when the table has it, else ``name`` (per-fold, else fold-mean)."""
    chosen = name + suffix if name + suffix in scores.columns else name
    if chosen not in scores.columns:
        raise KeyError(f"score table has no column {name + suffix!r} (nor {name!r})")
    return scores[chosen].to_numpy(dtype=np.float64)


def score_features(scores: pd.DataFrame, experiment: str, suffix: str = "") -> pd.DataFrame:
    """First-level score features of one experiment, prefixed ``<experiment>__``.

    Parameters
    ----------
    scores
        ``oof_scores.csv`` or ``test_scores.csv`` of the experiment.
    experiment
        Name used as the feature prefix.
    suffix
        ``""`` for OOF or fold-mean test scores; ``"_fold{k}"`` for fold model ``k``'s test scores
        (``cosine`` and ``asnorm``, and ``adapted`` when the table has it, must exist with it;
        ``q_`` columns fall back to the plain ones).
    """
    names = [*SCORE_COLUMNS, *(c for c in OPTIONAL_SCORE_COLUMNS if c in scores.columns)]
    if suffix:
        missing = [c + suffix for c in names if c + suffix not in scores.columns]
        if missing:
            raise KeyError(
                f"{experiment}: test_scores.csv lacks {missing}; rerun scoring or set "
                "stack.test_scores=mean"
            )
    out = {f"{experiment}__{c}": _column(scores, c, suffix) for c in names}
    sided, single = q_column_groups(list(scores.columns))
    for base, (left, right) in sided.items():
        x, y = _column(scores, left, suffix), _column(scores, right, suffix)
        if base in ROUNDED:
            x, y = np.round(x, ROUNDED[base]), np.round(y, ROUNDED[base])
        spread = _spread(base, x, y)
        out |= {f"{experiment}__{k}": v for k, v in spread.items()}
    for name in single:
        out[f"{experiment}__{name}"] = _column(scores, name, suffix)
    return pd.DataFrame(out, index=scores.index)


def gender_features(p_male_1: np.ndarray, p_male_2: np.ndarray) -> pd.DataFrame:
    """Predicted-gender agreement: probability both sides share a gender, and the gap."""
    p1 = np.asarray(p_male_1, dtype=np.float64)
    p2 = np.asarray(p_male_2, dtype=np.float64)
    return pd.DataFrame(
        {"gender_same_prob": p1 * p2 + (1 - p1) * (1 - p2), "gender_p_male_gap": np.abs(p1 - p2)}
    )


def metadata_features(
    pairs: pd.DataFrame, table: pd.DataFrame, p_male: pd.Series | None, what: str
) -> pd.DataFrame:
    """Metadata (and predicted-gender) features for ``pairs`` whose ids index ``table``.

    Parameters
    ----------
    pairs
        Table with ``audio_1`` and ``audio_2``.
    table
        :func:`audio_table` output keyed like the pair columns (ids for OOF, names for test).
    p_male
        Predicted probability of male by the same key, or ``None`` when no gender head exists.
    what
        Words for error messages, e.g. ``"OOF audio ids"``.
    """
    first = lookup(table, pairs["audio_1"], what).reset_index(drop=True)
    second = lookup(table, pairs["audio_2"], what).reset_index(drop=True)
    features = pair_metadata_features(first, second)
    features.index = pairs.index
    if p_male is not None:
        features = pd.concat([features, pair_gender_features(pairs, p_male, what)], axis=1)
    return features


def pair_gender_features(pairs: pd.DataFrame, p_male: pd.Series, what: str) -> pd.DataFrame:
    """:func:`gender_features` of ``pairs`` from ``p_male`` keyed like the pair columns."""
    gender_what = f"{what} (gender predictions)"
    p1 = lookup(p_male.to_frame(), pairs["audio_1"], gender_what).iloc[:, 0].to_numpy()
    p2 = lookup(p_male.to_frame(), pairs["audio_2"], gender_what).iloc[:, 0].to_numpy()
    features = gender_features(p1, p2)
    features.index = pairs.index
    return features


def feature_table(
    scores: dict[str, pd.DataFrame], metadata: pd.DataFrame | None, suffix: str = ""
) -> pd.DataFrame:
    """All experiments' score features (rows aligned) beside optional metadata features."""
    parts = [
        score_features(frame, name, suffix).reset_index(drop=True) for name, frame in scores.items()
    ]
    if metadata is not None:
        parts.append(metadata.reset_index(drop=True))
    return pd.concat(parts, axis=1)
