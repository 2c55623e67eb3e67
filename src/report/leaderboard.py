"""The leaderboard: every run under ``paths.outputs``, best OOF EER first.

``python -m src leaderboard --config configs/X.yaml`` prints one row per first-level run (its
``metrics.json`` from ``score``) and per stack (``stack*/metrics.json``): OOF EER and minDCF,
test accuracy at the key-free balanced threshold where an answer key exists, the settings it
changed relative to its config file (from ``run.json``), the date of its figures and its
training time (from each fold's ``history.csv``). It also writes ``leaderboard.csv`` there.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from src.util.io import read_json, write_csv

log = logging.getLogger(__name__)

COLUMNS = ["run", "kind", "oof_eer", "oof_min_dcf_0.01", "test_acc_balanced", "changed",
           "date", "train_min"]  # fmt: skip


def _changed(folder: Path) -> str:
    record = folder / "run.json"
    if not record.is_file():
        return ""
    changed = read_json(record).get("changed") or {}
    return ", ".join(f"{k}={v}" for k, v in changed.items())


def _date(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime, UTC).strftime("%Y-%m-%d %H:%M")


def _train_minutes(folder: Path) -> float | None:
    histories = sorted(folder.glob("fold*/history.csv"))
    if not histories:
        return None
    return round(sum(pd.read_csv(h)["seconds"].sum() for h in histories) / 60, 1)


def first_level_row(folder: Path) -> dict | None:
    """One row for a first-level run folder (``None`` when it was never scored)."""
    path = folder / "metrics.json"
    if not path.is_file():
        return None
    metrics = read_json(path)
    if "oof" not in metrics or "asnorm" not in metrics["oof"]:
        return None
    test = metrics.get("test", {}).get("asnorm", {})
    return {
        "run": folder.name,
        "kind": "first level (AS-norm)",
        "oof_eer": metrics["oof"]["asnorm"]["eer"],
        "oof_min_dcf_0.01": metrics["oof"]["asnorm"]["min_dcf_0.01"],
        "test_acc_balanced": test.get("accuracy_balanced"),
        "changed": _changed(folder),
        "date": _date(path),
        "train_min": _train_minutes(folder),
    }


def stack_row(folder: Path) -> dict | None:
    """One row for a stack folder; test accuracy from the matching report, when it has one."""
    path = folder / "metrics.json"
    if not path.is_file():
        return None
    metrics = read_json(path)
    if "stack" not in metrics:
        return None
    report = folder.with_name(folder.name.replace("stack", "report", 1)) / "metrics.json"
    test = None
    if report.is_file():
        policies = read_json(report).get("sources", {}).get("stack", {}).get("policies", {})
        test = policies.get("balanced", {}).get("test_accuracy")
    combined = "+".join(metrics.get("experiments", {}))
    return {
        "run": f"{folder.name} [{combined}]",
        "kind": "stack",
        "oof_eer": metrics["stack"]["eer"],
        "oof_min_dcf_0.01": metrics["stack"]["min_dcf_0.01"],
        "test_acc_balanced": test,
        "changed": _changed(folder),
        "date": _date(path),
        "train_min": None,
    }


def leaderboard(outputs: Path) -> pd.DataFrame:
    """Every scored run and stack under ``outputs``, sorted by OOF EER."""
    rows = []
    for folder in (
        sorted(p for p in Path(outputs).iterdir() if p.is_dir()) if outputs.is_dir() else []
    ):
        row = stack_row(folder) if folder.name.startswith("stack") else first_level_row(folder)
        if row is not None:
            rows.append(row)
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.sort_values("oof_eer", kind="mergesort", ignore_index=True)


def format_table(table: pd.DataFrame) -> str:
    """The leaderboard as a markdown table (percentages for EER and accuracy)."""

    def cell(column: str, value: object) -> str:
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return "-"
        if column in ("oof_eer", "test_acc_balanced"):
            return f"{100 * float(value):.2f} %"
        if column == "oof_min_dcf_0.01":
            return f"{float(value):.3f}"
        return str(value)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(cell(c, row[c]) for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def print_leaderboard(outputs: Path) -> pd.DataFrame:
    """Print the leaderboard of ``outputs`` and write ``outputs/leaderboard.csv``."""
    table = leaderboard(outputs)
    if table.empty:
        raise FileNotFoundError(f"no scored runs under {outputs}: run the pipeline first")
    write_csv(Path(outputs) / "leaderboard.csv", table)
    sys.stdout.write(format_table(table))
    return table
