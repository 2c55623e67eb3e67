"""The served answers against the submission: the whole public test as one ``/api/predict_batch``.

After the pipeline has run (first levels, ``stack``, ``submit``; e.g. ``bench/accuracy.py`` with
the same ``--config`` list), this exports the stack (timed; the bundle's size in all and of its
graph part: the graph stacker and the held-out clips' embeddings), starts the API on loopback
and sends every public-test clip with ``public-test.csv`` in one request, twice: ``stacker=auto``
(the graph stacker for a whole test) and ``stacker=pairwise`` (the stacker without graph
features, which ``/api/predict`` serves for a single pair: ``--single`` sampled pairs are also
sent to ``/api/predict`` one by one to check that both give the same probabilities). It prints,
on the scored rows (pairs whose clips are both usable), the largest difference between the
batch's probabilities and the stack's, the labels that differ from the submission, and with an
answer key (``public-test-labels.csv``) the accuracy of the submission, of the graph batch and of
the pairwise answers; and the wall time and peak memory of each request.

Usage::

    .venv/bin/python -m bench.served_batch --config configs/libri_campplus.yaml \\
        --config configs/libri_resemblyzer.yaml --json bench/served_batch_libri.json
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.accuracy import stacking_configs
from src.config import ServeConfig
from src.data.pairs import read_answer_key
from src.serve.app import BackgroundServer, create_app
from src.serve.ensemble import BundleModel
from src.serve.export import export_stage
from src.util.io import write_json
from src.util.logs import setup_logging

log = logging.getLogger("bench.served_batch")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def bundle_sizes(root: Path, manifest: dict[str, Any]) -> dict[str, float]:
    """MB of the bundle in all and of what the graph stacker adds."""
    files = manifest["files"]
    graph = sum(
        f["bytes"]
        for name, f in files.items()
        if name.endswith("held_out.npy") or "/graph_stacker/" in f"/{name}"
    )
    total = sum(f["bytes"] for f in files.values())
    return {"total_mb": round(total / 2**20, 2), "graph_part_mb": round(graph / 2**20, 2)}


def send_batch(client: httpx.Client, files: list, pairs: str, stacker: str) -> dict[str, Any]:
    started = time.perf_counter()
    response = client.post(
        "/api/predict_batch", files=files, data={"pairs": pairs, "stacker": stacker}
    )
    seconds = time.perf_counter() - started
    response.raise_for_status()
    return response.json() | {"seconds": round(seconds, 2)}


def accuracy(labels: pd.Series, truth: pd.Series) -> float | None:
    known = truth.notna() & labels.notna()
    return None if not known.any() else float((labels[known] == truth[known]).mean())


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", required=True, type=Path)
    parser.add_argument("--data", type=Path, default=None, help="override paths.input")
    parser.add_argument("--single", type=int, default=40, help="pairs sent to /api/predict")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="key=value for every config")
    args = parser.parse_args(argv)
    cfg = stacking_configs(args.config, args.data, args.overrides)[0]

    started = time.perf_counter()
    root = export_stage(cfg, force=True)
    export_seconds = time.perf_counter() - started
    model = BundleModel.load(root)
    folder = cfg.paths.input / cfg.data.test_dir
    pairs_text = (cfg.paths.input / cfg.data.test_csv).read_text(encoding="utf-8")
    files = [("files", (p.name, p.read_bytes())) for p in sorted(folder.iterdir()) if p.is_file()]
    scores = pd.read_csv(cfg.submission_scores_path)
    stack = pd.read_csv(cfg.stack_dir / "test_predictions.csv")
    key_path = cfg.paths.input / "public-test-labels.csv"
    truth = read_answer_key(key_path)["label"] if key_path.is_file() else None

    serve = ServeConfig()
    with (
        BackgroundServer(create_app(model, serve, cfg.checks)) as server,
        httpx.Client(base_url=server.url, timeout=3600) as client,
    ):
        graph = send_batch(client, files, pairs_text, "auto")
        pairwise = send_batch(client, files, pairs_text, "pairwise")
        rng = np.random.default_rng(cfg.seed)
        answered = [i for i, r in enumerate(pairwise["results"]) if r["error"] is None]
        sample = rng.choice(answered, min(args.single, len(answered)), replace=False)
        single_started = time.perf_counter()
        single_diff = 0.0
        for i in sample.tolist():
            row = pairwise["results"][i]
            one = client.post(
                "/api/predict",
                files={
                    "audio_1": (row["audio_1"], (folder / row["audio_1"]).read_bytes()),
                    "audio_2": (row["audio_2"], (folder / row["audio_2"]).read_bytes()),
                },
            ).json()
            single_diff = max(single_diff, abs(one["probability"] - row["probability"]))
        single_seconds = (time.perf_counter() - single_started) / max(len(sample), 1)

    table = pd.DataFrame(
        {
            "graph_prob": [r["probability"] for r in graph["results"]],
            "graph_label": [r["label"] for r in graph["results"]],
            "pairwise_prob": [r["probability"] for r in pairwise["results"]],
            "pairwise_label": [r["label"] for r in pairwise["results"]],
        }
    )
    scored = (scores["fallback"].fillna("") == "") if "fallback" in scores else scores["label"] > -1
    table, scores_scored = table[scored.to_numpy()], scores[scored]
    stack_prob = stack["prob"].to_numpy()
    result: dict[str, Any] = {
        "configs": [str(c) for c in args.config],
        "test_clips": len(files),
        "pairs": len(scores),
        "scored_pairs": int(scored.sum()),
        "export_seconds": round(export_seconds, 1),
        "bundle": bundle_sizes(root, model.manifest),
        "graph_request": {
            "stacker": graph["stacker"],
            "seconds": graph["seconds"],
            "max_abs_prob_diff_vs_stack": float(np.abs(table["graph_prob"] - stack_prob).max()),
            "labels_differing_from_submission": int(
                (table["graph_label"].to_numpy() != scores_scored["label"].to_numpy()).sum()
            ),
        },
        "pairwise_request": {
            "seconds": pairwise["seconds"],
            "max_abs_prob_diff_vs_bundle_column": float(
                np.abs(table["pairwise_prob"] - scores_scored["bundle_probability"]).max()
            ),
        },
        "single_pair_api": {
            "pairs_sent": len(sample),
            "seconds_per_pair": round(single_seconds, 3),
            "max_abs_prob_diff_vs_pairwise_batch": single_diff,
        },
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }
    if truth is not None:
        truth = truth[scored.to_numpy()].reset_index(drop=True)
        result["accuracy_scored_pairs"] = {
            "submission": accuracy(scores_scored["label"].reset_index(drop=True), truth),
            "batch_api_graph": accuracy(table["graph_label"].reset_index(drop=True), truth),
            "pairwise_api": accuracy(table["pairwise_label"].reset_index(drop=True), truth),
        }
    log.info("%s", result)
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
