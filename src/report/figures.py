"""The report's diagnostic figures and checks beyond DET curves and histograms.

Written by :func:`write_diagnostics` into the report folder:

- ``calibration.png``: reliability curve of each probability source (the stack, the served
  bundle's stacker) on OOF trials, with its expected calibration error (ECE: the trial-weighted
  mean gap between predicted probability and observed same-speaker share over 10 equal-width
  bins, Naeini et al. 2015, "Obtaining well calibrated probabilities using Bayesian binning")
  and Brier score; the numbers are also in ``metrics.json`` (``sources.<name>.calibration``);
- ``scores_by_group.png``: the main source's OOF score distributions, same vs different speaker,
  per shorter-clip duration bin and per gender pairing, with the submit threshold;
- ``accuracy_threshold.png``: OOF accuracy, false-accept and false-reject rates of the main
  source against the threshold, with the submit policy's threshold;
- ``stack_importance.png``: the stacker's feature importance (mean share of LightGBM gain and
  logistic |coefficient| over folds, ``importances.csv``), top :data:`TOP_FEATURES`;
- ``eer_by_fold.png`` and ``eer_by_fold.csv``: each source's EER on each fold's trials.

:func:`collapse_reason` flags a source whose scores barely differ across trials (embeddings
collapsed to one direction, e.g. every cosine in 0.998-1.0): the report's summary opens with a
warning and the log warns. :func:`shift_warnings` turns a trial-graph feature group whose
adversarial AUC exceeds the stack's warning AUC into a warning, as metadata shift is.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from src.inference.metrics import equal_error_rate, error_curves
from src.util.io import write_csv

from .plots import max_ticks, pyplot, save

log = logging.getLogger(__name__)

CALIBRATION_BINS = 10
TOP_FEATURES = 20
BOUNDED_SPREAD = 0.02  # scores in [-1, 1] (cosine, probability): 98 % of them within this width
RELATIVE_SPREAD = 1e-3  # other scores: 98 % within this share of their typical size
FIGURES = (
    "det.png",
    "score_histograms.png",
    "training_curves.png",
    "calibration.png",
    "scores_by_group.png",
    "accuracy_threshold.png",
    "stack_importance.png",
    "eer_by_fold.png",
)


def is_probability(name: str, scores: np.ndarray) -> bool:
    """Whether source ``name`` gives probabilities: a stack's (``stack``, ``stack/...``) whose
    scores all lie in [0, 1]; first-level cosines are not probabilities even when in [0, 1]."""
    stacked = name == "stack" or name.startswith("stack/")
    return stacked and len(scores) > 0 and float(np.min(scores)) >= 0 and float(np.max(scores)) <= 1


def collapse_reason(scores: np.ndarray) -> str | None:
    """Why ``scores`` look collapsed, or ``None``: 98 % of them (1st to 99th percentile) fall in
    a band narrower than :data:`BOUNDED_SPREAD` for scores in [-1, 1] (cosines, probabilities),
    else narrower than :data:`RELATIVE_SPREAD` times their median magnitude (at least 1)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size < 2:
        return None
    low, high = np.quantile(scores, [0.01, 0.99])
    bounded = float(np.min(scores)) >= -1.0 and float(np.max(scores)) <= 1.0
    limit = BOUNDED_SPREAD if bounded else RELATIVE_SPREAD * max(1.0, abs(float(np.median(scores))))
    if high - low >= limit:
        return None
    return (
        f"98 % of OOF scores lie in {low:.4g} to {high:.4g} (width {high - low:.2g} < "
        f"{limit:.2g}): every pair looks alike, the embeddings have collapsed"
    )


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    """Reliability of probabilities ``probs`` (n,) against 0/1 ``labels`` (n,).

    Returns ``{"ece", "brier", "bins": [{"low", "high", "n", "mean_probability",
    "same_share"}, ...]}``; empty bins are left out. ECE weights each bin's gap by its trials.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(probs, edges[1:-1], right=False), 0, bins - 1)
    table, gap = [], 0.0
    for b in range(bins):
        chosen = which == b
        n = int(chosen.sum())
        if n == 0:
            continue
        mean_prob, share = float(probs[chosen].mean()), float(labels[chosen].mean())
        gap += n * abs(mean_prob - share)
        table.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "n": n,
                "mean_probability": mean_prob,
                "same_share": share,
            }
        )
    return {
        "ece": gap / max(len(probs), 1),
        "brier": float(np.mean((probs - labels) ** 2)),
        "bins": table,
    }


def plot_calibration(curves: dict[str, dict], path: Path) -> None:
    """Reliability diagram (observed same-speaker share against mean predicted probability per
    bin, the diagonal is perfect calibration) and the trials per bin below it."""
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(6, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfectly calibrated")
    width = 1.0 / CALIBRATION_BINS / (len(curves) + 1)
    for i, (name, result) in enumerate(curves.items()):
        table = pd.DataFrame(result["bins"])
        (line,) = top.plot(
            table["mean_probability"],
            table["same_share"],
            marker="o",
            label=f"{name} (ECE {100 * result['ece']:.1f} %, Brier {result['brier']:.3f})",
        )
        bottom.bar(table["low"] + (i + 0.5) * width, table["n"], width, color=line.get_color())
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("observed same-speaker share")
    top.set_title("Calibration, out-of-fold trials")
    top.grid(True, linewidth=0.3)
    top.legend(fontsize=8, loc="upper left")
    bottom.set_xlabel("predicted probability (bins of 0.1)")
    bottom.set_ylabel("trials")
    bottom.grid(True, linewidth=0.3)
    fig.tight_layout()
    save(fig, path)


def plot_scores_by_group(frame: pd.DataFrame, threshold: float | None, name: str, path: Path):
    """Box plots of OOF scores, same vs different speaker, per ``shorter_clip`` bin and per
    ``gender_pair`` (columns of ``frame``, with ``score`` and ``label``); trial counts under
    each group."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    for ax, group, title in (
        (axes[0], "shorter_clip", "by the shorter clip's duration"),
        (axes[1], "gender_pair", "by gender pairing"),
    ):
        keys = [k for k in pd.unique(frame[group].dropna()) if (frame[group] == k).any()]
        if group == "shorter_clip" and hasattr(frame[group], "cat"):
            keys = [k for k in frame[group].cat.categories if (frame[group] == k).any()]
        else:
            keys = sorted(map(str, keys))
        names = []
        for i, key in enumerate(keys):
            part = frame[frame[group].astype(str) == str(key)]
            for offset, label, colour in ((-0.2, 1, "C0"), (0.2, 0, "C1")):
                values = part.loc[part["label"] == label, "score"].to_numpy()
                if len(values):
                    box = ax.boxplot(
                        values, positions=[i + offset], widths=0.35, patch_artist=True,
                        showfliers=False, manage_ticks=False,
                    )  # fmt: skip
                    box["boxes"][0].set_facecolor(colour)
                    box["boxes"][0].set_alpha(0.6)
            names.append(f"{key}\n{len(part)} trials")
        ax.set_xticks(range(len(keys)), names, fontsize=8)
        if threshold is not None:
            ax.axhline(threshold, color="red", linestyle="--", linewidth=1)
        ax.set_title(f"{name}: {title}", fontsize=9)
        ax.set_ylabel("score")
        ax.grid(True, axis="y", linewidth=0.3)
    handles = [
        plt.Rectangle((0, 0), 1, 1, color="C0", alpha=0.6),
        plt.Rectangle((0, 0), 1, 1, color="C1", alpha=0.6),
        plt.Line2D([0], [0], color="red", linestyle="--"),
    ]
    fig.legend(
        handles, ["same speaker", "different speaker", "submit threshold"], fontsize=8,
        loc="upper center", ncol=3, bbox_to_anchor=(0.5, 1.06),
    )  # fmt: skip
    fig.tight_layout()
    save(fig, path)


def plot_accuracy_threshold(
    scores: np.ndarray, labels: np.ndarray, threshold: float | None, name: str, path: Path
) -> None:
    """OOF accuracy, false-accept and false-reject rates against the threshold."""
    thresholds, far, frr = error_curves(scores, labels)
    finite = np.isfinite(thresholds)
    thresholds, far, frr = thresholds[finite], far[finite], frr[finite]
    share = float(np.mean(labels))
    accuracy = 1.0 - (share * frr + (1.0 - share) * far)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    marker = "o" if len(thresholds) <= 30 else None
    ax.plot(thresholds, 100 * accuracy, marker=marker, label="accuracy", color="black")
    ax.plot(thresholds, 100 * far, marker=marker, label="false accept rate", color="C1")
    ax.plot(thresholds, 100 * frr, marker=marker, label="false reject rate", color="C0")
    best = int(np.argmax(accuracy))
    ax.plot([thresholds[best]], [100 * accuracy[best]], "k*", markersize=10,
            label=f"best OOF accuracy {100 * accuracy[best]:.1f} %")  # fmt: skip
    if threshold is not None:
        ax.axvline(threshold, color="red", linestyle="--", linewidth=1, label="submit threshold")
    ax.xaxis.set_major_locator(max_ticks(8))
    ax.ticklabel_format(axis="x", useOffset=False)
    ax.set_xlabel("threshold (same speaker at or above)")
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.set_title(f"{name}: accuracy against threshold, out-of-fold trials", fontsize=10)
    ax.grid(True, linewidth=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the curves
    fig.tight_layout()
    save(fig, path)


def plot_importance(importances: pd.DataFrame, path: Path) -> None:
    """Horizontal bars of the top features (``feature``, ``importance``, ``importance_std``)."""
    table = (
        importances.groupby("feature")
        .agg(importance=("importance", "sum"), spread=("importance_std", "max"))
        .sort_values("importance", ascending=False)
        .head(TOP_FEATURES)
        .iloc[::-1]
    )
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 0.28 * len(table) + 1.2))
    ax.barh(range(len(table)), table["importance"], xerr=table["spread"], color="C2", alpha=0.8)
    ax.set_yticks(range(len(table)), [short_feature(f) for f in table.index], fontsize=7)
    ax.set_xlabel("importance (mean share of gain / |coefficient| over folds; bar: fold spread)")
    ax.set_title(f"Stacker: top {len(table)} features", fontsize=10)
    ax.grid(True, axis="x", linewidth=0.3)
    fig.tight_layout()
    save(fig, path)


def short_feature(name: str) -> str:
    """A feature name without its run prefix (``run__asnorm`` -> ``asnorm``) when long."""
    return name.split("__", 1)[1] if "__" in name and len(name) > 40 else name


def eer_by_fold(oofs: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """``source, fold, n, eer`` for every source's OOF trials (``fold``, ``label``, ``score``);
    a fold with one class only has no EER (NaN)."""
    rows = []
    for name, oof in oofs.items():
        for fold, part in oof.groupby("fold", sort=True):
            both = part["label"].nunique() == 2
            eer = equal_error_rate(part["score"], part["label"])[0] if both else np.nan
            rows.append({"source": name, "fold": int(fold), "n": len(part), "eer": eer})
    return pd.DataFrame(rows, columns=["source", "fold", "n", "eer"])


def plot_eer_by_fold(table: pd.DataFrame, path: Path) -> None:
    """Each source's EER per fold (markers joined by a line), the pooled spread at a glance."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, part in table.groupby("source", sort=False):
        ax.plot(part["fold"], 100 * part["eer"], marker="o", label=name)
    ax.xaxis.set_major_locator(max_ticks(10, integer=True))
    ax.set_xlabel("fold")
    ax.set_ylabel("EER (%)")
    ax.set_ylim(bottom=0)
    ax.set_title("EER per fold, out-of-fold trials", fontsize=10)
    ax.grid(True, linewidth=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    save(fig, path)


def shift_warnings(stack_dir: Path, warn_auc: float) -> list[str]:
    """Trial-graph feature groups whose adversarial AUC (OOF trials vs test pairs, from the
    stack's ``metrics.json``) is above ``warn_auc``: the test sees those features differently."""
    path = stack_dir / "metrics.json"
    if not path.is_file():
        return []
    import json

    aucs = json.loads(path.read_text(encoding="utf-8")).get("graph_adversarial_auc") or {}
    return [
        f"trial-graph feature group {group!r} tells OOF trials from test pairs with adversarial "
        f"AUC {auc:.3f} (> {warn_auc:.2f}): its features differ on the test"
        for group, auc in aucs.items()
        if auc is not None and auc > warn_auc
    ]


def write_diagnostics(
    out: Path,
    oofs: dict[str, pd.DataFrame],
    main: str,
    groups: pd.DataFrame | None,
    thresholds: dict[str, float],
    calibrations: dict[str, dict],
    importances: Path,
) -> dict[str, Any]:
    """Draw the figures listed in the module docstring into ``out``.

    Parameters
    ----------
    oofs
        ``source -> OOF trials`` (``fold``, ``label``, ``score``).
    main
        The source the group and threshold figures show (the stack when it exists).
    groups
        The main source's OOF trials with ``shorter_clip`` and ``gender_pair`` (no manifest:
        ``None``, no group figure).
    thresholds
        ``source -> the submit policy's threshold``.
    calibrations
        ``source -> calibration(...)`` for the probability sources.
    importances
        The stack's ``importances.csv`` (absent: no importance figure).

    Returns ``{"figures": [written file names], "eer_by_fold": table}``.
    """
    written = []
    if calibrations:
        plot_calibration(calibrations, out / "calibration.png")
        written.append("calibration.png")
    if groups is not None:
        plot_scores_by_group(groups, thresholds.get(main), main, out / "scores_by_group.png")
        written.append("scores_by_group.png")
    main_oof = oofs[main]
    plot_accuracy_threshold(
        main_oof["score"].to_numpy(),
        main_oof["label"].to_numpy(),
        thresholds.get(main),
        main,
        out / "accuracy_threshold.png",
    )
    written.append("accuracy_threshold.png")
    if importances.is_file():
        table = pd.read_csv(importances)
        if len(table):
            plot_importance(table, out / "stack_importance.png")
            written.append("stack_importance.png")
    folds = eer_by_fold(oofs)
    write_csv(out / "eer_by_fold.csv", folds)
    plot_eer_by_fold(folds, out / "eer_by_fold.png")
    written.append("eer_by_fold.png")
    return {"figures": written, "eer_by_fold": folds}


def warnings_markdown(collapsed: dict[str, str], shifted: list[str]) -> list[str]:
    """The loud block at the top of ``summary.md`` (nothing when all is well)."""
    if not collapsed and not shifted:
        return []
    lines = ["", "## WARNING", ""]
    lines += [f"- **{name}: scores collapsed.** {why}." for name, why in collapsed.items()]
    lines += [f"- **Test shift.** {line}." for line in shifted]
    return lines


def diagnostics_markdown(
    calibrations: dict[str, dict], folds: pd.DataFrame, figures: list[str], table: Any
) -> list[str]:
    """Calibration errors and EER per fold for ``summary.md`` (``table``: a frame -> markdown)."""
    lines: list[str] = []
    if calibrations:
        lines += ["", "## Calibration (OOF)", ""]
        lines += [
            f"- {name}: expected calibration error {100 * c['ece']:.1f} %, Brier score "
            f"{c['brier']:.3f} (`calibration.png`)."
            for name, c in calibrations.items()
        ]
    if len(folds):
        wide = folds.pivot(index="source", columns="fold", values="eer")
        wide = wide.map(lambda v: "n/a" if not np.isfinite(v) else f"{100 * v:.1f} %")
        wide.columns = [f"fold {k}" for k in wide.columns]
        lines += ["", "## EER per fold (OOF)", "", table(wide.reset_index())]
    lines += ["", "More figures: " + ", ".join(f"`{f}`" for f in figures) + "."]
    return lines
