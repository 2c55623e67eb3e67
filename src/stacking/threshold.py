"""Threshold policies: scores -> 0/1 labels (the balanced cut, or a threshold placed on OOF).

Shared by ``submit.py`` and ``transitive.py`` (and the report), so neither imports the other.

Example
-------
>>> import numpy as np
>>> balanced_labels(np.array([0.2, 0.9, 0.5, 0.5]), 0.5)[0].tolist()
[0, 1, 1, 0]
"""

from __future__ import annotations

import numpy as np

from src.inference.metrics import best_accuracy, equal_error_rate

POLICIES = ("balanced", "oof_accuracy", "eer")


def balanced_labels(
    scores: np.ndarray, positive_share: float, tiebreak: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """Label the top ``round(positive_share * n)`` scores 1; ties go to the higher
    ``tiebreak`` value when given (transitive consistency: the probability before it moved a
    pair), then to the earlier row.

    Returns the labels and the lowest accepted score (the effective threshold).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if not 0.0 < positive_share < 1.0:
        raise ValueError(f"positive_share must be in (0, 1), got {positive_share}")
    if scores.size == 0 or not np.isfinite(scores).all():
        raise ValueError("balanced labels need finite scores")
    n_positive = round(positive_share * scores.size)
    if tiebreak is None:
        order = np.argsort(-scores, kind="stable")  # stable: equal scores keep row order
    else:  # lexsort is stable too; its last key sorts first
        order = np.lexsort((-np.asarray(tiebreak, dtype=np.float64), -scores))
    labels = np.zeros(scores.size, dtype=np.int64)
    labels[order[:n_positive]] = 1
    threshold = float(scores[order[n_positive - 1]]) if n_positive else float("inf")
    return labels, threshold


def oof_threshold(policy: str, oof_scores: np.ndarray, oof_labels: np.ndarray) -> float:
    """Threshold of a policy that is placed on OOF predictions (``oof_accuracy`` or ``eer``)."""
    if policy == "oof_accuracy":
        return best_accuracy(oof_scores, oof_labels)[1]
    if policy == "eer":
        return equal_error_rate(oof_scores, oof_labels)[1]
    raise ValueError(f"policy {policy!r} has no OOF threshold; choose 'oof_accuracy' or 'eer'")


def apply_policy(
    policy: str,
    scores: np.ndarray,
    oof_scores: np.ndarray,
    oof_labels: np.ndarray,
    positive_share: float = 0.5,
    tiebreak: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """0/1 labels for ``scores`` under ``policy`` and the threshold used (``tiebreak``: see
    :func:`balanced_labels`; a fixed threshold needs none)."""
    if policy == "balanced":
        return balanced_labels(scores, positive_share, tiebreak)
    if policy not in POLICIES:
        raise ValueError(f"unknown threshold policy {policy!r}; choose one of {POLICIES}")
    threshold = oof_threshold(policy, oof_scores, oof_labels)
    return (np.asarray(scores) >= threshold).astype(np.int64), threshold
