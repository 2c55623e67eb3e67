"""Adversarial validation: can a classifier tell OOF trials from test pairs by their metadata?

An AUC near 0.5 means the stacker meets test pairs like the ones it was trained on. A feature
whose own AUC is high (say > 0.7) is shifted between the two: e.g. test clips are shorter, or
come at other sample rates. The stacker may then extrapolate on it, or it may be a leak (a
feature built from training labels). Both deserve a look before trusting the OOF accuracy.

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> is_test = np.repeat([0, 1], 500)
>>> round(single_feature_auc(rng.normal(size=1000) + 3 * is_test, is_test, seed=0), 1)
1.0
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from src.config import StackConfig
from src.util.io import write_csv, write_json

from .models import thread_count

log = logging.getLogger(__name__)

MAX_ROWS_PER_SIDE = 20000  # enough to measure a shift; keeps the check to seconds
N_SPLITS = 3
TOP_FEATURES = 5  # named in the warning and the report when test pairs look unlike OOF trials


def _bin_codes(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Quantile-bin codes ``0..n_bins-1``; NaN gets its own code ``n_bins``."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.full(values.size, n_bins)
    edges = np.unique(np.quantile(finite, np.linspace(0, 1, n_bins + 1)[1:-1]))
    codes = np.searchsorted(edges, values, side="right")
    return np.where(np.isfinite(values), codes, n_bins)


Splits = list[tuple[np.ndarray, np.ndarray]]


def clip_disjoint_splits(first: np.ndarray, second: np.ndarray, seed: int) -> Splits:
    """``(fit, held)`` row indices where no clip of a held-out pair is in the fit rows.

    Pairs reuse clips (a test file sits in many pairs); with a plain row split the classifier
    would recognise clips it has seen and report a shift that is not there. Every clip draws
    one of ``N_SPLITS`` groups; split ``k`` holds out the pairs with both clips in group ``k``
    and fits on the pairs with neither, so a third of the pairs is scored in all.
    """
    codes, uniques = pd.factorize(np.concatenate([first, second]))
    group = np.random.default_rng(seed).integers(0, N_SPLITS, len(uniques))[codes]
    g1, g2 = group[: len(first)], group[len(first) :]
    return [
        (np.flatnonzero((g1 != k) & (g2 != k)), np.flatnonzero((g1 == k) & (g2 == k)))
        for k in range(N_SPLITS)
    ]


def row_splits(is_test: np.ndarray, seed: int) -> Splits:
    """Stratified row splits, for tables without clip ids."""
    splitter = StratifiedKFold(N_SPLITS, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(is_test.size), is_test))


def _held_auc(is_test: np.ndarray, scores: np.ndarray, splits: Splits) -> float:
    """Mean of the per-split held-out AUCs, weighted by held-out rows.

    Scores are comparable only within a split (each split's classifier is fitted on other
    rows): pooling them would let the splits' different test shares pass for a shift; a
    constant feature, for one, would score above 0.5.
    """
    aucs, weights = [], []
    for _, held in splits:
        if np.unique(is_test[held]).size == 2:
            aucs.append(roc_auc_score(is_test[held], scores[held]))
            weights.append(held.size)
    return float(np.average(aucs, weights=weights)) if aucs else float("nan")


def single_feature_auc(
    values: np.ndarray,
    is_test: np.ndarray,
    n_bins: int = 32,
    seed: int = 0,
    splits: Splits | None = None,
) -> float:
    """Cross-validated AUC of a histogram classifier on one feature (catches any shift shape).

    Each split estimates P(test | quantile bin) on its fit rows (add-one smoothing) and scores
    its held-out rows; the AUC over all held-out scores is folded to be >= 0.5.
    """
    values = np.asarray(values, dtype=np.float64)
    is_test = np.asarray(is_test, dtype=np.int64)
    splits = splits if splits is not None else row_splits(is_test, seed)
    codes = _bin_codes(values, n_bins)
    scores = np.zeros(values.size)
    for fit, held in splits:
        test_counts = np.bincount(codes[fit], weights=is_test[fit], minlength=n_bins + 1)
        all_counts = np.bincount(codes[fit], minlength=n_bins + 1)
        scores[held] = ((test_counts + 1) / (all_counts + 2))[codes[held]]
    auc = _held_auc(is_test, scores, splits)
    return max(auc, 1.0 - auc)


def _model_auc(
    features: np.ndarray, is_test: np.ndarray, splits: Splits, cfg: StackConfig, seed: int
) -> tuple[float, np.ndarray]:
    """Cross-validated AUC of a small LightGBM on all features, and its mean gain per feature."""
    params = {
        "objective": "binary",
        "learning_rate": 0.1,
        "num_leaves": 15,
        "min_data_in_leaf": 50,
        "seed": seed,
        "deterministic": True,
        "force_col_wise": True,
        "num_threads": thread_count(cfg.num_threads, is_test.size),
        "verbosity": -1,
    }
    scores = np.zeros(is_test.size)
    gain = np.zeros(features.shape[1])
    for fit, held in splits:
        booster = lgb.train(params, lgb.Dataset(features[fit], is_test[fit]), num_boost_round=100)
        scores[held] = booster.predict(features[held])
        gain += booster.feature_importance("gain") / len(splits)
    return _held_auc(is_test, scores, splits), gain


def _sample(size: int, seed: int) -> np.ndarray:
    """Row indices of at most ``MAX_ROWS_PER_SIDE`` rows, in order."""
    if size <= MAX_ROWS_PER_SIDE:
        return np.arange(size)
    return np.sort(np.random.default_rng(seed).choice(size, MAX_ROWS_PER_SIDE, replace=False))


def adversarial_validation(
    oof_features: pd.DataFrame,
    test_features: pd.DataFrame,
    cfg: StackConfig,
    seed: int,
    oof_pairs: pd.DataFrame | None = None,
    test_pairs: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Per-feature and overall AUC of telling OOF trials (0) from test pairs (1).

    Parameters
    ----------
    oof_features, test_features
        Metadata features, rows aligned with ``oof_pairs``/``test_pairs``.
    oof_pairs, test_pairs
        ``audio_1, audio_2`` of the rows; when given, the cross-validation is clip-disjoint
        (:func:`clip_disjoint_splits`), otherwise rows are split at random.

    Returns
    -------
    table
        One row per feature: ``feature, auc, gain, oof_median, test_median, shifted``.
    summary
        ``auc`` of the model on all features, row counts, the warning level, shifted features.
    """
    oof_rows = _sample(len(oof_features), seed)
    test_rows = _sample(len(test_features), seed)
    oof = oof_features.iloc[oof_rows]
    test = test_features[oof_features.columns].iloc[test_rows]
    both = pd.concat([oof, test], ignore_index=True)
    is_test = np.concatenate([np.zeros(len(oof), np.int64), np.ones(len(test), np.int64)])
    if oof_pairs is not None and test_pairs is not None:
        first = np.concatenate(
            [
                "oof:" + oof_pairs["audio_1"].to_numpy(object)[oof_rows],
                "test:" + test_pairs["audio_1"].to_numpy(object)[test_rows],
            ]
        )
        second = np.concatenate(
            [
                "oof:" + oof_pairs["audio_2"].to_numpy(object)[oof_rows],
                "test:" + test_pairs["audio_2"].to_numpy(object)[test_rows],
            ]
        )
        splits = clip_disjoint_splits(first, second, seed)
    else:
        splits = row_splits(is_test, seed)
    x = both.to_numpy(dtype=np.float64)
    overall, gain = _model_auc(x, is_test, splits, cfg, seed)
    table = pd.DataFrame(
        {
            "feature": both.columns,
            "auc": [single_feature_auc(x[:, i], is_test, splits=splits) for i in range(x.shape[1])],
            "gain": gain,
            "oof_median": oof.median().to_numpy(),
            "test_median": test.median().to_numpy(),
        }
    )
    table["shifted"] = table["auc"] > cfg.adversarial_warn_auc
    table = table.sort_values("auc", ascending=False, ignore_index=True)
    top = table.head(TOP_FEATURES)
    summary = {
        "auc": overall,
        "top_features": [
            {"feature": f, "auc": a, "oof_median": o, "test_median": t}
            for f, a, o, t in zip(
                top["feature"], top["auc"], top["oof_median"], top["test_median"], strict=True
            )
        ],
        "n_oof": len(oof),
        "n_test": len(test),
        "clip_disjoint": oof_pairs is not None and test_pairs is not None,
        "warn_auc": cfg.adversarial_warn_auc,
        "shifted_features": table.loc[table["shifted"], "feature"].tolist(),
    }
    return table, summary


def write_adversarial(
    oof_features: pd.DataFrame,
    test_features: pd.DataFrame,
    cfg: StackConfig,
    seed: int,
    out: Path,
    pairs: tuple[pd.DataFrame, pd.DataFrame] | None = None,
) -> dict:
    """Run :func:`adversarial_validation`, write ``adversarial.csv``/``.json``, warn on shifts.

    ``pairs`` (OOF trials, test pairs) makes the cross-validation clip-disjoint.
    """
    if oof_features.shape[1] == 0:
        log.info("adversarial validation skipped: no metadata features")
        return {}
    oof_pairs, test_pairs = pairs if pairs is not None else (None, None)
    table, summary = adversarial_validation(
        oof_features, test_features, cfg, seed, oof_pairs, test_pairs
    )
    write_csv(out / "adversarial.csv", table)
    write_json(out / "adversarial.json", summary)
    if summary["shifted_features"] or summary["auc"] > cfg.adversarial_warn_auc:
        log.warning(
            "test pairs are unlike the OOF trials (adversarial AUC %.3f, warning above %.2f); "
            "%s; most shifted features: %s (details: %s)",
            summary["auc"],
            cfg.adversarial_warn_auc,
            f"shifted: {', '.join(summary['shifted_features'])}"
            if summary["shifted_features"]
            else "no single feature is above the warning AUC, the shift is in their combination",
            describe_shift(summary["top_features"]),
            out / "adversarial.csv",
        )
    else:
        log.info("adversarial AUC %.3f (0.5 = OOF and test alike)", summary["auc"])
    return summary


def describe_shift(top_features: list[dict]) -> str:
    """``feature (AUC a, OOF median x vs test y)`` for each feature, most shifted first.

    >>> describe_shift([{"feature": "duration_min", "auc": 0.66, "oof_median": 2.7,
    ...                  "test_median": 4.3}])
    'duration_min (AUC 0.66, OOF median 2.7 vs test 4.3)'
    """
    return ", ".join(
        f"{t['feature']} (AUC {t['auc']:.2f}, OOF median {t['oof_median']:.3g} vs test "
        f"{t['test_median']:.3g})"
        for t in top_features
    )
