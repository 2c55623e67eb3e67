"""Latency and throughput of the inference API on this machine.

Writes an untrained experiment with the model settings of ``--config`` (random weights: timing
does not depend on training) into a temporary folder, serves it with a real uvicorn server on
a free loopback port, and measures with httpx:

- latency per pair: ``--pairs`` sequential requests of two ``--seconds`` clips (median, p95);
- the model alone (``VerificationModel.score`` in-process), to separate HTTP and decoding cost;
- requests per second with ``--clients`` concurrent clients (one httpx client per thread).

Usage::

    .venv/bin/python -m bench.serve_latency --out outputs/bench/serve_latency.json
    .venv/bin/python -m bench.serve_latency --config configs/demo.yaml --clients 4 train.device=cpu
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
import torch

from src.config import load_config
from src.serve.app import BackgroundServer, create_app
from src.serve.model import VerificationModel
from src.util.io import write_json
from src.util.logs import setup_logging
from tests.fixtures.untrained_experiment import write_untrained_experiment

log = logging.getLogger("bench.serve_latency")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON result")
    parser.add_argument("--config", type=Path, default=Path("configs/demo.yaml"))
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each clip")
    parser.add_argument("--pairs", type=int, default=30, help="sequential requests timed")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=60, help="requests in the load test")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("overrides", nargs="*", help="config overrides, key.sub=value")
    return parser.parse_args(argv)


def clip_bytes(seconds: float, rate: int, seed: int) -> bytes:
    """A WAV file (16-bit) of a harmonic tone plus noise, different for every seed."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    pitch = 100.0 + 80.0 * rng.random()
    wave = sum(np.sin(2 * np.pi * pitch * h * t) / h for h in range(1, 10))
    wave = 0.1 * wave + 0.02 * rng.standard_normal(t.size)
    buffer = io.BytesIO()
    sf.write(buffer, wave.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def summary_ms(seconds: list[float]) -> dict[str, float]:
    values = np.array(seconds) * 1000.0
    return {
        "n": int(values.size),
        "median_ms": float(np.median(values)),
        "p95_ms": float(np.percentile(values, 95)),
        "mean_ms": float(values.mean()),
        "min_ms": float(values.min()),
        "max_ms": float(values.max()),
    }


def timed_post(client: httpx.Client, files: dict[str, tuple[str, bytes]]) -> float:
    started = time.perf_counter()
    response = client.post("/api/predict", files=files)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed


def load_test(url: str, files: dict, clients: int, requests: int) -> tuple[float, list[float]]:
    """Wall time of ``requests`` posts spread over ``clients`` threads, and each latency."""
    per_client = [requests // clients + (i < requests % clients) for i in range(clients)]

    def run_client(count: int) -> list[float]:
        with httpx.Client(base_url=url, timeout=300) as client:
            return [timed_post(client, files) for _ in range(count)]

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [t for batch in pool.map(run_client, per_client) for t in batch]
    return time.perf_counter() - started, latencies


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per request
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="serve_bench_") as tmp:
        cfg = load_config(args.config, [f"paths.outputs={tmp}", *args.overrides])
        write_untrained_experiment(cfg, cohort_speakers=32, clips_per_speaker=4)
        started = time.perf_counter()
        model = VerificationModel.load(cfg)
        load_seconds = time.perf_counter() - started
        rate = cfg.data.sample_rate
        one, two = clip_bytes(args.seconds, rate, 1), clip_bytes(args.seconds, rate, 2)
        files = {"audio_1": ("a.wav", one), "audio_2": ("b.wav", two)}
        waves = [sf.read(io.BytesIO(data), dtype="float32")[0] for data in (one, two)]
        with BackgroundServer(create_app(model, cfg)) as server:
            with httpx.Client(base_url=server.url, timeout=300) as client:
                for _ in range(3):  # warm-up: first calls allocate
                    timed_post(client, files)
                sequential = [timed_post(client, files) for _ in range(args.pairs)]
            model_only = []
            for _ in range(args.pairs):
                started = time.perf_counter()
                model.score(*waves)
                model_only.append(time.perf_counter() - started)
            wall, loaded = load_test(server.url, files, args.clients, args.requests)
    result = {
        "config": str(args.config),
        "overrides": args.overrides,
        "folds": len(model.folds),
        "model": cfg.model.model_dump(mode="json"),
        "embed": cfg.embed.model_dump(mode="json"),
        "clip_seconds": args.seconds,
        "device": str(getattr(model.folds[0].extractor, "device", "n/a")),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "model_load_seconds": load_seconds,
        "latency_sequential": summary_ms(sequential),
        "latency_model_only": summary_ms(model_only),
        "concurrent": {
            "clients": args.clients,
            "requests": args.requests,
            "wall_seconds": wall,
            "requests_per_second": args.requests / wall,
            "latency": summary_ms(loaded),
        },
    }
    write_json(args.out, result)
    print_table(result)
    log.info("wrote %s", args.out)


def print_table(result: dict) -> None:
    rows = [
        ("HTTP, sequential", result["latency_sequential"]),
        ("model only (in-process)", result["latency_model_only"]),
        (f"HTTP, {result['concurrent']['clients']} clients", result["concurrent"]["latency"]),
    ]
    print(
        f"\n{result['folds']} folds, {result['model']['backbone']} width {result['model']['width']}"
        f", two {result['clip_seconds']:g} s clips, {result['torch_threads']} torch threads, "
        f"{result['cpu_count']} CPUs, device {result['device']}"
    )
    print(f"{'latency per pair':<26}{'n':>5}{'median ms':>12}{'p95 ms':>10}{'mean ms':>10}")
    for name, stats in rows:
        print(
            f"{name:<26}{stats['n']:>5}{stats['median_ms']:>12.1f}"
            f"{stats['p95_ms']:>10.1f}{stats['mean_ms']:>10.1f}"
        )
    concurrent = result["concurrent"]
    print(
        f"throughput: {concurrent['requests_per_second']:.2f} requests/s "
        f"({concurrent['requests']} requests, {concurrent['clients']} clients, "
        f"{concurrent['wall_seconds']:.1f} s)"
    )


if __name__ == "__main__":
    main()
