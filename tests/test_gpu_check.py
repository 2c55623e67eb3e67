"""bench/gpu_check.py runs end to end (on the CPU here: the CUDA figures are absent)."""

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
        ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--seconds", "1",
         "--json", str(tmp_path / "check.json"), "folds.n_folds=2", "model.width=0.125",
         "model.backbone=resnet18", "train.batch_size=8", "train.workers=1",
         "train.crop_seconds=[0.5,1.0]", "data.workers=1"],
    )  # fmt: skip
    (run,) = result["train"]  # no CUDA: one fp32 run
    assert run["steps"] >= 1 and run["samples_per_s"] > 0
    assert 0 <= run["data_wait_share"] <= 1
    assert run["peak_gpu_memory_gib"] is None and result["amp_speedup"] is None
    assert result["embedding_audio_s_per_s"] > 0
    assert (tmp_path / "check.json").is_file()
