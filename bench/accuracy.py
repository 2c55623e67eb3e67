"""Accuracy benchmark: run the whole pipeline on a Zalo-layout folder with an answer key.

Prints one table (EER and test accuracy of every first-level experiment, the stack and each
threshold policy) and the wall time of every stage, and writes them as JSON.

Usage::

    .venv/bin/python bench/accuracy.py --config configs/libri.yaml \
        --config configs/libri_resemblyzer.yaml [--data DIR] [--json bench/accuracy.json]

Every config's first level is run (prepare, folds, train, embed, score); the first config
drives stacking, submission and the report, stacking every config's experiment together (unless
``stack.experiments`` is given as an override). ``--data`` points every config at another
folder (answer key: public-test-labels.csv).
Finished stages are reused, as in run.sh; ``--force`` redoes them.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.cli import STAGES, call_stage
from src.config import ExperimentConfig, load_config
from src.util.io import read_json, write_json
from src.util.logs import setup_logging

log = logging.getLogger("bench.accuracy")
FIRST_LEVEL = ["prepare", "folds", "train", "embed", "score"]
SECOND_LEVEL = ["stack", "submit", "report"]


def stacking_configs(
    paths: list[Path], data: Path | None, overrides: list[str]
) -> list[ExperimentConfig]:
    """Each ``--config`` with ``overrides`` (``data``: every one's ``paths.input``); the first
    stacks every config's runs together unless ``stack.experiments`` is overridden."""
    extra = [f"paths.input={data}"] if data else []
    configs = [load_config(c, [*extra, *overrides]) for c in paths]
    if not any(o.startswith("stack.experiments=") for o in overrides):
        names = list(dict.fromkeys(run for c in configs for run in c.stacked_runs))
        configs[0] = configs[0].model_copy(
            update={"stack": configs[0].stack.model_copy(update={"experiments": names})}
        )
    return configs


def run_stage(stage: str, cfg: ExperimentConfig, force: bool) -> float:
    """Run one stage (every fold for per-fold stages); return its wall time in seconds."""
    started = time.perf_counter()
    call_stage(stage, cfg, force=force)
    return time.perf_counter() - started


def results_table(metrics: dict) -> list[dict]:
    """One row per score source: OOF EER, and test accuracy under each threshold policy."""
    rows = []
    for source, entry in metrics["sources"].items():
        row = {"source": source, "oof_eer": entry["oof"]["eer"]}
        for policy, result in entry.get("policies", {}).items():
            row[f"test_acc_{policy}"] = result.get("test_accuracy")
        rows.append(row)
    return rows


def format_table(rows: list[dict], timings: dict[str, float]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [_cell(row.get(c)) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| stage | wall s |", "|---|---|"]
    lines += [f"| {stage} | {seconds:.1f} |" for stage, seconds in timings.items()]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", required=True, type=Path)
    parser.add_argument("--data", type=Path, default=None, help="override paths.input")
    parser.add_argument("--json", type=Path, default=Path("bench/accuracy.json"))
    parser.add_argument("--force", action="store_true")
    parser.add_argument("overrides", nargs="*", help="key=value for every config")
    args = parser.parse_args(argv)
    setup_logging()
    configs = stacking_configs(args.config, args.data, args.overrides)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    for cfg in configs:
        for stage in FIRST_LEVEL:
            timings[f"{cfg.run_name}:{stage}"] = run_stage(stage, cfg, args.force)
    for stage in SECOND_LEVEL:
        timings[stage] = run_stage(stage, configs[0], force=True)
    timings["total"] = time.perf_counter() - started
    metrics = read_json(configs[0].report_dir / "metrics.json")
    rows = results_table(metrics)
    print(format_table(rows, timings))
    write_json(
        args.json,
        {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
            "command": " ".join(sys.argv),
            "data": str(configs[0].paths.input),
            "results": rows,
            "timings_s": timings,
        },
    )
    return 0


if __name__ == "__main__":
    assert set(FIRST_LEVEL + SECOND_LEVEL) <= set(STAGES)
    sys.exit(main())
