"""The report stage: how good is each score, where does it fail, and what will the test see.

Writes ``<outputs>/report/``:

- ``metrics.json``: EER, minDCF, accuracy under every threshold policy for each first-level
  score (``<exp>/cosine``, ``<exp>/asnorm``) and the stack, on OOF trials; plus TEST accuracy
  of every policy when ``public-test-labels.csv`` (``audio_1,audio_2,label``) lies next to
  ``public-test.csv``.
- ``det.png``, ``score_histograms.png`` (with the submit threshold), ``training_curves.png``,
  and the diagnostics of ``figures.py``: ``calibration.png``, ``scores_by_group.png``,
  ``accuracy_threshold.png``, ``stack_importance.png``, ``eer_by_fold.png`` (``.csv``).
- ``by_duration.csv`` (by the shorter clip's duration) and ``by_gender.csv`` (MM/FF/MF) for the
  main source (the stack when it exists) under the submit policy, on OOF trials.
- ``file_warnings.csv``: per test file, what puts it outside the model's range (``checks.*``:
  sample rate, speech shorter than the window, clipping, near-silence with the reason), and the
  "Recording conditions" section (``recording.py``).
- ``summary.md``: the page to read first; it opens with a WARNING when a source's scores have
  collapsed or a trial-graph feature group is shifted on the test (both also logged).

Reused when its inputs (:func:`report_inputs`), the config and the report's code are unchanged
(``--force`` redoes it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd

from src.config import ExperimentConfig
from src.data.pairs import DataLayoutError, read_answer_key
from src.data.prepare import read_fallback_pairs, scored_rows
from src.inference.metrics import equal_error_rate, summarise
from src.stacking.inputs import (
    PAIR_KEYS,
    StageInputError,
    load_manifest,
    read_csv,
    read_test_pairs,
)
from src.stacking.threshold import POLICIES, apply_policy, balanced_labels
from src.util.io import read_json, write_csv, write_json, write_text
from src.util.stage_cache import files_fingerprint, fingerprint, is_fresh, mark_done, mark_started

from .plots import plot_det, plot_histograms, plot_training_curves
from .recording import bundle_invariance, bundle_stackers, file_warnings, recording_markdown

log = logging.getLogger(__name__)

# 0-0.5 s: the pairs with a short clip (Zalo's start at 0.4 s; data.short_clip_seconds)
DURATION_EDGES = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, np.inf)
MIN_GROUP_TRIALS = 30  # smaller groups are listed but not used to answer the summary questions
LABELS_FILE = "public-test-labels.csv"


@dataclass(frozen=True)
class Source:
    """One score to judge: OOF trials with labels, and its test scores in public-test order."""

    name: str
    oof: pd.DataFrame  # fold, audio_1, audio_2, label, score
    test: np.ndarray | None  # (test pairs,)
    test_pairs: pd.DataFrame | None = None  # audio_1, audio_2 of ``test``


BUNDLE_SOURCE = "stack/served bundle"


def collect_sources(cfg: ExperimentConfig) -> dict[str, Source]:
    """Every first-level score of the stacked experiments, and the stack if it has run."""
    outputs = cfg.paths.outputs
    sources: dict[str, Source] = {}
    for exp in cfg.stacked_runs:
        oof_path, test_path = outputs / exp / "oof_scores.csv", outputs / exp / "test_scores.csv"
        if not oof_path.is_file():
            log.warning("report: %s has no oof_scores.csv; skipped", exp)
            continue
        oof = read_csv(oof_path, ["fold", *PAIR_KEYS, "label", "cosine", "asnorm"], exp)
        test = read_csv(test_path, [*PAIR_KEYS], exp) if test_path.is_file() else None
        for score in ("cosine", "asnorm", "adapted"):  # adapted: with score.adapt only
            if score not in oof:
                continue
            oof_part = oof[["fold", *PAIR_KEYS, "label"]].assign(score=oof[score])
            has_test = test is not None and score in test
            sources[f"{exp}/{score}"] = Source(
                f"{exp}/{score}",
                oof_part,
                test[score].to_numpy() if has_test else None,
                test[PAIR_KEYS] if has_test else None,
            )
    stack = cfg.stack_dir / "oof_predictions.csv"
    if stack.is_file():
        oof = read_csv(stack, ["fold", *PAIR_KEYS, "label", "prob"], "stack OOF predictions")
        test_path = cfg.stack_dir / "test_predictions.csv"
        test = (
            read_csv(test_path, [*PAIR_KEYS, "prob"], "stack test") if test_path.is_file() else None
        )
        sources["stack"] = Source(
            "stack",
            oof.rename(columns={"prob": "score"}),
            test["prob"].to_numpy() if test is not None else None,
            test[PAIR_KEYS] if test is not None else None,
        )
        served = "prob_bundle"  # the stacker the exported bundle serves (no graph features)
        if served in oof and served != "prob" and (test is None or served in test):
            sources[BUNDLE_SOURCE] = Source(
                BUNDLE_SOURCE,
                oof[["fold", *PAIR_KEYS, "label"]].assign(score=oof[served]),
                test[served].to_numpy() if test is not None else None,
                test[PAIR_KEYS] if test is not None else None,
            )
    if not sources:
        raise FileNotFoundError(f"nothing to report under {outputs}: run `score` or `stack` first")
    return sources


def read_test_labels(path: Path, expected: pd.DataFrame) -> tuple[np.ndarray | None, str]:
    """Labels of the public-test rows from a local labels file, and why not when unusable.

    Returns ``(labels, "")``, ``(None, "")`` when there is no key, or ``(None, problem)`` when a
    key exists but cannot label the test rows (the report then says so).
    """
    if not path.is_file():
        return None, ""
    try:
        labels = read_answer_key(path)  # names cleaned as the test CSV's are
    except DataLayoutError as err:
        raise StageInputError(str(err)) from None
    if labels[PAIR_KEYS].reset_index(drop=True).equals(expected.reset_index(drop=True)):
        return labels["label"].to_numpy(dtype=np.int64), ""
    by_pair = labels.drop_duplicates(PAIR_KEYS).set_index(PAIR_KEYS)["label"]
    found = by_pair.reindex(pd.MultiIndex.from_frame(expected))
    if found.isna().any():
        problem = (
            f"the answer key {path} lacks {int(found.isna().sum())} of the {len(expected)} "
            "public-test pairs, so there are no TEST columns"
        )
        log.warning("%s", problem)
        return None, problem
    return found.to_numpy(dtype=np.int64), ""


def _labels_at(labels: np.ndarray | None, rows: np.ndarray | None) -> np.ndarray | None:
    """The answer key's labels of the rows a source scored (``None`` without key or rows)."""
    return None if labels is None or rows is None else labels[rows]


def _scored_share(rows: np.ndarray | None, expected: pd.DataFrame | None) -> dict:
    """``{"test_pairs_scored": n, "test_pairs": total}`` when a source scored only some
    public-test rows (its test figures are on those), else ``{}``."""
    if rows is None or expected is None or len(rows) == len(expected):
        return {}
    return {"test_pairs_scored": len(rows), "test_pairs": len(expected)}


def short_clip_pairs(path: Path) -> pd.DataFrame | None:
    """The rows of ``submission_scores.csv`` flagged in its ``short_clip`` column (``row`` = the
    test CSV's row), or ``None`` when there are none or no such file or column."""
    if not path.is_file():
        return None
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "short_clip" not in table:
        return None
    flagged = table[table["short_clip"] != ""].rename_axis("row").reset_index()
    return None if flagged.empty else flagged


def submission_accuracy(path: Path, test_labels: np.ndarray) -> dict | None:
    """Accuracy of the written submission over every public-test row, fallback answers and
    transitive consistency included: the figure a leaderboard computes. ``None`` when there is
    no submission yet or its row count differs from the answer key's (then a warning)."""
    if not path.is_file():
        return None
    labels = pd.read_csv(path, dtype={"label": "Int64"})["label"]
    if len(labels) != len(test_labels) or labels.isna().any():
        log.warning("report: %s does not have one label per public-test row; skipped", path.name)
        return None
    predicted = labels.to_numpy(dtype=np.int64)
    return {
        "rows": len(predicted),
        "test_accuracy": float((predicted == test_labels).mean()),
        "positive_share": float(predicted.mean()),
    }


def policy_accuracies(
    source: Source, positive_share: float, test_labels: np.ndarray | None
) -> dict[str, dict[str, float]]:
    """Accuracy of each policy on OOF (threshold from OOF itself) and on test when labelled."""
    scores, labels = source.oof["score"].to_numpy(), source.oof["label"].to_numpy()
    out = {}
    for policy in POLICIES:
        oof_pred, threshold = apply_policy(policy, scores, scores, labels, positive_share)
        entry = {"oof_accuracy": float((oof_pred == labels).mean()), "oof_threshold": threshold}
        if source.test is not None:
            test_pred, test_threshold = apply_policy(
                policy, source.test, scores, labels, positive_share
            )
            entry["test_positive_share"] = float(test_pred.mean())
            entry["test_threshold"] = test_threshold
            if test_labels is not None:
                entry["test_accuracy"] = float((test_pred == test_labels).mean())
        out[policy] = entry
    return out


def group_errors(frame: pd.DataFrame, group: str) -> pd.DataFrame:
    """Accuracy, false-accept and false-reject rates (and EER when possible) per ``group``.

    ``frame`` needs ``label``, ``predicted``, ``score`` and the ``group`` column.
    """
    rows = []
    for key, part in frame.groupby(group, observed=True, sort=True):
        same, diff = part[part["label"] == 1], part[part["label"] == 0]
        both = len(same) > 0 and len(diff) > 0
        rows.append(
            {
                group: str(key),
                "n": len(part),
                "n_same": len(same),
                "accuracy": float((part["predicted"] == part["label"]).mean()),
                "false_accept_rate": float(diff["predicted"].mean()) if len(diff) else np.nan,
                "false_reject_rate": float(1 - same["predicted"].mean()) if len(same) else np.nan,
                "eer": equal_error_rate(part["score"], part["label"])[0] if both else np.nan,
            }
        )
    return pd.DataFrame(rows)


def duration_bin(seconds: np.ndarray) -> pd.Categorical:
    """Bin labels such as ``"1-2 s"`` for clip durations (last bin open: ``">=8 s"``)."""
    edges = DURATION_EDGES
    names = [f"{lo:g}-{hi:g} s" for lo, hi in pairwise(edges[:-1])]
    names.append(f">={edges[-2]:g} s")
    return pd.cut(seconds, list(edges), right=False, labels=names)


def gender_pairing(first: pd.Series, second: pd.Series) -> np.ndarray:
    """``MM``, ``FF``, ``MF`` (either order) or ``unknown`` per pair."""
    a = first.fillna("").to_numpy().astype(str)
    b = second.fillna("").to_numpy().astype(str)
    known = np.isin(a, ["M", "F"]) & np.isin(b, ["M", "F"])
    pairing = np.where(a == b, np.char.add(a, b), "MF")
    return np.where(known, pairing, "unknown")


def breakdowns(
    source: Source, manifest: pd.DataFrame, policy: str, positive_share: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Errors of ``source`` on OOF trials by shorter-clip duration and by gender pairing."""
    oof = with_groups(source, manifest)
    scores, labels = oof["score"].to_numpy(), oof["label"].to_numpy()
    oof["predicted"] = apply_policy(policy, scores, scores, labels, positive_share)[0]
    return group_errors(oof, "shorter_clip"), group_errors(oof, "gender_pair")


def with_groups(source: Source, manifest: pd.DataFrame) -> pd.DataFrame:
    """``source``'s OOF trials with their ``shorter_clip`` duration bin and ``gender_pair``."""
    oof = source.oof.copy()
    info = manifest.drop_duplicates("id").set_index("id")
    duration = pd.to_numeric(info["duration"], errors="coerce")
    shorter = np.minimum(
        duration.reindex(oof["audio_1"]).to_numpy(), duration.reindex(oof["audio_2"]).to_numpy()
    )
    oof["shorter_clip"] = duration_bin(shorter)
    gender = info["gender"] if "gender" in info else pd.Series(dtype=object)
    oof["gender_pair"] = gender_pairing(
        gender.reindex(oof["audio_1"]).reset_index(drop=True),
        gender.reindex(oof["audio_2"]).reset_index(drop=True),
    )
    return oof


def graph_changes(cfg: ExperimentConfig, manifest: pd.DataFrame) -> dict | None:
    """What the trial-graph features changed on OOF trials (balanced labels with vs without
    them), by shorter-clip duration and gender pairing; their adversarial AUC per group."""
    path = cfg.stack_dir / "oof_predictions.csv"
    metrics_path = cfg.stack_dir / "metrics.json"
    if not path.is_file() or not metrics_path.is_file():
        return None
    oof = read_csv(path, ["fold", *PAIR_KEYS, "label", "prob"], "stack OOF predictions")
    if "prob_without_graph" not in oof:
        return None
    share = cfg.submit.positive_share
    with_graph = balanced_labels(oof["prob"].to_numpy(), share)[0]
    without = balanced_labels(oof["prob_without_graph"].to_numpy(), share)[0]
    labels = oof["label"].to_numpy()
    info = manifest.drop_duplicates("id").set_index("id")
    duration = pd.to_numeric(info["duration"], errors="coerce")
    shorter = np.minimum(
        duration.reindex(oof["audio_1"]).to_numpy(), duration.reindex(oof["audio_2"]).to_numpy()
    )
    gender = info["gender"] if "gender" in info else pd.Series(dtype=object)
    table = pd.DataFrame(
        {
            "shorter_clip": duration_bin(shorter),
            "gender_pair": gender_pairing(
                gender.reindex(oof["audio_1"]).reset_index(drop=True),
                gender.reindex(oof["audio_2"]).reset_index(drop=True),
            ),
            "flipped": with_graph != without,
            "fixed": (with_graph != without) & (with_graph == labels),
            "broken": (with_graph != without) & (without == labels),
        }
    )
    by = {
        group: table.groupby(group, observed=True)[["flipped", "fixed", "broken"]]
        .sum()
        .reset_index()
        for group in ("shorter_clip", "gender_pair")
    }
    metrics = read_json(metrics_path)
    return {
        "eer_with": metrics["stack"]["eer"],
        "eer_without": metrics["without_graph"]["eer"],
        "accuracy_with": float((with_graph == labels).mean()),
        "accuracy_without": float((without == labels).mean()),
        "by": by,
        "adversarial": metrics.get("graph_adversarial_auc", {}),
        "guard": metrics.get("graph_guard"),
    }


def graph_markdown(changes: dict) -> list[str]:
    lines = [
        "",
        "## Trial graph",
        "",
        f"Stack OOF EER {_pct(changes['eer_without'])} without graph features, "
        f"{_pct(changes['eer_with'])} with them; balanced-threshold OOF accuracy "
        f"{_pct(changes['accuracy_without'])} -> {_pct(changes['accuracy_with'])}. OOF pairs "
        "whose label the graph features changed (fixed: now right; broken: now wrong):",
        "",
        _table(changes["by"]["shorter_clip"]),
        "",
        _table(changes["by"]["gender_pair"]),
    ]
    if changes["adversarial"]:
        aucs = ", ".join(f"{g} {a:.3f}" for g, a in changes["adversarial"].items())
        lines += ["", f"Adversarial AUC (OOF trials vs test pairs) per feature group: {aucs}."]
    guard = changes.get("guard")
    if guard:
        clips = guard["graph_clips"]
        sizes = ", ".join(f"{k} {v['held_out']} + {v['test']}" for k, v in clips.items())
        lines += [
            "",
            f"Graph guard: one graph per fold holds its held-out and the test clips ({sizes}); "
            f"size ratio between a stacker's test graph and its training graphs "
            f"{guard['size_ratio']:.2f}.",
        ]
        if guard["warnings"]:
            lines += ["", "**Graph guard warnings:**", ""]
            lines += [f"- {line}" for line in guard["warnings"]]
        else:
            lines += ["", "No graph-guard warning: every graph-feature group was stacked."]
    return lines


def adaptation_summary(cfg: ExperimentConfig) -> dict[str, dict] | None:
    """Each stacked run's test-set adaptation (``score.adapt``) as its ``metrics.json`` has
    it: the method, the OOF EER with and without it, and per fold its pseudo-speakers."""
    out = {}
    for run in cfg.stacked_runs:
        path = cfg.paths.outputs / run / "metrics.json"
        metrics = read_json(path) if path.is_file() else {}
        if "adapt" in metrics:
            out[run] = {
                "method": metrics["adapt"]["method"],
                "folds": metrics["adapt"]["folds"],
                "eer": {k: v["eer"] for k, v in metrics["oof"].items()},
            }
    return out or None


def adaptation_markdown(runs: dict[str, dict]) -> list[str]:
    """The report's section on test-set adaptation: pseudo-speakers against the true speakers
    of each fold's held-out clips (read only here, for this table), and what it did to OOF."""
    lines = [
        "",
        "## Test-set adaptation",
        "",
        "Pseudo-speakers are clusters of each fold's held-out clips (for its OOF trials) and of "
        "the test clips (for the test pairs), found without any label "
        "(`src/inference/adapt.py`). The true speakers of the held-out clips are read only for "
        "this table: purity is the share of clustered clips in their cluster's majority "
        "speaker, pair recall the share of same-speaker clip pairs that share a cluster.",
    ]
    for run, entry in runs.items():
        rows = []
        for fold, info in sorted(entry["folds"].items(), key=lambda item: int(item[0])):
            held, test = info["oof"], info.get("test", {})
            rows.append(
                {
                    "fold": fold,
                    "held-out clips": held["clips"],
                    "speakers": held["speakers"],
                    "clusters": held["clusters"],
                    "clips clustered": held["clips_kept"],
                    "purity": _pct(held["purity"]),
                    "pair recall": _pct(held["pair_recall"]),
                    "test clips": test.get("clips", "-"),
                    "test clusters": test.get("clusters", "-"),
                }
            )
        eer = entry["eer"]
        lines += [
            "",
            f"**{run}** (`score.adapt={entry['method']}`): OOF EER cosine {_pct(eer['cosine'])}, "
            f"AS-norm {_pct(eer['asnorm'])}, adapted {_pct(eer['adapted'])}.",
            "",
            _table(pd.DataFrame(rows)),
        ]
    return lines


def _pct(value: float) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{100 * value:.1f} %"


def _table(frame: pd.DataFrame) -> str:
    """A pandas table as GitHub markdown (no tabulate dependency)."""
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def duration_answer(by_duration: pd.DataFrame) -> str:
    """One sentence: does the source fail more on short or on long clips?

    The duration bins are pooled into a shorter and a longer half (by trial count), so that
    sparse extreme bins do not decide the answer.
    """
    if len(by_duration) < 2 or by_duration["n"].sum() < 2 * MIN_GROUP_TRIALS:
        return "Too few trials to compare short and long clips."
    before = by_duration["n"].cumsum() - by_duration["n"]
    is_short = (before < by_duration["n"].sum() / 2).to_numpy(copy=True)
    is_short[-1] = False  # the longest bin is always on the long side
    halves = []
    for rows in (by_duration[is_short], by_duration[~is_short]):
        error = ((1 - rows["accuracy"]) * rows["n"]).sum() / rows["n"].sum()
        bins = rows["shorter_clip"]
        span = bins.iloc[0] if len(bins) == 1 else f"{bins.iloc[0]} to {bins.iloc[-1]}"
        halves.append((error, f"{span}, {int(rows['n'].sum())} trials"))
    (err_short, short_span), (err_long, long_span) = halves
    if abs(err_short - err_long) < 0.01:
        verdict = "about as often on short clips as on long ones"
    elif err_short > err_long:
        verdict = "more on short clips"
    else:
        verdict = "more on long clips"
    return (
        f"It fails {verdict}: error {_pct(err_short)} when the shorter clip is short "
        f"({short_span}) vs {_pct(err_long)} when it is long ({long_span})."
    )


def gender_answer(by_gender: pd.DataFrame) -> str:
    """One sentence: does the source fail more on same-gender pairs?"""
    rows = by_gender.set_index("gender_pair")
    same = rows.loc[rows.index.isin(["MM", "FF"])]
    if same["n"].sum() < MIN_GROUP_TRIALS or "MF" not in rows.index:
        return "Gender is unknown for too many trials to compare gender pairings."
    err_same = 1 - (same["accuracy"] * same["n"]).sum() / same["n"].sum()
    err_mixed = 1 - rows.loc["MF", "accuracy"]
    per = ", ".join(f"{g} {_pct(1 - rows.loc[g, 'accuracy'])}" for g in same.index)
    more = "more" if err_same > err_mixed else "less"
    return (
        f"It fails {more} on same-gender pairs: error {_pct(err_same)} ({per}) vs "
        f"{_pct(err_mixed)} on mixed-gender pairs (all different-speaker, so the easy ones)."
    )


def summary_markdown(
    metrics: dict, by_duration: pd.DataFrame | None, by_gender: pd.DataFrame | None, extra: dict
) -> str:
    """The report's front page: headline table, the two failure questions, warnings."""
    rows = []
    for name, entry in metrics["sources"].items():
        policies = entry["policies"]
        test = {p: policies[p].get("test_accuracy") for p in POLICIES}
        rows.append(
            {
                "source": name,
                "EER": _pct(entry["oof"]["eer"]),
                "minDCF 0.01": f"{entry['oof']['min_dcf_0.01']:.3f}",
                **{f"OOF acc {p}": _pct(policies[p]["oof_accuracy"]) for p in POLICIES},
                **{f"TEST acc {p}": _pct(v) for p, v in test.items() if v is not None},
            }
        )
    lines = [
        "# Verification report",
        "",
        f"Main source: **{metrics['main_source']}**, submit policy **{metrics['policy']}** "
        f"(positive share {metrics['positive_share']}). OOF accuracies use thresholds placed on "
        "the OOF scores themselves, so `oof_accuracy` is optimistic; TEST columns (when a labels "
        "file exists) use thresholds from OOF, as the submission does.",
        "",
        _table(pd.DataFrame(rows)),
    ]
    written = metrics.get("submission")
    if written:
        lines += [
            "",
            f"The written submission ({written['rows']} rows, every answer as submitted: "
            f"fallback answers and transitive consistency included) scores "
            f"**{_pct(written['test_accuracy'])}** against the answer key.",
        ]
    partial = {
        e["test_pairs_scored"]: e["test_pairs"]
        for e in metrics["sources"].values()
        if "test_pairs_scored" in e and metrics["test_labels"]  # else no TEST columns
    }
    for scored, total in partial.items():
        lines += [
            "",
            f"TEST columns of sources that scored {scored} of the {total} public-test pairs are "
            "on those pairs; the others got the fallback answer (below).",
        ]
    diagnostics = extra.get("diagnostics") or {}
    if diagnostics:
        from .figures import warnings_markdown

        lines += warnings_markdown(diagnostics["collapsed"], diagnostics["shifted"])
    lines += ["", "## Where does it fail?", ""]
    if by_duration is None or by_gender is None:
        lines.append("No manifest, so no breakdown by duration or gender.")
    else:
        lines += [
            "- " + duration_answer(by_duration),
            "- " + gender_answer(by_gender),
            "",
            "### By the shorter clip's duration (OOF)",
            "",
            _table(by_duration.round(4)),
            "",
            "### By gender pairing (OOF)",
            "",
            _table(by_gender.round(4)),
        ]
    shifted = extra.get("shifted_features")
    if shifted or extra.get("adversarial_auc", 0) > extra.get("adversarial_warn_auc", 1):
        lines += [
            "",
            "## Warnings",
            "",
            f"Adversarial validation tells test pairs from OOF trials with AUC "
            f"{extra['adversarial_auc']:.3f}. "
            + (
                f"Shifted features: {', '.join(shifted)}."
                if shifted
                else "No single feature is shifted above the warning AUC; the combination is."
            )
            + " Most shifted features (see `adversarial.csv`):",
            "",
            _table(pd.DataFrame(extra.get("adversarial_top", [])).round(3)),
        ]
    if metrics.get("answer_key_problem"):
        lines += ["", "## Answer key", "", f"Not used: {metrics['answer_key_problem']}."]
    if extra.get("graph"):
        lines += graph_markdown(extra["graph"])
    if extra.get("adaptation"):
        lines += adaptation_markdown(extra["adaptation"])
    copies = extra.get("test_train_copies")
    if copies is not None:
        table = copies["table"]
        lines += [
            "",
            "## Test files that copy a training file",
            "",
            f"{len(table)} test file(s) have the same bytes (md5) as a training file; policy "
            f"`data.test_train_copies={copies['policy']}`.",
            "",
            _table(table[["name", "train_id", "speaker"]].head(20)),
        ]
    fallback = extra.get("fallback_pairs")
    if fallback is not None:
        lines += [
            "",
            "## Test pairs answered by the fallback",
            "",
            f"{len(fallback)} pair(s) name a test file with no usable audio: they have no score "
            "and got the balanced policy's prior label (column `fallback` of the submission "
            "scores; `data.strict_test: true` stops prepare instead).",
            "",
            _table(fallback[["row", "audio_1", "audio_2", "reason"]].head(20)),
        ]
    short = extra.get("short_clip_pairs")
    if short is not None:
        lines += [
            "",
            "## Test pairs scored with a short clip",
            "",
            f"{len(short)} pair(s) name a test clip shorter than `data.short_clip_seconds`: "
            "scored best-effort (column `short_clip` of the submission scores; the API warns "
            "about such a clip). On libri-zalo's OOF trials with one clip cut to 0.1-0.2 s, "
            "frozen CAM++'s AS-norm score at one threshold was right 54 % of the time, the "
            "constant answer 50 % (bench/RESULTS.md, 2026-12-04): better than a coin, far "
            "below a full clip.",
            "",
            _table(short[["row", "audio_1", "audio_2", "label", "short_clip"]].head(20)),
        ]
    lines += _data_notes_lines(extra.get("data_notes"))
    if extra.get("recording") is not None:
        lines += recording_markdown(*extra["recording"], _table)
    if extra.get("top_features"):
        lines += ["", "## Top stack features (gain)", "", ", ".join(extra["top_features"])]
    if diagnostics:
        from .figures import diagnostics_markdown

        figures = ["det.png", "score_histograms.png", *diagnostics["figures"]]
        lines += diagnostics_markdown(
            diagnostics["calibration"], diagnostics["eer_by_fold"], figures, _table
        )
        lines.append("")
    else:
        lines += ["", "Figures: `det.png`, `score_histograms.png`, `training_curves.png`.", ""]
    return "\n".join(lines)


def data_notes(prep_dir: Path, manifest: pd.DataFrame | None) -> dict | None:
    """What ``prepare`` left out or cut: speaker folders without usable audio (from
    ``bad_files.csv``), skipped files by reason, clips truncated at ``data.max_duration``."""
    bad_path = prep_dir / "bad_files.csv"
    bad = (
        pd.read_csv(bad_path, dtype=str, keep_default_na=False)
        if bad_path.is_file()
        else pd.DataFrame()
    )
    folders = bad[bad["path"].str.endswith("/")] if len(bad) else bad
    files = bad[~bad["path"].str.endswith("/")] if len(bad) else bad
    truncated = (
        manifest.loc[manifest["truncated"].astype(str) == "True", ["id", "duration"]]
        if manifest is not None and "truncated" in manifest
        else pd.DataFrame()
    )
    if folders.empty and files.empty and truncated.empty:
        return None
    reasons = files["reason"].str.split(":").str[0].value_counts() if len(files) else None
    return {"folders": folders, "reasons": reasons, "truncated": truncated}


def _data_notes_lines(notes: dict | None) -> list[str]:
    if notes is None:
        return []
    lines = ["", "## Input data left out or cut by prepare", ""]
    if notes["reasons"] is not None:
        counts = ", ".join(f"{reason}: {n}" for reason, n in notes["reasons"].items())
        lines += [f"Skipped files (`prep/bad_files.csv`): {counts}.", ""]
    if len(notes["folders"]):
        lines += [
            f"{len(notes['folders'])} speaker folder(s) gave no training file:",
            "",
            _table(notes["folders"][["path", "reason"]].head(20)),
            "",
        ]
    if len(notes["truncated"]):
        lines += [
            f"{len(notes['truncated'])} clip(s) are longer than `data.max_duration` and were cut "
            "to it (only their start is used; manifest column `truncated`):",
            "",
            _table(notes["truncated"].head(20)),
            "",
        ]
    return lines


def training_histories(cfg: ExperimentConfig) -> dict[str, list[pd.DataFrame]]:
    """Each reported run's ``fold{k}/history.csv`` tables (runs that trained nothing: none)."""
    histories = {}
    for run in cfg.stacked_runs:
        paths = sorted((cfg.paths.outputs / run).glob("fold*/history.csv"))
        if paths:
            histories[run] = [pd.read_csv(p) for p in paths]
    return histories


def _copies(cfg: ExperimentConfig) -> dict | None:
    """Test files that are byte copies of training files, and the policy applied to them."""
    path = cfg.paths.prep_dir / "test_train_copies.csv"
    if not path.is_file():
        return None
    copies = pd.read_csv(path, dtype=str)
    if copies.empty:
        return None
    return {"table": copies, "policy": cfg.data.test_train_copies}


def _stack_extras(stack_dir: Path) -> dict:
    extra: dict = {}
    adversarial = stack_dir / "adversarial.json"
    if adversarial.is_file():
        summary = read_json(adversarial)
        extra["adversarial_auc"] = summary["auc"]
        extra["adversarial_warn_auc"] = summary.get("warn_auc", 0.7)
        extra["shifted_features"] = summary["shifted_features"]
        extra["adversarial_top"] = summary.get("top_features", [])
    importances = stack_dir / "importances.csv"
    if importances.is_file():
        table = pd.read_csv(importances)
        top = table.groupby("feature")["importance"].sum().sort_values(ascending=False)
        extra["top_features"] = list(top.index[:10])
    return extra


def _test_rows(
    source: Source, expected: pd.DataFrame | None, fallback_rows: np.ndarray
) -> np.ndarray | None:
    """Positions in ``expected`` (the public-test rows) of ``source``'s test pairs
    (:func:`src.data.prepare.scored_rows`: all rows, or all but exactly the ``fallback_rows``).
    ``None`` without test pairs, and with a warning when they are neither (a stale or truncated
    test table: then it has no test metrics).
    """
    if source.test_pairs is None or expected is None:
        return None
    rows = scored_rows(source.test_pairs, expected, fallback_rows)
    if rows is None:
        less = (
            f" less the {len(fallback_rows)} rows of fallback_pairs.csv"
            if len(fallback_rows)
            else ""
        )
        log.warning(
            "report: %s test rows differ from public-test.csv%s; no test metrics",
            source.name,
            less,
        )
    return rows


WARNINGS_FILE = "warnings.json"  # the summary's WARNING lines, logged again when reused
REPORT_VERSION = 2  # 2: diagnostics figures; a new version redoes every report once


def report_inputs(cfg: ExperimentConfig) -> list[Path]:
    """Every file the report reads (their content decides whether it is redone)."""
    outputs = cfg.paths.outputs
    files = []
    for run in cfg.stacked_runs:
        files += [outputs / run / n for n in ("oof_scores.csv", "test_scores.csv", "metrics.json")]
        files += sorted((outputs / run).glob("fold*/history.csv"))
    if cfg.stack_dir.is_dir():
        skip = {"run.json"}  # stage times, rewritten by every stage (the report's own too)
        files += sorted(
            p
            for p in cfg.stack_dir.iterdir()
            if p.is_file() and p.name[0] != "." and p.name not in skip
        )
    prep = cfg.paths.prep_dir  # every table prepare wrote (manifest, skipped files, copies, ...)
    files += sorted(prep.glob("*.csv")) if prep.is_dir() else []
    files.append(cfg.bundle_dir / "manifest.json")  # the bundle's invariance check (recording.py)
    test_csv = cfg.paths.input / cfg.data.test_csv
    return [*files, test_csv, test_csv.parent / LABELS_FILE, cfg.submission_path]


def report_fingerprint(cfg: ExperimentConfig) -> str:
    """The report's inputs, its config and its own code (``src/report/*.py``: a report whose
    code changed is redrawn, whatever ``REPORT_VERSION`` says)."""
    settings = cfg.model_dump(mode="json", exclude={"serve", "export", "tracking"})
    code = files_fingerprint(Path(__file__).parent.glob("*.py"))
    served = cfg.export.recording_features  # which bundle stacker the report marks as served
    inputs = files_fingerprint(report_inputs(cfg))
    return fingerprint(REPORT_VERSION, settings, served, code, inputs)


def report_stage(cfg: ExperimentConfig, force: bool = False) -> None:
    """CLI entry: write ``<outputs>/report/`` (metrics, figures, breakdowns, summary)."""
    out = cfg.report_dir
    stamp = report_fingerprint(cfg)
    if not force and is_fresh(out, "report", stamp, [out / "summary.md", out / "metrics.json"]):
        log.info("report: inputs unchanged, reusing %s", out)
        for line in read_json(out / WARNINGS_FILE) if (out / WARNINGS_FILE).is_file() else []:
            log.warning("report: %s", line)  # a reused report still warns
        return
    mark_started(out, "report")
    share, policy = cfg.submit.positive_share, cfg.submit.policy
    sources = collect_sources(cfg)
    test_csv = cfg.paths.input / cfg.data.test_csv
    expected = read_test_pairs(test_csv) if test_csv.is_file() else None
    test_labels, key_problem = (
        read_test_labels(test_csv.parent / LABELS_FILE, expected)
        if expected is not None
        else (None, "")
    )
    fallback = read_fallback_pairs(cfg.paths.prep_dir)
    fallback_rows = fallback["row"].to_numpy(dtype=np.int64)
    rows = {name: _test_rows(s, expected, fallback_rows) for name, s in sources.items()}
    sources = {n: s if rows[n] is not None else Source(n, s.oof, None) for n, s in sources.items()}
    main = "stack" if "stack" in sources else next(iter(sources))
    metrics = {
        "main_source": main,
        "policy": policy,
        "positive_share": share,
        "test_labels": test_labels is not None,
        "answer_key_problem": key_problem,
        "sources": {
            name: {
                "oof": summarise(s.oof["score"].to_numpy(), s.oof["label"].to_numpy()),
                "policies": policy_accuracies(s, share, _labels_at(test_labels, rows[name])),
                **_scored_share(rows[name], expected),
                **source_calibration(s),
            }
            for name, s in sources.items()
        },
    }
    if test_labels is not None:
        metrics["submission"] = submission_accuracy(cfg.submission_path, test_labels)
    by_duration = by_gender = graph = manifest = warnings = None
    if (cfg.paths.prep_dir / "manifest.csv").is_file():
        manifest = load_manifest(cfg.paths.prep_dir)
        by_duration, by_gender = breakdowns(sources[main], manifest, policy, share)
        graph = graph_changes(cfg, manifest)
        warnings = file_warnings(manifest, cfg)
        write_csv(out / "by_duration.csv", by_duration)
        write_csv(out / "by_gender.csv", by_gender)
        write_csv(out / "file_warnings.csv", warnings)
    write_json(out / "metrics.json", metrics)
    oof = {n: (s.oof["score"].to_numpy(), s.oof["label"].to_numpy()) for n, s in sources.items()}
    plot_det(oof, out / "det.png")
    thresholds = submit_thresholds(metrics)
    collapsed = collapsed_sources(oof)
    plot_histograms(
        {n: (*oof[n], s.test) for n, s in sources.items()},
        out / "score_histograms.png",
        thresholds,
        collapsed,
    )
    histories = training_histories(cfg)
    if histories:
        plot_training_curves(histories, out / "training_curves.png")
    diagnostics = diagnostics_for(cfg, sources, main, metrics, thresholds, collapsed)
    extra = _stack_extras(cfg.stack_dir)
    extra["test_train_copies"] = _copies(cfg)
    extra["fallback_pairs"] = None if fallback.empty else fallback
    extra["short_clip_pairs"] = short_clip_pairs(cfg.submission_scores_path)
    extra["graph"] = graph
    extra["adaptation"] = adaptation_summary(cfg)
    extra["data_notes"] = data_notes(cfg.paths.prep_dir, manifest)
    extra["diagnostics"] = diagnostics
    recording = (bundle_stackers(cfg), bundle_invariance(cfg), warnings)
    extra["recording"] = None if all(part is None for part in recording) else recording
    write_text(out / "summary.md", summary_markdown(metrics, by_duration, by_gender, extra))
    log.info("report written to %s (main source %s)", out, main)
    write_json(out / WARNINGS_FILE, diagnostics["warnings"])
    mark_done(out, "report", stamp)


def source_calibration(source: Source) -> dict:
    """``{"calibration": ...}`` (:func:`src.report.figures.calibration`) for a source of
    probabilities (the stacks); ``{}`` for raw scores."""
    from .figures import calibration, is_probability

    scores = source.oof["score"].to_numpy()
    if not is_probability(source.name, scores):
        return {}
    return {"calibration": calibration(scores, source.oof["label"].to_numpy())}


def submit_thresholds(metrics: dict) -> dict[str, float]:
    """Each source's threshold under the submit policy (on test scores when it has them)."""
    policy = metrics["policy"]
    thresholds = {}
    for name, entry in metrics["sources"].items():
        chosen = entry["policies"][policy]
        thresholds[name] = chosen.get("test_threshold", chosen["oof_threshold"])
    return thresholds


def collapsed_sources(oof: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, str]:
    """Sources whose OOF scores collapsed (:func:`src.report.figures.collapse_reason`), warned."""
    from .figures import collapse_reason

    collapsed = {}
    for name, (scores, _) in oof.items():
        reason = collapse_reason(scores)
        if reason is not None:
            collapsed[name] = reason
            log.warning("report: %s", collapse_line(name, reason))
    return collapsed


def collapse_line(name: str, reason: str) -> str:
    return f"{name}: scores collapsed: {reason}"


def diagnostics_for(
    cfg: ExperimentConfig,
    sources: dict[str, Source],
    main: str,
    metrics: dict,
    thresholds: dict[str, float],
    collapsed: dict[str, str],
) -> dict:
    """Draw the diagnostic figures (``figures.py``) and gather what the summary says of them."""
    from .figures import shift_warnings, write_diagnostics

    groups = None
    if (cfg.paths.prep_dir / "manifest.csv").is_file():
        groups = with_groups(sources[main], load_manifest(cfg.paths.prep_dir))
    calibrations = {
        name: entry["calibration"]
        for name, entry in metrics["sources"].items()
        if "calibration" in entry
    }
    drawn = write_diagnostics(
        cfg.report_dir,
        {name: s.oof for name, s in sources.items()},
        main,
        groups,
        thresholds,
        calibrations,
        cfg.stack_dir / "importances.csv",
    )
    adversarial = cfg.stack_dir / "adversarial.json"
    warn_auc = read_json(adversarial).get("warn_auc", 0.7) if adversarial.is_file() else 0.7
    shifted = shift_warnings(cfg.stack_dir, warn_auc)
    for line in shifted:
        log.warning("report: %s", line)
    figures = drawn["figures"]
    if (cfg.report_dir / "training_curves.png").is_file():
        figures = ["training_curves.png", *figures]
    return {
        "warnings": [collapse_line(n, r) for n, r in collapsed.items()] + shifted,
        "collapsed": collapsed,
        "shifted": shifted,
        "calibration": calibrations,
        "eer_by_fold": drawn["eer_by_fold"],
        "figures": figures,
    }
