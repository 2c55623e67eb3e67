"""Transitive consistency: confident pairs of a trial graph decide its uncertain ones.

The pairs of one scoring context form a graph over its clips. Pairs the stack is sure are
same-speaker (probability >= ``high``) join their clips into components (speakers, as far as
the confident evidence goes); pairs it is sure are different (<= ``low``) separate two
components. An uncertain pair (``low < p < high``) whose clips share a component is raised to
``high``; one whose components are confidently separated is lowered to ``low``. Confident pairs
never change. ``high`` and ``low`` come from OOF trials, each OOF fold being its own graph.

Example
-------
>>> pairs = pd.DataFrame({"audio_1": ["a", "b", "a", "c"], "audio_2": ["b", "c", "c", "d"]})
>>> propagate(pairs, np.array([0.95, 0.9, 0.5, 0.02]), high=0.8, low=0.1).tolist()
[0.95, 0.9, 0.8, 0.02]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import product

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from src.stacking.submit import balanced_labels

log = logging.getLogger(__name__)

HIGH_GRID = (0.8, 0.9, 0.95, 0.98)
LOW_GRID = (0.02, 0.05, 0.1, 0.2)


def propagate(pairs: pd.DataFrame, probs: np.ndarray, high: float, low: float) -> np.ndarray:
    """Probabilities of ``pairs`` with uncertain ones moved by confident components."""
    probs = np.asarray(probs, dtype=np.float64)
    codes, clips = pd.factorize(pd.concat([pairs["audio_1"], pairs["audio_2"]], ignore_index=True))
    a, b = codes[: len(pairs)], codes[len(pairs) :]
    sure = probs >= high
    graph = coo_matrix((np.ones(sure.sum()), (a[sure], b[sure])), shape=(len(clips),) * 2)
    _, component = connected_components(graph, directed=False)
    ca, cb = component[a], component[b]
    apart = probs <= low
    first, second = np.minimum(ca, cb), np.maximum(ca, cb)
    separated = set(zip(first[apart].tolist(), second[apart].tolist(), strict=True))
    uncertain = ~sure & ~apart
    out = probs.copy()
    joined = uncertain & (ca == cb)
    out[joined] = high
    split = np.array([(x, y) in separated for x, y in zip(first, second, strict=True)])
    out[uncertain & (ca != cb) & split] = low
    return out


def graph_accuracy(
    trials: pd.DataFrame, probs: np.ndarray, high: float | None, low: float | None, share: float
) -> float:
    """Balanced-threshold accuracy over OOF folds, each fold's trials one graph."""
    correct = 0
    for _, rows in trials.groupby("fold"):
        p = probs[rows.index]
        if high is not None:
            p = propagate(rows, p, high, low)
        labels, _ = balanced_labels(p, share)
        correct += int((labels == rows["label"].to_numpy()).sum())
    return correct / len(trials)


@dataclass(frozen=True)
class TransitiveChoice:
    """Thresholds chosen on OOF trials, and what they did there."""

    high: float | None  # None: transitive consistency off (it did not help on OOF)
    low: float | None
    oof_accuracy_before: float
    oof_accuracy_after: float  # in-sample: thresholds chosen on the same trials (optimistic)
    oof_accuracy_nested: float | None = None  # thresholds from the other folds (honest)


def choose_thresholds(trials: pd.DataFrame, probs: np.ndarray, share: float) -> TransitiveChoice:
    """The (high, low) pair with the best OOF balanced accuracy, or off if none helps."""
    trials = trials.reset_index(drop=True)
    before = graph_accuracy(trials, probs, None, None, share)
    best = (before, None, None)
    for high, low in product(HIGH_GRID, LOW_GRID):
        accuracy = graph_accuracy(trials, probs, high, low, share)
        if accuracy > best[0] + 1e-9:
            best = (accuracy, high, low)
    return TransitiveChoice(best[1], best[2], before, best[0])


def decide(trials: pd.DataFrame, probs: np.ndarray, share: float) -> TransitiveChoice:
    """Thresholds on all OOF trials, kept only if the nested OOF accuracy (thresholds from the
    other folds) beats the accuracy without transitive consistency."""
    choice = choose_thresholds(trials, probs, share)
    if choice.high is None:
        return choice
    nested = nested_oof_accuracy(trials, probs, share)
    if nested <= choice.oof_accuracy_before:
        return TransitiveChoice(None, None, choice.oof_accuracy_before, nested, nested)
    return TransitiveChoice(
        choice.high, choice.low, choice.oof_accuracy_before, choice.oof_accuracy_after, nested
    )


def nested_oof_accuracy(trials: pd.DataFrame, probs: np.ndarray, share: float) -> float:
    """OOF accuracy with thresholds chosen on the other folds only (an honest estimate)."""
    trials = trials.reset_index(drop=True)
    correct = 0
    for fold, rows in trials.groupby("fold"):
        others = trials[trials["fold"] != fold]
        choice = choose_thresholds(others, probs[others.index], share)
        p = probs[rows.index]
        if choice.high is not None:
            p = propagate(rows, p, choice.high, choice.low)
        labels, _ = balanced_labels(p, share)
        correct += int((labels == rows["label"].to_numpy()).sum())
    return correct / len(trials)
