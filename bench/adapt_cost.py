"""Cost of test-set adaptation (``score.adapt``) at Zalo size, on synthetic embeddings.

Zalo 2020's training set is about 10,400 clips of 400 speakers and its public test 2,800 clips;
a fold's held-out clips are a fifth of the training clips. Synthetic unit vectors (192-d, each
speaker a random direction plus noise) of that size are adapted as the score stage does, per
fold: the held-out clips (target of the fold's OOF trials) and the test clips (target of the
50,000 test pairs), the training speakers' clips as the labelled set. Seconds per method, for
one fold and for five, on the cores BLAS is given (``OMP_NUM_THREADS``).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/adapt_cost.py [--json bench/adapt_cost.json]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.inference.adapt import ADAPT_METHODS, adapted_scores, pseudo_speakers
from src.util.io import write_json

DIMS = 192
TRAIN_SPEAKERS, TRAIN_CLIPS = 400, 10_400
TEST_SPEAKERS, TEST_CLIPS = 700, 2_800
FOLDS = 5
OOF_TRIALS, TEST_PAIRS = 10_000, 50_000


def clips(rng: np.random.Generator, speakers: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` unit vectors of ``speakers`` speakers (within-speaker cosine about 0.5)."""
    labels = rng.integers(0, speakers, count)
    centres = rng.normal(size=(speakers, DIMS))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = centres[labels] + rng.normal(size=(count, DIMS)) / np.sqrt(DIMS)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), labels


def timed(function, *args, **kwargs) -> tuple[float, object]:
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - started, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=Path("bench/adapt_cost.json"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    train, speakers = clips(rng, TRAIN_SPEAKERS, TRAIN_CLIPS)
    held_out_rows = np.isin(speakers, np.arange(TRAIN_SPEAKERS // FOLDS))  # fold 0's speakers
    held_out, labelled = train[held_out_rows], train[~held_out_rows]
    labelled_speakers = speakers[~held_out_rows]
    test, _ = clips(rng, TEST_SPEAKERS, TEST_CLIPS)
    oof_pairs = rng.integers(0, held_out.shape[0], (2, OOF_TRIALS))
    test_pairs = rng.integers(0, TEST_CLIPS, (2, TEST_PAIRS))
    seconds: dict[str, dict[str, float]] = {}
    cluster_oof, found_oof = timed(pseudo_speakers, held_out)
    cluster_test, found_test = timed(pseudo_speakers, test)
    seconds["pseudo_speakers"] = {"oof": cluster_oof, "test": cluster_test}
    for method in ADAPT_METHODS[1:]:
        oof_s, _ = timed(
            adapted_scores, method, held_out, *oof_pairs, labelled, labelled_speakers, 100
        )
        test_s, _ = timed(adapted_scores, method, test, *test_pairs, labelled, labelled_speakers)
        seconds[method] = {"oof": oof_s, "test": test_s}
    rows = {m: {**s, "fold": s["oof"] + s["test"], "five_folds": FOLDS * (s["oof"] + s["test"])}
            for m, s in seconds.items()}  # fmt: skip
    print("| method | held-out target (s) | test target (s) | one fold (s) | five folds (s) |")
    print("|---|---|---|---|---|")
    for method, row in rows.items():
        print(
            f"| {method} | {row['oof']:.2f} | {row['test']:.2f} | {row['fold']:.2f} | "
            f"{row['five_folds']:.1f} |"
        )
    print(
        f"held-out clips {held_out.shape[0]}: {found_oof.clusters} pseudo-speakers "
        f"({found_oof.kept} clips); test clips {TEST_CLIPS}: {found_test.clusters} "
        f"({found_test.kept} clips)"
    )
    write_json(
        args.json,
        {
            "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
            "sizes": {
                "train_clips": TRAIN_CLIPS,
                "train_speakers": TRAIN_SPEAKERS,
                "held_out_clips": int(held_out.shape[0]),
                "test_clips": TEST_CLIPS,
                "oof_trials": OOF_TRIALS,
                "test_pairs": TEST_PAIRS,
                "dims": DIMS,
            },
            "pseudo_speakers": {
                "held_out": {"clusters": found_oof.clusters, "clips_kept": found_oof.kept},
                "test": {"clusters": found_test.clusters, "clips_kept": found_test.kept},
            },
            "seconds": rows,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
