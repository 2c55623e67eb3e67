"""Report figures: DET curves, score histograms, training curves (matplotlib, Agg backend).

Figures are written through :func:`src.util.io.write_with`, so a crash never leaves half a PNG.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from src.inference.metrics import equal_error_rate, error_curves
from src.util.io import write_with

DET_TICKS = (0.001, 0.005, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.95, 0.99)
DET_LIMITS = (0.0005, 0.995)  # the whole range: a weak model's curve (EER 30-50 %) stays in view
MARKERS_UP_TO = 30  # curves with at most this many points get a marker on each point


def probit(rates: np.ndarray) -> np.ndarray:
    """Normal deviate of each rate, clipped to the DET axis range (the DET plot's scale)."""
    clipped = np.clip(np.asarray(rates, dtype=np.float64), *DET_LIMITS)
    return np.vectorize(NormalDist().inv_cdf)(clipped)


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend, imported on first use (a reused report, the only
    reader, never pays for it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use(): the backend must be chosen first

    return plt


def max_ticks(n: int, integer: bool = False) -> Any:
    """A tick locator with at most ``n`` ticks (whole numbers with ``integer``)."""
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(n, integer=integer)


def save(fig: Any, path: Path) -> None:
    """Write ``fig`` as a PNG atomically and close it."""
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    pyplot().close(fig)


def plot_det(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    """DET curves (false reject vs false accept on probit axes), one line per source.

    Parameters
    ----------
    curves
        ``name -> (scores, labels)`` of OOF trials.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 6))
    for name, (scores, labels) in curves.items():
        _, far, frr = error_curves(scores, labels)
        eer = equal_error_rate(scores, labels)[0]
        (line,) = ax.plot(probit(far), probit(frr), label=f"{name} (EER {100 * eer:.2f} %)")
        at = float(probit(np.array([eer]))[0])
        ax.plot([at], [at], marker="o", markersize=4, color=line.get_color())  # the EER point
    ticks = probit(np.array(DET_TICKS))
    tick_labels = [f"{100 * t:g}" for t in DET_TICKS]
    ax.set_xticks(ticks, tick_labels)
    ax.set_yticks(ticks, tick_labels)
    low, high = probit(np.array(DET_LIMITS))
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.plot([low, high], [low, high], color="grey", linewidth=0.5, linestyle=":")
    ax.set_xlabel("false accept rate (%)")
    ax.set_ylabel("false reject rate (%)")
    ax.set_title("DET curves, out-of-fold trials (dot: EER)")
    ax.grid(True, linewidth=0.3)
    ax.legend(fontsize=8, loc="best")  # the corner with the fewest curve points
    save(fig, path)


def plot_histograms(
    sources: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    path: Path,
    thresholds: dict[str, float] | None = None,
    collapsed: dict[str, str] | None = None,
) -> None:
    """Score histograms per source: OOF same vs. different speaker, and the test scores.

    Parameters
    ----------
    sources
        ``name -> (oof scores, oof labels, test scores or None)``.
    thresholds
        ``name -> the submit policy's threshold`` (a dashed vertical line).
    collapsed
        ``name -> why its scores collapsed`` (see :func:`src.report.figures.collapse_reason`):
        the panel's title says so in red.
    """
    thresholds, collapsed = thresholds or {}, collapsed or {}
    n = len(sources)
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    fig, axes = pyplot().subplots(rows, cols, figsize=(4.5 * cols, 3.4 * rows), squeeze=False)
    for ax, (name, (scores, labels, test)) in zip(axes.ravel(), sources.items(), strict=False):
        low, high = float(np.min(scores)), float(np.max(scores))
        bins = np.linspace(low, high if high > low else low + 1e-6, 60)
        ax.hist(scores[labels == 1], bins, density=True, alpha=0.5, label="OOF same speaker")
        ax.hist(scores[labels == 0], bins, density=True, alpha=0.5, label="OOF different")
        if test is not None:
            ax.hist(test, bins, density=True, histtype="step", color="black", label="test")
        if name in thresholds:
            ax.axvline(
                thresholds[name], color="red", linestyle="--", linewidth=1, label="threshold"
            )
        ax.xaxis.set_major_locator(max_ticks(5))
        ax.ticklabel_format(axis="x", useOffset=False)
        ax.set_xlabel("score")
        ax.set_ylabel("density")
        if name in collapsed:
            why = textwrap.fill(f"COLLAPSED: {collapsed[name]}", 64)
            ax.set_title(f"{name}\n{why}", fontsize=8, color="red")
        else:
            ax.set_title(name, fontsize=9)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    handles, names = axes[0, 0].get_legend_handles_labels()
    if thresholds and "threshold" not in names:  # the first panel may have no threshold line
        handles.append(pyplot().Line2D([0], [0], color="red", linestyle="--", linewidth=1))
        names.append("threshold")
    # one legend above the panels, off every histogram
    fig.legend(handles, names, fontsize=8, loc="lower center", ncol=4, bbox_to_anchor=(0.5, 1.0))
    save(fig, path)


def plot_training_curves(histories: dict[str, list], path: Path) -> None:
    """Loss, and validation EER (or training accuracy without validation), per epoch and fold.

    Short runs stay readable: each point gets a marker up to :data:`MARKERS_UP_TO` epochs (a
    1-epoch run is one dot per fold), and the epoch axis has whole-number ticks.

    Parameters
    ----------
    histories
        ``run -> [history table of fold 0, fold 1, ...]`` (``history.csv`` of the train stage).
    """
    runs = list(histories)
    fig, axes = pyplot().subplots(2, len(runs), figsize=(5 * len(runs), 6), squeeze=False)
    for column, run in enumerate(runs):
        validated = any(h["val_eer"].notna().any() for h in histories[run])
        longest = max(len(h) for h in histories[run])
        marker = "o" if longest <= MARKERS_UP_TO else None
        for fold, history in enumerate(histories[run]):
            axes[0, column].plot(
                history["epoch"], history["loss"], marker=marker, label=f"fold {fold}"
            )
            lower = 100 * (history["val_eer"] if validated else history["accuracy"])
            axes[1, column].plot(history["epoch"], lower, marker=marker, label=f"fold {fold}")
        axes[0, column].set_title(f"{run}: training loss")
        axes[0, column].set_ylabel("loss")
        axes[1, column].set_title(
            f"{run}: validation EER, held-out speakers"
            if validated
            else f"{run}: training accuracy, no validation"
        )
        axes[1, column].set_ylabel("EER (%)" if validated else "accuracy (%)")
        axes[1, column].set_xlabel("epoch")
        for ax in axes[:, column]:
            if longest <= 10:  # every epoch a tick (a 1-epoch run: one tick, centred)
                ax.set_xticks(range(1, longest + 1))
                ax.set_xlim(0.5, longest + 0.5)
            else:
                ax.xaxis.set_major_locator(max_ticks(8, integer=True))
            ax.grid(True, linewidth=0.3)
            ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    save(fig, path)
