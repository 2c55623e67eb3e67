"""Speed benchmark: every hot path of the pipeline, median of several runs, CPU and CUDA.

Measures decode+resample (prepare on synthetic 44.1/48 kHz files), log-mel, training samples/s
at 2 s crops, embedding real-time factor, scoring of 50,000 pairs, and stacking + submission
for 50,000 test pairs. Prints a table and writes JSON.

Usage::

    .venv/bin/python bench/speed.py [--repeats 5] [--json bench/speed.json] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.config import ExperimentConfig, load_config
from src.data.prepare import prepare_stage
from src.features.logmel import LogMel
from src.inference.extractors import ModuleExtractor
from src.inference.score import asnorm, cohort_stats, cosine_pairs
from src.training.train import TrainingModule
from src.util.io import write_json
from src.util.logs import setup_logging

RATE = 16000


def median_time(run: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of ``run`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_decode(cfg: ExperimentConfig, repeats: int, n_files: int) -> dict:
    """prepare (scan, decode, resample to 16 kHz, md5, cache) on synthetic 4 s files."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        for i in range(n_files):
            rate = (44100, 48000, 16000)[i % 3]
            wave = 0.1 * rng.standard_normal(int(4.0 * rate)).astype(np.float32)
            folder = root / "train" / f"{i % 20}-{'MF'[i % 2]}-30"
            folder.mkdir(parents=True, exist_ok=True)
            sf.write(folder / f"{i}.wav", wave, rate, subtype="PCM_16")
        audio_seconds = n_files * 4.0
        run_cfg = load_config(None, [f"paths.input={root}", f"paths.outputs={Path(tmp) / 'out'}"])
        seconds = median_time(lambda: prepare_stage(run_cfg, force=True), repeats, warmup=0)
    return {"what": "decode+resample (prepare)", "value": audio_seconds / seconds,
            "unit": "s audio / s", "workers": os.cpu_count()}  # fmt: skip


def bench_logmel(cfg: ExperimentConfig, device: torch.device, repeats: int) -> dict:
    front = LogMel(cfg.features, RATE).to(device)
    batch = torch.randn(32, 3 * RATE, device=device)
    with torch.inference_mode():
        seconds = median_time(lambda: front(batch), repeats)
    return {"what": "log-mel", "value": 32 * 3 / seconds, "unit": "s audio / s"}


def bench_train(cfg: ExperimentConfig, device: torch.device, repeats: int) -> dict:
    """Forward + backward + AdamW step, batch of 2 s crops, 200 training speakers."""
    module = TrainingModule(cfg, n_speakers=200).to(device).train()
    optimiser = torch.optim.AdamW(module.parameters(), lr=1e-3)
    batch = cfg.train.batch_size
    waves = torch.randn(batch, 2 * RATE, device=device)
    labels = torch.randint(0, 200, (batch,), device=device)
    genders = torch.randint(0, 2, (batch,), device=device)
    amp = cfg.train.amp and device.type == "cuda"

    def step() -> None:
        with torch.autocast(device.type, enabled=amp):
            loss, _ = module(waves, labels, genders)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    seconds = median_time(step, repeats)
    return {"what": "training (2 s crops)", "value": batch / seconds, "unit": "samples / s",
            "batch": batch}  # fmt: skip


def bench_embed(cfg: ExperimentConfig, device: torch.device, repeats: int) -> dict:
    module = TrainingModule(cfg, n_speakers=10).model.to(device).eval()
    extractor = ModuleExtractor(module, device, cfg.model.embedding_dim, "bench")
    window = int(cfg.embed.window_seconds * RATE)
    waves = np.random.default_rng(0).standard_normal((40, window)).astype(np.float32)
    seconds = median_time(lambda: extractor.embed(waves), repeats)
    return {"what": "embedding (windows)", "value": 40 * window / RATE / seconds,
            "unit": "s audio / s"}  # fmt: skip


def bench_scoring(repeats: int, n_pairs: int = 50000) -> dict:
    """Cosine + AS-norm for 50,000 pairs over 5,000 clips with a 400-speaker cohort."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((5000, 256)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    cohort = vectors[:400]
    left = rng.integers(0, 5000, n_pairs)
    right = rng.integers(0, 5000, n_pairs)

    def score() -> None:
        stats = cohort_stats(vectors, cohort, 100)
        asnorm(cosine_pairs(vectors, left, right), stats, left, right)

    seconds = median_time(score, repeats)
    return {"what": f"scoring {n_pairs} pairs (cosine + AS-norm)", "value": seconds, "unit": "s"}


def bench_stacking(n_pairs: int = 50000) -> list[dict]:
    from tests.fixtures.stack_inputs import benchmark

    with tempfile.TemporaryDirectory() as tmp:
        timings = benchmark(Path(tmp), n_test_pairs=n_pairs)
    wanted = ("stack", "submit", "report")
    return [
        {"what": f"{name} ({n_pairs} test pairs)", "value": seconds, "unit": "s"}
        for name, seconds in timings.items()
        if name in wanted
    ]


def bench_graph(
    n_test: int = 2789, n_pairs: int = 50000, folds: int = 5, fused_only: bool = True
) -> dict:
    """Trial-graph features at Zalo size: 2 experiments (one fold-independent) and their fused
    graph, one graph per fold each (since 2026-11-30: 1/5 of 10,556 held-out clips with 20,000
    trials and the 2,789 test clips with the 50,000 test pairs; before, the two were separate
    graphs). ``fused_only``: the fused graphs alone, as the stack computes them by default
    (``stack.graph_fused_only``, since 2026-11-30 evening); else each experiment's too."""
    import pandas as pd

    from src.stacking.graph import graph_feature_views

    rng = np.random.default_rng(0)
    n_oof = 10556 // folds
    names = np.array([f"t{i}.wav" for i in range(n_test)])
    test = pd.DataFrame(
        {"audio_1": names[rng.integers(0, n_test, n_pairs)],
         "audio_2": names[rng.integers(0, n_test, n_pairs)]}
    )  # fmt: skip
    oof_parts = []
    for fold in range(folds):
        ids = np.array([f"f{fold}/{i}" for i in range(n_oof)])
        a, b = rng.integers(0, n_oof, 20000), rng.integers(0, n_oof, 20000)
        oof_parts.append(pd.DataFrame({"fold": fold, "audio_1": ids[a], "audio_2": ids[b],
                                       "label": rng.integers(0, 2, 20000),
                                       "cosine": rng.normal(size=20000)}))  # fmt: skip
    oof = pd.concat(oof_parts, ignore_index=True)

    def unit(n: int) -> np.ndarray:
        v = rng.normal(size=(n, 256)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    shared_test = unit(n_test)
    experiments = {}
    for name, fold_independent in (("cnn", False), ("ge2e", True)):
        experiments[name] = {
            fold: {
                "ids": np.concatenate([[f"f{fold}/{i}" for i in range(n_oof)], "p/" + names]),
                "role": np.array(["oof"] * n_oof + ["test"] * n_test),
                "vectors": np.concatenate(
                    [unit(n_oof), shared_test if fold_independent else unit(n_test)]
                ),
            }
            for fold in range(folds)
        }

    graphs = {name: {f: [e] for f, e in per_fold.items()} for name, per_fold in experiments.items()}
    graphs["fused"] = {f: [experiments[n][f] for n in experiments] for f in range(folds)}
    if fused_only:
        graphs = {"fused": graphs["fused"]}

    def run() -> None:  # as the stack stage calls it: every graph in one pool
        graph_feature_views(graphs, oof, test)

    seconds = median_time(run, repeats=1, warmup=0)
    which = "fused graph of 2 experiments" if fused_only else "2 experiments + fused"
    what = f"graph features, {n_pairs} test pairs over {n_test} clips, {which}"
    return {"what": what + f", {folds} fold views", "value": seconds, "unit": "s"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("configs/base.yaml"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=Path("bench/speed.json"))
    parser.add_argument("--quick", action="store_true", help="fewer files, skip stacking")
    parser.add_argument("overrides", nargs="*", help="config overrides, key.sub=value")
    args = parser.parse_args(argv)
    setup_logging()
    cfg = load_config(args.config, args.overrides)
    rows = [bench_decode(cfg, min(args.repeats, 3), 40 if args.quick else 150)]
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        for bench in (bench_logmel, bench_train, bench_embed):
            rows.append({**bench(cfg, device, args.repeats), "device": device.type})
    rows.append(bench_scoring(args.repeats))
    if not args.quick:
        rows.extend(bench_stacking())
        rows.append(bench_graph())
    print("| measurement | device | value | unit |\n|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['what']} | {row.get('device', 'cpu')} | {row['value']:.3f} | {row['unit']} |"
        )
    write_json(
        args.json,
        {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
            "torch_threads": torch.get_num_threads(),
            "command": " ".join(sys.argv),
            "config": str(args.config),
            "overrides": args.overrides,
            "rows": rows,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
