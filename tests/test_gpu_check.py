"""bench/gpu_check.py runs end to end (on the CPU here: CUDA figures and variants are absent)."""

from __future__ import annotations

import sys
from pathlib import Path

from src.data.demo import generate_demo

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


def test_gpu_check_runs_on_cpu(tmp_path: Path) -> None:
    import gpu_check

    generate_demo(tmp_path / "data", n_speakers=8, clips_per_speaker=4, n_test_speakers=2,
                  test_clips_per_speaker=2, seed=0)  # fmt: skip
    result = gpu_check.main(
        ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--seconds", "0.5",
         "--json", str(tmp_path / "check.json"), "--peak-tflops", "1", "--embed-seconds", "0.2",
         "--variants", "shipped,fp32,augment on GPU,batch 256",
         "folds.n_folds=2", "model.width=0.125", "model.backbone=resnet18",
         # torch 2.14's CPU convolution backward segfaults for a channels-last stride-1 stem
         # of 8 channels (width 0.125) at some crop lengths, on main too; 0.25 and up are fine
         "model.channels_last=false",
         "train.batch_size=8", "train.workers=1", "train.crop_seconds=[0.5,1.0]",
         "data.workers=1", "embed.window_seconds=1", "embed.batch_seconds=2",
         "embed.batch_seconds_cuda=4", "train.lr_scaling=sqrt", "train.lr_reference_batch=8"],
    )  # fmt: skip
    runs = result["train"]
    assert list(runs) == ["shipped", "augment on GPU", "batch 256"]  # fp32 is CUDA-only
    for run in runs.values():
        assert run["steps"] >= 1 and run["samples_per_s"] > 0
        assert 0 <= run["data_wait_share"] <= 1 and run["first_batch_s"] > 0
        assert run["peak_gpu_memory_gib"] is None and run["gpu_busy_share"] is None
        assert run["tflops"] > 0 and run["share_of_bf16_peak"] == run["tflops"]  # peak 1
        assert run["autocast"] == "float32" and not run["compiled"]
    assert result["gflop_per_sample"] > 0
    assert result["amp_speedup"] is None and result["compiled_speedup"] is None
    assert set(result["embedding_audio_s_per_s"]) == {"float32 x 2 s", "float32 x 4 s"}
    assert min(result["embedding_audio_s_per_s"].values()) > 0
    assert "| batch 256 |" in result["table"]
    assert (tmp_path / "check.json").is_file()
