"""GPU check of a training recipe: throughput, memory, input starvation, AMP, embedding speed.

Trains fold 0 of a config (default ``configs/zalo.yaml`` on libri-zalo) for a fixed time with
the project's own data pipeline (speaker-balanced batches of random crops from the int16
cache, waveform augmentation in the loader workers) and model, once with AMP and once in fp32,
then embeds 3 s windows. Prints and writes (``--json``):

- training samples/s, and the share of wall time spent waiting for the next batch (data
  loading starving the GPU when high: move augmentation to the GPU or add workers);
- peak GPU memory (``torch.cuda.max_memory_allocated``) and mean GPU utilisation
  (``nvidia-smi`` sampled every 0.5 s, when present);
- AMP against fp32 (samples/s ratio);
- embedding throughput (seconds of audio per second, 3 s windows).

On a machine without CUDA everything runs on the CPU (the CUDA-only figures are absent), which
is how the test suite checks it. ``bench/gpu_check.sh`` is the one-command wrapper.

Usage::

    .venv/bin/python bench/gpu_check.py [--config configs/zalo.yaml]
        [--data ../shared/data/libri-zalo] [--seconds 90] [--json outputs/gpu_check.json]
        [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.config import ExperimentConfig, load_config
from src.data.cache import AudioCache
from src.data.folds import folds_stage
from src.data.prepare import prepare_stage
from src.features.augment import build_waveform_augment
from src.inference.extractor_base import ModuleExtractor
from src.training.batches import BalancedBatches, TrainingSet
from src.training.train import TrainingModule, fold_training_data
from src.util.logs import setup_logging

REPO = Path(__file__).resolve().parents[1]


class UtilisationSampler:
    """Mean GPU utilisation (%) from ``nvidia-smi`` every ``interval`` s while running."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval, self.samples = interval, []
        self.available = shutil.which("nvidia-smi") is not None and torch.cuda.is_available()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        while not self._stop.wait(self.interval):
            try:
                out = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout
                self.samples.append(float(out.split()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return

    def __enter__(self) -> UtilisationSampler:
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


def train_for(cfg: ExperimentConfig, device: torch.device, amp: bool, seconds: float) -> dict:
    """Train fold 0 for about ``seconds`` (after 3 warm-up steps); throughput and waits."""
    split = fold_training_data(cfg, 0)
    data = TrainingSet.from_files(split.train_files)
    cache = AudioCache(cfg.paths.prep_dir)
    modules = TrainingModule(cfg, len(data.speakers)).to(device).train()
    optimiser = torch.optim.AdamW(modules.parameters(), lr=cfg.train.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda")
    augment = build_waveform_augment(cfg.augment, cfg.data.sample_rate)
    steps = list(range(100_000))
    batches = BalancedBatches(
        data, cache, cfg.train, cfg.data.sample_rate, cfg.seed, 0, steps, augment
    )
    loader = DataLoader(
        batches,
        batch_size=None,
        num_workers=cfg.train.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    waited = computed = 0.0
    samples = done = 0
    started = None
    iterator = iter(loader)
    with UtilisationSampler() as utilisation:
        while True:
            ask = time.perf_counter()
            waves, labels, genders = next(iterator)
            got = time.perf_counter()
            waves, labels, genders = (
                t.to(device, non_blocking=True) for t in (waves, labels, genders)
            )
            with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
                loss, _ = modules(waves, labels, genders)
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            end = time.perf_counter()
            done += 1
            if done == 3:  # warm-up: worker start, cuDNN autotuning
                started = end
                continue
            if started is None:
                continue
            waited += got - ask
            computed += end - got
            samples += waves.shape[0]
            if end - started >= seconds:
                break
    wall = time.perf_counter() - started
    return {
        "amp": amp and device.type == "cuda",
        "steps": done - 3,
        "samples_per_s": samples / wall,
        "data_wait_share": waited / max(waited + computed, 1e-9),
        "peak_gpu_memory_gib": (
            torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        ),
        "gpu_utilisation_pct": utilisation.mean,
        "model": modules.model,
    }


def embedding_speed(model: torch.nn.Module, cfg: ExperimentConfig, device: torch.device) -> float:
    """Seconds of audio embedded per second: batches of 3 s windows, 5 repeats."""
    extractor = ModuleExtractor(model.eval(), device, cfg.model.embedding_dim, "gpu-check")
    rng = np.random.default_rng(0)
    windows = (0.1 * rng.standard_normal((64, 3 * cfg.data.sample_rate))).astype(np.float32)
    extractor.embed(windows[:4])
    started = time.perf_counter()
    for _ in range(5):
        extractor.embed(windows)
    return 5 * 64 * 3 / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "zalo.yaml")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/libri-zalo")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "gpu_check")
    parser.add_argument("--seconds", type=float, default=90.0, help="training time per mode")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    setup_logging()
    cfg = load_config(
        args.config,
        [f"paths.input={args.data}", f"paths.outputs={args.out}", f"paths.folds={args.out}/folds",
         *args.overrides],
    )  # fmt: skip
    prepare_stage(cfg)
    folds_stage(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (no CUDA)"
    runs = [train_for(cfg, device, amp, args.seconds) for amp in (True, False)]
    if device.type != "cuda":
        runs = runs[:1]  # AMP is CUDA-only here: one fp32 run
    embed = embedding_speed(runs[0].pop("model"), cfg, device)
    for run in runs[1:]:
        run.pop("model")
    result = {
        "device": name,
        "config": str(args.config),
        "workers": cfg.train.workers,
        "batch_size": cfg.train.batch_size,
        "crop_seconds": list(cfg.train.crop_seconds),
        "train": runs,
        "amp_speedup": (
            runs[0]["samples_per_s"] / runs[1]["samples_per_s"] if len(runs) == 2 else None
        ),
        "embedding_audio_s_per_s": embed,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
