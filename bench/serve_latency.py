"""The served bundle, measured: start time, latency, throughput, torch vs ONNX, and its answers.

For each ``--runtimes`` (side by side, one after the other, on this machine) it starts
``python -m src serve`` on the bundle in its own process, as a user would, and measures:

- server start: seconds from the process start until ``/health`` answers (imports, checksum
  check, model load);
- latency per pair: ``--pairs`` sequential ``/api/predict`` requests of two ``--seconds`` clips
  (median, p95);
- throughput with ``--clients`` concurrent clients (``--requests`` in all).

With ``--answers``, every test pair of the stack's data set goes through HTTP (``predict_batch``
in chunks of at most ``--batch-files`` files, plus ``--single`` pairs through ``/api/predict``)
and is compared with the pipeline's ``bundle_probability``/``bundle_label`` columns of
``submission_scores.csv``, and with the answer key when ``public-test-labels.csv`` exists.

Usage::

    .venv/bin/python -m bench.serve_latency --config configs/libri_lmft.yaml \\
        --bundle outputs/libri/bundle-a7bf9b61 --answers --out outputs/bench/serve.json \\
        "stack.experiments=[libri_cnn,libri_cnn_lmft,libri_resemblyzer,libri_ge2e_ft]"
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import soundfile as sf

from src.config import load_config
from src.serve.bundle import verify_bundle
from src.util.io import write_json
from src.util.logs import setup_logging
from tests.fixtures.speech import speech_like

log = logging.getLogger("bench.serve_latency")
REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON result")
    parser.add_argument("--config", type=Path, required=True, help="the stack's config")
    parser.add_argument("--bundle", type=Path, default=None, help="default: the config's")
    parser.add_argument(
        "--runtimes", nargs="+", default=["torch", "onnx"], choices=["torch", "onnx"]
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each clip")
    parser.add_argument("--pairs", type=int, default=30, help="sequential requests timed")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=40, help="requests in the load test")
    parser.add_argument("--answers", action="store_true", help="send every test pair too")
    parser.add_argument("--batch-files", type=int, default=400, help="files per batch request")
    parser.add_argument("--single", type=int, default=40, help="test pairs sent one by one")
    parser.add_argument("overrides", nargs="*", help="config overrides, key.sub=value")
    return parser.parse_args(argv)


def wav_bytes(wave: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def summary_ms(seconds: list[float]) -> dict[str, float]:
    values = np.array(seconds) * 1000.0
    return {
        "n": int(values.size),
        "median_ms": float(np.median(values)),
        "p95_ms": float(np.percentile(values, 95)),
        "mean_ms": float(values.mean()),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args: argparse.Namespace, bundle: Path, runtime: str) -> tuple[Any, str, float]:
    """``python -m src serve`` in its own process; returns it, its URL and its start time."""
    port = free_port()
    command = [
        sys.executable, "-m", "src", "serve", "--config", str(args.config), *args.overrides,
        f"serve.bundle={bundle}", f"serve.runtime={runtime}", f"serve.port={port}",
        "serve.max_pending=64", f"serve.max_batch_files={args.batch_files}",
    ]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=sys.stderr)
    url = f"http://127.0.0.1:{port}"
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the {runtime} server exited with code {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url, time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.1)


def timed_post(client: httpx.Client, files: dict[str, tuple[str, bytes]]) -> float:
    started = time.perf_counter()
    client.post("/api/predict", files=files).raise_for_status()
    return time.perf_counter() - started


def load_test(url: str, files: dict, clients: int, requests: int) -> tuple[float, list[float]]:
    """Wall time of ``requests`` posts spread over ``clients`` threads, and each latency."""
    per_client = [requests // clients + (i < requests % clients) for i in range(clients)]

    def run_client(count: int) -> list[float]:
        with httpx.Client(base_url=url, timeout=600) as client:
            return [timed_post(client, files) for _ in range(count)]

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [t for batch in pool.map(run_client, per_client) for t in batch]
    return time.perf_counter() - started, latencies


def chunks(pairs: pd.DataFrame, max_files: int) -> list[pd.DataFrame]:
    """Consecutive groups of pairs naming at most ``max_files`` distinct files each."""
    groups, rows, files = [], [], set()
    for row in pairs.itertuples():
        names = {row.audio_1, row.audio_2}
        if rows and len(files | names) > max_files:
            groups.append(pairs.loc[rows])
            rows, files = [], set()
        rows.append(row.Index)
        files |= names
    groups.append(pairs.loc[rows])
    return groups


def answers_over_http(url: str, cfg, args: argparse.Namespace) -> dict[str, Any]:
    """Every test pair through predict_batch (and some through predict), against the pipeline."""
    expected = pd.read_csv(cfg.submission_scores_path, dtype={"audio_1": str, "audio_2": str})
    scored = expected[expected["bundle_probability"].notna()].reset_index(drop=True)
    folder = cfg.paths.input / cfg.data.test_dir
    probabilities, labels = [], []
    started = time.perf_counter()
    with httpx.Client(base_url=url, timeout=600) as client:
        for group in chunks(scored, args.batch_files):
            names = sorted(set(group["audio_1"]) | set(group["audio_2"]))
            files = [("files", (n, (folder / n).read_bytes())) for n in names]
            text = group[["audio_1", "audio_2"]].to_csv(index=False)
            response = client.post("/api/predict_batch", files=files, data={"pairs": text})
            response.raise_for_status()
            for result in response.json()["results"]:
                probabilities.append(result["probability"])
                labels.append(result["label"])
        batch_seconds = time.perf_counter() - started
        single = []
        for row in scored.head(args.single).itertuples():
            files = {
                "audio_1": (row.audio_1, (folder / row.audio_1).read_bytes()),
                "audio_2": (row.audio_2, (folder / row.audio_2).read_bytes()),
            }
            single.append(client.post("/api/predict", files=files).json()["probability"])
    got = np.array(probabilities, dtype=np.float64)
    want = scored["bundle_probability"].to_numpy(np.float64)
    result = {
        "pairs": len(scored),
        "batch_seconds": batch_seconds,
        "max_abs_probability_difference": float(np.abs(got - want).max()),
        "labels_equal_pipeline_bundle": int((np.array(labels) == scored["bundle_label"]).sum()),
        "single_vs_batch_max_difference": float(
            np.abs(np.array(single) - got[: len(single)]).max()
        ),
    }
    key_path = cfg.paths.input / "public-test-labels.csv"
    if key_path.is_file():
        key = pd.read_csv(key_path, dtype={"audio_1": str, "audio_2": str})
        merged = scored.merge(key, on=["audio_1", "audio_2"], suffixes=("", "_key"))
        truth = merged["label_key"].to_numpy()
        result["accuracy_http"] = float((np.array(labels) == truth).mean())
        result["accuracy_pipeline_bundle"] = float((merged["bundle_label"] == truth).mean())
        result["accuracy_pipeline_submission"] = float((merged["label"] == truth).mean())
    return result


def measure(args: argparse.Namespace, cfg, bundle: Path, runtime: str) -> dict[str, Any]:
    process, url, start_seconds = start_server(args, bundle, runtime)
    try:
        rate = cfg.data.sample_rate
        one = wav_bytes(speech_like(args.seconds, seed=1), rate)
        two = wav_bytes(speech_like(args.seconds, seed=2), rate)
        files = {"audio_1": ("a.wav", one), "audio_2": ("b.wav", two)}
        with httpx.Client(base_url=url, timeout=600) as client:
            for _ in range(3):  # warm-up: first calls allocate
                timed_post(client, files)
            sequential = [timed_post(client, files) for _ in range(args.pairs)]
        wall, loaded = load_test(url, files, args.clients, args.requests)
        result = {
            "server_start_seconds": start_seconds,
            "latency_one_client": summary_ms(sequential),
            "concurrent": {
                "clients": args.clients,
                "requests": args.requests,
                "requests_per_second": args.requests / wall,
                "latency": summary_ms(loaded),
            },
        }
        if args.answers:
            result["answers"] = answers_over_http(url, cfg, args)
        return result
    finally:
        process.terminate()
        process.wait(30)


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per request
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    bundle = args.bundle or cfg.bundle_dir
    manifest = verify_bundle(bundle)
    result: dict[str, Any] = {
        "bundle": str(bundle),
        "bundle_mb": sum(f["bytes"] for f in manifest["files"].values()) / 2**20,
        "runs": list(manifest["experiments"]),
        "clip_seconds": args.seconds,
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "load_average_before": os.getloadavg(),
        "runtimes": {},
    }
    for runtime in args.runtimes:
        log.info("measuring the %s runtime", runtime)
        result["runtimes"][runtime] = measure(args, cfg, bundle, runtime)
    result["load_average_after"] = os.getloadavg()
    write_json(args.out, result)
    print(json.dumps(result, indent=2))
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
