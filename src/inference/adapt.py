"""Test-set adaptation: pseudo-speakers from unlabelled target clips, and scores adapted to them.

The *target* of a fold is a set of clips whose speakers are unknown: for fold k's OOF trials,
fold k's held-out clips (their speaker labels are never read here); for the test pairs, the
test clips. Both are adapted the same way, from their vectors alone:

- :func:`pseudo_speakers`: average-linkage clusters of the target clips (the graph stage's
  :func:`~src.stacking.graph.cluster_tree`), cut at the label-free height among
  :func:`~src.stacking.graph.cut_heights` candidates with the highest mean silhouette; only
  clusters of at least two clips whose members lie closer to their own cluster than to any
  other (mean silhouette > 0) are kept.
- back-ends (:func:`target_transform`), each then scored by cosine: ``whiten`` centres the
  vectors on the target's mean and whitens them with the target's own covariance (CORAL-like,
  no clusters); ``wccn`` centres on the target's mean and whitens with the within-speaker
  covariance of the training speakers (labelled cohort clips) pooled with the pseudo-speakers'.
- ``cohort``: adaptive score normalisation whose cohort is the target clips themselves
  (:func:`target_cohort_norm`): for each side, the top-k of its similarities to the target
  clips other than the two trial clips.

``score.adapt`` names one method (``none`` by default); ``<back-end>_cohort`` combines both.
No function here takes a target clip's label: the permutation test in
``tests/test_adapt.py`` shuffles them and checks every adapted score.

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> centres = rng.normal(size=(6, 8))
>>> v = np.repeat(centres, 3, axis=0) + 0.1 * rng.normal(size=(18, 8))
>>> v /= np.linalg.norm(v, axis=1, keepdims=True)
>>> found = pseudo_speakers(v)
>>> int(found.labels.max() + 1), bool((found.labels >= 0).all())
(6, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.cluster.hierarchy import fcluster

from src.stacking.graph import cluster_tree, cut_heights, similarity

ADAPT_METHODS = ("none", "whiten", "wccn", "cohort", "whiten_cohort", "wccn_cohort")
# candidate cut heights: the similarity above which these shares of the target's clip pairs lie
# (a test of S equal speakers has about 1/S same-speaker pairs: 40 speakers 2.5 %, 400 0.25 %)
# (from 0.05 % to 20 %, each 2**0.5 times the last: 18 cuts). The loosest, 20 %, assumes a
# target of about 5 speakers or more: with a grid up to 50 % the shifted test's GE2E clips fell
# into 7 clusters of 40 speakers (purity 16 %); OOF figures were the same with either grid
CANDIDATE_SHARES = tuple(float(0.2 * 2 ** (-i / 2)) for i in range(18))
REFINE = 16  # merge heights tried around the best grid cut
SHRINK = 0.1  # covariance shrinkage towards its mean variance (a 192-d covariance from ~200 clips)


@dataclass(frozen=True)
class PseudoSpeakers:
    """Clusters of target clips: ``labels`` (clips,), ``-1`` for clips in no kept cluster."""

    labels: np.ndarray
    cut: float  # the chosen cut height (cosine similarity)
    silhouette: float  # mean silhouette of every clip at that cut (singletons count 0)

    @property
    def clusters(self) -> int:
        return int(self.labels.max() + 1) if self.labels.size else 0

    @property
    def kept(self) -> int:
        return int((self.labels >= 0).sum())

    def summary(self) -> dict[str, float]:
        """How many clips and clusters, how many clips kept, the chosen cut (label-free)."""
        return {
            "clips": int(self.labels.size),
            "clusters": self.clusters,
            "clips_kept": self.kept,
            "cut": self.cut,
            "silhouette": self.silhouette,
        }


def silhouettes(sims: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each clip's silhouette on cosine distance ``1 - S`` (0 for a clip alone in its cluster).

    Cluster sums of each row come from one pass over the columns sorted by cluster, so the cost
    is one read of ``S`` whatever the number of clusters."""
    n = labels.size
    order = np.argsort(labels, kind="stable")
    ordered = labels[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    sizes = np.diff(np.r_[starts, n])
    plain = np.where(np.isfinite(sims), sims, 0.0)  # the -inf diagonal counts 0 in a sum
    sums = np.add.reduceat(plain[:, order], starts, axis=1)  # (clips, clusters)
    cluster = np.searchsorted(ordered[starts], labels)  # each clip's cluster column
    own_size = sizes[cluster]
    own = sums[np.arange(n), cluster] / np.maximum(own_size - 1, 1)
    means = sums / sizes
    means[np.arange(n), cluster] = -np.inf
    inner, outer = 1.0 - own, 1.0 - means.max(axis=1)
    out = (outer - inner) / np.maximum(np.maximum(inner, outer), 1e-12)
    return np.where(own_size > 1, out, 0.0)


def best_cut(
    sims: np.ndarray, tree: np.ndarray, heights: tuple[float, ...]
) -> tuple[float, float, np.ndarray, np.ndarray]:
    """The cut of ``tree`` with the highest mean silhouette: first among ``heights``, then
    among the tree's own merge heights between the winner's two neighbours (at most
    ``REFINE`` of them, evenly spaced), so the number of clusters is not bound to the grid.

    Returns the mean silhouette, the height, each clip's cluster and silhouette."""

    def cut(height: float) -> tuple[float, float, np.ndarray, np.ndarray]:
        labels = fcluster(tree, t=1.0 - height, criterion="distance")
        score = silhouettes(sims, labels)
        return float(score.mean()), float(height), labels, score

    grid = sorted(set(heights), reverse=True)
    tried = [cut(h) for h in grid]
    best = max(range(len(tried)), key=lambda i: tried[i][0])  # the first of equals
    high, low = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    merges = np.unique(1.0 - tree[:, 2])
    between = merges[(merges > low) & (merges < high) & (merges != grid[best])]
    if between.size > REFINE:
        between = between[np.linspace(0, between.size - 1, REFINE).round().astype(int)]
    for result in [cut(h) for h in between[::-1]]:
        if result[0] > tried[best][0]:
            tried, best = [*tried, result], len(tried)
    return tried[best]


def pseudo_speakers(
    vectors: np.ndarray, shares: tuple[float, ...] = CANDIDATE_SHARES, min_size: int = 2
) -> PseudoSpeakers:
    """Pseudo-speakers of unit ``vectors`` (clips, dims); no label of any clip is read.

    The tree is cut where the mean silhouette is highest (:func:`best_cut` over the
    :func:`cut_heights` of ``shares``; the number of clusters follows from it), and of its
    clusters those with ``min_size`` clips or more and a positive mean silhouette are kept,
    renumbered ``0..`` in order of their first clip.
    """
    n = vectors.shape[0]
    if n < 3:
        return PseudoSpeakers(np.full(n, -1, dtype=np.int64), 1.0, 0.0)
    sims = similarity(vectors)
    tree = cluster_tree(sims)
    mean_silhouette, height, labels, score = best_cut(sims, tree, cut_heights(sims, shares))
    _, first, inverse, counts = np.unique(
        labels, return_index=True, return_inverse=True, return_counts=True
    )
    cohesion = np.bincount(inverse, weights=score) / counts
    keep = (counts >= min_size) & (cohesion > 0)
    ranks = np.full(keep.size, -1, dtype=np.int64)
    kept = np.flatnonzero(keep)
    ranks[kept[np.argsort(first[kept], kind="stable")]] = np.arange(kept.size)
    return PseudoSpeakers(ranks[inverse], float(height), mean_silhouette)


def _inverse_sqrt(covariance: np.ndarray, shrink: float = SHRINK) -> np.ndarray:
    """``C^{-1/2}`` of ``C`` shrunk towards its mean variance (symmetric, float64)."""
    dims = covariance.shape[0]
    shrunk = (1.0 - shrink) * covariance + shrink * np.trace(covariance) / dims * np.eye(dims)
    values, vectors = np.linalg.eigh(shrunk)
    return (vectors / np.sqrt(np.maximum(values, 1e-12))) @ vectors.T


def within_scatter(vectors: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Sum of ``(x - speaker mean)(x - speaker mean)^T`` over labelled rows (label >= 0) and
    their count."""
    rows = labels >= 0
    x, y = vectors[rows].astype(np.float64), labels[rows]
    if y.size == 0:
        return np.zeros((vectors.shape[1],) * 2), 0
    _, inverse = np.unique(y, return_inverse=True)
    sums = np.zeros((inverse.max() + 1, x.shape[1]))
    np.add.at(sums, inverse, x)
    centred = x - (sums / np.bincount(inverse)[:, None])[inverse]
    return centred.T @ centred, int(y.size)


def target_transform(
    method: str,
    target: np.ndarray,
    pseudo: np.ndarray,
    train: np.ndarray,
    train_speakers: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and whitening matrix of a back-end: scored vectors are ``unit((x - mean) @ T)``.

    ``whiten``: the target's mean and ``cov(target)^{-1/2}``. ``wccn``: the target's mean and
    the inverse square root of the within-speaker covariance pooled over training speakers
    (``train`` rows, labelled ``train_speakers``) and target pseudo-speakers (``pseudo``).
    """
    mean = target.mean(axis=0, dtype=np.float64)
    if method == "whiten":
        centred = target - mean
        return mean, _inverse_sqrt(centred.T @ centred / max(target.shape[0] - 1, 1))
    if method == "wccn":
        _, codes = np.unique(train_speakers, return_inverse=True)
        scatter_train, n_train = within_scatter(train, codes)
        scatter_target, n_target = within_scatter(target, pseudo)
        return mean, _inverse_sqrt((scatter_train + scatter_target) / max(n_train + n_target, 1))
    raise ValueError(f"unknown back-end {method!r}; choose whiten or wccn")


def apply_transform(vectors: np.ndarray, mean: np.ndarray, whitening: np.ndarray) -> np.ndarray:
    """``unit((vectors - mean) @ whitening)`` as float32."""
    out = (vectors.astype(np.float64) - mean) @ whitening
    return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def target_cohort_norm(
    vectors: np.ndarray, left: np.ndarray, right: np.ndarray, top_k: int
) -> np.ndarray:
    """AS-norm of pairs of target clips against the target clips themselves.

    Clip a's cohort: every target clip but a and b; its top ``top_k`` similarities give a's
    mean and std. Each clip's ``top_k + 1`` best are found once; per pair, b is dropped from
    a's list when it is there, else the last one is. (Leaving a's pseudo-speaker out of its
    cohort as well cost OOF EER on libri-zalo: 3.49 against 3.06 %, ``bench/RESULTS.md``.)
    """
    sims = similarity(vectors).astype(np.float64)  # the diagonal (a itself) is -inf
    k = max(min(top_k, vectors.shape[0] - 2), 1)
    top_index = np.argsort(-sims, axis=1, kind="stable")[:, : k + 1]
    top_value = np.take_along_axis(sims, top_index, axis=1)
    top_value = np.where(np.isfinite(top_value), top_value, 0.0)
    total, square = top_value.sum(axis=1), (top_value**2).sum(axis=1)
    raw = np.einsum("ij,ij->i", vectors[left].astype(np.float64), vectors[right])

    def side(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        hit = top_index[a] == b[:, None]
        dropped = np.where(hit.any(axis=1), (top_value[a] * hit).sum(axis=1), top_value[a, -1])
        mean = (total[a] - dropped) / k
        variance = (square[a] - dropped**2) / k - mean**2
        return (raw - mean) / np.maximum(np.sqrt(np.maximum(variance, 0.0)), 1e-4)

    return 0.5 * (side(left, right) + side(right, left))


def adapted_scores(
    method: str,
    target: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    train: np.ndarray,
    train_speakers: np.ndarray,
    top_k: int = 100,
) -> tuple[np.ndarray, PseudoSpeakers]:
    """Adapted scores of pairs ``(left[i], right[i])`` of rows of ``target`` (unit vectors of
    the unlabelled target clips), and the pseudo-speakers found in it.

    ``train``/``train_speakers``: labelled training-speaker clips (the fold's AS-norm cohort);
    ``top_k``: of the target cohort (``score.asnorm_top_k``).
    """
    if method not in ADAPT_METHODS or method == "none":
        raise ValueError(f"unknown adaptation {method!r}; choose one of {ADAPT_METHODS[1:]}")
    pseudo = pseudo_speakers(target)
    backend = method.removesuffix("_cohort").removesuffix("cohort")
    vectors = target
    if backend:
        mean, whitening = target_transform(backend, target, pseudo.labels, train, train_speakers)
        vectors = apply_transform(target, mean, whitening)
    if method.endswith("cohort"):
        scores = target_cohort_norm(vectors, left, right, top_k)
    else:
        scores = np.einsum("ij,ij->i", vectors[left], vectors[right]).astype(np.float64)
    return scores.astype(np.float32), pseudo


def cluster_report(pseudo: PseudoSpeakers, speakers: np.ndarray) -> dict[str, float]:
    """How pseudo-speakers match true ones (a report figure only: never fed back).

    ``purity``: share of kept clips whose cluster's majority speaker is theirs; ``recall``:
    share of same-speaker clip pairs that share a kept cluster; counts of clusters and of true
    speakers (of all target clips and of those with two clips or more)."""
    kept = pseudo.labels >= 0
    true_names, true_codes = np.unique(speakers, return_inverse=True)
    majority = 0
    for cluster in range(pseudo.clusters):
        members = true_codes[pseudo.labels == cluster]
        majority += int(np.bincount(members).max())
    same_true = true_codes[:, None] == true_codes[None, :]
    same_cluster = (pseudo.labels[:, None] == pseudo.labels[None, :]) & kept[:, None]
    off_diagonal = ~np.eye(speakers.size, dtype=bool)
    true_pairs = int((same_true & off_diagonal).sum())
    found = int((same_true & same_cluster & off_diagonal).sum())
    counts = np.bincount(true_codes)
    return pseudo.summary() | {
        "speakers": int(true_names.size),
        "speakers_2plus": int((counts >= 2).sum()),
        "purity": majority / max(pseudo.kept, 1),
        "pair_recall": found / max(true_pairs, 1),
    }
