"""Invariance benchmark: how many answers of an exported bundle change when one clip of a test
pair is altered (gain x0.25 / x4, +0.05 DC, a silent or an opposite-phase second channel).

Usage::

    .venv/bin/python bench/invariance.py --config configs/libri_ge2e.yaml --pairs 200 \
        [--bundle outputs/libri/bundle] [--json bench/invariance.json] [key=value ...]

The pairs are a seeded sample of the stack's test pairs; the clips are read from the prepare
cache, encoded as float WAV files and decoded by the server's own upload path
(``src/serve/invariance.py``), so every difference comes from the alteration alone. The clips are
scaled to peak 0.19 first, so that gain x4 does not exceed full scale.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.config import load_config
from src.data.cache import AudioCache
from src.serve.ensemble import BundleModel
from src.serve.invariance import invariance_table, summarise_invariance
from src.stacking.inputs import read_csv
from src.util.io import write_json
from src.util.logs import setup_logging


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--bundle", type=Path, default=None, help="default: the config's bundle")
    parser.add_argument("--json", type=Path, default=Path("bench/invariance.json"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    setup_logging()
    cfg = load_config(args.config, args.overrides)
    bundle = args.bundle or cfg.bundle_dir
    test = read_csv(cfg.stack_dir / "test_predictions.csv", ["audio_1", "audio_2"], "stack test")
    rng = np.random.default_rng(cfg.seed)
    count = min(args.pairs, len(test))
    pairs = test.iloc[np.sort(rng.choice(len(test), count, replace=False))]
    pairs = pairs[["audio_1", "audio_2"]].astype(str).reset_index(drop=True)
    cache = AudioCache(cfg.paths.prep_dir)
    ids = cache.manifest[cache.manifest["split"] == "test"].set_index("name")["id"]
    names = sorted(set(pairs["audio_1"]) | set(pairs["audio_2"]))
    # at peak 0.19 (the cache's 0.95 / 5): gain x4 stays below full scale, as in the issue's
    # float-WAV case (the decoder before DC removal clipped at 1.0)
    waves = {name: cache.samples(ids[name]) * np.float32(0.2) for name in names}
    started = time.perf_counter()
    model = BundleModel.load(bundle)
    table = invariance_table(model, waves, pairs)
    rows = summarise_invariance(table)
    seconds = time.perf_counter() - started
    print("| alteration | answers changed | max probability change |\n|---|---|---|")
    for row in rows:
        print(
            f"| {row['alteration']} | {row['answers_changed']} of {row['pairs']} | "
            f"{row['max_probability_change']:.2e} |"
        )
    print(f"bundle {bundle}, {count} pairs, {seconds:.1f} s")
    write_json(args.json, {"bundle": str(bundle), "pairs": count, "seconds": seconds, "rows": rows})


if __name__ == "__main__":
    main()
