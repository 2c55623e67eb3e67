"""Short clips on OOF trials: EER and accuracy when one clip of every trial is cut short.

libri-zalo's clips are 0.8 s and longer, Zalo's start at 0.4 s. For each fold's OOF trials
(``trials_fold{k}.csv``), the ``audio_2`` clip is cut to its first ``L`` seconds and embedded by
a frozen extractor (``extractor.kind: pretrained``), with ``model.repeat_pad_seconds`` ``P``
(the cut clip repeated end to end up to ``P`` seconds before the fbank; encoder
architectures only); ``audio_1`` keeps the run's own full-clip embedding
(``fold{k}/embeddings.npz``). Prints the EER per (L, P), pooled over the folds, next to the
uncut trials' EER, of the cosine (``--scores cosine,asnorm``: and of the AS-norm score against
each fold's cohort, as the ``score`` stage computes it).

With ``--accuracy`` it also gives, per (L, P) and per bin of L (``--bins``, e.g. 0.1-0.2 s and
0.2-0.5 s, the bin's lengths pooled), the accuracy of three answers for the cut trials:

- ``constant``: label 1 for every pair (``prepare``'s fallback): the share of positives;
- ``global``: the cosine at the uncut OOF trials' EER threshold (the one threshold a submission
  applies to every pair);
- ``bin``: the cosine at the bin's own EER threshold, cross-fitted by fold (fitted on the other
  folds' cut trials of the bin, applied to the held-out fold's).

Every figure is OOF: nothing is fitted on the trials it is measured on.

Usage::

    .venv/bin/python bench/short_clips.py --config configs/libri_campplus.yaml \\
        --config configs/libri_ge2e.yaml --lengths 0.5,0.8 --pads 0,1,1.5 --json out.json
    .venv/bin/python bench/short_clips.py --config configs/libri_campplus.yaml --accuracy \\
        --lengths 0.05,0.1,0.15,0.2,0.3,0.5 --pads 0,1 --bins 0.05,0.1,0.2,0.5 --json out.json
"""

from __future__ import annotations

import argparse
import itertools
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
from src.inference.score import asnorm, cohort_means, cohort_stats
from src.util.io import write_text


def fold_trials(cfg, folds: list[int]) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The OOF trials of ``folds`` (column ``fold`` added) and the run's full-clip unit
    embeddings of their clips."""
    trials, full = [], {}
    for k in folds:
        trials.append(pd.read_csv(cfg.folds_dir / f"trials_fold{k}.csv").assign(fold=k))
        emb = load_embeddings(cfg.fold_dir(k) / "embeddings.npz")
        full |= dict(zip(emb["ids"], emb["vectors"], strict=True))
    return pd.concat(trials, ignore_index=True), full


def fold_cohorts(cfg, folds: list[int]) -> dict[int, np.ndarray]:
    """Each fold's AS-norm cohort (unit speaker means, ``(speakers, dim)``), as ``score``."""
    return {k: cohort_means(load_embeddings(cfg.fold_dir(k) / "embeddings.npz")) for k in folds}


def trial_scores(
    left: np.ndarray,
    right: np.ndarray,
    fold: np.ndarray,
    cohorts: dict[int, np.ndarray] | None,
    top_k: int,
) -> np.ndarray:
    """Cosine of unit rows ``left`` and ``right`` ``(trials, dim)``, or with ``cohorts`` their
    AS-norm score against the trial's fold cohort (``src.inference.score.asnorm``)."""
    raw = (left * right).sum(axis=1)
    if cohorts is None:
        return raw
    out = np.empty_like(raw)
    for k, cohort in cohorts.items():
        rows = np.flatnonzero(fold == k)
        both = np.concatenate([left[rows], right[rows]])
        stats = cohort_stats(both, cohort, top_k)
        out[rows] = asnorm(raw[rows], stats, np.arange(rows.size), rows.size + np.arange(rows.size))
    return out


def cut_embeddings(extractor, cache: AudioCache, ids: list[str], samples: int) -> np.ndarray:
    """Unit embeddings of the first ``samples`` of each clip, ``(len(ids), dim)``."""
    out = []
    for start in range(0, len(ids), 64):
        waves = np.stack([cache.raw(c, 0, samples) for c in ids[start : start + 64]])
        out.append(extractor.embed(waves.astype(np.float32)))
    return np.concatenate(out)


def accuracies(
    scores: np.ndarray, labels: np.ndarray, folds: np.ndarray, global_threshold: float
) -> dict[str, float]:
    """Accuracy of the constant answer (label 1), of ``scores`` at ``global_threshold`` and at
    an EER threshold cross-fitted by fold (fitted on the other folds' trials); shapes ``(n,)``.
    """
    crossfit = np.empty(labels.size, dtype=bool)
    for k in np.unique(folds):
        held = folds == k
        threshold = equal_error_rate(scores[~held], labels[~held])[1]
        crossfit[held] = scores[held] >= threshold
    return {
        "trials": int(labels.size),
        "acc_constant": float(labels.mean()),
        "acc_global": float(((scores >= global_threshold) == labels).mean()),
        "acc_bin": float((crossfit == labels).mean()),
    }


def bin_rows(rows: list[dict], edges: list[float]) -> list[dict]:
    """``rows``' cut trials pooled per (run, pad, bin of cut length): ``[lo, hi)``, last closed."""
    out = []
    for lo, hi in itertools.pairwise(edges):
        last = hi == edges[-1]
        for (run, kind, pad), group in (
            pd.DataFrame(rows).dropna(subset=["cut_s"]).groupby(["run", "score", "pad_s"])
        ):
            inside = group[
                (group["cut_s"] >= lo) & ((group["cut_s"] <= hi) if last else (group["cut_s"] < hi))
            ]
            if inside.empty:
                continue
            scores = np.concatenate(inside["_scores"].tolist())
            labels = np.concatenate(inside["_labels"].tolist())
            folds = np.concatenate(inside["_folds"].tolist())
            row = {"run": run, "score": kind, "bin_s": f"{lo:g}-{hi:g}", "pad_s": pad}
            row |= accuracies(scores, labels, folds, float(inside["_global"].iloc[0]))
            row["eer"] = equal_error_rate(scores, labels)[0]
            out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", required=True, type=Path)
    parser.add_argument("--folds", default="0,1,2,3,4")
    parser.add_argument("--lengths", default="0.5,0.8", help="seconds audio_2 is cut to")
    parser.add_argument("--pads", default="0,1,1.5", help="model.repeat_pad_seconds values")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--accuracy", action="store_true", help="accuracy of the answers too")
    parser.add_argument("--scores", default="cosine", help="cosine and/or asnorm")
    parser.add_argument("--bins", default="0.1,0.2,0.5", help="edges of the cut-length bins")
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
        fold = trials["fold"].to_numpy()
        kinds = args.scores.split(",")
        cohorts = (
            {"cosine": None, "asnorm": fold_cohorts(cfg, folds)}
            if "asnorm" in kinds
            else {"cosine": None}
        )
        top_k = cfg.score.asnorm_top_k
        global_threshold = {}
        for kind in kinds:
            eer, global_threshold[kind] = equal_error_rate(
                trial_scores(left, right, fold, cohorts[kind], top_k), labels
            )
            rows.append(
                {"run": cfg.run_name, "score": kind, "cut_s": None, "pad_s": None, "eer": eer}
            )
            print(
                f"{cfg.run_name}: {kind}, uncut, {len(trials)} trials: EER {100 * eer:.2f} %",
                flush=True,
            )
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
                for kind in kinds:
                    scores = trial_scores(left, short, fold, cohorts[kind], top_k)
                    eer = equal_error_rate(scores, labels)[0]
                    row = {
                        "run": cfg.run_name,
                        "score": kind,
                        "cut_s": length,
                        "pad_s": pad,
                        "eer": eer,
                    }
                    if args.accuracy:
                        row |= accuracies(scores, labels, fold, global_threshold[kind])
                        row |= {"_scores": scores, "_labels": labels, "_folds": fold}
                        row["_global"] = global_threshold[kind]
                    rows.append(row)
                    print(
                        f"{cfg.run_name}: {kind}, audio_2 cut to {length:g} s, repeat-padded to "
                        f"{pad:g} s: EER {100 * eer:.2f} % ({time.perf_counter() - started:.0f} s)"
                        + (
                            f", accuracy constant {100 * row['acc_constant']:.1f} %, global "
                            f"threshold {100 * row['acc_global']:.1f} %, bin threshold "
                            f"{100 * row['acc_bin']:.1f} %"
                            if args.accuracy
                            else ""
                        ),
                        flush=True,
                    )
    bins = bin_rows(rows, [float(e) for e in args.bins.split(",")]) if args.accuracy else []
    for row in bins:
        print(
            f"{row['run']}: {row['score']}, bin {row['bin_s']} s, pad {row['pad_s']:g} s, "
            f"{row['trials']} trials: "
            f"EER {100 * row['eer']:.2f} %, accuracy constant {100 * row['acc_constant']:.1f} %, "
            f"global {100 * row['acc_global']:.1f} %, bin {100 * row['acc_bin']:.1f} %",
            flush=True,
        )
    if args.json is not None:
        kept = [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows]
        out = {"lengths": kept, "bins": bins} if args.accuracy else kept
        write_text(args.json, json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
