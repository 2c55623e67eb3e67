"""Trial-graph benchmark: the stack without and with graph features, and transitive consistency.

Usage::

    .venv/bin/python bench/graph.py --config configs/libri.yaml \
        --experiments libri_cnn,libri_resemblyzer [--json bench/graph_libri.json] [key=value ...]

Needs the first level already scored (``bench/accuracy.py`` or ``run.sh --stop-stage score``).
For the stack of the given experiments and of the first one alone, it prints OOF EER and test
accuracy (balanced threshold; test needs ``public-test-labels.csv``) without graph features,
with them, and with transitive consistency on top (thresholds chosen on OOF; its OOF accuracy
nested: thresholds from the other folds; ``submit.transitive=auto`` applies it only when the
nested OOF accuracy beats the one without, ``test_acc_default``). Then the graph-size check: the
same stack on OOF graphs of half the clips (every fold's held-out clips subsampled), and the
adversarial AUC of each graph-feature group between OOF trials and test pairs. (Since
2026-11-30 each fold's OOF trials and test pairs share one graph: half the held-out clips
shrinks both; ``bench/graph_growth.py`` grows the test graph instead.)
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.config import ExperimentConfig, load_config
from src.inference.embed import load_embeddings
from src.inference.metrics import accuracy_at, balanced_threshold
from src.stacking.inputs import align_experiments, load_experiment
from src.stacking.stack import graph_group_aucs, load_graph_views, run_stack
from src.stacking.threshold import balanced_labels
from src.stacking.transitive import (
    choose_shares,
    decide,
    nested_oof_accuracy,
    propagate_shares,
    relabel,
)
from src.util.io import write_json, write_npz
from src.util.logs import setup_logging

log = logging.getLogger("bench.graph")


def with_stack(cfg: ExperimentConfig, experiments: list[str], graph: bool) -> ExperimentConfig:
    stack = cfg.stack.model_copy(update={"experiments": experiments, "graph_features": graph})
    return cfg.model_copy(update={"stack": stack})


def evaluate(cfg: ExperimentConfig, dirs: list[Path], key: np.ndarray | None, out: Path) -> dict:
    """OOF EER and test accuracy of one stack, and with transitive consistency on top."""
    started = time.perf_counter()
    result = run_stack(cfg, dirs, out)
    seconds = time.perf_counter() - started
    oof, test = result.oof, result.test
    share = cfg.submit.positive_share
    choice = choose_shares(oof, oof["prob"].to_numpy(), share)
    row = {
        "oof_eer": result.metrics["stack"]["eer"],
        "oof_acc_balanced": choice.oof_accuracy_before,
        "oof_acc_transitive_nested": nested_oof_accuracy(oof, oof["prob"].to_numpy(), share),
        "transitive_shares": [choice.high_share, choice.low_share],
        "transitive_by_default": decide(oof, oof["prob"].to_numpy(), share).high_share is not None,
        "stack_seconds": seconds,
    }
    if key is not None:
        prob = test["prob"].to_numpy()
        row["test_acc"] = accuracy_at(prob, key, balanced_threshold(prob, share))
        labels = balanced_labels(prob, share)[0]
        if choice.high_share is not None:
            moved = propagate_shares(test, prob, choice.high_share, choice.low_share)
            labels = relabel(moved, prob, share)
        row["test_acc_transitive"] = float((labels == key).mean())
        row["test_acc_default"] = (
            row["test_acc_transitive"] if row["transitive_by_default"] else row["test_acc"]
        )
    return row


def subsampled_copy(dirs: list[Path], root: Path, seed: int) -> list[Path]:
    """Experiment folders whose OOF graphs hold half of each fold's clips (and their trials)."""
    experiments = align_experiments([load_experiment(d) for d in dirs])
    rng = np.random.default_rng(seed)
    clips = pd.unique(pd.concat([experiments[0].oof["audio_1"], experiments[0].oof["audio_2"]]))
    kept = set(rng.choice(clips, len(clips) // 2, replace=False).tolist())
    copies = []
    for experiment, directory in zip(experiments, dirs, strict=True):
        target = root / directory.name
        target.mkdir(parents=True)
        oof = experiment.oof
        oof[oof["audio_1"].isin(kept) & oof["audio_2"].isin(kept)].to_csv(
            target / "oof_scores.csv", index=False
        )
        shutil.copy(directory / "test_scores.csv", target / "test_scores.csv")
        for fold in experiment.folds:
            emb = load_embeddings(directory / f"fold{fold}" / "embeddings.npz")
            keep = (emb["role"] != "oof") | np.isin(emb["ids"], list(kept))
            write_npz(
                target / f"fold{fold}" / "embeddings.npz",
                **{k: v[keep] if v.ndim else v for k, v in emb.items()},
            )
        copies.append(target)
    return copies


def adversarial_by_group(cfg: ExperimentConfig, dirs: list[Path]) -> dict[str, float]:
    """AUC of telling OOF trials from test pairs by each graph-feature group alone (all graphs:
    each experiment's and the fused one), as the stack stage records it."""
    experiments = align_experiments([load_experiment(d) for d in dirs])
    return graph_group_aucs(load_graph_views(experiments, dirs)[0], experiments[0], cfg)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--experiments", required=True, help="comma-separated run folders")
    parser.add_argument("--json", type=Path, default=Path("bench/graph.json"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    setup_logging(logging.WARNING)
    cfg = load_config(args.config, args.overrides)
    names = args.experiments.split(",")
    key_path = cfg.paths.input / "public-test-labels.csv"
    key = pd.read_csv(key_path)["label"].to_numpy() if key_path.is_file() else None
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for group in ([names[0]], names) if len(names) > 1 else ([names[0]],):
            dirs = [cfg.paths.outputs / n for n in group]
            for graph in (False, True):
                label = f"{'+'.join(group)}, graph features {'on' if graph else 'off'}"
                rows[label] = evaluate(with_stack(cfg, group, graph), dirs, key, scratch / label)
                print(label, rows[label], flush=True)
        dirs = [cfg.paths.outputs / n for n in names]
        half = subsampled_copy(dirs, scratch / "half", cfg.seed)
        half_paths = {"outputs": scratch / "half", "prep": cfg.paths.prep_dir}
        half_cfg = cfg.model_copy(update={"paths": cfg.paths.model_copy(update=half_paths)})
        for graph in (False, True):
            label = f"half-size OOF graphs, graph features {'on' if graph else 'off'}"
            rows[label] = evaluate(with_stack(half_cfg, names, graph), half, key, scratch / label)
            print(label, rows[label], flush=True)
        started = time.perf_counter()
        adversarial = adversarial_by_group(cfg, dirs)
        print(
            "adversarial AUC per graph-feature group:",
            adversarial,
            f"{time.perf_counter() - started:.1f} s",
        )
    write_json(
        args.json, {"command": " ".join(sys.argv), "results": rows, "adversarial_auc": adversarial}
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
