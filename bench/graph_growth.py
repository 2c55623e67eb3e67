"""Does the graph stack hold when the test graph grows? Unpaired clips added, test pairs fixed.

Usage::

    .venv/bin/python bench/graph_growth.py --config configs/libri_ge2e.yaml \
        --experiments libri_ge2e [--factors 1,2,4] [--json bench/graph_growth_libri.json]

Needs the first level already scored and embedded. Generates unpaired clips of new voices
(``src/data/demo.py`` with its own seed: speakers no fold model has seen), prepares them in a
scratch folder, embeds them with every fold model of every experiment (once for a frozen
model) and caches the vectors under ``<outputs>/graph_growth/``. For each factor f it adds
``(f - 1)`` times the test set's clip count to every fold's test clips (the answer key's pairs
stay as they are) and runs the stack with and without graph features; it prints OOF EER, the
balanced OOF accuracy, the test accuracy at the balanced threshold, and with transitive
consistency (shares chosen on OOF; ``auto``: applied only when the nested OOF accuracy gains).
Runs on older code too (the transitive API of before 2026-11-30: fixed probabilities), so the
same command measures before and after.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.config import ExperimentConfig, config_from_dict, load_config
from src.inference.embed import embed_clips, load_embeddings
from src.inference.extractors import build_extractor
from src.stacking import transitive
from src.stacking.stack import run_stack
from src.stacking.threshold import balanced_labels
from src.util.io import write_json, write_npz
from src.util.logs import setup_logging

log = logging.getLogger("bench.graph_growth")

CLIPS_PER_VOICE = 6
EXTRA_SEED = 20261130


def extra_clips(need: int, scratch: Path, sample_rate: int):
    """``need`` prepared clips of new voices: (audio cache, their ids)."""
    from src.data.cache import AudioCache, read_manifest
    from src.data.demo import generate_demo
    from src.data.prepare import prepare_stage

    voices = math.ceil(need / CLIPS_PER_VOICE)
    generate_demo(
        scratch / "data",
        n_speakers=2,
        clips_per_speaker=2,
        n_test_speakers=voices,
        test_clips_per_speaker=CLIPS_PER_VOICE,
        seed=EXTRA_SEED,
    )
    cfg = load_config(
        None,
        [
            f"paths.input={scratch / 'data'}",
            f"paths.outputs={scratch / 'out'}",
            f"paths.folds={scratch / 'folds'}",
            "data.workers=1",
            f"data.sample_rate={sample_rate}",
        ],
    )
    prepare_stage(cfg)
    manifest = read_manifest(cfg.paths.prep_dir)
    ids = manifest.loc[manifest["split"] == "test", "id"].tolist()[:need]
    return AudioCache(cfg.paths.prep_dir, manifest), ids


def extra_vectors(cfg: ExperimentConfig, names: list[str], need: int) -> dict[str, dict]:
    """``experiment -> fold -> (need, dim)`` vectors of the extra clips (cached on disk)."""
    store = cfg.paths.outputs / "graph_growth"
    out: dict[str, dict] = {}
    cache = ids = None
    with tempfile.TemporaryDirectory() as scratch:
        for name in names:
            run = config_from_dict(
                yaml.safe_load((cfg.paths.outputs / name / "config.yaml").read_text())
            )
            out[name] = {}
            shared = None
            for fold in range(run.folds.n_folds):
                path = store / f"{name}_fold{fold}_{need}.npz"
                if path.is_file():
                    out[name][fold] = load_embeddings(path)["vectors"]
                    continue
                if cache is None:
                    cache, ids = extra_clips(need, Path(scratch), cfg.data.sample_rate)
                if shared is None:
                    extractor = build_extractor(run, fold)
                    vectors, _ = embed_clips(
                        extractor, cache, ids, run.embed, run.data.sample_rate, progress=False
                    )
                    if getattr(extractor, "fold_independent", False):
                        shared = vectors
                else:
                    vectors = shared
                write_npz(path, vectors=vectors)
                out[name][fold] = vectors
    return out


def grown_copy(dirs: list[Path], extra: dict[str, dict], count: int, root: Path) -> list[Path]:
    """Experiment folders whose every fold embeds ``count`` extra unpaired test clips."""
    copies = []
    for directory in dirs:
        target = root / directory.name
        target.mkdir(parents=True)
        for name in os.listdir(directory):
            if name.endswith(".csv"):
                (target / name).symlink_to((directory / name).resolve())
        for fold, vectors in extra[directory.name].items():
            emb = load_embeddings(directory / f"fold{fold}" / "embeddings.npz")
            ids = np.array([f"public-test/unpaired_{i:05d}.wav" for i in range(count)])
            write_npz(
                target / f"fold{fold}" / "embeddings.npz",
                ids=np.concatenate([emb["ids"], ids]),
                role=np.concatenate([emb["role"], np.full(count, "test")]),
                speaker=np.concatenate([emb["speaker"], np.full(count, "")]),
                vectors=np.concatenate([emb["vectors"], vectors[:count].astype(np.float32)]),
                norms=np.concatenate([emb["norms"], np.ones(count, np.float32)]),
            )
        copies.append(target)
    return copies


def transitive_labels(oof: pd.DataFrame, test: pd.DataFrame, column: str, share: float):
    """(test labels with transitive consistency as chosen on OOF, applied by auto?, nested)."""
    probs, test_probs = oof[column].to_numpy(), test[column].to_numpy()
    if hasattr(transitive, "choose_shares"):  # shares of each graph (2026-11-30)
        choice = transitive.choose_shares(oof, probs, share)
        applied = transitive.decide(oof, probs, share).high_share is not None
        if choice.high_share is None:
            return balanced_labels(test_probs, share)[0], applied, choice.oof_accuracy_before
        moved = transitive.propagate_shares(test, test_probs, choice.high_share, choice.low_share)
        labels = transitive.relabel(moved, test_probs, share)
    else:  # fixed probabilities (before)
        choice = transitive.choose_thresholds(oof, probs, share)
        applied = transitive.decide(oof, probs, share).high is not None
        if choice.high is None:
            return balanced_labels(test_probs, share)[0], applied, choice.oof_accuracy_before
        moved = transitive.propagate(test, test_probs, choice.high, choice.low)
        labels = balanced_labels(moved, share)[0]
    return labels, applied, transitive.nested_oof_accuracy(oof, probs, share)


def evaluate(cfg: ExperimentConfig, dirs: list[Path], key: np.ndarray, out: Path) -> dict:
    """Figures of the graph stack (``prob``) and of the stack without graph features."""
    started = time.perf_counter()
    result = run_stack(cfg, dirs, out)
    seconds = time.perf_counter() - started
    share = cfg.submit.positive_share
    labels = result.oof["label"].to_numpy()
    row = {"stack_seconds": round(seconds, 1)}
    for column, name in (("prob", "graph"), ("prob_without_graph", "no_graph")):
        oof_labels = balanced_labels(result.oof[column].to_numpy(), share)[0]
        test_labels = balanced_labels(result.test[column].to_numpy(), share)[0]
        moved, applied, nested = transitive_labels(result.oof, result.test, column, share)
        from src.inference.metrics import equal_error_rate

        row[name] = {
            "oof_eer": equal_error_rate(result.oof[column].to_numpy(), labels)[0],
            "oof_acc": float((oof_labels == labels).mean()),
            "test_acc": float((test_labels == key).mean()),
            "test_acc_transitive": float((moved == key).mean()),
            "transitive_auto_on": bool(applied),
            "oof_acc_transitive_nested": nested,
        }
    guard = result.metrics.get("graph_guard")
    if guard:
        row["guard"] = {k: guard[k] for k in ("size_ratio", "adversarial_auc", "dropped_groups")}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--experiments", required=True, help="comma-separated run folders")
    parser.add_argument("--factors", default="1,2,4")
    parser.add_argument("--json", type=Path, default=Path("bench/graph_growth.json"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    setup_logging(logging.WARNING)
    cfg = load_config(args.config, args.overrides)
    names = args.experiments.split(",")
    factors = [int(f) for f in args.factors.split(",")]
    key = pd.read_csv(cfg.paths.input / "public-test-labels.csv")["label"].to_numpy()
    dirs = [cfg.paths.outputs / n for n in names]
    emb = load_embeddings(dirs[0] / "fold0" / "embeddings.npz")
    n_test = int((emb["role"] == "test").sum())
    need = (max(factors) - 1) * n_test
    extra = extra_vectors(cfg, names, need) if need else {}
    stack = cfg.stack.model_copy(update={"experiments": names, "graph_features": True})
    stacked = cfg.model_copy(update={"stack": stack})
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        for factor in factors:
            count = (factor - 1) * n_test
            grown = grown_copy(dirs, extra, count, Path(scratch) / f"x{factor}") if count else dirs
            label = f"test graph x{factor} ({n_test + count} test clips)"
            rows[label] = evaluate(stacked, grown, key, Path(scratch) / f"stack{factor}")
            print(label, rows[label], flush=True)
    write_json(args.json, {"command": " ".join(sys.argv), "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
