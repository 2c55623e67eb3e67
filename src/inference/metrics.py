"""Verification metrics as pure functions of scores and labels (1 = same speaker).

Example
-------
>>> import numpy as np
>>> equal_error_rate(np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 1, 0, 0]))[0]
0.0
"""

from __future__ import annotations

import numpy as np


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).astype(np.int64).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores but {labels.size} labels")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if labels.min(initial=1) == labels.max(initial=0):
        raise ValueError("need both same-speaker (1) and different-speaker (0) trials")
    return scores, labels


def error_curves(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, ...]:
    """False-accept and false-reject rates at every distinct threshold (accept if score >= t).

    Returns ``(thresholds, far, frr)``, thresholds descending; the last threshold is +inf.
    """
    scores, labels = _check(scores, labels)
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores = scores[order]
    sorted_labels = labels[order]
    n_pos = sorted_labels.sum()
    n_neg = sorted_labels.size - n_pos
    # cumulative counts of accepted trials when accepting the first i (by descending score)
    true_acc = np.concatenate([[0], np.cumsum(sorted_labels)])
    false_acc = np.concatenate([[0], np.cumsum(1 - sorted_labels)])
    # keep only the last index of every run of equal scores (thresholds between distinct values)
    distinct = np.concatenate([np.diff(sorted_scores) != 0, [True]])
    keep = np.concatenate([[True], distinct])
    thresholds = np.concatenate([[np.inf], sorted_scores])[keep]
    far = false_acc[keep] / n_neg
    frr = 1.0 - true_acc[keep] / n_pos
    return thresholds, far, frr


def equal_error_rate(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Equal error rate and the threshold where false accepts and false rejects cross."""
    thresholds, far, frr = error_curves(scores, labels)
    idx = int(np.argmin(np.abs(far - frr)))
    eer = float((far[idx] + frr[idx]) / 2.0)
    threshold = float(thresholds[idx]) if np.isfinite(thresholds[idx]) else float(np.max(scores))
    return eer, threshold


def min_dcf(scores: np.ndarray, labels: np.ndarray, p_target: float = 0.01) -> float:
    """Normalised minimum detection cost (C_miss = C_fa = 1)."""
    _, far, frr = error_curves(scores, labels)
    cost = p_target * frr + (1.0 - p_target) * far
    return float(cost.min() / min(p_target, 1.0 - p_target))


def accuracy_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    scores, labels = _check(scores, labels)
    return float(((scores >= threshold).astype(np.int64) == labels).mean())


def best_accuracy(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Highest accuracy over thresholds and the threshold (midpoint) that reaches it."""
    scores, labels = _check(scores, labels)
    _, far, frr = error_curves(scores, labels)
    n_pos = labels.sum()
    n_neg = labels.size - n_pos
    correct = (1.0 - frr) * n_pos + (1.0 - far) * n_neg
    idx = int(np.argmax(correct))
    sorted_unique = np.unique(scores)[::-1]
    # threshold halfway between the accepted score and the next lower one
    if idx == 0:
        threshold = float(sorted_unique[0]) + 1e-6
    elif idx >= sorted_unique.size:
        threshold = float(sorted_unique[-1])
    else:
        threshold = float((sorted_unique[idx - 1] + sorted_unique[idx]) / 2.0)
    return float(correct[idx] / labels.size), threshold


def balanced_threshold(scores: np.ndarray, positive_share: float = 0.5) -> float:
    """Threshold that labels ``positive_share`` of the trials as same-speaker."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if scores.size == 0:
        raise ValueError("no scores")
    if not 0.0 < positive_share < 1.0:
        raise ValueError("positive_share must be in (0, 1)")
    return float(np.quantile(scores, 1.0 - positive_share))


def summarise(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """EER, minDCF at p_target 0.01 and 0.05, best and balanced-threshold accuracy."""
    eer, eer_threshold = equal_error_rate(scores, labels)
    best_acc, best_threshold = best_accuracy(scores, labels)
    bal = balanced_threshold(scores, float(np.mean(labels)))
    return {
        "n_trials": int(np.asarray(labels).size),
        "eer": eer,
        "eer_threshold": eer_threshold,
        "min_dcf_0.01": min_dcf(scores, labels, 0.01),
        "min_dcf_0.05": min_dcf(scores, labels, 0.05),
        "best_accuracy": best_acc,
        "best_threshold": best_threshold,
        "balanced_accuracy": accuracy_at(scores, labels, bal),
        "balanced_threshold": bal,
    }
