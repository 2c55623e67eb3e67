"""CPU (process) and wall time of ``bench/speed.py``'s ``bench_graph`` (Zalo size: the fused
graph of 2 experiments, 5 folds: 5 fold graphs of 4,900 clips, as the stack computes them by
default; ``--each``: each experiment's graphs too, 15 fold graphs), median of ``--repeats`` runs.

Run: ``.venv/bin/python bench/graph_cost.py [--repeats 3]``. CPU time is this process's
(all its threads) plus that of its finished worker processes (``RUSAGE_CHILDREN``: the fold
graphs are solved in forked workers since 2026-11-30 evening); steadier than wall on a shared
machine. The load average is printed with each run.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.speed import bench_graph


def cpu_seconds() -> float:
    """User + system seconds of this process and of its children that have ended."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--each", action="store_true", help="each experiment's graphs too")
    args = parser.parse_args()
    cpu, wall = [], []
    for _ in range(args.repeats):
        start_cpu, start_wall = cpu_seconds(), time.perf_counter()
        bench_graph(fused_only=not args.each)
        cpu.append(cpu_seconds() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"cpu {cpu[-1]:.1f} s, wall {wall[-1]:.1f} s, load average {load}", flush=True)
    print(f"median of {args.repeats}: cpu {statistics.median(cpu):.1f} s, "
          f"wall {statistics.median(wall):.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
