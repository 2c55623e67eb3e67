"""Every stage at the Zalo 2020 data's size (and at fractions of it): wall time and peak memory.

For each ``--sizes`` fraction ``f`` it generates (once; reused when present) a synthetic data set
in the Zalo layout with the real data's shape: ``400 f`` training speakers of about 26 clips
(10,400 at full size), ``100 f`` test speakers of 28 clips (2,800 files), ``50,000 f`` pairs, clip
lengths 0.43-63 s with a median of about 2.2 s, mostly 44.1/48 kHz (``profile="zalo"`` of
``src.data.demo``). Then it runs each pipeline stage as its own process,
``python -m src <stage> --config <config> ...``, and records its wall time and peak resident
memory (``wait4``'s ``ru_maxrss``, which covers the stage's worker processes too).

Training is capped (``--epochs`` epochs of ``--steps`` steps per fold, stated in the output);
every other stage runs in full. The JSON has one row per size and stage, and the ratio of each
stage's time between the two largest sizes (linear growth: the ratio of the sizes).

With ``--one-process`` the pipeline runs instead as ``bash run.sh`` runs it, one
``python -m src run`` process, and the JSON gives the seconds from its start to each line of
the log that says where ``submission.csv`` came from (the frozen encoders' early submission,
then the full stack's), each stage's seconds, the total and the peak memory; the log is kept
beside the JSON.

Usage::

    .venv/bin/python -m bench.scale --root /tmp/scale --sizes 1.0 0.5 --out bench/scale.json
    .venv/bin/python -m bench.scale --root /tmp/scale --sizes 1.0 --one-process --out x.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from src.runner import PIPELINE
from src.util.io import write_json
from src.util.logs import setup_logging

log = logging.getLogger("bench.scale")
REPO = Path(__file__).resolve().parents[1]
FULL = {"speakers": 400, "clips": 26, "test_speakers": 100, "test_clips": 28, "pairs": 50000}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="data and outputs go here")
    parser.add_argument("--out", type=Path, required=True, help="the JSON result")
    parser.add_argument("--sizes", type=float, nargs="+", default=[1.0, 0.5])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "zalo_cpu.yaml")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs per fold (cap)")
    parser.add_argument("--steps", type=int, default=10, help="training steps per epoch (cap)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="synthesis")
    parser.add_argument("--stages", nargs="+", default=list(PIPELINE), choices=list(PIPELINE))
    parser.add_argument(
        "--one-process",
        action="store_true",
        help="every stage in one `python -m src run` (as bash run.sh): time to each submission",
    )
    parser.add_argument("overrides", nargs="*", help="more config overrides, key.sub=value")
    return parser.parse_args(argv)


def shape(fraction: float) -> dict[str, int]:
    """The data set's counts at ``fraction`` of the Zalo size."""
    return {
        "speakers": max(4, round(FULL["speakers"] * fraction)),
        "clips": FULL["clips"],
        "test_speakers": max(4, round(FULL["test_speakers"] * fraction)),
        "test_clips": FULL["test_clips"],
        "pairs": max(100, round(FULL["pairs"] * fraction)),
    }


def make_data(folder: Path, counts: dict[str, int], workers: int) -> dict[str, Any]:
    """Generate the data set once; its summary (and generation time) is kept beside it."""
    from src.data.demo import generate_demo

    summary_path = folder.with_name(folder.name + ".json")
    if summary_path.is_file():
        return json.loads(summary_path.read_text())
    started = time.perf_counter()
    summary = generate_demo(
        folder,
        n_speakers=counts["speakers"],
        clips_per_speaker=counts["clips"],
        n_test_speakers=counts["test_speakers"],
        test_clips_per_speaker=counts["test_clips"],
        n_pairs=counts["pairs"],
        profile="zalo",
        workers=workers,
        overwrite=True,
    )
    summary["generate_seconds"] = time.perf_counter() - started
    write_json(summary_path, summary)
    return summary


def run_stage(stage: str, config: Path, overrides: list[str]) -> dict[str, Any]:
    """One stage in its own process: exit code, wall seconds, peak resident memory (MiB)."""
    command = [sys.executable, "-m", "src", stage, "--config", str(config), *overrides]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return {
        "stage": stage,
        "exit_code": process.returncode,
        "seconds": round(time.perf_counter() - started, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # kilobytes on Linux
    }


SOURCE_LINE = re.compile(r"submission source: (.*)")
STAGE_LINE = re.compile(r"stage (.+) done in ([0-9.]+) s")


def run_pipeline_process(config: Path, overrides: list[str], log_path: Path) -> dict[str, Any]:
    """The whole pipeline in one ``python -m src run`` process; each log line is timed as it
    arrives. Returns the seconds to each ``submission source`` line, each stage's seconds,
    the total and the peak resident memory (MiB)."""
    command = [sys.executable, "-m", "src", "run", "--config", str(config), *overrides]
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    submissions, stages = [], []
    with open(log_path, "w", encoding="utf-8") as log_file:
        for line in process.stdout or []:
            log_file.write(line)
            log_file.flush()
            seconds = round(time.perf_counter() - started, 1)
            if match := SOURCE_LINE.search(line):
                submissions.append({"seconds": seconds, "line": match.group(1).strip()})
            elif match := STAGE_LINE.search(line):
                stages.append({"stage": match.group(1), "seconds": float(match.group(2))})
    _, status, usage = os.wait4(process.pid, 0)
    return {
        "exit_code": os.waitstatus_to_exitcode(status),
        "seconds": round(time.perf_counter() - started, 1),
        "submissions": submissions,
        "stages": stages,
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "log": str(log_path),
    }


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    args = parse_args(argv)
    result: dict[str, Any] = {
        "config": str(args.config),
        "training_cap": f"{args.epochs} epoch(s) of {args.steps} steps per fold",
        "cpu_count": os.cpu_count(),
        "sizes": {},
    }
    for fraction in args.sizes:
        counts = shape(fraction)
        data = args.root / f"data-{fraction:g}"
        summary = make_data(data, counts, args.workers)
        log.info("size %g: %s", fraction, summary)
        overrides = [
            f"paths.input={data}",
            f"paths.outputs={args.root / f'outputs-{fraction:g}'}",
            f"paths.folds={args.root / f'folds-{fraction:g}'}",
            f"train.epochs={args.epochs}",
            f"train.steps_per_epoch={args.steps}",
            *args.overrides,
        ]
        if args.one_process:
            log_path = args.out.with_name(f"{args.out.stem}-{fraction:g}.log")
            run = run_pipeline_process(args.config, overrides, log_path)
            log.info("size %g: %s", fraction, run)
            result["sizes"][f"{fraction:g}"] = {"data": summary, "counts": counts, "run": run}
            write_json(args.out, result)
            continue
        rows = []
        for stage in args.stages:
            row = run_stage(stage, args.config, overrides)
            log.info("size %g, %s: %s", fraction, stage, row)
            rows.append(row)
            if row["exit_code"] != 0:
                break
        result["sizes"][f"{fraction:g}"] = {"data": summary, "counts": counts, "stages": rows}
        write_json(args.out, result)  # after every size: a long run keeps what it measured
    if len(args.sizes) >= 2 and not args.one_process:
        big, small = (f"{f:g}" for f in sorted(args.sizes, reverse=True)[:2])
        times = {
            k: {r["stage"]: r["seconds"] for r in result["sizes"][k]["stages"]}
            for k in (big, small)
        }
        result["time_ratio"] = {
            stage: round(times[big][stage] / max(times[small][stage], 1e-9), 2)
            for stage in times[big]
            if stage in times[small]
        }
        write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
