"""Which graph features move with the graph's size? The same OOF trials, the fold graphs grown.

Usage::

    .venv/bin/python bench/graph_size_audit.py --config configs/libri_campplus.yaml \
        --experiments libri_campplus,libri_ge2e [--factors 1,4] [--json out.json]

Needs ``bench/graph_growth.py`` run once before (its cached vectors of unpaired clips of new
voices under ``<outputs>/graph_growth/``). Every fold graph (each experiment's and the fused
one) is grown with ``(f - 1)`` times the test set's clip count of those clips; the fold's OOF
trials stay as they are. For each feature it prints, over the OOF trials of all folds, the
shift of the median between the first and the last factor in units of the first factor's
interquartile range (same-speaker and different-speaker trials apart), and its OOF AUC at each
factor (how well it separates speakers; 0.5 = not at all, read either way). No test label is
read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sklearn.metrics import roc_auc_score

from src.config import load_config
from src.inference.embed import load_embeddings
from src.stacking.graph import graph_feature_views
from src.stacking.inputs import align_experiments, load_experiment
from src.util.io import write_json


def grown(emb: dict, extra: np.ndarray, count: int) -> dict:
    """``emb`` with ``count`` extra unpaired test clips."""
    ids = np.array([f"public-test/unpaired_{i:05d}.wav" for i in range(count)])
    return {
        "ids": np.concatenate([emb["ids"], ids]),
        "role": np.concatenate([emb["role"], np.full(count, "test")]),
        "vectors": np.concatenate([emb["vectors"], extra[:count].astype(np.float32)]),
    }


def features_at(dirs: list[Path], store: Path, factor: int, oof, test) -> pd.DataFrame:
    """OOF graph features of every prefix with each fold graph grown ``factor`` times."""
    inputs: dict[str, dict[int, list[dict]]] = {}
    for directory in dirs:
        inputs[directory.name] = {}
        for fold in range(5):
            emb = load_embeddings(directory / f"fold{fold}" / "embeddings.npz")
            n_test = int((emb["role"] == "test").sum())
            extra = next(store.glob(f"{directory.name}_fold{fold}_*.npz"))
            vectors = load_embeddings(extra)["vectors"]
            inputs[directory.name][fold] = [grown(emb, vectors, (factor - 1) * n_test)]
    if len(dirs) > 1:
        inputs["fused"] = {f: [inputs[d.name][f][0] for d in dirs] for f in range(5)}
    views = graph_feature_views(inputs, oof, test)
    return pd.concat([v[0] for v in views.values()], axis=1)


def auc(values: np.ndarray, labels: np.ndarray) -> float:
    """AUC read either way (>= 0.5)."""
    score = roc_auc_score(labels, values)
    return float(max(score, 1.0 - score))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--experiments", required=True)
    parser.add_argument("--factors", default="1,4")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    dirs = [cfg.paths.outputs / n for n in args.experiments.split(",")]
    experiments = align_experiments([load_experiment(d) for d in dirs])
    oof, test = experiments[0].oof, experiments[0].test
    labels = oof["label"].to_numpy()
    store = cfg.paths.outputs / "graph_growth"
    factors = [int(f) for f in args.factors.split(",")]
    tables = {f: features_at(dirs, store, f, oof, test) for f in factors}
    first, last = tables[factors[0]], tables[factors[-1]]
    rows = []
    for column in first.columns:
        row = {"feature": column}
        for name, mask in (("same", labels == 1), ("diff", labels == 0)):
            a, b = first[column].to_numpy()[mask], last[column].to_numpy()[mask]
            spread = np.subtract(*np.percentile(a, [75, 25])) or np.std(a) or 1.0
            row[f"shift_{name}"] = float((np.median(b) - np.median(a)) / spread)
        for f in factors:
            row[f"auc_x{f}"] = auc(tables[f][column].to_numpy(), labels)
        rows.append(row)
    table = pd.DataFrame(rows).set_index("feature")
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        print(table.round(3))
    if args.json:
        write_json(args.json, {"command": " ".join(sys.argv), "rows": table.round(4).reset_index()
                               .to_dict(orient="records")})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
