"""Transitive consistency: confident pairs of a trial graph decide its uncertain ones.

The pairs of one scoring context form a graph over its clips. Pairs the stack is surest are
same-speaker (the ``high_share`` of pairs with the highest probabilities) join their clips into
components (speakers, as far as the confident evidence goes); pairs it is surest are different
(the ``low_share`` with the lowest) separate two components. An uncertain pair whose clips share
a component is raised to ``max(p, high)``; one whose components are confidently separated is
lowered to ``min(p, low)``, ``high`` and ``low`` being the probabilities at those shares in the
same graph. Confident pairs never change. Labels then rank the moved probabilities with ties
broken by the original probability (:func:`relabel`): a raised pair at 0.85 keeps its place
ahead of one raised from 0.40.

The shares are chosen on OOF trials, each OOF fold one graph, and applied to the test pairs as
shares of the test graph: a share means the same on a graph of 200 pairs as on one of 50,000,
and on the mean of five stackers' test probabilities as on one stacker's OOF ones, where a fixed
probability does not (on the demo 13.5 % of OOF probabilities are >= 0.98 against 23 % of test
ones). The OOF probabilities come from graph features built like the test view's (one graph
per fold holds the fold's trials and the test pairs, :mod:`src.stacking.graph`), so the gain is
estimated on graphs built like the test graph. Only OOF labels are read, by the choice.

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

from src.stacking.threshold import balanced_labels

log = logging.getLogger(__name__)

# shares of a graph's pairs taken as surely same-speaker, and as surely different: up to just
# below the positive share of a Zalo-style test (50 %), where a confident stack's sure pairs lie
HIGH_SHARES = (0.1, 0.2, 0.3, 0.4, 0.45)
LOW_SHARES = (0.1, 0.2, 0.3, 0.4, 0.45)


def propagate(pairs: pd.DataFrame, probs: np.ndarray, high: float, low: float) -> np.ndarray:
    """Probabilities of ``pairs`` with uncertain ones moved by confident components: raised to
    ``max(p, high)``, lowered to ``min(p, low)`` (``high``, ``low``: probabilities)."""
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
    out[joined] = np.maximum(probs[joined], high)
    split = np.array([(x, y) in separated for x, y in zip(first, second, strict=True)], bool)
    lowered = uncertain & (ca != cb) & split
    out[lowered] = np.minimum(probs[lowered], low)
    return out


def share_thresholds(probs: np.ndarray, high_share: float, low_share: float) -> tuple[float, float]:
    """The probabilities ``(high, low)`` at or above which the ``high_share`` highest of a
    graph's pairs lie, and at or below which its ``low_share`` lowest lie (``low < high``)."""
    ordered = np.sort(np.asarray(probs, dtype=np.float64))
    n = ordered.size
    high = ordered[n - max(int(np.ceil(high_share * n)), 1)]
    low = ordered[max(int(np.ceil(low_share * n)), 1) - 1]
    if low >= high:  # tiny or flat graphs: nothing is uncertain, so nothing moves
        low = np.nextafter(high, -np.inf)
    return float(high), float(low)


def propagate_shares(
    pairs: pd.DataFrame, probs: np.ndarray, high_share: float, low_share: float
) -> np.ndarray:
    """:func:`propagate` with ``high``/``low`` placed at shares of this graph's pairs."""
    high, low = share_thresholds(probs, high_share, low_share)
    return propagate(pairs, probs, high, low)


def relabel(adjusted: np.ndarray, original: np.ndarray, share: float) -> np.ndarray:
    """Balanced labels of propagated probabilities, ties broken by the original probability
    (then by row order): moving pairs never reorders them among themselves."""
    return balanced_labels(adjusted, share, tiebreak=original)[0]


def graph_accuracy(
    trials: pd.DataFrame,
    probs: np.ndarray,
    high_share: float | None,
    low_share: float | None,
    share: float,
) -> float:
    """Balanced-threshold accuracy over OOF folds, each fold's trials one graph."""
    correct = 0
    for _, rows in trials.groupby("fold"):
        p = probs[rows.index]
        labels = (
            balanced_labels(p, share)[0]
            if high_share is None
            else relabel(propagate_shares(rows, p, high_share, low_share), p, share)
        )
        correct += int((labels == rows["label"].to_numpy()).sum())
    return correct / len(trials)


@dataclass(frozen=True)
class TransitiveChoice:
    """Shares chosen on OOF trials, and what they did there."""

    high_share: float | None  # None: transitive consistency off (it did not help on OOF)
    low_share: float | None
    oof_accuracy_before: float
    oof_accuracy_after: float  # in-sample: shares chosen on the same trials (optimistic)
    oof_accuracy_nested: float | None = None  # shares from the other folds (honest)


def choose_shares(trials: pd.DataFrame, probs: np.ndarray, share: float) -> TransitiveChoice:
    """The (high, low) shares with the best OOF balanced accuracy, or off if none helps."""
    trials = trials.reset_index(drop=True)
    before = graph_accuracy(trials, probs, None, None, share)
    best = (before, None, None)
    for high, low in product(HIGH_SHARES, LOW_SHARES):
        accuracy = graph_accuracy(trials, probs, high, low, share)
        if accuracy > best[0] + 1e-9:
            best = (accuracy, high, low)
    return TransitiveChoice(best[1], best[2], before, best[0])


def decide(trials: pd.DataFrame, probs: np.ndarray, share: float) -> TransitiveChoice:
    """Shares on all OOF trials, kept only if the nested OOF accuracy (shares from the other
    folds) beats the accuracy without transitive consistency."""
    choice = choose_shares(trials, probs, share)
    if choice.high_share is None:
        return choice
    nested = nested_oof_accuracy(trials, probs, share)
    if nested <= choice.oof_accuracy_before:
        return TransitiveChoice(None, None, choice.oof_accuracy_before, nested, nested)
    return TransitiveChoice(
        choice.high_share,
        choice.low_share,
        choice.oof_accuracy_before,
        choice.oof_accuracy_after,
        nested,
    )


def nested_oof_accuracy(trials: pd.DataFrame, probs: np.ndarray, share: float) -> float:
    """OOF accuracy with shares chosen on the other folds only (an honest estimate)."""
    trials = trials.reset_index(drop=True)
    correct = 0
    for fold, rows in trials.groupby("fold"):
        others = trials[trials["fold"] != fold]
        choice = choose_shares(others, probs[others.index], share)
        p = probs[rows.index]
        if choice.high_share is None:
            labels = balanced_labels(p, share)[0]
        else:
            labels = relabel(
                propagate_shares(rows, p, choice.high_share, choice.low_share), p, share
            )
        correct += int((labels == rows["label"].to_numpy()).sum())
    return correct / len(trials)
