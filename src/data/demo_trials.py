"""The demo data's public-test trials: same- and different-speaker pairs (see ``src.data.demo``)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def pick_negatives(
    rng: np.random.Generator, first: np.ndarray, second: np.ndarray, gender: np.ndarray, count: int
) -> np.ndarray:
    """Choose ``count`` of the candidate pairs ``(first[i], second[i])``, spreading file use.

    Picks alternate between same-gender and cross-gender pairs while both remain, and always
    take a pair whose files have been used least so far.
    """
    if first.size < count:
        raise ValueError(f"only {first.size} different-speaker pairs for {count} negatives")
    same_gender = gender[first] == gender[second]
    tiebreak = rng.random(first.size)
    uses = np.zeros(int(max(first.max(), second.max())) + 1)
    free = np.ones(first.size, dtype=bool)
    chosen = np.empty(count, dtype=np.int64)
    for k in range(count):
        pool = free & (same_gender == (k % 2 == 0))
        if not pool.any():
            pool = free
        load = np.where(pool, uses[first] + uses[second] + tiebreak, np.inf)
        chosen[k] = pick = int(np.argmin(load))
        free[pick] = False
        uses[first[pick]] += 1
        uses[second[pick]] += 1
    return chosen


def make_trials(rng: np.random.Generator, meta: pd.DataFrame) -> pd.DataFrame:
    """Every same-speaker pair plus as many different-speaker pairs, shuffled.

    Returns columns ``audio_1, audio_2, label`` (1 = same speaker); no file is paired with
    itself and no pair appears twice (in either order).
    """
    files, speaker = meta["file"].to_numpy(), meta["speaker"].to_numpy()
    first, second = np.triu_indices(len(meta), k=1)
    same = speaker[first] == speaker[second]
    positives = np.flatnonzero(same)
    different = np.flatnonzero(~same)
    negatives = different[
        pick_negatives(
            rng, first[different], second[different], meta["gender"].to_numpy(), positives.size
        )
    ]
    chosen = rng.permutation(np.concatenate([positives, negatives]))
    return random_sides(rng, files, first[chosen], second[chosen], same[chosen].astype(int))


def random_sides(
    rng: np.random.Generator,
    files: np.ndarray,
    first: np.ndarray,
    second: np.ndarray,
    labels: np.ndarray,
) -> pd.DataFrame:
    """The trial table of index pairs, each pair's two files swapped with probability 1/2."""
    swap = rng.random(first.size) < 0.5
    left = np.where(swap, second, first)
    right = np.where(swap, first, second)
    return pd.DataFrame({"audio_1": files[left], "audio_2": files[right], "label": labels})


SMALL_TEST = 2000  # test files up to which sample_trials lists every candidate pair


def sample_trials(rng: np.random.Generator, meta: pd.DataFrame, n_pairs: int) -> pd.DataFrame:
    """``n_pairs`` trials, half same-speaker (drawn from all same-speaker pairs), half not
    (random different-speaker pairs, half of them same-gender), shuffled; for test sets too
    large to list every pair (Zalo's 2,789 files in 50,000 pairs). Same columns and rules as
    :func:`make_trials`."""
    files, speaker = meta["file"].to_numpy(), meta["speaker"].to_numpy()
    gender = meta["gender"].to_numpy()
    groups = [np.flatnonzero(speaker == s) for s in np.unique(speaker)]
    same = np.concatenate(
        [g[np.stack(np.triu_indices(g.size, k=1)).T] for g in groups if g.size > 1]
    )
    n_positive = n_pairs // 2
    if same.shape[0] < n_positive:
        raise ValueError(f"only {same.shape[0]} same-speaker pairs for {n_positive} positives")
    positives = same[rng.choice(same.shape[0], n_positive, replace=False)]
    wanted = n_pairs - n_positive
    negatives = sample_negatives(rng, speaker, gender, wanted)
    chosen = np.concatenate([positives, negatives])
    labels = np.concatenate([np.ones(n_positive, int), np.zeros(wanted, int)])
    order = rng.permutation(n_pairs)
    chosen, labels = chosen[order], labels[order]
    return random_sides(rng, files, chosen[:, 0], chosen[:, 1], labels)


def sample_negatives(
    rng: np.random.Generator, speaker: np.ndarray, gender: np.ndarray, count: int
) -> np.ndarray:
    """``count`` distinct different-speaker index pairs ``(i < j)``, half of them same-gender
    when the set has both genders (as many as exist, on a small set)."""
    n = speaker.size
    if n <= SMALL_TEST:  # list every candidate
        first, second = np.triu_indices(n, k=1)
        other = speaker[first] != speaker[second]
        first, second = first[other], second[other]
        if first.size < count:
            raise ValueError(f"only {first.size} different-speaker pairs for {count} negatives")
        same = gender[first] == gender[second]
        n_same = min(count // 2, int(same.sum()))
        n_same = max(n_same, count - int((~same).sum()))
        rows = np.concatenate(
            [
                rng.choice(np.flatnonzero(same), n_same, replace=False),
                rng.choice(np.flatnonzero(~same), count - n_same, replace=False),
            ]
        )
        return np.stack([first[rows], second[rows]], axis=1)
    both = np.unique(gender).size > 1
    parts = []
    for same_gender, wanted in ((True, count // 2 if both else count), (False, count - count // 2)):
        if not both and not same_gender:
            continue
        found = np.empty((0, 2), dtype=np.int64)
        while found.shape[0] < wanted:  # rejection sampling: millions of candidates
            draw = np.sort(rng.integers(0, n, size=(4 * wanted, 2)), axis=1)
            keep = (speaker[draw[:, 0]] != speaker[draw[:, 1]]) & (
                (gender[draw[:, 0]] == gender[draw[:, 1]]) == same_gender
            )
            found = np.unique(np.concatenate([found, draw[keep]]), axis=0)
        parts.append(found[rng.permutation(found.shape[0])[:wanted]])
    return np.concatenate(parts)


# --------------------------------------------------------------------------------------------
# Entry points
