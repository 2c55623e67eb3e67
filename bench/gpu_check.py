"""GPU check of a training recipe: what limits it, each fast default on and off, side by side.

Trains fold 0 of a config (default ``configs/zalo.yaml`` on libri-zalo) for a fixed time per
variant with the project's own data pipeline (speaker-balanced batches of random crops from the
int16 cache, waveform augmentation in the loader workers), model and training step
(``src/training/step.py``: the code that trains). The variants, in one run:

- ``shipped``: the config as given (every ``train.speed`` default on);
- one variant per fast default turned off (fp32, float16 with a loss scaler, no channels-last,
  no fused optimiser, no ``cudnn.benchmark``, no pinned memory), then the options that are off
  by default turned on (``torch.compile``, whole-batch augmentation on the GPU, batch 256 with
  the config's learning-rate scaling).

For each: training samples/s; TFLOP/s achieved and its share of the GPU's dense bf16 peak
(FLOPs of one training step counted once per run with ``torch.utils.flop_counter`` at the mean
crop length; the peak from ``--peak-tflops`` or :data:`PEAK_BF16_TFLOPS`); GPU-busy share
(``nvidia-smi`` utilisation, sampled every 0.5 s: the share of time a kernel was running);
data-wait share (time waiting for the next batch over the step time: high means the loader is
the limit: add ``train.workers`` or set ``augment.batch_on_device``); peak GPU memory; the time
to the first batch of a new loader (what ``persistent_workers`` saves per epoch). Then embedding
throughput (seconds of audio per second, 3 s windows) in fp32 and bf16, in batches of
``embed.batch_seconds`` and ``embed.batch_seconds_cuda``.

On a machine without CUDA everything runs on the CPU (the CUDA-only figures are None and
CUDA-only variants are left out), which is how the test suite checks it.
``bench/gpu_session.sh`` runs it with every figure issue 26 asks for in under 8 minutes.

Usage::

    .venv/bin/python bench/gpu_check.py [--config configs/zalo.yaml]
        [--data ../shared/data/libri-zalo] [--seconds 20] [--variants shipped,fp32,...]
        [--peak-tflops 989] [--json outputs/gpu_check.json] [key=value ...]
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
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.config import ExperimentConfig, load_config
from src.data.cache import AudioCache
from src.data.folds import folds_stage
from src.data.prepare import prepare_stage
from src.features.augment import build_batch_augment, build_waveform_augment
from src.inference.extractor_base import ModuleExtractor
from src.training.batches import BalancedBatches, TrainingSet
from src.training.device import (
    autocast_dtype,
    configure_backends,
    loader_options,
    make_grad_scaler,
)
from src.training.step import StepTotals, TrainStep
from src.training.train import TrainingModule, build_training_objects, fold_training_data
from src.util.logs import setup_logging

REPO = Path(__file__).resolve().parents[1]

# dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from NVIDIA's data sheets; the first
# name found in torch.cuda.get_device_name() wins, so the more specific names come first
PEAK_BF16_TFLOPS: dict[str, float] = {
    "H200": 989.0,  # H200 SXM (1,979 with sparsity); H100 SXM has the same tensor cores
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "GH200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
    "V100": 125.0,  # fp16 (no bf16 on Volta)
    "T4": 65.0,  # fp16 (no bf16 on Turing)
}

# name -> overrides on top of the config; CUDA_ONLY variants are skipped on the CPU
VARIANTS: dict[str, list[str]] = {
    "shipped": [],
    "fp32": ["train.amp=false"],
    "fp16+scaler": ["train.speed.amp_dtype=float16"],
    "no channels_last": ["model.channels_last=false"],
    "no fused optimiser": ["train.speed.fused_optimizer=false"],
    "no cudnn.benchmark": ["train.speed.cudnn_benchmark=false"],
    "no pinned memory": ["train.speed.pin_memory=false"],
    "compiled": ["train.speed.compile=true"],
    "augment on GPU": ["augment.batch_on_device=true"],
    "batch 256": ["train.batch_size=256"],
}
CUDA_ONLY = {
    "fp32",
    "fp16+scaler",
    "no fused optimiser",
    "no cudnn.benchmark",
    "no pinned memory",
    "compiled",
}


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


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    """The dense bf16 peak of the GPU: ``given`` (``--peak-tflops``), else from the table."""
    if given is not None:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def training_objects(cfg: ExperimentConfig, device: torch.device):
    """Module, training step and batches of fold 0, built as ``train_stage`` builds them."""
    configure_backends(device, cfg.train.speed)
    split = fold_training_data(cfg, 0)
    data = TrainingSet.from_files(split.train_files)
    torch.manual_seed(cfg.seed)
    modules, optimiser, _ = build_training_objects(
        cfg, data.speakers, device, 0, split.oof_speakers
    )
    dtype = autocast_dtype(device, cfg.train.amp, cfg.train.speed.amp_dtype)
    if cfg.train.speed.compile:
        modules.compile_embedder(cfg.train.speed.compile_backend, cfg.train.speed.compile_mode)
    step = TrainStep(
        modules,
        modules,
        optimiser,
        None,
        make_grad_scaler(device, dtype),
        device,
        dtype,
        cfg.train.grad_clip,
        build_batch_augment(cfg.augment, cfg.data.sample_rate),
    )
    batches = BalancedBatches(
        data,
        AudioCache(cfg.paths.prep_dir),
        cfg.train,
        cfg.data.sample_rate,
        cfg.seed,
        0,
        list(range(100_000)),
        build_waveform_augment(cfg.augment, cfg.data.sample_rate),
    )
    return modules, step, batches


def flops_per_sample(cfg: ExperimentConfig, device: torch.device) -> float:
    """FLOPs of one training sample (forward and backward) at the mean crop length.

    Counted once (``torch.utils.flop_counter``: matrix products and convolutions) on a batch of
    2 in float32; compute scales linearly with the crop length, so the mean length gives the
    mean cost of the uniformly drawn crops.
    """
    modules = TrainingModule(cfg, n_speakers=2).to(device).train()
    samples = int(np.mean(cfg.train.crop_seconds) * cfg.data.sample_rate)
    waves = 0.1 * torch.randn(2, samples, device=device)
    labels = torch.tensor([0, 1], device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = modules(waves, labels, torch.zeros(2, dtype=torch.long, device=device))
        loss.backward()
    return counter.get_total_flops() / 2


def train_for(cfg: ExperimentConfig, device: torch.device, seconds: float) -> dict:
    """Train fold 0 for about ``seconds`` after a warm-up; throughput, waits, memory."""
    modules, step, batches = training_objects(cfg, device)
    loader = DataLoader(
        batches,
        batch_size=None,
        num_workers=cfg.train.workers,
        **loader_options(device, cfg.train.workers, cfg.train.speed),
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warmup = 15 if cfg.train.speed.compile else 3  # worker start, autotuning, compiling
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    waited = computed = 0.0
    samples = done = 0
    started = None
    totals = StepTotals(device)
    opened = time.perf_counter()
    iterator = iter(loader)
    first_batch_s = None
    with UtilisationSampler() as utilisation:
        while True:
            ask = time.perf_counter()
            waves, labels, genders = next(iterator)
            got = time.perf_counter()
            first_batch_s = got - opened if first_batch_s is None else first_batch_s
            totals.add(*step(waves, labels, genders, generator))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            end = time.perf_counter()
            done += 1
            if done == warmup:
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
    del iterator
    compiled = modules.embed_call
    return {
        "steps": done - warmup,
        "samples_per_s": samples / wall,
        "data_wait_share": waited / max(waited + computed, 1e-9),
        "gpu_busy_share": None if utilisation.mean is None else utilisation.mean / 100,
        "peak_gpu_memory_gib": (
            torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        ),
        "first_batch_s": first_batch_s,
        "autocast": str(step.dtype).removeprefix("torch.") if step.dtype else "float32",
        "compiled": compiled is not None and compiled.active,
        "loss": totals.means()["loss"],
        "model": modules.model,
    }


def embedding_speed(
    model: torch.nn.Module,
    cfg: ExperimentConfig,
    device: torch.device,
    dtype: torch.dtype | None,
    batch_seconds: float,
    seconds: float = 3.0,
) -> float:
    """Seconds of audio embedded per second: batches of ``embed.window_seconds`` windows,
    repeated for about ``seconds`` (at least twice)."""
    extractor = ModuleExtractor(
        model.eval(), device, cfg.model.embedding_dim, "gpu-check", dtype=dtype
    )
    window = int(cfg.embed.window_seconds * cfg.data.sample_rate)
    per_batch = max(1, int(batch_seconds / cfg.embed.window_seconds))
    rng = np.random.default_rng(0)
    windows = (0.1 * rng.standard_normal((per_batch, window))).astype(np.float32)
    extractor.embed(windows)  # warm-up (cuDNN autotuning for this shape)
    repeats, started = 0, time.perf_counter()
    while repeats < 2 or time.perf_counter() - started < seconds:
        extractor.embed(windows)  # returns host arrays: each call waits for the GPU
        repeats += 1
    return repeats * per_batch * cfg.embed.window_seconds / (time.perf_counter() - started)


def with_rates(run: dict, flops: float, peak: float | None) -> dict:
    tflops = run["samples_per_s"] * flops / 1e12
    return run | {"tflops": tflops, "share_of_bf16_peak": tflops / peak if peak else None}


def markdown_table(runs: dict[str, dict]) -> str:
    """The variants side by side, relative to ``shipped``."""
    base = runs.get("shipped", next(iter(runs.values())))["samples_per_s"]
    header = (
        "| variant | samples/s | vs shipped | TFLOP/s | share of peak | GPU busy | data wait | "
        "peak GiB | first batch s | autocast | compiled |\n|---|" + "---|" * 10
    )
    rows = [header]
    for name, r in runs.items():
        rows.append(
            f"| {name} | {r['samples_per_s']:,.0f} | {r['samples_per_s'] / base:.2f}x | "
            f"{r['tflops']:.1f} | {percent(r['share_of_bf16_peak'])} | "
            f"{percent(r['gpu_busy_share'])} | {percent(r['data_wait_share'])} | "
            f"{number(r['peak_gpu_memory_gib'])} | "
            f"{r['first_batch_s']:.1f} | {r['autocast']} | {r['compiled']} |"
        )
    return "\n".join(rows)


def speed_ratio(runs: dict[str, dict], faster: str, slower: str) -> float | None:
    """samples/s of one variant over another's, when both ran."""
    if faster not in runs or slower not in runs:
        return None
    return runs[faster]["samples_per_s"] / runs[slower]["samples_per_s"]


def number(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def percent(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f} %"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "zalo.yaml")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/libri-zalo")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "gpu_check")
    parser.add_argument("--seconds", type=float, default=20.0, help="training time per variant")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated, of {list(VARIANTS)}"
    )
    parser.add_argument(
        "--embed-seconds", type=float, default=3.0, help="time per embedding measurement"
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    setup_logging()
    base = [f"paths.input={args.data}", f"paths.outputs={args.out}",
            f"paths.folds={args.out}/folds", *args.overrides]  # fmt: skip
    cfg = load_config(args.config, base)
    prepare_stage(cfg)
    folds_stage(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (no CUDA)"
    peak = peak_tflops(device, args.peak_tflops)
    flops = flops_per_sample(cfg, device)
    runs: dict[str, dict] = {}
    model = None
    for variant in args.variants.split(","):
        if device.type != "cuda" and variant in CUDA_ONLY:
            continue
        run = train_for(load_config(args.config, [*base, *VARIANTS[variant]]), device, args.seconds)
        trained = run.pop("model")
        model = trained if variant == "shipped" or model is None else model
        runs[variant] = with_rates(run, flops, peak)
        print(f"{variant}: {runs[variant]['samples_per_s']:,.0f} samples/s", flush=True)
    assert model is not None, "no variant ran"
    half = autocast_dtype(device, True)
    embedding = {
        f"{label} x {int(batch)} s": embedding_speed(
            model, cfg, device, dtype, batch, args.embed_seconds
        )
        for label, dtype in (("float32", None), (str(half).removeprefix("torch."), half))
        if label == "float32" or half is not None
        for batch in dict.fromkeys((cfg.embed.batch_seconds, cfg.embed.batch_seconds_cuda))
    }
    result = {
        "device": name,
        "torch": torch.__version__,
        "config": str(args.config),
        "overrides": args.overrides,
        "workers": cfg.train.workers,
        "batch_size": cfg.train.batch_size,
        "crop_seconds": list(cfg.train.crop_seconds),
        "gflop_per_sample": flops / 1e9,
        "peak_bf16_tflops": peak,
        "train": runs,
        "amp_speedup": speed_ratio(runs, "shipped", "fp32"),
        "compiled_speedup": speed_ratio(runs, "compiled", "shipped"),
        "embedding_audio_s_per_s": embedding,
        "table": markdown_table(runs),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "table"}, indent=2))
    print(result["table"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
