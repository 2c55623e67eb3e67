"""The leaderboard: every run, best OOF EER first among runs of the same fold split.

``python -m src leaderboard`` looks under the outputs folder of every config in ``configs/``
(``outputs/``, ``outputs/libri/``, ...; it logs where it looked); ``--config configs/X.yaml``
under that config's ``paths.outputs`` only. One row per first-level run (its ``metrics.json``
from ``score``) and per stack (``stack*/metrics.json``): OOF EER and minDCF, test accuracy at
the key-free balanced threshold where an answer key exists, the fold split (``folds``:
``<K>fold-<hash>`` of the folds settings and seed, from the run's ``config.yaml``), the settings
it changed relative to its config file (from ``run.json``), the date of its figures and its
training time (from each fold's ``history.csv``).

OOF figures of different fold splits come from different trials, so they are not comparable:
each split is its own table, ranked within itself (``rank``). ``leaderboard.csv`` is written
into the (first) outputs folder looked at.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import yaml

from src.util.io import read_json, write_csv
from src.util.logs import plural

log = logging.getLogger(__name__)

COLUMNS = ["rank", "run", "kind", "folds", "oof_eer", "oof_min_dcf_0.01", "test_acc_balanced",
           "changed", "date", "train_min", "outputs"]  # fmt: skip
SHOWN = [c for c in COLUMNS if c not in ("folds", "outputs")]  # folds: one table per split
UNKNOWN_FOLDS = "unknown split"


def fold_split(folder: Path) -> str:
    """The fold split a run's OOF figures come from (``5fold-1a2b3c4d``, as ``folds_dir``
    names it), from its ``config.yaml``; :data:`UNKNOWN_FOLDS` without one."""
    from src.config import ConfigError, config_from_dict

    path = folder / "config.yaml"
    if not path.is_file():
        return UNKNOWN_FOLDS
    try:
        return config_from_dict(yaml.safe_load(path.read_text(encoding="utf-8"))).folds_dir.name
    except (ConfigError, ValueError, yaml.YAMLError):
        return UNKNOWN_FOLDS


def config_outputs(configs: Path) -> list[Path]:
    """The distinct ``paths.outputs`` of every config in ``configs`` (one that does not load is
    skipped), the repo's default ``outputs`` first."""
    from src.config import ConfigError, load_config

    found: list[Path] = []
    for path in sorted(Path(configs).glob("*.yaml")):
        try:
            outputs = load_config(path).paths.outputs
        except (ConfigError, ValueError, OSError):
            continue
        if outputs not in found:
            found.append(outputs)
    return sorted(found, key=lambda p: (p != Path("outputs"), str(p)))


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
        "folds": fold_split(folder),
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
        "folds": fold_split(folder),
        "oof_eer": metrics["stack"]["eer"],
        "oof_min_dcf_0.01": metrics["stack"]["min_dcf_0.01"],
        "test_acc_balanced": test,
        "changed": _changed(folder),
        "date": _date(path),
        "train_min": None,
    }


def leaderboard(outputs: Path | Iterable[Path]) -> pd.DataFrame:
    """Every scored run and stack under ``outputs`` (one folder or several), grouped by fold
    split (the most runs first) and sorted by OOF EER within it; ``rank`` counts within it."""
    roots = [Path(outputs)] if isinstance(outputs, str | Path) else [Path(p) for p in outputs]
    rows = []
    for root in roots:
        for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
            stack = folder.name.startswith("stack")
            row = stack_row(folder) if stack else first_level_row(folder)
            if row is not None:
                rows.append(row | {"outputs": str(root)})
    table = pd.DataFrame(rows, columns=COLUMNS)
    if table.empty:
        return table
    size = table.groupby("folds")["run"].transform("size")
    table = table.assign(_size=-size).sort_values(
        ["_size", "folds", "oof_eer"], kind="mergesort", ignore_index=True
    )
    table["rank"] = table.groupby("folds").cumcount() + 1
    return table.drop(columns="_size")


def format_table(table: pd.DataFrame) -> str:
    """The leaderboard as markdown: one table per fold split, each under a heading that says
    where its runs are (percentages for EER and accuracy)."""

    def cell(column: str, value: object) -> str:
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return "-"
        if column in ("oof_eer", "test_acc_balanced"):
            return f"{100 * float(value):.2f} %"
        if column == "oof_min_dcf_0.01":
            return f"{float(value):.3f}"
        return str(value)

    splits = list(dict.fromkeys(table["folds"]))
    lines: list[str] = []
    for split in splits:
        part = table[table["folds"] == split]
        where = ", ".join(sorted(set(part["outputs"])))
        note = (
            " (not comparable with the other splits: other OOF trials)" if len(splits) > 1 else ""
        )
        lines += [f"## {split}: {plural(len(part), 'run')} under {where}{note}", ""]
        lines += ["| " + " | ".join(SHOWN) + " |", "|" + "---|" * len(SHOWN)]
        for _, row in part.iterrows():
            lines.append("| " + " | ".join(cell(c, row[c]) for c in SHOWN) + " |")
        lines.append("")
    return "\n".join(lines)


def print_leaderboard(outputs: Path | list[Path]) -> pd.DataFrame:
    """Print the leaderboard of ``outputs`` (one folder or several) and write
    ``leaderboard.csv`` into the first; logs where it looked."""
    roots = [Path(outputs)] if isinstance(outputs, str | Path) else [Path(p) for p in outputs]
    looked = ", ".join(f"{r}/" for r in roots)
    table = leaderboard(roots)
    if table.empty:
        raise FileNotFoundError(f"no scored runs under {looked}: run the pipeline first")
    log.info("leaderboard: %d rows from %s", len(table), looked)
    write_csv(roots[0] / "leaderboard.csv", table)
    sys.stdout.write(format_table(table))
    return table
