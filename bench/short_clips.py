"""Short clips on OOF trials: EER when one clip of every trial is cut to 0.4-1 s.

libri-zalo's clips are 0.8 s and longer, Zalo's start at 0.4 s. For each fold's OOF trials
(``trials_fold{k}.csv``), the ``audio_2`` clip is cut to its first ``L`` seconds and embedded by
a frozen extractor (``extractor.kind: pretrained``), with ``model.repeat_pad_seconds`` ``P``
(the cut clip repeated end to end up to ``P`` seconds before the fbank; encoder
architectures only); ``audio_1`` keeps the run's own full-clip embedding
(``fold{k}/embeddings.npz``). Prints the cosine EER per (L, P), pooled over the folds, next to
the uncut trials' EER. Every figure is OOF: nothing is fitted.

Usage::

    .venv/bin/python bench/short_clips.py --config configs/libri_campplus.yaml \\
        --config configs/libri_ge2e.yaml --lengths 0.5,0.8 --pads 0,1,1.5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.config import load_config
from src.data.cache import AudioCache, read_manifest
from src.inference.embed import load_embeddings
from src.inference.extractors import build_extractor
from src.inference.metrics import equal_error_rate


def fold_trials(cfg, folds: list[int]) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The OOF trials of ``folds`` and the run's full-clip unit embeddings of their clips."""
    trials, full = [], {}
    for k in folds:
        trials.append(pd.read_csv(cfg.folds_dir / f"trials_fold{k}.csv"))
        emb = load_embeddings(cfg.fold_dir(k) / "embeddings.npz")
        full |= dict(zip(emb["ids"], emb["vectors"], strict=True))
    return pd.concat(trials, ignore_index=True), full


def cut_embeddings(extractor, cache: AudioCache, ids: list[str], samples: int) -> np.ndarray:
    """Unit embeddings of the first ``samples`` of each clip, ``(len(ids), dim)``."""
    out = []
    for start in range(0, len(ids), 64):
        waves = np.stack([cache.raw(c, 0, samples) for c in ids[start : start + 64]])
        out.append(extractor.embed(waves.astype(np.float32)))
    return np.concatenate(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", required=True, type=Path)
    parser.add_argument("--folds", default="0,1,2,3,4")
    parser.add_argument("--lengths", default="0.5,0.8", help="seconds audio_2 is cut to")
    parser.add_argument("--pads", default="0,1,1.5", help="model.repeat_pad_seconds values")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    folds = [int(k) for k in args.folds.split(",")]
    rows = []
    for config in args.config:
        cfg = load_config(config, ["train.device=cpu"])
        trials, full = fold_trials(cfg, folds)
        cache = AudioCache(cfg.paths.prep_dir, read_manifest(cfg.paths.prep_dir))
        labels = trials["label"].to_numpy()
        left = np.stack([full[c] for c in trials["audio_1"]])
        right = np.stack([full[c] for c in trials["audio_2"]])
        eer = equal_error_rate((left * right).sum(axis=1), labels)[0]
        rows.append({"run": cfg.run_name, "cut_s": None, "pad_s": None, "eer": eer})
        print(f"{cfg.run_name}: uncut, {len(trials)} trials: EER {100 * eer:.2f} %", flush=True)
        ids = sorted(set(trials["audio_2"]))
        encoder = cfg.model.architecture.startswith(("wespeaker", "campplus"))
        pads = [float(p) for p in args.pads.split(",")] if encoder else [0.0]
        for length in [float(s) for s in args.lengths.split(",")]:
            for pad in pads:
                run = load_config(config, ["train.device=cpu", f"model.repeat_pad_seconds={pad}"])
                started = time.perf_counter()
                cut = cut_embeddings(
                    build_extractor(run, 0), cache, ids, int(length * cfg.data.sample_rate)
                )
                by_id = dict(zip(ids, cut, strict=True))
                short = np.stack([by_id[c] for c in trials["audio_2"]])
                eer = equal_error_rate((left * short).sum(axis=1), labels)[0]
                rows.append({"run": cfg.run_name, "cut_s": length, "pad_s": pad, "eer": eer})
                print(
                    f"{cfg.run_name}: audio_2 cut to {length:g} s, repeat-padded to {pad:g} s: "
                    f"EER {100 * eer:.2f} % ({time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
