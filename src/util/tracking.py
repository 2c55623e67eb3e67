"""Optional offline experiment log through tensorboard (``tracking: tensorboard``).

The event files are written by ``torch.utils.tensorboard.SummaryWriter`` (the logger WeSpeaker
and 3D-Speaker use), so no file format is written by hand and nothing goes over the network.
Each run becomes a folder ``<outputs>/tensorboard/<run name>`` holding each fold's training
curves as stepped scalars (``fold0/loss`` per epoch ...), its OOF (and test) figures as scalars
at step 0 (``oof/asnorm/eer`` ...), a stack's report figures as images (``figures/det`` ...)
and, in ``hparams/``, its settings with those figures for tensorboard's HPARAMS tab. A run is
rewritten as a whole each time one of its stages finishes, so reruns never duplicate it.
View with ``tensorboard --logdir outputs/tensorboard``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any


def _safe_name(name: str) -> str:
    """A run name as one folder name: path separators and odd characters become ``_``."""
    return "".join(c if c.isalnum() or c in "_-. ()=," else "_" for c in name).strip(". ") or "_"


def _hparam_value(value: Any) -> bool | int | float | str:
    """Tensorboard's hparams take bool, int, float or str; anything else is shown as text."""
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)


def log_run(
    root: Path,
    experiment: str,
    name: str,
    params: dict[str, Any],
    metrics: dict[str, list[tuple[int, float]]],
    figures: list[Path] | tuple[Path, ...] = (),
) -> Path:
    """Write (or rewrite) one run's tensorboard event files; returns its folder.

    Parameters
    ----------
    root
        The tensorboard log folder (``<outputs>/tensorboard``); one sub-folder per run.
    experiment
        Name of the experiment (the outputs folder), logged as the ``experiment`` text.
    name
        The run's name; its folder is this name with odd characters replaced by ``_``.
    params
        Flat ``key -> value`` settings, logged as hyper-parameters (values that are not bool,
        int, float or str are logged as their text).
    metrics
        ``key -> [(step, value), ...]``; a key with one point at step 0 is a final figure and
        is also shown beside the hyper-parameters.
    figures
        PNG figures (the report's OOF DET curve, score histograms, training curves), each
        logged as the image ``figures/<file stem>``.
    """
    from matplotlib.image import imread
    from torch.utils.tensorboard import SummaryWriter

    folder = root / _safe_name(name)
    shutil.rmtree(folder, ignore_errors=True)
    with SummaryWriter(log_dir=str(folder)) as writer:
        writer.add_text("experiment", experiment)
        writer.add_text("run", name)
        for key, points in metrics.items():
            for step, value in points:
                writer.add_scalar(key, float(value), int(step))
        for figure in figures:
            image = imread(figure)  # (height, width, channels) floats in [0, 1]
            writer.add_image(f"figures/{figure.stem}", image[..., :3], dataformats="HWC")
        finals = {
            f"hparam/{key}": float(points[0][1])
            for key, points in metrics.items()
            if len(points) == 1 and points[0][0] == 0
        }
        writer.add_hparams(
            {key: _hparam_value(value) for key, value in params.items()},
            finals,
            run_name="hparams",
        )
    return folder


def folder_metrics(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Metrics of a run folder: training curves per fold and the OOF/test figures it has."""
    import pandas as pd

    from src.util.io import read_json

    metrics: dict[str, list[tuple[int, float]]] = {}
    for history_path in sorted(folder.glob("fold*/history.csv")):
        history = pd.read_csv(history_path)
        fold = history_path.parent.name
        for column in ("loss", "accuracy", "val_eer", "lr"):
            if column in history:
                points = [
                    (int(e), float(v))
                    for e, v in zip(history["epoch"], history[column], strict=True)
                    if pd.notna(v)
                ]
                if points:
                    metrics[f"{fold}/{column}"] = points
    summary = folder / "metrics.json"
    if summary.is_file():
        figures = read_json(summary)
        for section in ("oof", "test"):
            for score, values in (figures.get(section) or {}).items():
                if isinstance(values, dict):
                    for key in ("eer", "min_dcf_0.01", "accuracy_balanced"):
                        if isinstance(values.get(key), int | float):
                            metrics[f"{section}/{score}/{key}"] = [(0, values[key])]
        if isinstance(figures.get("stack"), dict):
            for key in ("eer", "min_dcf_0.01"):
                metrics[f"oof/stack/{key}"] = [(0, figures["stack"][key])]
    return metrics
