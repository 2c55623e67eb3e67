"""Trial-graph features: what the other clips of the same scoring context say about a pair.

A Zalo-style test is not independent pairs: its clips recur across pairs and its unseen speakers
recur across clips. One *graph* is a set of clips embedded by one model. Fold k has one graph
(:func:`fold_graph`): fold k's held-out clips and the test clips, both under fold k's model.
Fold k's OOF trials and fold k's test view of the test pairs are read from that same graph, so
each fold's stacker is trained on features of graphs of the size and make-up of the graph it
predicts test pairs from, whatever the test set's size (a test graph grown with unpaired clips
grows every fold's graph alike). Test speakers are disjoint from every fold's training speakers.
No label is read, of any clip: the cluster cut heights are shares of the graph's own most
similar clip pairs (:func:`cut_heights`). The fold's graph reads the test clips, unlabelled, as
the test view always did; a frozen (fold-independent) model's fold graph is defined the same way.

Per pair ``(a, b)`` of a graph of ``n`` clips with cosine similarities ``S``, symmetric in a, b:

- neighbourhood: the log rank of b among a's neighbours and of a among b's (min and max; ranks
  counted up to ``RANK_CAP``), reciprocal k-nearest-neighbour flags, shared k-NN overlap;
- local normalisation: ``S[a,b]`` against each clip's mean top-k similarity within the graph
  (the graph as its own cohort), and each clip's hubness (how often it is another's neighbour);
- paths: the best two-hop link ``max_c min(S[a,c], S[c,b])``;
- clusters: average-linkage clustering of the graph: same-cluster flags at a few cosine cut
  heights (label-free, :func:`cut_heights`), and the similarity at which a and b first share
  a cluster (``tree_sim``);
- second order: the correlation of a's and b's similarities to the fold's held-out clips
  (``profile_corr``; every clip in :func:`graph_features`), and the mean similarity between a
  with its nearest neighbours and b with theirs (``expanded_sim``, query expansion).

Size. A test set adds clips to every fold graph, mostly of speakers the held-out clips do not
have; per clip, a same-speaker partner's rank, the k-NN flags and overlaps, the top-k cohort,
hubness (neighbour counts over ``k``: mean 1 in any graph), the two-hop link and the expanded
vectors read only a clip's nearest neighbours, which such clips rarely join: they are kept as
counts, not as shares of the graph (a rank over ``n`` would fall with every added clip). The
profile over every clip moved with them, so it runs over the held-out clips, a set fixed per
fold. The cut heights, shares of all clip pairs, still move with size: heights read from the
held-out clips alone held the features but lost OOF accuracy (``bench/RESULTS.md``,
2026-11-30 evening).

Example
-------
>>> import numpy as np
>>> v = np.array([[1, 0], [0.96, 0.28], [0, 1], [0.28, 0.96]], dtype=np.float32)
>>> f = graph_features(v, np.array([0, 0]), np.array([1, 2]), GraphSettings(k=(1,), cuts=(0.5,)))
>>> np.exp(f["log_rank_max"]).round(6).tolist(), f["same_cluster_0"].tolist()
([1.0, 3.0], [1.0, 0.0])
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import fcluster, linkage
from threadpoolctl import threadpool_limits

CHUNK = 4096  # pairs per block of the second-order features (memory ~ CHUNK * dims)
NEAR_SAMPLE = 1024  # columns sampled to bound each row's k-th nearest neighbour from below
RANK_CAP = 64  # neighbour ranks are counted up to here (a rank beyond reads as RANK_CAP + 1)


@dataclass(frozen=True)
class GraphSettings:
    """Neighbourhood sizes and cluster cut thresholds (cosine similarities) of one graph.

    ``cuts``: fixed cut heights. :func:`graph_features` with none gives ``tree_sim`` alone;
    the stack (:func:`graph_feature_views`) passes none and cuts each fold graph at its own
    label-free :func:`cut_heights`."""

    k: tuple[int, ...] = (1, 3, 5, 10)
    cohort_k: int = 10
    cuts: tuple[float, ...] = ()
    expand_k: int = 5  # neighbours averaged into a clip's expanded vector (``expanded_sim``)


def similarity(vectors: np.ndarray) -> np.ndarray:
    """Cosine similarity of unit vectors, the diagonal set to -inf (a clip is no neighbour).

    One float32 matrix times its own transpose: numpy then computes one triangle (BLAS
    ``syrk``) and mirrors it, 40 % less time than two copies' general product."""
    single = vectors.astype(np.float32)
    sims = single @ single.T
    np.fill_diagonal(sims, -np.inf)
    return sims


def capped_ranks(
    top: np.ndarray, sims: np.ndarray, left: np.ndarray, right: np.ndarray
) -> np.ndarray:
    """1-based rank of ``right[i]`` among ``left[i]``'s neighbours (1 = nearest), read from the
    rows' top similarities ``top`` (n, m; nearest first) and capped at ``m + 1``.

    Beyond the first few dozen neighbours a rank only says "another speaker", and its scale
    grows with the graph: a cap keeps OOF graphs of 180 clips and a test graph of 2,789 alike.
    """
    values = sims[left, right][:, None]
    return 1.0 + np.count_nonzero(top[left] > values, axis=1)


def two_hop(sims: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``max_c min(S[a,c], S[c,b])`` over third clips c (a and b excluded), exactly.

    Both clips' whole rows are read: the pairs are grouped by their lower clip, whose row is
    read once and set against its partners' rows (a 4,900-clip graph with 70,000 pairs: 0.19 s,
    against 0.23 s for blocks of pairs that gather both rows of each pair, and 3x that when
    each clip's nearest neighbours were searched first and whole rows read only for the pairs
    they left open). The diagonal's -inf leaves out c = a and c = b.
    """
    if left.size == 0:
        return np.empty(0, dtype=np.float64)
    low, high = np.minimum(left, right), np.maximum(left, right)
    order = np.lexsort((high, low))
    low, high = low[order], high[order]
    bounds = np.flatnonzero(np.diff(low)) + 1
    paths = np.empty(left.size, dtype=np.float64)
    for start, stop in zip(
        np.r_[0, bounds].tolist(), np.r_[bounds, low.size].tolist(), strict=True
    ):
        rows = sims[high[start:stop]]  # a copy: the partners' rows
        np.minimum(rows, sims[low[start]], out=rows)
        paths[start:stop] = rows.max(axis=1)
    out = np.empty(left.size, dtype=np.float64)
    out[order] = paths
    return out


def cluster_tree(sims: np.ndarray) -> np.ndarray:
    """Average-linkage tree of the clips on cosine distance (cut it with ``fcluster``).

    The condensed distances are copied row by row from the upper triangle (the diagonal's -inf
    is never read): a third of the time of building the square float64 matrix first."""
    n = sims.shape[0]
    condensed = np.empty(n * (n - 1) // 2, dtype=np.float64)
    start = 0
    for row in range(n - 1):
        condensed[start : start + n - row - 1] = sims[row, row + 1 :]
        start += n - row - 1
    np.subtract(1.0, condensed, out=condensed)
    np.clip(condensed, 0.0, 2.0, out=condensed)
    return linkage(condensed, method="average")


def tree_similarity(tree: np.ndarray, n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``1 -`` the cophenetic distance of each pair in an average-linkage tree of ``n`` clips:
    the cosine similarity at which the two clips first fall in one cluster (1 for a self-pair):
    every cut height at once, on the similarity scale of the cut heights.

    The merge that first joins a and b is their lowest common ancestor in the tree, found by
    binary lifting (jump pointers: each node's 2**j-th ancestor, the textbook method for
    lowest common ancestors) for the asked pairs only: the same heights as scipy's
    ``cophenet`` (it reads the same ``tree[:, 2]``) without its ``n (n - 1) / 2`` matrix
    (12 M float64 on a 4,900-clip graph: 64 ms, against 7 ms for 70,000 pairs).
    """
    parent, depth = _tree_parents(tree, n)
    levels = [parent]  # levels[j][v]: v's ancestor 2**j merges up (the root's is the root)
    while (1 << len(levels)) <= int(depth.max()):
        levels.append(levels[-1][levels[-1]])
    u, v = np.asarray(left, dtype=np.int64), np.asarray(right, dtype=np.int64)
    u, v = np.where(depth[u] >= depth[v], u, v), np.where(depth[u] >= depth[v], v, u)  # u deeper
    climb = depth[u] - depth[v]
    for j, up in enumerate(levels):
        u = np.where((climb >> j) & 1 == 1, up[u], u)
    for up in reversed(levels):  # the highest ancestors of u and v that still differ
        differ = up[u] != up[v]
        u, v = np.where(differ, up[u], u), np.where(differ, up[v], v)
    joined = np.where(u == v, u, parent[u])  # the lowest common ancestor, a merge (>= n)
    same = np.asarray(left) == np.asarray(right)
    out = 1.0 - tree[np.maximum(joined - n, 0), 2]
    out[same] = 1.0
    return out


def _tree_parents(tree: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Parent and depth (merges below the root) of each node of a scipy linkage ``tree`` of
    ``n`` leaves: leaves ``0..n-1``, merge ``i`` is node ``n + i``, the root is its own parent."""
    nodes = 2 * n - 1
    parent = np.full(nodes, nodes - 1, dtype=np.int64)
    children = tree[:, :2].astype(np.int64)
    parent[children[:, 0]] = parent[children[:, 1]] = np.arange(n, nodes)
    depth = np.zeros(nodes, dtype=np.int64)
    merges = range(nodes - 1, n - 1, -1)  # parents come after their children
    for merge, (first, second) in zip(merges, children[::-1].tolist(), strict=True):
        depth[first] = depth[second] = depth[merge] + 1
    return parent, depth


def second_order_features(
    sims: np.ndarray,
    vectors: np.ndarray,
    near: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    expand_k: int,
    cohort: int | None = None,
) -> dict[str, np.ndarray]:
    """What the rest of the graph says about a pair, from its :func:`graph_vectors` ``W``.

    - ``profile_corr``: the Pearson correlation of ``S[a, c]`` and ``S[b, c]`` over the clips c
      of the cohort (the first ``cohort`` rows; every clip when ``None``), a and b excluded.
      ``S = W W^T`` has low rank, so the sums over c are read from ``W_c^T W_c`` in O(dims) per
      pair instead of O(clips): exact, and fast on any graph size. The per-pair products use
      the centred Gram matrix (float32 without cancellation); the corrections that leave a and
      b out are float64 scalars. A fixed cohort (a fold's held-out clips) keeps the profile of
      a pair the same however many, and whatever, test clips the graph holds.
    - ``expanded_sim``: the mean similarity between {a and its ``expand_k`` nearest clips} and
      {b and its}, i.e. the inner product of the two groups' mean vectors (query expansion).
    """
    n = vectors.shape[0]
    size = n if cohort is None else cohort  # clips c the profiles run over: rows 0..size-1
    mean_vector = vectors[:size].mean(axis=0)
    self_sim = np.einsum("ij,ij->i", vectors, vectors)  # S[a,a], 1 for unit vectors
    row_mean = vectors @ mean_vector  # mean over the cohort's c of S[a,c]
    single = vectors.astype(np.float32)  # the heavy products in float32: nothing cancels
    centred = single[:size] - mean_vector.astype(np.float32)
    projected = single @ (centred.T @ centred)  # (n, dims): row a . w_b = covariance over c
    row_square = np.einsum("ij,ij->i", projected, single).astype(np.float64) + size * row_mean**2
    members = near[:, :expand_k]
    expanded = (single + single[members].sum(axis=1)) / np.float32(1 + members.shape[1])
    corr, expanded_sim = np.empty(left.size), np.empty(left.size)
    # pairs in the order of their lower clip: consecutive pairs gather the same rows from the
    # cache (a third less time on 70,000 pairs; each pair's arithmetic is unchanged)
    order = np.lexsort((np.maximum(left, right), np.minimum(left, right)))
    for start in range(0, left.size, CHUNK):
        a, b = left[order[start : start + CHUNK]], right[order[start : start + CHUNK]]
        in_a, in_b = (a < size).astype(np.float64), (b < size).astype(np.float64)  # in cohort
        others = np.maximum(size - in_a - in_b, 1.0)
        s_ab = np.where(a == b, self_sim[a], sims[a, b])
        low, high = np.minimum(a, b), np.maximum(a, b)  # one order: symmetric to the last bit
        covariance_all = np.einsum("ij,ij->i", projected[low], single[high]).astype(np.float64)
        cross = (
            covariance_all
            + size * row_mean[a] * row_mean[b]
            - s_ab * (in_a * self_sim[a] + in_b * self_sim[b])
        )
        sum_a = size * row_mean[a] - in_a * self_sim[a] - in_b * s_ab
        sum_b = size * row_mean[b] - in_b * self_sim[b] - in_a * s_ab
        var_a = (row_square[a] - in_a * self_sim[a] ** 2 - in_b * s_ab**2) / others - (
            sum_a / others
        ) ** 2
        var_b = (row_square[b] - in_b * self_sim[b] ** 2 - in_a * s_ab**2) / others - (
            sum_b / others
        ) ** 2
        covariance = cross / others - sum_a * sum_b / others**2
        spread = np.sqrt(np.maximum(var_a, 1e-12) * np.maximum(var_b, 1e-12))
        corr[order[start : start + CHUNK]] = covariance / spread
        expanded_sim[order[start : start + CHUNK]] = np.einsum("ij,ij->i", expanded[a], expanded[b])
    corr = np.clip(corr, -1.0, 1.0) if size > 3 else np.zeros(left.size)
    corr[left == right] = 1.0
    return {"profile_corr": corr, "expanded_sim": expanded_sim}


def nearest(sims: np.ndarray, k: int) -> np.ndarray:
    """Indices of each clip's ``k`` nearest neighbours, nearest first, equal similarities in
    the order of the clips (a full stable sort of each row, read to its ``k``-th).

    On a large graph the rows are first cut to their candidates: the ``k``-th largest of an
    evenly spaced sample of ``NEAR_SAMPLE`` columns is at most the row's ``k``-th largest, so
    every neighbour lies at or above it (about ``k * n / NEAR_SAMPLE`` candidates a row); on a
    4,900-clip graph 0.15 s instead of 0.23 s for a partition of the whole matrix.
    """
    rows, n = sims.shape
    stride = n // NEAR_SAMPLE
    if k < 1 or stride < 2 or 4 * k > NEAR_SAMPLE:
        return _first_k(sims, np.broadcast_to(np.arange(n), sims.shape), k)
    sample = sims[:, ::stride]
    floor = np.partition(sample, sample.shape[1] - k, axis=1)[:, sample.shape[1] - k]
    row, column = np.nonzero(sims >= floor[:, None])  # column increases along each row
    counts = np.bincount(row, minlength=rows)
    slot = np.arange(row.size) - np.repeat(np.cumsum(counts) - counts, counts)
    index = np.full((rows, int(counts.max())), n, dtype=np.int64)  # padding: after every clip
    values = np.full(index.shape, -np.inf, dtype=sims.dtype)
    index[row, slot] = column
    values[row, slot] = sims[row, column]
    return _first_k(values, index, k)


def _first_k(values: np.ndarray, index: np.ndarray, k: int) -> np.ndarray:
    """``index`` of each row's ``k`` largest ``values`` (rows of shape (m,), ``index``
    increasing along each row), largest first, ties by ``index``: a row's stable sort, read to
    its ``k``-th, without sorting the whole row. Rows whose ``k``-th value is tied with one left
    out (which one is left out is arbitrary in a partition) are sorted whole."""
    width = values.shape[1]
    part = np.argpartition(values, width - k, axis=1)[:, width - k :]
    top, ids = np.take_along_axis(values, part, axis=1), np.take_along_axis(index, part, axis=1)
    order = np.lexsort((ids, -top), axis=1)
    chosen = np.take_along_axis(ids, order, axis=1)
    kth = np.take_along_axis(top, order[:, -1:], axis=1)
    for row in np.flatnonzero(np.count_nonzero(values >= kth, axis=1) > k):
        chosen[row] = index[row, np.argsort(-values[row], kind="stable")[:k]]
    return chosen


def _spread(name: str, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    return {f"{name}_min": np.minimum(x, y), f"{name}_max": np.maximum(x, y)}


def graph_similarity(vectors: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """The graph's similarity matrix: cosine for one model; for several (the same clips
    embedded by each), the mean of their cosines. (Standardising each model's similarities
    against the graph before averaging gave a lower stack OOF EER on libri-zalo, 4.43 vs
    4.56 %, but a lower OOF accuracy of the whole default pipeline, 95.7 vs 96.3 %.)"""
    sets = vectors if isinstance(vectors, list) else [vectors]
    if len(sets) == 1:
        return similarity(sets[0])
    # one product of the side-by-side vectors: the same mean, half the time of one per model
    return similarity(_side_by_side(sets, np.float32))


def graph_vectors(vectors: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """The graph's clips as one matrix ``W`` with ``W @ W.T`` = :func:`graph_similarity` off
    the diagonal: the models' unit vectors side by side, scaled by ``1/sqrt(models)`` (float64).
    """
    return _side_by_side(vectors if isinstance(vectors, list) else [vectors], np.float64)


def _side_by_side(sets: list[np.ndarray], dtype: type[np.floating]) -> np.ndarray:
    """The models' vectors of the same clips side by side, scaled by ``1/sqrt(models)``: inner
    products of its rows are the mean of the models' cosines."""
    return np.hstack([v.astype(dtype) for v in sets]) / dtype(np.sqrt(len(sets)))


def graph_features(
    vectors: np.ndarray | list[np.ndarray],
    left: np.ndarray,
    right: np.ndarray,
    settings: GraphSettings,
) -> pd.DataFrame:
    """Graph features of pairs ``(left[i], right[i])`` (row indices into ``vectors``); a list of
    vector sets (the same clips embedded by several models) makes one fused graph."""
    sims = graph_similarity(vectors)
    base = neighbourhood_features(sims, left, right, settings, graph_vectors(vectors))
    return pd.concat([base, cluster_features(sims, left, right, settings.cuts)], axis=1)


def cluster_features(
    sims: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    cuts: tuple[float, ...],
    tree: np.ndarray | None = None,
) -> pd.DataFrame:
    """Average-linkage cluster features of pairs of the graph ``sims`` (:func:`cut_features`;
    ``tree``: the graph's :func:`cluster_tree`, when already built)."""
    if tree is None:
        tree = cluster_tree(sims)
    return cut_features(tree, tree_similarity(tree, sims.shape[0], left, right), left, right, cuts)


def cut_features(
    tree: np.ndarray,
    tree_sim: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    cuts: tuple[float, ...],
) -> pd.DataFrame:
    """The similarity at which a and b first share a cluster (``tree_sim``; with ``cuts``: how
    far above the loosest cut, 0 below it), and same-cluster flags with ``tree`` cut at each of
    ``cuts``."""
    # below the loosest cut, a merge height says how the graph's top clusters happen to join:
    # a few values shared by most pairs of one graph, which tell graphs apart, not speakers
    out = {"tree_sim": np.maximum(tree_sim - min(cuts), 0.0) if cuts else tree_sim}
    for i, cut in enumerate(cuts):
        labels = fcluster(tree, t=1.0 - cut, criterion="distance")
        out[f"same_cluster_{i}"] = (labels[left] == labels[right]).astype(np.float64)
    return pd.DataFrame(out, index=pd.RangeIndex(left.size))


def neighbourhood_features(
    sims: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    settings: GraphSettings,
    vectors: np.ndarray | None = None,
    profile_clips: int | None = None,
) -> pd.DataFrame:
    """Every graph feature but the clusters: ranks, k-NN, local normalisation, hubness, paths,
    and with the graph's :func:`graph_vectors` the second-order features (``profile_clips``:
    the cohort of :func:`second_order_features`)."""
    n = sims.shape[0]
    self_pair = left == right  # a test list may pair a file with itself: its own nearest
    raw = np.where(self_pair, 1.0, sims[left, right].astype(np.float64))
    out: dict[str, np.ndarray] = {}
    k_max = min(max(settings.k), n - 1)
    # one neighbour search serves the ranks, the k-NN features, the graph cohort and the
    # expanded vectors
    width = min(max(k_max, settings.expand_k, settings.cohort_k, RANK_CAP), n - 1)
    near = nearest(sims, width) if n > 1 else np.zeros((n, 0), dtype=np.int64)
    top = np.take_along_axis(sims, near, axis=1)  # (n, width), nearest first
    rank_ab, rank_ba = capped_ranks(top, sims, left, right), capped_ranks(top, sims, right, left)
    rank_ab[self_pair] = rank_ba[self_pair] = 1.0
    out |= _spread("log_rank", np.log(rank_ab), np.log(rank_ba))
    for k in settings.k:
        out[f"mutual_knn_{k}"] = ((rank_ab <= k) & (rank_ba <= k)).astype(np.float64)
    if k_max > 0:
        k = min(settings.k[-1], k_max)
        sets = near[:, :k]
        shared = (sets[left][:, :, None] == sets[right][:, None, :]).any(axis=2).sum(axis=1)
        out[f"shared_knn_{settings.k[-1]}"] = shared / k
        hub = np.bincount(sets.ravel(), minlength=n) / k
        out |= _spread("hubness", hub[left], hub[right])
    cohort_k = min(settings.cohort_k, max(n - 1, 1))
    cohort = top[:, :cohort_k] if n > 1 else np.full((n, 1), -1.0)
    mean, std = cohort.mean(axis=1), np.maximum(cohort.std(axis=1), 1e-4)
    out |= _spread("local_gap", raw - mean[left], raw - mean[right])
    out["local_norm"] = 0.5 * ((raw - mean[left]) / std[left] + (raw - mean[right]) / std[right])
    out["two_hop"] = two_hop(sims, left, right) if n > 2 else np.full(left.size, -1.0)
    out["two_hop_gap"] = out["two_hop"] - raw
    if vectors is not None and n > 1:
        out |= second_order_features(
            sims, vectors, near, left, right, settings.expand_k, profile_clips
        )
    return pd.DataFrame(out)


CUT_SHARES = (0.005, 0.02, 0.08)  # cut heights: similarity of the graph's top 0.5/2/8 % pairs
CUT_SAMPLE = 200_000  # clip pairs drawn (fixed seed) to place them


def cut_heights(sims: np.ndarray, shares: tuple[float, ...] = CUT_SHARES) -> tuple[float, ...]:
    """Cluster cut heights read from the graph itself, strict to loose: the cosine similarity
    above which the ``shares`` most similar of its clip pairs lie. No label is read.

    A pair sample with a fixed seed (``CUT_SAMPLE`` pairs of distinct clips; every pair when
    the graph has fewer) keeps this O(1) in the graph's size. Heights as shares of the graph's
    own pairs follow the similarity scale of the model (fused or not) and of the graph; the
    OOF and test pairs of a fold read the same heights, as they share one graph.
    """
    n = sims.shape[0]
    if n < 3:
        return tuple(0.0 for _ in shares)
    total = n * (n - 1) // 2
    if total <= CUT_SAMPLE:
        upper = np.triu_indices(n, 1)
        values = sims[upper]
    else:
        rng = np.random.default_rng(0)
        a = rng.integers(0, n, CUT_SAMPLE)
        b = (a + rng.integers(1, n, CUT_SAMPLE)) % n  # never a itself
        values = sims[a, b]
    return tuple(float(np.quantile(values, 1.0 - share)) for share in shares)


def fold_graph(emb: dict[str, np.ndarray]) -> tuple[np.ndarray, dict, dict]:
    """Fold ``k``'s graph from its ``embeddings.npz``: its held-out (``oof``) clips and the
    test clips, both under fold ``k``'s model, as one set of vectors.

    Returns the vectors (held-out rows first), ``id -> row`` of the held-out clips and
    ``file name -> row`` of the test clips. For a frozen (fold-independent) model the vectors
    of a clip are the same in every fold; its fold ``k`` graph is still fold ``k``'s held-out
    clips and the test clips, so its OOF and test pairs share a graph as a trained model's do.
    """
    held_out = np.flatnonzero(emb["role"] == "oof")
    tests = np.flatnonzero(emb["role"] == "test")
    names = [k.rsplit("/", 1)[-1] for k in emb["ids"][tests].tolist()]
    oof_index = {k: i for i, k in enumerate(emb["ids"][held_out].tolist())}
    test_index = {k: held_out.size + i for i, k in enumerate(names)}
    vectors = np.concatenate([emb["vectors"][held_out], emb["vectors"][tests]])
    return vectors, oof_index, test_index


def _pair_rows(pairs: pd.DataFrame, index: dict, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Graph rows of each pair's two clips (vectorised lookups: 50,000 pairs in milliseconds)."""
    keys = pd.Index(list(index))
    rows = np.fromiter(index.values(), dtype=np.int64, count=len(index))
    left, right = keys.get_indexer(pairs["audio_1"]), keys.get_indexer(pairs["audio_2"])
    if (left < 0).any() or (right < 0).any():
        names = pd.concat([pairs["audio_1"][left < 0], pairs["audio_2"][right < 0]])
        missing = sorted(names.unique())
        raise ValueError(f"{len(missing)} {what} clip(s) are not in the graph, e.g. {missing[:3]}")
    return rows[left], rows[right]


@dataclass(frozen=True)
class _GraphJob:
    """One fold's graph: its clips' vectors (one set per fused model) and the pairs asked (the
    fold's OOF trials first, then the test pairs)."""

    sets: list[np.ndarray]
    left: np.ndarray
    right: np.ndarray
    held_out: int | None = None  # rows 0..held_out-1 are the fold's held-out clips


@dataclass(frozen=True)
class GraphSize:
    """Clips of one fold's graph: held-out (OOF) and test."""

    held_out: int
    test: int


def _solve_graph(job: _GraphJob, settings: GraphSettings) -> pd.DataFrame:
    """Every feature of one graph's pairs; its similarity matrix is dropped after. The fold's
    held-out clips (``job.held_out``; every clip when ``None``) are the cohort ``profile_corr``
    runs over, so it does not move with the test set's size or make-up."""
    sims = graph_similarity(job.sets)
    vectors = graph_vectors(job.sets)
    base = neighbourhood_features(sims, job.left, job.right, settings, vectors, job.held_out)
    cuts = settings.cuts or cut_heights(sims)
    tree = cluster_tree(sims)
    tree_sim = tree_similarity(tree, sims.shape[0], job.left, job.right)
    clusters = cut_features(tree, tree_sim, job.left, job.right, cuts)
    return pd.concat([base, clusters], axis=1)


def _solve_graphs(jobs: list[_GraphJob], settings: GraphSettings) -> list[pd.DataFrame]:
    """:func:`_solve_graph` of each graph, one worker process per core, BLAS single-threaded
    inside each (two levels of threads on few cores get in each other's way).

    Processes, not threads: scipy's average linkage (the largest part of a graph at Zalo size)
    and the Python loops between numpy calls hold the GIL, so threads ran one graph at a time
    for much of each graph. Forked workers inherit the loaded modules (no start-up imports).
    With one graph or one core the graphs are solved here; where fork is not available, in
    threads (as before 2026-11-30 evening).
    """
    workers = min(os.cpu_count() or 1, len(jobs))
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(workers) as threads:
            return list(threads.map(lambda job: _solve_graph(job, settings), jobs))
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        return list(pool.map(_solve_graph_alone, jobs, [settings] * len(jobs)))


def _solve_graph_alone(job: _GraphJob, settings: GraphSettings) -> pd.DataFrame:
    """:func:`_solve_graph` in a worker process, BLAS on one thread."""
    with threadpool_limits(limits=1, user_api="blas"):
        return _solve_graph(job, settings)


GraphInput = dict[int, list[dict[str, np.ndarray]]]  # fold -> each fused model's embeddings
OofAndTestViews = tuple[pd.DataFrame, dict[int, pd.DataFrame]]  # OOF features, test view per fold


@dataclass(frozen=True)
class _GraphPlan:
    """One job per fold, the OOF table rows it answers, and its size."""

    jobs: dict[int, _GraphJob]
    oof_rows: dict[int, pd.Index]
    sizes: dict[int, GraphSize]


def _plan_graphs(embeddings: GraphInput, oof: pd.DataFrame, test: pd.DataFrame) -> _GraphPlan:
    """One graph per fold (:func:`fold_graph`), asked for the fold's OOF trials and every test
    pair."""
    jobs, oof_rows, sizes = {}, {}, {}
    for fold in sorted(embeddings):
        pairs = oof[oof["fold"] == fold]
        views = [fold_graph(emb) for emb in embeddings[fold]]
        _, oof_index, test_index = views[0]
        if any(v[1] != oof_index or v[2] != test_index for v in views[1:]):
            raise ValueError(f"fold {fold}: the fused experiments embedded other clips")
        oof_left, oof_right = _pair_rows(pairs, oof_index, f"fold {fold} OOF")
        test_left, test_right = _pair_rows(test, test_index, f"fold {fold} test")
        jobs[fold] = _GraphJob(
            [v[0] for v in views],
            np.concatenate([oof_left, test_left]),
            np.concatenate([oof_right, test_right]),
            len(oof_index),
        )
        oof_rows[fold] = pairs.index
        sizes[fold] = GraphSize(len(oof_index), len(test_index))
    return _GraphPlan(jobs, oof_rows, sizes)


def _assemble(
    plan: _GraphPlan, solved: dict[int, pd.DataFrame], oof: pd.DataFrame, prefix: str
) -> OofAndTestViews:
    """A prefix's OOF rows and test views from its solved fold graphs."""
    oof_parts, test_views = [], {}
    for fold, features in solved.items():
        index = plan.oof_rows[fold]
        part = features.iloc[: index.size].set_axis(index)
        oof_parts.append(part)
        test_view = features.iloc[index.size :].reset_index(drop=True)
        test_views[fold] = test_view.add_prefix(f"{prefix}__g_")
    oof_features = pd.concat(oof_parts).loc[oof.index].add_prefix(f"{prefix}__g_")
    return oof_features.reset_index(drop=True), test_views


def graph_sizes(graphs: dict[str, GraphInput]) -> dict[int, GraphSize]:
    """Clips of each fold's graph (the first prefix's: every prefix embeds the same clips)."""
    embeddings = next(iter(graphs.values()))
    out = {}
    for fold, sets in embeddings.items():
        roles = sets[0]["role"]
        out[fold] = GraphSize(int((roles == "oof").sum()), int((roles == "test").sum()))
    return out


def graph_feature_views(
    graphs: dict[str, GraphInput],
    oof: pd.DataFrame,
    test: pd.DataFrame,
    settings: GraphSettings = GraphSettings(),
) -> dict[str, OofAndTestViews]:
    """Graph features of several experiments (and fused sets) at once, by feature prefix: the
    fold graphs of all of them are computed in one pool, largest first, so no core waits at
    the end of one experiment (see :func:`experiment_graph_features` for each result)."""
    plans = {prefix: _plan_graphs(embeddings, oof, test) for prefix, embeddings in graphs.items()}
    jobs = {(prefix, fold): job for prefix, p in plans.items() for fold, job in p.jobs.items()}
    order = sorted(jobs, key=lambda key: -jobs[key].sets[0].shape[0])
    solved = dict(zip(order, _solve_graphs([jobs[key] for key in order], settings), strict=True))
    return {
        prefix: _assemble(
            plan, {fold: solved[prefix, fold] for fold in sorted(plan.jobs)}, oof, prefix
        )
        for prefix, plan in plans.items()
    }


def test_graph_views(
    held_out: dict[int, list[np.ndarray]],
    test: dict[int, list[np.ndarray]],
    left: np.ndarray,
    right: np.ndarray,
    prefix: str,
    settings: GraphSettings = GraphSettings(),
) -> dict[int, pd.DataFrame]:
    """Fold ``k``'s view of test pairs from fold ``k``'s graph, as :func:`graph_feature_views`
    computes it, given the graph's clips directly: what the served bundle does with the
    held-out clips it carries and a batch of uploaded clips.

    Parameters
    ----------
    held_out
        ``fold -> [(held-out clips, dims) per fused model]``: fold ``k``'s held-out clips under
        fold ``k``'s model(s), in the order of ``embeddings.npz`` (its ``oof`` rows).
    test
        ``fold -> [(test clips, dims) per fused model]``: the test clips under the same models,
        in the order the pipeline embeds them (``prepare``'s: sorted file names).
    left, right
        ``(pairs,)`` row indices into the test clips.
    prefix
        Feature-name prefix (the experiment, or ``fused``).

    Returns fold -> ``(pairs, features)`` named ``<prefix>__g_<feature>``. A pair's features
    depend only on its graph (not on which other pairs are asked), so these equal the
    pipeline's test view of the same pairs when the graphs hold the same clips in the same
    order.
    """
    jobs = []
    for fold in sorted(held_out):
        sets = [np.concatenate([h, t]) for h, t in zip(held_out[fold], test[fold], strict=True)]
        count = held_out[fold][0].shape[0]
        jobs.append(_GraphJob(sets, left + count, right + count, count))
    solved = _solve_graphs(jobs, settings)
    return {
        fold: features.add_prefix(f"{prefix}__g_")
        for fold, features in zip(sorted(held_out), solved, strict=True)
    }


def experiment_graph_features(
    embeddings: GraphInput,
    oof: pd.DataFrame,
    test: pd.DataFrame,
    prefix: str,
    settings: GraphSettings = GraphSettings(),
) -> OofAndTestViews:
    """Graph features of one experiment (or a fused graph of several): OOF rows (fold k's
    trials) and one test view per fold (the test pairs), both read from fold k's one graph of
    its held-out and the test clips under fold k's model (:func:`fold_graph`). No label is read.

    Parameters
    ----------
    embeddings
        ``fold -> [embeddings.npz content of each experiment's fold model]``; several
        experiments make one fused graph (mean cosine similarity).
    oof
        OOF trials: fold, audio_1, audio_2 (ids); a ``label`` column is never read.
    test
        ``test_scores.csv`` pairs (audio_1, audio_2 by file name).
    prefix
        Feature-name prefix (the experiment, or ``fused``).
    """
    return graph_feature_views({prefix: embeddings}, oof, test, settings)[prefix]
