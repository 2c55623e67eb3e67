"""The `folds` stage: speaker-disjoint K-fold split and a trial list per fold.

- ``folds/folds.csv``: speaker, gender, n_files, fold. Speakers are spread over folds within
  each gender (stratified), greedily balancing the number of files per fold.
- ``folds/trials_fold{k}.csv``: ``audio_1,audio_2,label`` among fold k's files, shaped like the
  public test: an exact share of same-speaker pairs, a tunable share of same-gender negatives,
  and each file in a spread of pairs (between ``pairs_per_file_min`` and ``pairs_per_file_max``).

Everything is a deterministic function of the manifest and the seed.
"""

from __future__ import annotations

import logging
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from src.config import ExperimentConfig, FoldsConfig
from src.data.cache import read_manifest
from src.util.io import write_csv
from src.util.stage_cache import files_fingerprint, fingerprint, is_fresh, mark_done, mark_started

log = logging.getLogger(__name__)


def training_files(manifest: pd.DataFrame) -> pd.DataFrame:
    """Usable training rows: split train, status ok (duplicates left out)."""
    return manifest[(manifest["split"] == "train") & (manifest["status"] == "ok")]


def split_by_fold(
    manifest: pd.DataFrame, folds_dir: Path, fold: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Usable training files of ``fold``'s speakers and of every other fold's speakers."""
    path = folds_dir / "folds.csv"
    folds = pd.read_csv(path, dtype={"speaker": str})
    if fold not in set(folds["fold"]):
        raise ValueError(f"fold {fold} is not in {path}")
    fold_of = dict(zip(folds["speaker"], folds["fold"], strict=True))
    files = training_files(manifest)
    in_fold = files["speaker"].map(fold_of) == fold
    return files[in_fold], files[~in_fold]


def assign_folds(files: pd.DataFrame, n_folds: int, seed: int) -> pd.DataFrame:
    """Speaker -> fold, stratified by gender, balancing file counts (deterministic)."""
    speakers = (
        files.groupby("speaker")
        .agg(gender=("gender", "first"), n_files=("id", "size"))
        .reset_index()
        .sort_values("speaker", kind="mergesort")
    )
    if len(speakers) < n_folds:
        raise ValueError(
            f"{len(speakers)} speakers with usable training files cannot fill {n_folds} folds; "
            f"{_largest_hint(files, seed, len(speakers))}"
        )
    rng = np.random.default_rng(seed)
    speakers = speakers.iloc[rng.permutation(len(speakers))]
    files_per_fold = np.zeros(n_folds)
    speakers_per_fold = np.zeros(n_folds)
    folds = {}
    for _, group in speakers.groupby("gender", sort=True):
        order = group.sort_values("n_files", ascending=False, kind="mergesort")
        gender_count = np.zeros(n_folds)
        for speaker, n_files in zip(order["speaker"], order["n_files"], strict=True):
            # fewest speakers of this gender first, then fewest files, then lowest index
            key = np.lexsort((np.arange(n_folds), files_per_fold, speakers_per_fold, gender_count))
            fold = int(key[0])
            folds[speaker] = fold
            gender_count[fold] += 1
            speakers_per_fold[fold] += 1
            files_per_fold[fold] += n_files
    speakers["fold"] = speakers["speaker"].map(folds)
    return speakers.sort_values(["fold", "speaker"]).reset_index(drop=True)


def fold_shortfall(files: pd.DataFrame) -> str:
    """Why one fold's usable files can form no trials ('' when they can).

    Different-speaker trials need two speakers in the fold; same-speaker trials need a speaker
    with two files. (The trial list keeps its positive share exact, so either lack empties it.)
    """
    per_speaker = files.groupby("speaker").size()
    if len(per_speaker) < 2:
        return (
            f"it has {len(per_speaker)} speaker(s) ({len(files)} usable files), so it can form "
            "no different-speaker trials (a fold needs 2 speakers or more)"
        )
    if not (per_speaker >= 2).any():
        return (
            f"none of its {len(per_speaker)} speakers has two usable training files, so it can "
            "form no same-speaker trials"
        )
    return ""


def largest_workable_folds(files: pd.DataFrame, seed: int, at_most: int) -> int:
    """The largest ``n_folds`` (2 .. ``at_most``) whose every fold can form trials; 0 if none."""
    n_speakers = files["speaker"].nunique()
    for n_folds in range(min(at_most, n_speakers), 1, -1):
        fold_of = assign_folds(files, n_folds, seed).set_index("speaker")["fold"]
        folds = files["speaker"].map(fold_of)
        if all(not fold_shortfall(files[folds == k]) for k in range(n_folds)):
            return n_folds
    return 0


def _largest_hint(files: pd.DataFrame, seed: int, at_most: int) -> str:
    best = largest_workable_folds(files, seed, at_most)
    if best:
        return f"the largest folds.n_folds that works for this data is {best}"
    return "no folds.n_folds works for this data: add speakers with two or more usable files"


def check_folds(files: pd.DataFrame, speakers: pd.DataFrame, n_folds: int, seed: int) -> None:
    """Raise, before anything is written, when a fold can form no trials: naming each such
    fold, the cause (:func:`fold_shortfall`) and the largest ``n_folds`` that works."""
    fold_of = speakers.set_index("speaker")["fold"]
    folds = files["speaker"].map(fold_of)
    problems = [
        f"fold {k}: {why}" for k in range(n_folds) if (why := fold_shortfall(files[folds == k]))
    ]
    if problems:
        shown = "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")
        raise ValueError(
            f"folds.n_folds={n_folds} leaves {len(problems)} fold(s) without trials ({shown}); "
            f"{_largest_hint(files, seed, n_folds - 1)}"
        )


def _pair_budget(n_files: int, cfg: FoldsConfig, rng: np.random.Generator) -> np.ndarray:
    """Target number of pairs per file, log-uniform between the configured min and max."""
    low, high = (
        np.log(cfg.pairs_per_file_min),
        np.log(max(cfg.pairs_per_file_max, cfg.pairs_per_file_min)),
    )
    return np.exp(rng.uniform(low, high, n_files))


def _positive_pairs(
    files: pd.DataFrame, weights: np.ndarray, n_wanted: int, rng
) -> list[tuple[int, int]]:
    """Same-speaker pairs, files drawn in proportion to their pair budget."""
    candidates = []
    for _, idx in files.groupby("speaker").indices.items():
        candidates.extend(combinations(sorted(idx), 2))
    if not candidates:
        return []
    pair_idx = np.array(candidates)
    pair_weight = weights[pair_idx[:, 0]] * weights[pair_idx[:, 1]]
    n_take = min(n_wanted, len(candidates))
    chosen = rng.choice(
        len(candidates), size=n_take, replace=False, p=pair_weight / pair_weight.sum()
    )
    return [tuple(pair_idx[i]) for i in np.sort(chosen)]


def _negative_pairs(
    files: pd.DataFrame, weights: np.ndarray, n_wanted: int, same_gender_share: float, rng
) -> list[tuple[int, int]]:
    """Different-speaker pairs with about ``same_gender_share`` of them same-gender."""
    speakers = files["speaker"].to_numpy()
    genders = files["gender"].to_numpy()
    prob = weights / weights.sum()
    by_gender = {g: np.flatnonzero(genders == g) for g in np.unique(genders)}
    chosen: set[tuple[int, int]] = set()
    attempts = 0
    while len(chosen) < n_wanted and attempts < 50 * n_wanted + 1000:
        attempts += 1
        a = int(rng.choice(len(files), p=prob))
        want_same = rng.random() < same_gender_share
        pool = by_gender[genders[a]] if want_same else np.flatnonzero(genders != genders[a])
        pool = pool[speakers[pool] != speakers[a]]
        if pool.size == 0:
            continue
        b = int(rng.choice(pool, p=weights[pool] / weights[pool].sum()))
        chosen.add((min(a, b), max(a, b)))
    return sorted(chosen)


def make_trials(files: pd.DataFrame, cfg: FoldsConfig, seed: int) -> pd.DataFrame:
    """Trial list for one fold's files: exact positive share, shuffled deterministically."""
    files = files.sort_values("id", kind="mergesort").reset_index(drop=True)
    rng = np.random.default_rng(seed)
    weights = _pair_budget(len(files), cfg, rng)
    n_total = min(cfg.max_trials_per_fold, int(weights.sum() / 2))
    positives = _positive_pairs(files, weights, round(n_total * cfg.positive_share), rng)
    n_neg = round(len(positives) * (1 - cfg.positive_share) / cfg.positive_share)
    negatives = _negative_pairs(files, weights, n_neg, cfg.same_gender_negative_share, rng)
    if len(negatives) < n_neg:  # keep the share exact when negatives run out
        keep = round(len(negatives) * cfg.positive_share / (1 - cfg.positive_share))
        positives = positives[:keep]
    pairs = np.array(positives + negatives, dtype=np.int64).reshape(-1, 2)
    labels = np.array([1] * len(positives) + [0] * len(negatives), dtype=np.int64)
    order = rng.permutation(len(labels))
    pairs, labels = pairs[order], labels[order]
    swap = rng.random(len(labels)) < 0.5  # random side for each file
    pairs[swap] = pairs[swap][:, ::-1]
    ids = files["id"].to_numpy()
    return pd.DataFrame({"audio_1": ids[pairs[:, 0]], "audio_2": ids[pairs[:, 1]], "label": labels})


def trial_summary(trials: pd.DataFrame, files: pd.DataFrame) -> dict[str, float]:
    """Counts that show a trial list's shape (balance, same-gender negatives, pairs per file)."""
    gender = dict(zip(files["id"], files["gender"], strict=True))
    negatives = trials[trials["label"] == 0]
    same_gender = (negatives["audio_1"].map(gender) == negatives["audio_2"].map(gender)).mean()
    per_file = pd.concat([trials["audio_1"], trials["audio_2"]]).value_counts()
    return {
        "trials": len(trials),
        "positive_share": float(trials["label"].mean()) if len(trials) else 0.0,
        "same_gender_negative_share": float(same_gender) if len(negatives) else 0.0,
        "pairs_per_file_min": int(per_file.min()) if len(per_file) else 0,
        "pairs_per_file_median": float(per_file.median()) if len(per_file) else 0.0,
        "pairs_per_file_max": int(per_file.max()) if len(per_file) else 0,
    }


def folds_stage(cfg: ExperimentConfig, force: bool = False) -> None:
    """Write folds.csv and one trials_fold{k}.csv per fold into ``cfg.folds_dir``."""
    out = cfg.folds_dir
    manifest_path = cfg.paths.prep_dir / "manifest.csv"
    stamp = fingerprint(cfg.folds.model_dump(), cfg.seed, files_fingerprint([manifest_path]))
    outputs = [out / "folds.csv"] + [out / f"trials_fold{k}.csv" for k in range(cfg.folds.n_folds)]
    if not force and is_fresh(out, "folds", stamp, outputs):
        log.info("folds: inputs unchanged, reusing %s", out)
        return
    files = training_files(read_manifest(cfg.paths.prep_dir))
    speakers = assign_folds(files, cfg.folds.n_folds, cfg.seed)
    check_folds(files, speakers, cfg.folds.n_folds, cfg.seed)
    # folds.csv is written last: a run killed half way leaves none, never one beside old trials
    mark_started(out, "folds", [out / "folds.csv"])
    fold_of = dict(zip(speakers["speaker"], speakers["fold"], strict=True))
    for fold in range(cfg.folds.n_folds):
        fold_files = files[files["speaker"].map(fold_of) == fold]
        trials = make_trials(fold_files, cfg.folds, cfg.seed * 1000 + fold)
        if trials.empty:  # every fold passed check_folds: too few files for the pair budget
            raise ValueError(
                f"fold {fold} has no trials: its {len(fold_files)} usable files of "
                f"{fold_files['speaker'].nunique()} speakers are too few for "
                f"folds.pairs_per_file_min={cfg.folds.pairs_per_file_min}; raise it, or "
                f"{_largest_hint(files, cfg.seed, cfg.folds.n_folds - 1)}"
            )
        write_csv(out / f"trials_fold{fold}.csv", trials)
        log.info(
            "fold %d: %d speakers, %d files, %s",
            fold,
            fold_files["speaker"].nunique(),
            len(fold_files),
            trial_summary(trials, fold_files),
        )
    write_csv(out / "folds.csv", speakers)
    mark_done(out, "folds", stamp)
