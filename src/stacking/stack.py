"""The stack stage: a second-level model over first-level scores and pair metadata, by fold.

Recipe
------
1. Read every experiment's ``oof_scores.csv``/``test_scores.csv`` and align their rows.
2. Build pair features (``features.py``): scores, ``q_`` columns, metadata of both clips.
3. For every fold ``f``: train on the OOF trials of the other folds (early stopping on one of
   them), predict fold ``f``'s trials. No trial is predicted by a model that saw its fold; since
   folds are speaker-disjoint, none by a model that saw its speakers.
4. Test: the stacker of fold ``f`` scores the test pairs with the fold-``f`` first-level model's
   scores (``stack.test_scores=per_fold``, default), exactly how it scored its OOF trials; the K
   predictions are averaged. ``stack.test_scores=mean`` feeds it the fold-mean scores instead
   (smaller spread than anything it was trained on; kept for score tables without fold columns).
5. Several experiments: one stacker over all of them (``stack.average=none``), or one stacker
   per experiment whose predictions are averaged as probabilities or as normalised ranks.
6. Trial-graph features (``stack.graph_features``): fold ``f``'s OOF rows and fold ``f``'s
   test view come from one graph per fold, fold ``f``'s held-out clips and the test clips under
   fold ``f``'s model (``graph.py``); no graph feature reads a label. The graph guard
   (:func:`graph_guard`) measures how far OOF and test graph features still differ, warns, and
   leaves a far-shifted group out of the graph stacker.
7. The bundle's stacker: the same recipe without trial-graph features (a single served pair has
   no graph; with ``stack.graph_features`` off it is the stacker itself), probabilities averaged,
   and without the recording-condition features (level, SNR, bytes, channels, sample rate:
   ``features.RECORDING_FEATURES``) unless ``export.recording_features``. Both choices are
   fitted, so ``metrics.json``'s ``bundle_stackers`` shows what leaving them out costs. The
   served one's predictions are the ``prob_bundle`` columns; ``stacker/`` holds its fold
   models as text.

Labels: the stacker that predicts fold ``f`` is fitted and early-stopped on the other folds'
OOF labels only, so fold ``f``'s OOF predictions do not depend on fold ``f``'s labels (a test
permutes them through :func:`run_stack`); test predictions average the K fold stackers. Nothing
reads the test answer key.

Outputs (``<outputs>/stack/``): ``oof_predictions.csv``, ``test_predictions.csv``,
``importances.csv``, ``metrics.json``, ``config.yaml``, ``adversarial.csv``/``.json``,
``stacker/`` (``stacker.json`` and one model file per group and fold, read by ``export``).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from src.config import ExperimentConfig, StackConfig, config_to_yaml
from src.inference.embed import load_embeddings
from src.inference.metrics import equal_error_rate, summarise
from src.util.io import write_csv, write_json, write_text
from src.util.logs import plural
from src.util.stage_cache import files_fingerprint, fingerprint, is_fresh, mark_done, mark_started

from .adversarial import adversarial_validation, write_adversarial
from .features import (
    MissingIdError,
    audio_table,
    content_columns,
    feature_table,
    metadata_features,
    pair_gender_features,
)
from .graph import (
    GraphSettings,
    GraphSize,
    OofAndTestViews,
    graph_feature_views,
    graph_sizes,
)
from .inputs import (
    ExperimentScores,
    StageInputError,
    align_experiments,
    load_experiment,
    load_manifest,
    mean_gender,
    test_gender_by_name,
    test_gender_view,
)
from .models import PairModel, fit_pair_model, pair_model_suffix

log = logging.getLogger(__name__)

FALLBACK_VALID_SHARE = 0.2  # rows held out for early stopping when only one training fold exists


@dataclass(frozen=True)
class FoldSplit:
    """Which folds train (and early-stop) the stacker that predicts ``fold``."""

    fold: int
    train_folds: tuple[int, ...]
    valid_folds: tuple[int, ...]  # part of train_folds; () = random rows of the training folds


@dataclass
class CrossFit:
    """Out-of-fold and test predictions of one stacker family."""

    oof: np.ndarray  # (trials,)
    test: np.ndarray  # (test pairs,)
    importance: pd.DataFrame  # feature x fold{k}
    splits: list[FoldSplit]
    rounds: list[int]
    models: list[PairModel] = field(default_factory=list)  # one per split, in split order


@dataclass
class StackResult:
    """What :func:`run_stack` produced (also written to disk)."""

    oof: pd.DataFrame  # fold, audio_1, audio_2, label, prob
    test: pd.DataFrame  # audio_1, audio_2, prob
    importances: pd.DataFrame
    metrics: dict
    splits: dict[str, list[FoldSplit]] = field(default_factory=dict)


def plan_folds(folds: list[int]) -> list[FoldSplit]:
    """One split per fold: train on the others, early-stop on the next one (cyclically).

    Example
    -------
    >>> plan_folds([0, 1, 2])[2]
    FoldSplit(fold=2, train_folds=(0, 1), valid_folds=(0,))
    """
    folds = sorted(set(folds))
    if len(folds) < 2:
        raise ValueError(f"stacking needs at least 2 folds, the OOF scores have {folds}")
    splits = []
    for fold in folds:
        train = tuple(f for f in folds if f != fold)
        later = [f for f in train if f > fold]
        valid = (later[0] if later else train[0],) if len(train) >= 2 else ()
        splits.append(FoldSplit(fold, train, valid))
    return splits


def _fit_rows(split: FoldSplit, folds: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (fit, valid) over OOF trials for one split; both inside its train folds."""
    train = np.isin(folds, split.train_folds)
    if split.valid_folds:
        valid = np.isin(folds, split.valid_folds)
    else:
        rng = np.random.default_rng(seed + split.fold)
        valid = train & (rng.random(folds.size) < FALLBACK_VALID_SHARE)
    return train & ~valid, valid


def cross_fit(
    features: pd.DataFrame,
    labels: np.ndarray,
    folds: np.ndarray,
    test_views: dict[int, pd.DataFrame],
    cfg: StackConfig,
    seed: int,
) -> CrossFit:
    """Fold-by-fold training: the model for fold ``f`` never sees fold ``f``'s trials.

    Parameters
    ----------
    features
        OOF pair features ``(trials, features)``.
    labels, folds
        Per-trial label (1 = same speaker) and fold.
    test_views
        Test features for the stacker of each fold (same columns as ``features``).
    """
    x = features.to_numpy(dtype=np.float64)
    oof = np.full(labels.size, np.nan)
    test_sum = None
    importance, rounds, models = {}, [], []
    splits = plan_folds([int(f) for f in np.unique(folds)])
    for split in splits:
        fit, valid = _fit_rows(split, folds, seed)
        predict = folds == split.fold
        if (predict & (fit | valid)).any():  # guard: the plan must never leak
            raise RuntimeError(f"fold {split.fold} trials are in its own training rows")
        model = fit_pair_model(cfg, x[fit], labels[fit], x[valid], labels[valid], seed)
        oof[predict] = model.predict(x[predict])
        view = test_views[split.fold][features.columns].to_numpy(dtype=np.float64)
        test_pred = model.predict(view)
        test_sum = test_pred if test_sum is None else test_sum + test_pred
        importance[f"fold{split.fold}"] = model.importance()
        rounds.append(model.rounds)
        models.append(model)
        log.info(
            "fold %d: trained on folds %s, %d rounds", split.fold, split.train_folds, model.rounds
        )
    return CrossFit(
        oof=oof,
        test=test_sum / len(splits),
        importance=pd.DataFrame(importance, index=features.columns),
        splits=splits,
        rounds=rounds,
        models=models,
    )


def normalised_rank(values: np.ndarray) -> np.ndarray:
    """Ranks scaled to (0, 1], ties averaged: comparable across differently calibrated models."""
    return pd.Series(values).rank(method="average").to_numpy() / len(values)


def combine(predictions: list[np.ndarray], how: str) -> np.ndarray:
    """Average several predictions of the same pairs as probabilities or as ranks."""
    if len(predictions) == 1:
        return predictions[0]
    if how == "rank":
        return np.mean([normalised_rank(p) for p in predictions], axis=0)
    if how in ("probability", "none"):
        return np.mean(predictions, axis=0)
    raise ValueError(f"unknown average {how!r}; choose 'none', 'rank' or 'probability'")


MEAN_VIEW = -1  # key of the fold-mean test view (``stack.test_scores=mean``)


@dataclass(frozen=True)
class Metadata:
    """Metadata features of the OOF trials and of the test pairs, one test view per fold model.

    Test features that come from a first-level model (predicted gender) are fold ``k``'s own in
    ``test[k]``, as each OOF row's come from one model; ``test[MEAN_VIEW]`` averages the folds.
    """

    oof: pd.DataFrame
    test: dict[int, pd.DataFrame]


def _metadata(experiments: list[ExperimentScores], manifest: pd.DataFrame) -> Metadata:
    """Metadata features of the OOF trials and the test pairs (ids vs. test file names)."""
    gender_oof = mean_gender([e.gender_oof for e in experiments])
    gender_tables = [e.gender_test for e in experiments]
    if (gender_oof is None) != all(t is None for t in gender_tables):
        log.warning("gender predictions exist for only one of OOF/test; not used")
        gender_oof, gender_tables = None, [None]
    reference = experiments[0]
    oof = metadata_features(reference.oof, audio_table(manifest), gender_oof, "OOF audio ids")
    test = test_metadata_views(reference.test, gender_tables, manifest, reference.folds)
    return Metadata(oof, test)


def test_metadata_views(
    pairs: pd.DataFrame,
    gender_tables: list[pd.DataFrame | None],
    manifest: pd.DataFrame,
    folds: list[int],
) -> dict[int, pd.DataFrame]:
    """Metadata features of test ``pairs`` (file names) as each fold's stacker sees them, and
    the fold-mean view (``MEAN_VIEW``); the served bundle computes its pairs' features here too.

    ``gender_tables``: each experiment's ``gender_test.csv`` table (``None`` without a head).
    """
    test_table = audio_table(manifest, split="test", key="name")
    test_base = metadata_features(pairs, test_table, None, "test file names")
    views = {}
    for fold in [*folds, MEAN_VIEW]:
        gender = mean_gender(test_gender_view(gender_tables, None if fold < 0 else fold))
        if gender is None:
            views[fold] = test_base
            continue
        gender_features = pair_gender_features(
            pairs, test_gender_by_name(gender, manifest), "test file names"
        )
        views[fold] = pd.concat([test_base, gender_features], axis=1)
    return views


def _optional_metadata(
    experiments: list[ExperimentScores], manifest: pd.DataFrame | None, required: bool
) -> Metadata | None:
    """Metadata features; when only adversarial validation wants them, a gap is a warning."""
    if manifest is None:
        return None
    try:
        return _metadata(experiments, manifest)
    except MissingIdError as err:
        if required:
            raise
        log.warning("no metadata features, so no adversarial validation: %s", err)
        return None


def test_views(
    group: list[ExperimentScores], meta: Metadata | None, cfg: ExperimentConfig
) -> dict[int, pd.DataFrame]:
    """The test features each fold's stacker predicts from: fold ``k``'s model's view of the
    test pairs (``stack.test_scores=per_fold``), or the fold-mean view for every fold (``mean``).
    """
    tests = {e.name: e.test for e in group}
    return feature_views(
        tests, None if meta is None else meta.test, group[0].folds, cfg.stack.test_scores
    )


def feature_views(
    tests: dict[str, pd.DataFrame],
    meta_test: dict[int, pd.DataFrame] | None,
    folds: list[int],
    mode: str,
) -> dict[int, pd.DataFrame]:
    """Per-fold test feature tables from score tables shaped like ``test_scores.csv`` and
    :func:`test_metadata_views` (the pipeline's test pairs, or the pairs a server was sent)."""
    if mode == "per_fold":
        return {
            f: feature_table(tests, None if meta_test is None else meta_test[f], f"_fold{f}")
            for f in folds
        }
    mean_view = feature_table(tests, None if meta_test is None else meta_test[MEAN_VIEW])
    return dict.fromkeys(folds, mean_view)


GraphViews = dict[str, OofAndTestViews]  # by feature prefix: an experiment, or fused
GRAPH_GROUPS = {
    "neighbourhood": ("log_rank", "mutual_knn", "shared_knn"),
    "local normalisation": ("local_", "hubness"),
    "paths": ("two_hop",),
    "clusters": ("same_cluster", "tree_sim"),
    "second order": ("profile_corr", "expanded_sim"),
}


def graph_group_columns(columns: pd.Index | list[str], group: str) -> list[str]:
    """The graph-feature columns (``<prefix>__g_<name>``) of one group of ``GRAPH_GROUPS``."""
    stems = GRAPH_GROUPS[group]
    return [c for c in columns if "__g_" in c and c.split("__g_", 1)[1].startswith(stems)]


def graph_group_aucs(
    graphs: GraphViews, reference: ExperimentScores, cfg: ExperimentConfig
) -> dict[str, float]:
    """Adversarial AUC (OOF trials vs test pairs) of each graph-feature group, all graphs."""
    oof = pd.concat([v[0] for v in graphs.values()], axis=1)
    test = pd.concat([v[1][reference.folds[0]] for v in graphs.values()], axis=1)
    result = {}
    for group in GRAPH_GROUPS:
        columns = graph_group_columns(oof.columns, group)
        if not columns:
            continue
        _, summary = adversarial_validation(
            oof[columns], test[columns], cfg.stack, cfg.seed, reference.oof, reference.test
        )
        result[group] = summary["auc"]
    log.info("graph features, adversarial AUC per group: %s", result)
    return result


# the graph guard: when the graphs the stackers were trained on and the graphs their test
# views come from still differ much, say so in the log and the report, and act
GUARD_SIZE_RATIO = 1.5  # warn when a fold's graph and its stacker's training graphs differ more
GUARD_WARN_AUC = 0.75  # warn about a graph-feature group whose adversarial AUC is above this
GUARD_DROP_AUC = 0.9  # and leave it out of the graph stacker above this


@dataclass
class GraphGuard:
    """How alike the OOF and test graphs are, and what the stack did about it.

    ``size_ratio``: the largest ratio, either way, between the clips of the graph a fold's
    stacker reads test pairs from and the mean clips of the graphs it was trained on (1 when
    every fold graph holds the same clips; one graph per fold holds the OOF and test pairs).
    """

    sizes: dict[int, GraphSize]
    size_ratio: float
    aucs: dict[str, float]
    dropped: list[str]
    warnings: list[str]

    def to_json(self) -> dict:
        return {
            "graph_clips": {
                f"fold{k}": {"held_out": v.held_out, "test": v.test} for k, v in self.sizes.items()
            },
            "size_ratio": self.size_ratio,
            "adversarial_auc": self.aucs,
            "dropped_groups": self.dropped,
            "warnings": self.warnings,
        }


def graph_size_ratio(sizes: dict[int, GraphSize]) -> float:
    """See :class:`GraphGuard` (``size_ratio``)."""
    clips = {k: v.held_out + v.test for k, v in sizes.items()}
    ratios = [1.0]
    for fold, n in clips.items():
        others = [m for k, m in clips.items() if k != fold] or [n]
        ratio = n / max(float(np.mean(others)), 1.0)
        ratios.append(max(ratio, 1.0 / max(ratio, 1e-12)))
    return float(max(ratios))


def graph_guard(
    graphs: GraphViews,
    sizes: dict[int, GraphSize],
    reference: ExperimentScores,
    cfg: ExperimentConfig,
) -> GraphGuard:
    """Measure how far apart OOF and test graph features are (:class:`GraphGuard`); groups
    above ``GUARD_DROP_AUC`` are named in ``dropped`` (the caller leaves them out)."""
    ratio = graph_size_ratio(sizes)
    aucs = graph_group_aucs(graphs, reference, cfg)
    warnings, dropped = [], []
    if ratio > GUARD_SIZE_RATIO:
        warnings.append(
            f"fold graphs differ in size by a factor {ratio:.2f} (> {GUARD_SIZE_RATIO}): "
            "kept; each fold's stacker reads test pairs from a graph unlike its training ones"
        )
    for group, auc in aucs.items():
        if auc > GUARD_DROP_AUC:
            dropped.append(group)
            warnings.append(
                f"graph group {group!r}: adversarial AUC {auc:.3f} > {GUARD_DROP_AUC}: "
                "left out of the graph stacker"
            )
        elif auc > GUARD_WARN_AUC:
            warnings.append(
                f"graph group {group!r}: adversarial AUC {auc:.3f} > {GUARD_WARN_AUC}: kept "
                f"(left out above {GUARD_DROP_AUC})"
            )
    for line in warnings:
        log.warning("graph guard: %s", line)
    return GraphGuard(sizes, ratio, aucs, dropped, warnings)


def without_groups(graphs: GraphViews, groups: list[str]) -> GraphViews:
    """``graphs`` without the columns of the named ``GRAPH_GROUPS``."""
    if not groups:
        return graphs
    out = {}
    for prefix, (oof, tests) in graphs.items():
        drop = [c for g in groups for c in graph_group_columns(oof.columns, g)]
        out[prefix] = (oof.drop(columns=drop), {f: t.drop(columns=drop) for f, t in tests.items()})
    return out


def load_graph_views(
    experiments: list[ExperimentScores],
    dirs: list[Path],
    fused_only: bool = False,
    with_fused: bool = True,
) -> tuple[GraphViews, dict[int, GraphSize]]:
    """Trial-graph features of every experiment, and of their fused graph when several (with
    ``fused_only`` and several experiments: of the fused graph alone; without ``with_fused``,
    for stackers of one experiment each: no fused graph): OOF rows and one test view per fold
    model, both from the fold's one graph; and the clips of each fold's graph."""
    embeddings: dict[str, dict[int, dict]] = {}
    for experiment, directory in zip(experiments, dirs, strict=True):
        embeddings[experiment.name] = {}
        for fold in experiment.folds:
            path = directory / f"fold{fold}" / "embeddings.npz"
            if not path.is_file():
                raise StageInputError(f"stack.graph_features needs {path}: run embed first")
            embeddings[experiment.name][fold] = load_embeddings(path)
    started = time.perf_counter()
    reference = experiments[0]
    inputs = {e.name: {f: [v] for f, v in embeddings[e.name].items()} for e in experiments}
    if len(experiments) > 1 and with_fused:
        inputs[FUSED] = {f: [embeddings[e.name][f] for e in experiments] for f in reference.folds}
        if fused_only:
            inputs = {FUSED: inputs[FUSED]}
            log.info(
                "graph features: the fused graph of %d experiments only (stack.graph_fused_only)",
                len(experiments),
            )
    views = graph_feature_views(inputs, reference.oof, reference.test)
    log.info(
        "graph features: %s in %.1f s", plural(len(views), "graph"), time.perf_counter() - started
    )
    return views, graph_sizes(inputs)


FUSED = "fused"


def _stack_group(
    group: list[ExperimentScores],
    meta: Metadata | None,
    cfg: ExperimentConfig,
    graphs: GraphViews | None = None,
    recording: bool = True,
) -> CrossFit:
    """Cross-fit one stacker over the experiments of ``group`` (+ metadata, graph features);
    ``recording=False`` leaves the recording-condition features out (``features.py``)."""
    reference = group[0]
    features = feature_table({e.name: e.oof for e in group}, None if meta is None else meta.oof)
    views = test_views(group, meta, cfg)
    if graphs is not None:
        names = [e.name for e in group] + ([FUSED] if len(group) > 1 else [])
        names = [n for n in names if n in graphs]  # stack.graph_fused_only: the fused one
        features = pd.concat([features, *(graphs[n][0] for n in names)], axis=1)
        views = {
            f: pd.concat([view, *(graphs[n][1][f] for n in names)], axis=1)
            for f, view in views.items()
        }
    if not recording:
        kept = content_columns(list(features.columns))
        features, views = features[kept], {f: view[kept] for f, view in views.items()}
    folds = reference.oof["fold"].to_numpy()
    log.info("stacking %s: %d trials, %d features", [e.name for e in group], *features.shape)
    labels = reference.oof["label"].to_numpy(dtype=np.int64)
    return cross_fit(features, labels, folds, views, cfg.stack, cfg.seed)


def _importance_table(fits: dict[str, CrossFit], kind: str) -> pd.DataFrame:
    rows = []
    for name, fit in fits.items():
        table = fit.importance
        frame = pd.DataFrame(
            {
                "model": name,
                "feature": table.index,
                "kind": kind,
                "importance": table.mean(axis=1).to_numpy(),
                "importance_std": table.std(axis=1, ddof=0).to_numpy(),
            }
        )
        rows.append(pd.concat([frame, table.reset_index(drop=True)], axis=1))
    out = pd.concat(rows, ignore_index=True)
    return out.sort_values(["model", "importance"], ascending=[True, False], ignore_index=True)


def _metrics(
    experiments: list[ExperimentScores],
    oof: pd.DataFrame,
    fits: dict[str, CrossFit],
    cfg: ExperimentConfig,
) -> dict:
    labels = oof["label"].to_numpy()
    per_fold = {}
    for fold, rows in oof.groupby("fold"):
        if rows["label"].nunique() == 2:
            per_fold[f"fold{fold}"] = equal_error_rate(rows["prob"], rows["label"])[0]
    return {
        "experiments": {
            e.name: {s: summarise(e.oof[s].to_numpy(), labels) for s in ("cosine", "asnorm")}
            for e in experiments
        },
        "stack": summarise(oof["prob"].to_numpy(), labels) | {"eer_per_fold": per_fold},
        "stackers": {
            name: summarise(fit.oof, labels)
            | {"rounds": fit.rounds, "features": len(fit.importance)}
            for name, fit in fits.items()
        },
        "model": cfg.stack.model,
        "average": cfg.stack.average,
        "use_metadata": cfg.stack.use_metadata,
        "test_scores": cfg.stack.test_scores,
    }


IMPORTANCE_KINDS = {
    "lightgbm": "gain",
    "logistic": "abs_standardised_coef",
    "blend": "mean_share_of_gain_and_abs_coef",
}


def run_stack(
    cfg: ExperimentConfig, experiment_dirs: list[Path], out_dir: Path | None = None
) -> StackResult:
    """Train the second level on the experiments in ``experiment_dirs`` and write its outputs.

    Parameters
    ----------
    cfg
        Resolved config; ``cfg.stack`` chooses the model, ``cfg.paths`` the manifest location.
    experiment_dirs
        ``outputs/<exp>`` folders with ``oof_scores.csv`` and ``test_scores.csv``.
    out_dir
        Where to write; defaults to ``<outputs>/stack``.
    """
    started = time.perf_counter()
    out_dir = out_dir or cfg.stack_dir
    experiments = align_experiments([load_experiment(Path(d)) for d in experiment_dirs])
    manifest_path = cfg.paths.prep_dir / "manifest.csv"
    manifest = load_manifest(cfg.paths.prep_dir) if manifest_path.is_file() else None
    if cfg.stack.use_metadata and manifest is None:
        raise FileNotFoundError(
            f"stack.use_metadata=true needs {manifest_path}; run `prepare` or set "
            "stack.use_metadata=false"
        )
    meta = _optional_metadata(experiments, manifest, required=cfg.stack.use_metadata)

    groups = [experiments] if cfg.stack.average == "none" else [[e] for e in experiments]
    used_meta = meta if cfg.stack.use_metadata else None
    graphs, guard = None, None
    if cfg.stack.graph_features:
        # one stacker over several experiments reads their fused graph (stack.graph_fused_only)
        one_stacker = cfg.stack.average == "none"  # else one stacker per experiment: no fused
        fused_only = cfg.stack.graph_fused_only and one_stacker
        graphs, sizes = load_graph_views(experiments, experiment_dirs, fused_only, one_stacker)
        guard = graph_guard(graphs, sizes, experiments[0], cfg)
        graphs = without_groups(graphs, guard.dropped)
    fits = {"+".join(e.name for e in g): _stack_group(g, used_meta, cfg, graphs) for g in groups}
    how = cfg.stack.average
    reference = experiments[0]
    oof = reference.oof[["fold", "audio_1", "audio_2", "label"]].copy()
    oof["prob"] = combine([f.oof for f in fits.values()], how)
    test = reference.test[["audio_1", "audio_2"]].copy()
    test["prob"] = combine([f.test for f in fits.values()], how)

    kind = IMPORTANCE_KINDS[cfg.stack.model]
    importances = _importance_table(fits, kind)
    metrics = _metrics(experiments, oof, fits, cfg)
    labels = oof["label"].to_numpy()
    bundle = fits
    if graphs is not None:  # what the graph features changed, measured out of fold
        bundle = {
            name: _stack_group(g, used_meta, cfg) for name, g in zip(fits, groups, strict=True)
        }
        oof["prob_without_graph"] = combine([f.oof for f in bundle.values()], how)
        test["prob_without_graph"] = combine([f.test for f in bundle.values()], how)
        metrics["without_graph"] = summarise(oof["prob_without_graph"].to_numpy(), labels)
        metrics["graph_adversarial_auc"] = guard.aucs
        metrics["graph_guard"] = guard.to_json()
    # the stacker an exported bundle serves: no trial-graph features (a single pair has no
    # graph), probabilities averaged (a rank needs the whole test set), and the recording
    # group only with export.recording_features; both choices' OOF figures are kept
    bundle_how = "probability" if how == "rank" else how
    variants = {"with_recording": bundle}
    if used_meta is not None:
        variants["content_only"] = {
            name: _stack_group(g, used_meta, cfg, recording=False)
            for name, g in zip(fits, groups, strict=True)
        }
    served = "with_recording" if cfg.export.recording_features else "content_only"
    bundle = variants.get(served, bundle)
    oof["prob_bundle"] = combine([f.oof for f in bundle.values()], bundle_how)
    test["prob_bundle"] = combine([f.test for f in bundle.values()], bundle_how)
    metrics["bundle_stacker"] = summarise(oof["prob_bundle"].to_numpy(), labels) | {
        "recording_features": cfg.export.recording_features
    }
    metrics["bundle_stackers"] = {
        name: summarise(combine([f.oof for f in fitted.values()], bundle_how), labels)
        for name, fitted in variants.items()
    }
    stacker = bundle_stacker_files(bundle, groups, bundle_how, cfg)
    graph_stacker = (
        {}
        if graphs is None
        else bundle_stacker_files(fits, groups, how, cfg, graph_description(graphs, guard))
    )
    write_csv(out_dir / "oof_predictions.csv", oof)
    write_csv(out_dir / "test_predictions.csv", test)
    write_csv(out_dir / "importances.csv", importances)
    write_json(out_dir / "metrics.json", metrics)
    write_text(out_dir / "config.yaml", config_to_yaml(cfg))
    for name, text in stacker.items():  # the description last: it names the model files
        write_text(out_dir / STACKER_DIR / name, text)
    shutil.rmtree(out_dir / GRAPH_STACKER_DIR, ignore_errors=True)  # none without graphs
    for name, text in graph_stacker.items():
        write_text(out_dir / GRAPH_STACKER_DIR / name, text)
    if meta is not None:
        pairs = (reference.oof, reference.test)
        # one model's view of test, as each OOF row has one model's: a fold mean would differ
        test_meta = meta.test[reference.folds[0]]
        write_adversarial(meta.oof, test_meta, cfg.stack, cfg.seed, out_dir, pairs)
    log.info(
        "stack: OOF EER %.4f (best single %.4f), %.1f s",
        metrics["stack"]["eer"],
        min(m["eer"] for e in metrics["experiments"].values() for m in e.values()),
        time.perf_counter() - started,
    )
    return StackResult(oof, test, importances, metrics, {k: f.splits for k, f in fits.items()})


STACKER_DIR = "stacker"
GRAPH_STACKER_DIR = "graph_stacker"  # the submission's own stacker, trial-graph features in
STACKER_FILE = "stacker.json"


def graph_description(graphs: GraphViews, guard: GraphGuard) -> dict:
    """What a server needs to rebuild the graph features the graph stacker reads: each
    feature prefix's experiments (``fused``: every stacked one, their mean cosine), the groups
    the graph guard left out, the graph settings and the fold graphs' sizes."""
    return {
        "dropped_groups": list(guard.dropped),
        "settings": asdict(GraphSettings()),
        "sizes": {str(k): asdict(v) for k, v in guard.sizes.items()},
        "prefixes": sorted(graphs),
    }


def bundle_stacker_files(
    fits: dict[str, CrossFit],
    groups: list[list[ExperimentScores]],
    how: str,
    cfg: ExperimentConfig,
    graph: dict | None = None,
) -> dict[str, str]:
    """A stacker the bundle serves as files (name -> text): each group's fold models, then
    ``stacker.json`` saying which experiments, feature columns and folds each group uses;
    ``graph`` (:func:`graph_description`) for the graph stacker, whose groups also name the
    graph prefixes they read (their own experiments', or ``fused``)."""
    files: dict[str, str] = {}
    described = []
    for index, (fit, group) in enumerate(zip(fits.values(), groups, strict=True)):
        names = []
        for split, model in zip(fit.splits, fit.models, strict=True):
            name = f"group{index}_fold{split.fold}{pair_model_suffix(model.kind)}"
            files[name] = model.to_text()
            names.append(name)
        columns = list(fit.importance.index)
        entry = {
            "experiments": [e.name for e in group],
            "columns": columns,
            "folds": [split.fold for split in fit.splits],
            "models": names,
        }
        if graph is not None:
            read = {c.split("__g_", 1)[0] for c in columns if "__g_" in c}
            entry["graph_prefixes"] = [p for p in graph["prefixes"] if p in read]
        described.append(entry)
    description = {
        "model": cfg.stack.model,
        "average": how,
        "test_scores": cfg.stack.test_scores,
        "use_metadata": cfg.stack.use_metadata,
        "groups": described,
    }
    if graph is not None:
        description["graph"] = graph | {
            "experiments": {
                p: [e.name for g in groups for e in g] if p == FUSED else [p]
                for p in graph["prefixes"]
            }
        }
    files[STACKER_FILE] = json.dumps(description, indent=2) + "\n"
    return files


# part of the stage's fingerprint: bump it when the features or the models change what the
# stack computes from the same inputs and config, so a rerun after an upgrade redoes the stage
# (2: second-order and tree-similarity graph features, capped ranks, clipped logistic model;
# 3: one graph per fold for OOF and test pairs, label-free cut heights, the graph guard;
# 4: the graph stacker's fold models written for the bundle, graph_stacker/)
STACK_VERSION = 4
STACK_INPUTS = ("oof_scores.csv", "test_scores.csv", "gender_oof.csv", "gender_test.csv")
STACK_OUTPUTS = (
    "oof_predictions.csv",
    "test_predictions.csv",
    "importances.csv",
    "metrics.json",
    f"{STACKER_DIR}/{STACKER_FILE}",
)


def stack_stage(cfg: ExperimentConfig, force: bool = False) -> None:
    """CLI entry: stack ``cfg.stack.experiments`` (default: the config's own experiment).

    Skipped when the score tables, the manifest and ``cfg.stack`` are unchanged since the last
    complete run (``force`` redoes it).
    """
    names = cfg.stacked_runs
    dirs = [cfg.paths.outputs / name for name in names]
    out_dir = cfg.stack_dir
    inputs = [d / f for d in dirs for f in STACK_INPUTS] + [cfg.paths.prep_dir / "manifest.csv"]
    if cfg.stack.graph_features:
        inputs += [p for d in dirs for p in d.glob("fold*/embeddings.npz")]
    stamp = fingerprint(
        STACK_VERSION,
        cfg.stack.model_dump(mode="json"),
        cfg.seed,
        names,
        files_fingerprint(inputs),
        cfg.export.recording_features,  # which bundle stacker the stack fits and writes
    )
    outputs = [out_dir / f for f in STACK_OUTPUTS]
    if cfg.stack.graph_features:
        outputs.append(out_dir / GRAPH_STACKER_DIR / STACKER_FILE)
    if not force and is_fresh(out_dir, "stack", stamp, outputs):
        log.info("stack: unchanged, reusing %s", out_dir)
        return
    missing = [d / f for d in dirs for f in STACK_INPUTS[:2] if not (d / f).is_file()]
    if missing:  # checked before anything is touched: the last good stack stays
        raise FileNotFoundError(
            f"stack needs the score tables of {names}; missing {[str(p) for p in missing]} "
            "(run score for each, or fix stack.experiments); existing outputs unchanged"
        )
    mark_started(out_dir, "stack")  # outputs are replaced only after everything is computed
    run_stack(cfg, dirs, out_dir)
    mark_done(out_dir, "stack", stamp)
