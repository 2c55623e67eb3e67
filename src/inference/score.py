"""The `score` stage: cosine and AS-norm scores of OOF trials and test pairs, and OOF metrics.

Writes in ``outputs/<exp>/``:

- ``oof_scores.csv``: fold, audio_1, audio_2, label, cosine, asnorm, q_norm_1/2, q_cohort_1/2
  (and ``adapted`` with ``score.adapt``: :mod:`src.inference.adapt`);
- ``test_scores.csv``: audio_1, audio_2 (names as in public-test.csv, same order),
  ``cosine_fold{k}``, ``asnorm_fold{k}`` per fold model, their means ``cosine``, ``asnorm``, and
  the fold-mean quality columns;
- ``metrics.json``: EER, minDCF and accuracies of the OOF scores (and of the test scores when a
  ``public-test-labels.csv`` answer key lies beside the test CSV).

Example
-------
>>> import numpy as np
>>> v = np.eye(3, dtype=np.float32)
>>> cosine_pairs(v, np.array([0, 0]), np.array([0, 1])).tolist()
[1.0, 0.0]
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from src.config import ExperimentConfig
from src.data.pairs import DataLayoutError, read_answer_key, read_pair_csv
from src.data.prepare import read_fallback_pairs, scored_rows
from src.inference.adapt import PseudoSpeakers, adapted_scores, cluster_report
from src.inference.embed import load_embeddings
from src.inference.gender import gather_gender_tables
from src.inference.metrics import accuracy_at, balanced_threshold, summarise
from src.util.io import write_csv, write_json
from src.util.stage_cache import files_fingerprint, fingerprint, is_fresh, mark_done, mark_started

log = logging.getLogger(__name__)


def cosine_pairs(
    vectors: np.ndarray, left: np.ndarray, right: np.ndarray, chunk: int = 65536
) -> np.ndarray:
    """Row-wise dot products of unit vectors ``vectors[left]`` and ``vectors[right]``."""
    out = np.empty(left.size, dtype=np.float32)
    for start in range(0, left.size, chunk):
        a = vectors[left[start : start + chunk]]
        b = vectors[right[start : start + chunk]]
        out[start : start + chunk] = np.einsum("ij,ij->i", a, b)
    return out


def speaker_means(vectors: np.ndarray, speakers: np.ndarray) -> np.ndarray:
    """Unit-length mean embedding of each cohort speaker ``(speakers, dim)``."""
    names, inverse = np.unique(speakers, return_inverse=True)
    sums = np.zeros((names.size, vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, vectors)
    return (sums / np.linalg.norm(sums, axis=1, keepdims=True)).astype(np.float32)


def cohort_stats(
    vectors: np.ndarray, cohort: np.ndarray, top_k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of each clip's ``top_k`` highest cohort scores (for AS-norm)."""
    scores = vectors @ cohort.T  # (clips, cohort)
    k = min(top_k, cohort.shape[0])
    top = np.partition(scores, scores.shape[1] - k, axis=1)[:, -k:]
    return top.mean(axis=1), np.maximum(top.std(axis=1), 1e-4)


def asnorm(
    raw: np.ndarray, stats: tuple[np.ndarray, np.ndarray], left: np.ndarray, right: np.ndarray
) -> np.ndarray:
    """Adaptive symmetric score normalisation of pair scores."""
    mean, std = stats
    return 0.5 * ((raw - mean[left]) / std[left] + (raw - mean[right]) / std[right])


def score_pairs(
    emb: dict[str, np.ndarray], pairs: pd.DataFrame, top_k: int, key: dict[str, int]
) -> pd.DataFrame:
    """Cosine, AS-norm and quality columns for ``pairs`` (ids mapped to rows by ``key``)."""
    missing = sorted(set(pairs["audio_1"]).union(pairs["audio_2"]) - key.keys())
    if missing:
        raise ValueError(f"{len(missing)} paired clip(s) have no embedding, e.g. {missing[:3]}")
    left = pairs["audio_1"].map(key).to_numpy()
    right = pairs["audio_2"].map(key).to_numpy()
    return pair_score_table(emb["vectors"], emb["norms"], cohort_means(emb), top_k, left, right)


def cohort_means(emb: dict[str, np.ndarray]) -> np.ndarray:
    """The AS-norm cohort of a fold's embeddings: unit speaker means of its ``cohort`` rows."""
    is_cohort = emb["role"] == "cohort"
    return speaker_means(emb["vectors"][is_cohort], emb["speaker"][is_cohort])


def pair_score_table(
    vectors: np.ndarray,
    norms: np.ndarray,
    cohort: np.ndarray,
    top_k: int,
    left: np.ndarray,
    right: np.ndarray,
) -> pd.DataFrame:
    """The score stage's columns for pairs ``(left[i], right[i])`` of rows of ``vectors``.

    ``cohort``: unit speaker means ``(speakers, dim)``; the served bundle scores with this too.
    """
    stats = cohort_stats(vectors, cohort, top_k)
    raw = cosine_pairs(vectors, left, right)
    return pd.DataFrame(
        {
            "cosine": raw,
            "asnorm": asnorm(raw, stats, left, right).astype(np.float32),
            "q_norm_1": norms[left],
            "q_norm_2": norms[right],
            "q_cohort_1": stats[0][left].astype(np.float32),
            "q_cohort_2": stats[0][right].astype(np.float32),
        }
    )


def _id_to_row(emb: dict[str, np.ndarray], role: str, by_name: bool = False) -> dict[str, int]:
    rows = np.flatnonzero(emb["role"] == role)
    ids = emb["ids"][rows]
    if by_name:
        ids = np.array([i.rsplit("/", 1)[-1] for i in ids])
    return dict(zip(ids.tolist(), rows.tolist(), strict=True))


def test_pairs(cfg: ExperimentConfig) -> pd.DataFrame | None:
    path = cfg.paths.prep_dir / "test_pairs.csv"
    return read_pair_csv(path) if path.is_file() else None


def score_stage(cfg: ExperimentConfig, force: bool = False) -> None:
    """Score every fold's OOF trials and the test pairs with every fold model."""
    exp = cfg.experiment_dir
    k_folds = cfg.folds.n_folds
    emb_paths = [cfg.fold_dir(k) / "embeddings.npz" for k in range(k_folds)]
    trial_paths = [cfg.folds_dir / f"trials_fold{k}.csv" for k in range(k_folds)]
    pairs_path = cfg.paths.prep_dir / "test_pairs.csv"
    inputs = [*emb_paths, *trial_paths, pairs_path, answer_key_path(cfg)]
    stamp = fingerprint(
        cfg.score.model_dump(), cfg.submit.positive_share, files_fingerprint(inputs)
    )
    outputs = [exp / "oof_scores.csv", exp / "metrics.json"]
    if not force and is_fresh(exp, "score", stamp, outputs):
        log.info("score: unchanged, reusing %s", exp)
        return
    missing = [p for p in [*emb_paths, *trial_paths] if not p.is_file()]
    if missing:  # checked before anything is touched: the last good scores stay
        raise FileNotFoundError(
            f"score needs the trials and embeddings of {k_folds} folds; {len(missing)} missing, "
            f"e.g. {missing[0]} (run folds and embed with these settings first); "
            f"the existing scores in {exp} are unchanged"
        )
    pairs = test_pairs(cfg)
    oof_parts, test_parts = [], []
    adapting = cfg.score.adapt != "none"
    adapt_info: dict[int, dict] = {}
    for k in range(k_folds):
        emb = load_embeddings(emb_paths[k])
        trials = pd.read_csv(trial_paths[k], dtype={"audio_1": str, "audio_2": str})
        scored = score_pairs(emb, trials, cfg.score.asnorm_top_k, _id_to_row(emb, "oof"))
        if adapting:  # fold k's held-out clips are the unlabelled target of its OOF trials
            scored["adapted"], pseudo = adapted_pairs(emb, trials, "oof", cfg)
            oof_rows = emb["role"] == "oof"  # their labels: a report figure, read after
            adapt_info[k] = {"oof": cluster_report(pseudo, emb["speaker"][oof_rows])}
        oof_parts.append(pd.concat([trials.assign(fold=k), scored], axis=1))
        if pairs is not None:
            test = score_pairs(
                emb, pairs, cfg.score.asnorm_top_k, _id_to_row(emb, "test", by_name=True)
            )
            if adapting:  # the test clips are the target of the test pairs
                test["adapted"], pseudo = adapted_pairs(emb, pairs, "test", cfg)
                adapt_info[k]["test"] = pseudo.summary()
            test_parts.append(test.add_suffix(f"_fold{k}"))
    oof = pd.concat(oof_parts, ignore_index=True)
    oof = oof[["fold", "audio_1", "audio_2", "label", *scored.columns]]
    columns = ("cosine", "asnorm", "adapted") if adapting else ("cosine", "asnorm")
    metrics = {"oof": {s: summarise(oof[s].to_numpy(), oof["label"].to_numpy()) for s in columns}}
    if adapting:
        metrics["adapt"] = {"method": cfg.score.adapt, "folds": adapt_info}
    metrics["oof_per_fold_eer"] = {
        int(k): summarise(g["asnorm"], g["label"])["eer"] for k, g in oof.groupby("fold")
    }
    table = test_score_table(pairs, test_parts) if pairs is not None else None
    if table is not None:
        metrics["test"] = _test_metrics(cfg, table)
    gender = gather_gender(cfg)
    # everything computed: only now are the outputs replaced, each atomically; the stamp goes
    # first so that a kill between the writes leaves the stage to be redone
    gender_paths = [exp / "gender_oof.csv", exp / "gender_test.csv"]
    stale = [exp / "test_scores.csv"] if table is None else []
    mark_started(exp, "score", stale + (gender_paths if gender is None else []))
    write_csv(exp / "oof_scores.csv", oof)
    if table is not None:
        write_csv(exp / "test_scores.csv", table)
    for path, frame in zip(gender_paths, gender or (), strict=False):
        write_csv(path, frame)
    write_json(exp / "metrics.json", metrics)
    log.info(
        "OOF EER cosine %.4f, asnorm %.4f",
        metrics["oof"]["cosine"]["eer"],
        metrics["oof"]["asnorm"]["eer"],
    )
    mark_done(exp, "score", stamp)


def adapted_pairs(
    emb: dict[str, np.ndarray], pairs: pd.DataFrame, role: str, cfg: ExperimentConfig
) -> tuple[np.ndarray, PseudoSpeakers]:
    """``score.adapt``'s scores of ``pairs`` of ``role`` clips (``oof``: ids; ``test``: file
    names), the clips of that role being the unlabelled target; the fold's labelled ``cohort``
    clips are the training speakers. The target clips' ``speaker`` entries are never read."""
    rows = np.flatnonzero(emb["role"] == role)
    local = np.full(emb["role"].size, -1, dtype=np.int64)
    local[rows] = np.arange(rows.size)
    key = _id_to_row(emb, role, by_name=role == "test")
    left = local[pairs["audio_1"].map(key).to_numpy()]
    right = local[pairs["audio_2"].map(key).to_numpy()]
    cohort = emb["role"] == "cohort"
    return adapted_scores(
        cfg.score.adapt,
        emb["vectors"][rows],
        left,
        right,
        emb["vectors"][cohort],
        emb["speaker"][cohort],
        cfg.score.asnorm_top_k,
    )


def gather_gender(cfg: ExperimentConfig) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The folds' ``gender.csv`` gathered as (OOF table, test table), or None without them."""
    fold_paths = [cfg.fold_dir(k) / "gender.csv" for k in range(cfg.folds.n_folds)]
    if not all(p.is_file() for p in fold_paths):
        return None
    tables = [pd.read_csv(p, dtype={"id": str, "role": str}) for p in fold_paths]
    return gather_gender_tables(tables)


def test_score_table(pairs: pd.DataFrame, parts: list[pd.DataFrame]) -> pd.DataFrame:
    """``test_scores.csv``: the pairs, each fold model's columns (``*_fold{k}``, in ``parts``)
    and their fold means."""
    table = pd.concat([pairs.reset_index(drop=True), *parts], axis=1)
    columns = [c.removesuffix("_fold0") for c in parts[0].columns]
    for column in columns:
        table[column] = table[[f"{column}_fold{k}" for k in range(len(parts))]].mean(axis=1)
    return table


ORACLE_NOTE = (
    "'oracle' figures place their threshold with the answer key itself: no submission can "
    "reach them. 'accuracy_balanced' uses the key-free balanced threshold (submit.positive_share)"
    "; eer and min_dcf are threshold-free."
)


def key_scored_metrics(scores: np.ndarray, labels: np.ndarray, positive_share: float) -> dict:
    """Test figures from an answer key, with the key-thresholded ones kept apart as 'oracle'."""
    summary = summarise(scores, labels)
    oracle = ("best_accuracy", "best_threshold", "eer_threshold", "balanced_accuracy")
    return {
        "accuracy_balanced": accuracy_at(
            scores, labels, balanced_threshold(scores, positive_share)
        ),
        **{k: summary[k] for k in ("n_trials", "eer", "min_dcf_0.01", "min_dcf_0.05")},
        "oracle": {k: summary[k] for k in oracle},
    }


def answer_key_path(cfg: ExperimentConfig) -> Path:
    return cfg.paths.input / "public-test-labels.csv"


def _test_metrics(cfg: ExperimentConfig, table: pd.DataFrame) -> dict:
    """Accuracy on the test pairs when an answer key is available (local scoring only).

    A key that does not match the test pairs row by row is reported, never silently dropped.
    """
    key_path = answer_key_path(cfg)
    if not key_path.is_file():
        return {}
    try:
        key = read_answer_key(key_path)  # names cleaned as the test CSV's are
    except DataLayoutError as err:
        log.warning("%s: no test metrics", err)
        return {"answer_key_problem": str(err)}
    # rows naming an unusable file (missing, damaged, silent, too short) are not among the
    # scored pairs (submit answers them)
    fallback = read_fallback_pairs(cfg.paths.prep_dir)["row"].to_numpy(dtype=np.int64)
    rows = scored_rows(table, key, fallback)
    if rows is None:
        problem = (
            f"{key_path} does not match the {len(table)} test pairs row by row "
            f"({len(key)} rows): no test metrics"
        )
        log.warning("%s", problem)
        return {"answer_key_problem": problem}
    labels = key["label"].to_numpy()[rows]
    share = cfg.submit.positive_share
    result: dict = {"answer_key": str(key_path), "note": ORACLE_NOTE}
    for column in ("cosine", "asnorm", "adapted"):
        if column in table.columns:
            result[column] = key_scored_metrics(table[column].to_numpy(), labels, share)
    log.info(
        "test accuracy (balanced threshold): cosine %.4f, asnorm %.4f",
        result["cosine"]["accuracy_balanced"],
        result["asnorm"]["accuracy_balanced"],
    )
    return result
