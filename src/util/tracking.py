"""Optional offline experiment log in MLflow's file-store layout (``tracking: mlflow``).

No MLflow package is needed to write it, and nothing goes over the network: each run becomes a
folder under ``<outputs>/mlruns`` that ``mlflow ui --backend-store-uri <outputs>/mlruns`` (or
``mlflow.search_runs``) reads: its settings as params, each fold's training curves as stepped
metrics, its OOF (and test) figures as metrics. A run is rewritten as a whole each time one of
its stages finishes, under an id derived from its name, so reruns never duplicate it.

Layout (MLflow FileStore)::

    mlruns/<experiment id>/meta.yaml
    mlruns/<experiment id>/<run id>/meta.yaml
    mlruns/<experiment id>/<run id>/params/<key>          value
    mlruns/<experiment id>/<run id>/metrics/<key>         "<ms> <value> <step>" per line
    mlruns/<experiment id>/<run id>/tags/mlflow.runName   run name
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from src.util.io import write_text

EXPERIMENT_ID = "1"  # one MLflow experiment per outputs folder ("0" is MLflow's Default)
FINISHED = 3  # RunStatus.FINISHED


def _safe_key(key: str) -> str:
    """MLflow keys allow letters, digits, ``_ - . /`` and spaces; anything else becomes ``_``."""
    return "".join(c if c.isalnum() or c in "_-. " else "_" for c in key)


def run_id(name: str) -> str:
    """A stable 32-hex id for a run name."""
    return hashlib.md5(name.encode()).hexdigest()  # an id, not a secret


def log_run(
    root: Path,
    experiment: str,
    name: str,
    params: dict[str, Any],
    metrics: dict[str, list[tuple[int, float]]],
) -> Path:
    """Write (or rewrite) one run; returns its folder.

    Parameters
    ----------
    root
        The ``mlruns`` folder.
    experiment
        Name of the MLflow experiment that holds the run.
    name
        The run's name (its id is derived from it).
    params
        Flat ``key -> value``.
    metrics
        ``key -> [(step, value), ...]``.
    """
    now = int(time.time() * 1000)
    experiment_dir = root / EXPERIMENT_ID
    if not (experiment_dir / "meta.yaml").is_file():
        write_text(
            experiment_dir / "meta.yaml",
            yaml.safe_dump(
                {
                    "artifact_location": experiment_dir.resolve().as_uri(),
                    "creation_time": now,
                    "experiment_id": EXPERIMENT_ID,
                    "last_update_time": now,
                    "lifecycle_stage": "active",
                    "name": experiment,
                }
            ),
        )
    identifier = run_id(name)
    folder = experiment_dir / identifier
    shutil.rmtree(folder, ignore_errors=True)
    meta = {
        "artifact_uri": (folder / "artifacts").resolve().as_uri(),
        "end_time": now,
        "entry_point_name": "",
        "experiment_id": EXPERIMENT_ID,
        "lifecycle_stage": "active",
        "run_id": identifier,
        "run_name": name,
        "run_uuid": identifier,
        "source_name": "",
        "source_type": 4,
        "source_version": "",
        "start_time": now,
        "status": FINISHED,
        "tags": [],
        "user_id": "pipeline",
    }
    write_text(folder / "meta.yaml", yaml.safe_dump(meta))
    (folder / "artifacts").mkdir(parents=True, exist_ok=True)
    write_text(folder / "tags" / "mlflow.runName", name)
    for key, value in params.items():
        write_text(folder / "params" / _safe_key(key), str(value)[:6000])
    for key, points in metrics.items():
        lines = "".join(f"{now} {float(value)!r} {int(step)}\n" for step, value in points)
        write_text(folder / "metrics" / _safe_key(key), lines)
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
