"""CPU (process) and wall time of ``bench/speed.py``'s ``bench_graph`` (Zalo size: 2
experiments + fused, 5 folds, 15 fold graphs of 4,900 clips), median of ``--repeats`` runs.

Run: ``.venv/bin/python bench/graph_cost.py [--repeats 3]``. Process time is steadier than wall
on a shared machine (it counts this process's threads only).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.speed import bench_graph


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cpu, wall = [], []
    for _ in range(args.repeats):
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        bench_graph()
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
        print(f"cpu {cpu[-1]:.1f} s, wall {wall[-1]:.1f} s", flush=True)
    print(f"median of {args.repeats}: cpu {statistics.median(cpu):.1f} s, "
          f"wall {statistics.median(wall):.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
