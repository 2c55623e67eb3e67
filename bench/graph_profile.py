"""Process time of each step of one Zalo-size fold graph (fused: 2 models, 2,111 held-out +
2,789 test clips, 20,000 OOF trials + 50,000 test pairs), median of ``--repeats`` runs.

Run: ``.venv/bin/python bench/graph_profile.py [--repeats 3] [--clips 4900]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from src.stacking import graph as g


def fold_job(clips: int, pairs: int, models: int, seed: int = 0) -> g._GraphJob:
    """A fold graph of random unit vectors (256 dims per model) with random pairs."""
    rng = np.random.default_rng(seed)
    sets = []
    for _ in range(models):
        v = rng.normal(size=(clips, 256)).astype(np.float32)
        sets.append(v / np.linalg.norm(v, axis=1, keepdims=True))
    return g._GraphJob(sets, rng.integers(0, clips, pairs), rng.integers(0, clips, pairs))


def profile(job: g._GraphJob, settings: g.GraphSettings) -> dict[str, float]:
    """Process seconds of each step of :func:`src.stacking.graph._solve_graph`."""
    times: dict[str, float] = {}
    clock = time.process_time()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.process_time()
        times[name] = now - clock
        clock = now

    sims = g.graph_similarity(job.sets)
    lap("similarity")
    vectors = g.graph_vectors(job.sets)
    g.neighbourhood_features(sims, job.left, job.right, settings, vectors)
    lap("neighbourhood (all)")
    cuts = settings.cuts or g.cut_heights(sims)
    lap("cut heights")
    tree = g.cluster_tree(sims)
    lap("cluster tree")
    tree_sim = g.tree_similarity(tree, sims.shape[0], job.left, job.right)
    lap("tree similarity")
    g.cut_features(tree, tree_sim, job.left, job.right, cuts)
    lap("cut features")
    start = time.process_time()
    g._solve_graph(job, settings)
    times["whole _solve_graph"] = time.process_time() - start
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clips", type=int, default=2111 + 2789)
    parser.add_argument("--pairs", type=int, default=70000)
    parser.add_argument("--models", type=int, default=2)
    args = parser.parse_args()
    job = fold_job(args.clips, args.pairs, args.models)
    runs = defaultdict(list)
    with threadpool_limits(limits=1, user_api="blas"):
        for _ in range(args.repeats):
            for name, seconds in profile(job, g.GraphSettings()).items():
                runs[name].append(seconds)
    for name, values in runs.items():
        print(f"{name:24s} {np.median(values):7.3f} s  ({', '.join(f'{v:.3f}' for v in values)})")


if __name__ == "__main__":
    main()
