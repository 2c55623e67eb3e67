"""Shared fixtures: tiny Zalo-layout data sets written with numpy and soundfile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from src.config import ExperimentConfig, load_config

# a model small enough to train in a second on one CPU thread; tests add their own epochs etc.
TINY = (
    "folds.n_folds=2", "model.backbone=resnet18", "model.stem=timm", "model.width=0.125",
    "model.embedding_dim=32", "features.n_mels=40", "train.batch_size=16",
    "train.crop_seconds=[0.5,1.0]", "embed.window_seconds=1.0", "embed.hop_seconds=0.5",
    "augment.enabled=false",
)  # fmt: skip


def write_tone(
    path: Path,
    seconds: float = 1.0,
    rate: int = 16000,
    freq: float = 220.0,
    channels: int = 1,
    level: float = 0.3,
    seed: int = 0,
) -> Path:
    """A voiced-like tone with a little noise (deterministic)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wave = level * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)
    data = np.stack([wave] * channels, axis=1) if channels > 1 else wave
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data.astype(np.float32), rate, subtype="PCM_16")
    return path


def make_zalo(root: Path, n_speakers: int = 6, clips: int = 4, n_test: int = 6) -> Path:
    """A small valid Zalo-layout folder: train speakers, test files, public-test.csv."""
    for s in range(n_speakers):
        gender = "M" if s % 2 == 0 else "F"
        for c in range(clips):
            write_tone(root / "train" / f"{100 + s}-{gender}-{20 + s}" / f"{100 + s}-{c}.wav",
                       seconds=0.5 + 0.25 * c, rate=(16000, 44100, 48000)[c % 3],
                       freq=120.0 + 25 * s + 3 * c, seed=s * 100 + c)  # fmt: skip
    names = [f"test{i:03d}.wav" for i in range(n_test)]
    for i, name in enumerate(names):
        write_tone(
            root / "public-test" / name, seconds=1.0 + 0.1 * i, freq=300.0 + 10 * i, seed=999 + i
        )
    pairs = [(names[i], names[(i + 1) % n_test]) for i in range(n_test)]
    pd.DataFrame(pairs, columns=["audio_1", "audio_2"]).to_csv(
        root / "public-test.csv", index=False
    )
    return root


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every test on one torch thread: on a busy shared CPU, two threads can stall for
    seconds at every barrier (and one thread keeps the arithmetic reproducible)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def zalo_root(tmp_path: Path) -> Path:
    return make_zalo(tmp_path / "data")


def config_for(root: Path, out: Path, *overrides: str) -> ExperimentConfig:
    return load_config(
        None,
        [f"paths.input={root}", f"paths.outputs={out / 'outputs'}", f"paths.folds={out / 'folds'}",
         "data.workers=1", *overrides],
    )  # fmt: skip


def prepare_tiny(
    root: Path, *overrides: str, test_speakers: int = 2, test_clips: int = 2, seed: int = 0
) -> ExperimentConfig:
    """Demo data of 8 speakers x 4 clips in ``root/data``, prepared and split into 2 folds."""
    from src.data.demo import generate_demo
    from src.data.folds import folds_stage
    from src.data.prepare import prepare_stage

    generate_demo(
        root / "data",
        n_speakers=8,
        clips_per_speaker=4,
        n_test_speakers=test_speakers,
        test_clips_per_speaker=test_clips,
        seed=seed,
    )
    cfg = config_for(root / "data", root, *TINY, *overrides)
    prepare_stage(cfg)
    folds_stage(cfg)
    return cfg


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> ExperimentConfig:
    """Two tiny trained runs, stacked, submitted and exported (with ONNX fold models) once per
    session: the stacking config (``bundle_dir``, ``submission_scores_path``)."""
    from tests.fixtures.bundle import build_tiny_bundle

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return build_tiny_bundle(tmp_path_factory.mktemp("bundle"))
    finally:
        torch.set_num_threads(threads)


def train_killed_after_first_epoch(cfg, monkeypatch) -> None:
    """Train fold 0 of ``cfg`` until ``save_epoch`` has written epoch 1, then stop it as a kill
    would (``KeyboardInterrupt``); ``save_epoch`` is restored afterwards."""
    import src.training.train as train_module

    original_save = train_module.save_epoch

    def save_then_die(*args, **kwargs):
        original_save(*args, **kwargs)
        raise KeyboardInterrupt("killed after epoch 1")

    monkeypatch.setattr(train_module, "save_epoch", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_module.train_stage(cfg, 0)
    monkeypatch.setattr(train_module, "save_epoch", original_save)
