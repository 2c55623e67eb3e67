"""Report figures: DET curves and score histograms, drawn with matplotlib's Agg backend.

Figures are written through :func:`src.util.io.write_with`, so a crash never leaves half a PNG.
"""

from __future__ import annotations

from pathlib import Path
from statistics import NormalDist

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use(): the backend must be chosen first
import numpy as np

from src.inference.metrics import equal_error_rate, error_curves
from src.util.io import write_with

DET_TICKS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4)
DET_LIMITS = (0.0005, 0.5)


def probit(rates: np.ndarray) -> np.ndarray:
    """Normal deviate of each rate, clipped to the DET axis range (the DET plot's scale)."""
    clipped = np.clip(np.asarray(rates, dtype=np.float64), *DET_LIMITS)
    return np.vectorize(NormalDist().inv_cdf)(clipped)


def _save(fig: plt.Figure, path: Path) -> None:
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def plot_det(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    """DET curves (false reject vs false accept on probit axes), one line per source.

    Parameters
    ----------
    curves
        ``name -> (scores, labels)`` of OOF trials.
    """
    fig, ax = plt.subplots(figsize=(6, 6))
    for name, (scores, labels) in curves.items():
        _, far, frr = error_curves(scores, labels)
        eer = equal_error_rate(scores, labels)[0]
        ax.plot(probit(far), probit(frr), label=f"{name} (EER {100 * eer:.2f} %)")
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
    ax.set_title("DET curves, out-of-fold trials")
    ax.grid(True, linewidth=0.3)
    ax.legend(fontsize=8, loc="upper right")
    _save(fig, path)


def plot_histograms(
    sources: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]], path: Path
) -> None:
    """Score histograms per source: OOF same vs. different speaker, and the test scores.

    Parameters
    ----------
    sources
        ``name -> (oof scores, oof labels, test scores or None)``.
    """
    n = len(sources)
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, (name, (scores, labels, test)) in zip(axes.ravel(), sources.items(), strict=False):
        bins = np.linspace(np.min(scores), np.max(scores), 60)
        ax.hist(scores[labels == 1], bins, density=True, alpha=0.5, label="OOF same")
        ax.hist(scores[labels == 0], bins, density=True, alpha=0.5, label="OOF different")
        if test is not None:
            ax.hist(test, bins, density=True, histtype="step", color="black", label="test")
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    _save(fig, path)


def plot_training_curves(histories: dict[str, list], path: Path) -> None:
    """Loss, and validation EER (or training accuracy without validation), per epoch and fold.

    Parameters
    ----------
    histories
        ``run -> [history table of fold 0, fold 1, ...]`` (``history.csv`` of the train stage).
    """
    runs = list(histories)
    fig, axes = plt.subplots(2, len(runs), figsize=(5 * len(runs), 6), squeeze=False)
    for column, run in enumerate(runs):
        validated = any(h["val_eer"].notna().any() for h in histories[run])
        for fold, history in enumerate(histories[run]):
            axes[0, column].plot(history["epoch"], history["loss"], label=f"fold {fold}")
            lower = 100 * (history["val_eer"] if validated else history["accuracy"])
            axes[1, column].plot(history["epoch"], lower, label=f"fold {fold}")
        axes[0, column].set_title(f"{run}: training loss")
        axes[1, column].set_title(
            f"{run}: validation EER (%), held-out speakers"
            if validated
            else f"{run}: training accuracy (%), no validation"
        )
        axes[1, column].set_xlabel("epoch")
        for ax in axes[:, column]:
            ax.grid(True, linewidth=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
