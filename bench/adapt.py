"""Test-set adaptation (issue 36): each ``score.adapt`` method side by side, runs and stack.

For each method the stacked configs are run as variants (``score.adapt=<method>``: their own
run folders), their frozen encoders' clip vectors seeded from the plain runs' stores (nothing is
embedded twice), then stack, submit and report. Printed and written as JSON per method: each
run's OOF EER (cosine, AS-norm, adapted) and test accuracy, the stack's OOF EER and test
accuracy, adversarial AUCs (OOF trials vs test pairs: the stack's on metadata, its graph
groups', and the runs' score columns'), and the pseudo-speakers of the
held-out clips (OOF) and of the test clips against their true speakers (read from
``public-test-meta.csv`` for this table only: nothing is chosen on it).

Usage::

    .venv/bin/python bench/adapt.py --config configs/libri_campplus.yaml \
        --config configs/libri_ge2e.yaml [--data DIR] --methods none,wccn,cohort,wccn_cohort \
        --json bench/adapt_libri.json [key=value ...]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.accuracy import FIRST_LEVEL, SECOND_LEVEL, results_table, run_stage, stacking_configs
from src.config import ExperimentConfig, load_config
from src.inference.adapt import cluster_report, pseudo_speakers
from src.inference.embed import load_embeddings
from src.stacking.adversarial import adversarial_validation
from src.util.io import read_json, write_json
from src.util.logs import setup_logging

log = logging.getLogger("bench.adapt")
STORE = "clip_embeddings.npz"


def seed_store(plain: ExperimentConfig, variant: ExperimentConfig) -> None:
    """Copy a frozen run's clip-vector store into its variant's folder (same extractor)."""
    source, target = plain.experiment_dir / STORE, variant.experiment_dir / STORE
    if source.is_file() and not target.is_file() and source != target:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def test_purity(cfg: ExperimentConfig) -> dict | None:
    """Pseudo-speakers of the test clips (fold 0's model) against ``public-test-meta.csv``."""
    meta_path = cfg.paths.input / "public-test-meta.csv"
    emb_path = cfg.fold_dir(0) / "embeddings.npz"
    if not meta_path.is_file() or not emb_path.is_file():
        return None
    emb = load_embeddings(emb_path)
    rows = np.flatnonzero(emb["role"] == "test")
    names = [i.rsplit("/", 1)[-1] for i in emb["ids"][rows]]
    meta = pd.read_csv(meta_path, dtype={"file": str, "speaker": str}).set_index("file")
    speakers = meta["speaker"].reindex(names).fillna("?").to_numpy(str)
    return cluster_report(pseudo_speakers(emb["vectors"][rows]), speakers)


def score_shift(configs: list[ExperimentConfig]) -> dict:
    """Adversarial AUC of the runs' score columns (OOF trials vs fold 0's view of the test
    pairs, as the fold-0 stacker meets them): all columns together and each alone."""
    oof_parts, test_parts = [], []
    for cfg in configs:
        oof = pd.read_csv(cfg.experiment_dir / "oof_scores.csv")
        test = pd.read_csv(cfg.experiment_dir / "test_scores.csv")
        columns = [c for c in ("cosine", "asnorm", "adapted") if c in oof.columns]
        oof_parts.append(oof[columns].add_prefix(f"{cfg.experiment}__"))
        view = test[[f"{c}_fold0" for c in columns]].set_axis(columns, axis=1)
        test_parts.append(view.add_prefix(f"{cfg.experiment}__"))
    pairs = ["audio_1", "audio_2"]
    table, summary = adversarial_validation(
        pd.concat(oof_parts, axis=1),
        pd.concat(test_parts, axis=1),
        configs[0].stack,
        configs[0].seed,
        oof[pairs],
        test[pairs],
    )
    return {
        "auc": summary["auc"],
        "per_feature": dict(zip(table["feature"], table["auc"], strict=True)),
    }


def method_results(configs: list[ExperimentConfig]) -> dict:
    """What one method's runs and stack measured."""
    lead = configs[0]
    report = read_json(lead.report_dir / "metrics.json")
    stack = read_json(lead.stack_dir / "metrics.json")
    adversarial = lead.stack_dir / "adversarial.json"
    runs = {}
    for cfg in configs:
        metrics = read_json(cfg.experiment_dir / "metrics.json")
        runs[cfg.run_name] = {
            "oof_eer": {k: v["eer"] for k, v in metrics["oof"].items()},
            "test_accuracy": {
                k: v["accuracy_balanced"]
                for k, v in metrics.get("test", {}).items()
                if isinstance(v, dict) and "accuracy_balanced" in v
            },
            "adapt": metrics.get("adapt"),
            "test_pseudo_speakers": test_purity(cfg),
        }
    return {
        "runs": runs,
        "sources": results_table(report),
        "stack_adversarial_auc": (
            read_json(adversarial).get("auc") if adversarial.is_file() else None
        ),
        "graph_adversarial_auc": stack.get("graph_adversarial_auc"),
        "score_adversarial_auc": score_shift(configs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", required=True, type=Path)
    parser.add_argument("--data", type=Path, default=None, help="override paths.input")
    parser.add_argument("--methods", default="none,whiten,wccn,cohort,wccn_cohort")
    parser.add_argument("--json", type=Path, default=Path("bench/adapt.json"))
    parser.add_argument("overrides", nargs="*", help="key=value for every config")
    args = parser.parse_args(argv)
    setup_logging()
    extra = [f"paths.input={args.data}"] if args.data else []
    plain = [load_config(c, [*extra, *args.overrides]) for c in args.config]
    results: dict[str, dict] = {}
    for method in args.methods.split(","):
        adapt = [] if method == "none" else [f"score.adapt={method}"]
        configs = stacking_configs(args.config, args.data, [*args.overrides, *adapt])
        started = time.perf_counter()
        for base, cfg in zip(plain, configs, strict=True):
            seed_store(base, cfg)
            for stage in FIRST_LEVEL:  # score always redone: seconds, and its stamp has
                run_stage(stage, cfg, force=stage == "score")  # no code in it
        for stage in SECOND_LEVEL:
            run_stage(stage, configs[0], force=True)
        results[method] = method_results(configs) | {"wall_s": time.perf_counter() - started}
        stack = next(r for r in results[method]["sources"] if r["source"] == "stack")
        log.info(
            "%s: stack OOF EER %.4f, test accuracy %.4f, adversarial AUC %s",
            method,
            stack["oof_eer"],
            stack.get("test_acc_balanced") or float("nan"),
            results[method]["stack_adversarial_auc"],
        )
    write_json(
        args.json,
        {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
            "data": str(plain[0].paths.input),
            "methods": results,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
