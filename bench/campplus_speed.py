"""Speed of the pretrained CAM++ on CPU: torch vs its ONNX export, and short clips.

The frozen CAM++ of ``configs/libri_campplus.yaml`` (the wheel's checkpoint; needs
requirements-campplus.txt) embeds the same batch of 3 s windows through the project's
``pretrained`` extractor (torch) and through its ONNX export (the bundle's ``model.onnx``:
fbank in torch, the network in onnxruntime). Prints seconds of audio per second (median of
repeats), their largest difference, the time of one pair of clips (two embeddings, batch 1,
as the API computes them per request) and the machine's load average, since a shared machine
skews every figure.

Usage::

    .venv/bin/python bench/campplus_speed.py [--threads 2] [--windows 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.config import load_config
from src.inference.extractors import build_extractor
from src.serve.onnx_models import OnnxFoldExtractor, export_fold_onnx
from tests.fixtures.speech import speech_like

REPO = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 16000


def seconds_per_call(function, repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--windows", type=int, default=16, help="3 s windows per batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pair-seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(REPO / "configs/libri_campplus.yaml", ["train.device=cpu"])
    torch_extractor = build_extractor(cfg, 0)
    waves = np.stack([speech_like(3.0, s) for s in range(args.windows)])
    audio = waves.shape[0] * waves.shape[1] / SAMPLE_RATE
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        difference = export_fold_onnx(torch_extractor.model, path, SAMPLE_RATE, cfg.export.opset)
        onnx_extractor = OnnxFoldExtractor(torch_extractor, path, threads=args.threads)
        pair = [speech_like(args.pair_seconds, s)[None] for s in (1, 2)]
        rows = []
        for name, extractor in (("torch", torch_extractor), ("onnxruntime", onnx_extractor)):
            batch = seconds_per_call(lambda e=extractor: e.embed(waves), args.repeats)
            one_pair = seconds_per_call(
                lambda e=extractor: [e.embed(w) for w in pair], args.repeats
            )
            rows.append((name, audio / batch, 1000 * one_pair))
        gap = np.abs(torch_extractor.embed(waves) - onnx_extractor.embed(waves)).max()
    params = sum(p.numel() for p in torch_extractor.model.parameters())
    print(f"CAM++ (campplus_cn_en_common.pt), {params / 1e6:.2f} M parameters, CPU, "
          f"{args.threads} threads, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"| runtime | s of audio / s ({args.windows} x 3 s) | one pair of "
          f"{args.pair_seconds:g} s clips (ms) |\n|---|---|---|")  # fmt: skip
    for name, speed, latency in rows:
        print(f"| {name} | {speed:.1f} | {latency:.0f} |")
    print(f"export check (random clips): {difference:.2e}; unit embeddings torch vs onnx: "
          f"{gap:.2e}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
