"""The CUDA speed settings (``train.speed``, issue 26): safe on the CPU, same numbers everywhere.

- every ``train.speed`` setting leaves CPU training bit-identical (the CPU never takes a fast
  path), and loader workers kept across epochs draw the same batches as new ones per epoch;
- numerical safety on a fixed batch: channels-last, a compiled embedder and bfloat16 autocast
  give the plain float32 loss within stated tolerances;
- ``torch.compile`` that cannot compile falls back to eager mode with one log line;
- embedding in large batches gives today's vectors; bfloat16 embedding stays close;
- on CUDA (skipped without a GPU): resume after a kill repeats the uninterrupted run exactly
  in deterministic mode, CUDA generator states included.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import src.training.train as train_module
from src.config import SpeedConfig, TrainConfig, load_config
from src.data.cache import AudioCache
from src.inference.embed import batch_seconds, embed_clips
from src.inference.extractor_base import ModuleExtractor
from src.training.batches import BalancedBatches, TrainingSet
from src.training.checkpoint import load_checkpoint
from src.training.device import (
    autocast_dtype,
    loader_options,
    make_grad_scaler,
    optimiser_kernel,
)
from src.training.schedule import scaled_lr
from src.training.step import CompileFallback, TrainStep
from src.training.train import TrainingModule, fold_training_data, train_stage
from tests.conftest import TINY, config_for, prepare_tiny, train_killed_after_first_epoch

CPU = torch.device("cpu")
MODEL = TINY[:7]  # the tiny model settings (no data or training settings)
# tolerances on the loss of one fixed batch (about 4.7 for 4 speakers at scale 30):
CHANNELS_LAST_RTOL = 1e-5  # same arithmetic, other memory order: float32 rounding only
COMPILED_RTOL = 1e-5  # a captured graph runs the same kernels
BF16_RTOL = 0.05  # bfloat16 keeps 8 bits of mantissa (~0.4 % per value); pooling, head in fp32


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("speed")
    prepare_tiny(root, seed=3)
    return root


def tiny_config(root: Path, out: Path, *overrides: str):
    cfg = config_for(root / "data", out, *TINY, "train.device=cpu", *overrides)
    cfg.paths.prep = root / "outputs" / "prep"
    cfg.paths.folds = root / "folds"
    return cfg


def history(cfg) -> pd.DataFrame:
    return pd.read_csv(cfg.fold_dir(0) / "history.csv").drop(columns="seconds")


# --- the CPU keeps its results ------------------------------------------------------------


def test_speed_helpers_choose_nothing_on_the_cpu() -> None:
    fast = SpeedConfig()
    assert autocast_dtype(CPU, amp=True, choice="bfloat16") is None
    assert not make_grad_scaler(CPU, None).is_enabled()
    assert optimiser_kernel(CPU, fused=True) == {}
    assert loader_options(CPU, 0, fast) == {"pin_memory": False, "persistent_workers": False}
    assert loader_options(CPU, 2, fast)["persistent_workers"]
    cuda = torch.device("cuda")
    assert optimiser_kernel(cuda, fused=True) == {"fused": True}
    assert autocast_dtype(cuda, amp=True, choice="float16") == torch.float16
    assert autocast_dtype(cuda, amp=False) is None
    assert make_grad_scaler(CPU, torch.float16).is_enabled()  # fp16 only: a scaler


def test_speed_settings_do_not_change_cpu_training(prepared: Path, tmp_path: Path) -> None:
    """Every fast path on or off (workers kept across epochs or not): the same weights."""
    base = tiny_config(prepared, tmp_path / "a", "train.epochs=2", "train.steps_per_epoch=2",
                       "train.workers=1", "augment.enabled=true")  # fmt: skip
    other = tiny_config(prepared, tmp_path / "b", "train.epochs=2", "train.steps_per_epoch=2",
                        "train.workers=1", "augment.enabled=true",
                        "train.speed.persistent_workers=false", "train.speed.fused_optimizer=false",
                        "train.speed.cudnn_benchmark=false", "train.speed.pin_memory=false",
                        "train.speed.amp_dtype=float16")  # fmt: skip
    assert train_module.training_fingerprint(base, 0) == train_module.training_fingerprint(other, 0)
    weights = [load_checkpoint(train_stage(cfg, 0))["model"] for cfg in (base, other)]
    pd.testing.assert_frame_equal(history(base), history(other))
    for key, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][key]), key


def test_persistent_workers_see_each_epochs_batches(prepared: Path) -> None:
    cfg = tiny_config(prepared, prepared, "train.steps_per_epoch=3")
    data = TrainingSet.from_files(fold_training_data(cfg, 0).train_files)
    batches = BalancedBatches(
        data, AudioCache(cfg.paths.prep_dir), cfg.train, 16000, 7, 0, [0, 1, 2], None
    )
    loader = torch.utils.data.DataLoader(
        batches, batch_size=None, num_workers=1, persistent_workers=True
    )
    for epoch in (0, 1, 2):
        batches.set_epoch(epoch)
        got = [b[0] for b in loader]
        expected = [batches.batch(step)[0] for step in (0, 1, 2)]
        assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    assert not torch.equal(got[0], batches_of_epoch(batches, 0)[0])


def batches_of_epoch(batches: BalancedBatches, epoch: int) -> list[torch.Tensor]:
    batches.set_epoch(epoch)
    return [batches.batch(step)[0] for step in batches.steps]


def test_lr_scaling_rules() -> None:
    cfg = TrainConfig(lr=0.002, batch_size=256, lr_reference_batch=128)
    assert scaled_lr(cfg) == 0.002  # lr_scaling: none
    assert scaled_lr(cfg.model_copy(update={"lr_scaling": "linear"})) == pytest.approx(0.004)
    assert scaled_lr(cfg.model_copy(update={"lr_scaling": "sqrt"})) == pytest.approx(0.002 * 2**0.5)
    linear = cfg.model_copy(update={"lr_scaling": "linear", "batch_size": 64})
    assert scaled_lr(linear, world_size=4) == pytest.approx(0.004)  # the global batch counts


def test_scaled_lr_reaches_the_optimiser(prepared: Path, tmp_path: Path, caplog) -> None:
    cfg = tiny_config(prepared, tmp_path, "train.epochs=1", "train.steps_per_epoch=1",
                      "train.lr_scaling=linear", "train.lr_reference_batch=8")  # fmt: skip
    with caplog.at_level(logging.INFO):
        train_stage(cfg, 0)
    assert "train.lr 0.002 scaled to 0.004 for a global batch of 16" in caplog.text
    assert history(cfg)["lr"].iloc[0] < 0.004 + 1e-12


# --- numerical safety on a fixed batch ----------------------------------------------------


def fixed_batch_loss(*overrides: str, compile_backend: str | None = None, dtype=None) -> float:
    """Loss of one fixed batch under a model built from the same seed (train mode: the same
    SpecAugment masks from the same generator state)."""
    cfg = load_config(None, [*MODEL, *overrides])
    torch.manual_seed(0)
    modules = TrainingModule(cfg, n_speakers=4)
    if compile_backend is not None:
        modules.compile_embedder(compile_backend, "default")
    waves = torch.randn(8, 8000, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    genders = torch.zeros(8, dtype=torch.long)
    torch.manual_seed(2)
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        loss, _ = modules(waves, labels, genders)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in modules.parameters() if p.grad is not None)
    return float(loss.detach())


def test_channels_last_and_bf16_give_the_plain_loss() -> None:
    plain = fixed_batch_loss("model.channels_last=false")
    assert fixed_batch_loss("model.channels_last=true") == pytest.approx(
        plain, rel=CHANNELS_LAST_RTOL
    )
    assert fixed_batch_loss("model.channels_last=true", dtype=torch.bfloat16) == pytest.approx(
        plain, rel=BF16_RTOL
    )


def test_compiled_embedder_gives_the_plain_loss() -> None:
    """Dynamo's graph capture with the ``eager`` backend (seconds); inductor's code generation
    is checked by ``RUN_INDUCTOR=1`` (its C++ build takes about a minute on 2 CPU cores)."""
    torch._dynamo.reset()
    plain = fixed_batch_loss()
    assert fixed_batch_loss(compile_backend="eager") == pytest.approx(plain, rel=COMPILED_RTOL)


@pytest.mark.skipif(
    os.environ.get("RUN_INDUCTOR") != "1",
    reason="inductor compiles C++ for about 60 s on this 2-core CPU; set RUN_INDUCTOR=1",
)
def test_inductor_compiled_embedder_gives_the_plain_loss() -> None:
    torch._dynamo.reset()
    plain = fixed_batch_loss()
    assert fixed_batch_loss(compile_backend="inductor") == pytest.approx(plain, rel=1e-4)


def test_compile_that_cannot_compile_falls_back_with_one_line(caplog, monkeypatch) -> None:
    model = torch.nn.Linear(3, 2)
    x = torch.ones(1, 3)
    with caplog.at_level(logging.WARNING):
        unknown = CompileFallback(model, backend="no_such_backend")
    assert not unknown.active and torch.equal(unknown(x), model(x))

    def broken_compile(module, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler here\nsecond line")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    with caplog.at_level(logging.WARNING):
        failing = CompileFallback(model)
        assert failing.active
        assert torch.equal(failing(x), model(x)) and torch.equal(failing(x), model(x))
    assert not failing.active
    lines = [r.getMessage() for r in caplog.records if "cannot compile" in r.getMessage()]
    assert len(lines) == 2  # one per module, not one per call
    assert "(RuntimeError: no C++ compiler here); running eagerly" in lines[1]


def backward_failing_once(monkeypatch) -> None:
    """``Tensor.backward`` raises at its first call, as a backward graph that fails to compile."""
    original, calls = torch.Tensor.backward, []

    def backward(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("backward graph failed to compile")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", backward)


def test_train_step_falls_back_when_the_backward_cannot_compile(monkeypatch) -> None:
    """A failure in the first compiled step (the backward graph compiles lazily) redoes the
    step eagerly: the same weights as an eager step."""
    cfg = load_config(None, list(MODEL))
    results = []
    for broken in (False, True):
        torch.manual_seed(0)
        modules = TrainingModule(cfg, n_speakers=2)
        optimiser = torch.optim.SGD(modules.parameters(), lr=0.1)
        if broken:  # a stand-in for the compiled embedder (no compile time in the test)
            modules.compile_embedder("no_such_backend", "default")
            modules.embed_call.compiled = modules.model
            backward_failing_once(monkeypatch)
        step = TrainStep(modules, modules, optimiser, None, make_grad_scaler(CPU, None), CPU,
                         None, grad_clip=5.0)  # fmt: skip
        modules.eval()  # no masks, no batch statistics: the redone step sees the same numbers
        step(torch.randn(4, 8000, generator=torch.Generator().manual_seed(1)),
             torch.tensor([0, 0, 1, 1]), torch.zeros(4, dtype=torch.long))  # fmt: skip
        monkeypatch.undo()
        results.append({k: v.clone() for k, v in modules.state_dict().items()})
        assert not broken or not modules.embed_call.active
    for key, tensor in results[0].items():
        torch.testing.assert_close(results[1][key], tensor)


# --- embedding ----------------------------------------------------------------------------


def test_large_embedding_batches_give_todays_vectors(prepared: Path) -> None:
    cfg = tiny_config(prepared, prepared)
    torch.manual_seed(0)
    model = TrainingModule(cfg, 4).model.eval()
    extractor = ModuleExtractor(model, CPU, cfg.model.embedding_dim, "test")
    cache = AudioCache(cfg.paths.prep_dir)
    ids = cache.manifest["id"].tolist()[:12]
    small = cfg.embed.model_copy(update={"batch_seconds": 1.0})  # one window per batch
    large = cfg.embed.model_copy(update={"batch_seconds": 1536.0})
    with torch.inference_mode():
        today, norms = embed_clips(extractor, cache, ids, small, 16000, False)
        batched, batched_norms = embed_clips(extractor, cache, ids, large, 16000, False)
        bf16 = ModuleExtractor(model, CPU, cfg.model.embedding_dim, "test", dtype=torch.bfloat16)
        half, _ = embed_clips(bf16, cache, ids, large, 16000, False)
    np.testing.assert_allclose(batched, today, atol=1e-5)
    np.testing.assert_allclose(batched_norms, norms, rtol=1e-5)
    assert np.min(np.sum(half * today, axis=1)) > 0.99  # cosine to the float32 vectors


def test_cuda_extractors_take_the_cuda_batch_size() -> None:
    embed_cfg = load_config(None, []).embed

    class OnCuda:
        device = torch.device("cuda")

    assert batch_seconds(embed_cfg, OnCuda()) == embed_cfg.batch_seconds_cuda == 1536.0
    on_cpu = ModuleExtractor(torch.nn.Identity(), CPU, 2, "x")
    assert batch_seconds(embed_cfg, on_cpu) == embed_cfg.batch_seconds
    assert on_cpu.dtype is None


# --- CUDA -----------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_resume_after_kill_is_exact(prepared: Path, tmp_path: Path, monkeypatch) -> None:
    """Deterministic kernels (``train.speed.deterministic``): a run killed after epoch 1 and
    resumed ends with the weights of the uninterrupted run; last.pt holds the CUDA RNG."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts, if it can
    settings = ("train.device=cuda", "train.epochs=3", "train.steps_per_epoch=2",
                "train.speed.deterministic=true", "augment.enabled=true",
                "augment.batch_on_device=true")  # fmt: skip
    straight = tiny_config(prepared, tmp_path / "straight", *settings)
    killed = tiny_config(prepared, tmp_path / "killed", *settings)
    try:
        check_resume_is_exact(straight, killed, monkeypatch)
    finally:  # deterministic mode is process-wide: leave it as the other tests expect
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False


def check_resume_is_exact(straight, killed, monkeypatch) -> None:
    expected = load_checkpoint(train_stage(straight, 0))["model"]
    train_killed_after_first_epoch(killed, monkeypatch)
    saved = load_checkpoint(killed.fold_dir(0) / "last.pt")
    assert saved["state"]["epoch"] == 1 and len(saved["cuda_rng"]) == torch.cuda.device_count()
    got = load_checkpoint(train_stage(killed, 0, resume=True))["model"]
    for key, tensor in expected.items():
        assert torch.equal(got[key], tensor), key
    pd.testing.assert_frame_equal(history(killed), history(straight))
