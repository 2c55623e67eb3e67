"""What `prepare`'s content check costs at the Zalo data's size (10,400 + 2,800 files).

On a data set made by ``bench/scale.py`` (or any Zalo-layout folder), in one process:

1. ``prepare`` from scratch (every file decoded);
2. a rerun with nothing changed (the check reads no file: stat and the record only);
3. a rerun after every file's record was made untrustworthy (what moving or copying the data
   folder causes, and what hashing every file on every run would cost): every file hashed,
   nothing decoded;
4. one file replaced by other audio of the same size with its modification time kept
   (``cp -p``): the check hashes that file, ``prepare`` decodes it alone and copies every other
   clip from the previous cache.

Usage::

    .venv/bin/python -m bench.freshness --data /tmp/scale/data-1 --out outputs/bench/freshness.json
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from src.config import load_config
from src.data.prepare import prepare_stage
from src.data.sources import SOURCES_NAME, check_sources
from src.data.zalo import scan_test, scan_train
from src.util.io import write_csv, write_json
from src.util.logs import setup_logging

log = logging.getLogger("bench.freshness")


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return round(time.perf_counter() - started, 2)


def replace_keeping_size_and_time(path: Path) -> None:
    """Other audio of the same byte size in ``path``, its modification time kept."""
    info = os.stat(path)
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    other = np.random.default_rng(0).uniform(-0.3, 0.3, data.shape).astype(np.float32)
    kind = sf.info(str(path))
    sf.write(path, other, rate, format=kind.format, subtype=kind.subtype)
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    if os.stat(path).st_size != info.st_size:
        raise RuntimeError(f"{path}: the replacement changed the size")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--outputs", type=Path, default=Path("outputs/bench/freshness"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    setup_logging()
    cfg = load_config(
        Path("configs/zalo_cpu.yaml"), [f"paths.input={args.data}", f"paths.outputs={args.outputs}"]
    )
    prep = cfg.paths.prep_dir
    files = scan_train(args.data, cfg.data, []) + scan_test(args.data, cfg.data, [])
    n_bytes = sum(os.stat(f.path).st_size for f in files)
    result: dict = {"files": len(files), "gigabytes": round(n_bytes / 1e9, 2)}
    result["prepare_from_scratch_s"] = timed(lambda: prepare_stage(cfg, force=True))
    result["check_unchanged_s"] = timed(lambda: check_sources(files, prep))
    result["prepare_unchanged_s"] = timed(lambda: prepare_stage(cfg))

    records = pd.read_csv(prep / SOURCES_NAME, dtype=str, keep_default_na=False)
    write_csv(prep / SOURCES_NAME, records.assign(ctime_ns="-1"))  # as after moving the folder
    check = check_sources(files, prep)
    result["check_hash_all_s"] = round(check.seconds, 2)
    result["hashed"] = check.hashed
    result["hash_all_mb_per_s"] = round(n_bytes / 1e6 / check.seconds, 1)
    write_csv(prep / SOURCES_NAME, records.assign(ctime_ns="-1"))
    result["prepare_after_move_s"] = timed(lambda: prepare_stage(cfg))

    target = next(Path(f.path) for f in files if f.split == "train" and f.path.endswith(".wav"))
    replace_keeping_size_and_time(target)
    result["prepare_one_changed_file_s"] = timed(lambda: prepare_stage(cfg))
    write_json(args.out, result)
    log.info("%s", result)


if __name__ == "__main__":
    main()
