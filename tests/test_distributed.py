"""DistributedDataParallel training with two CPU processes (gloo) under torchrun."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from src.data.demo import generate_demo
from src.data.folds import folds_stage
from src.data.prepare import prepare_stage
from tests.conftest import config_for
from tests.test_pipeline import TINY


def test_torchrun_two_cpu_processes(tmp_path: Path) -> None:
    generate_demo(tmp_path / "data", n_speakers=8, clips_per_speaker=4, n_test_speakers=2,
                  test_clips_per_speaker=2, seed=5)  # fmt: skip
    overrides = [f"paths.input={tmp_path / 'data'}", f"paths.outputs={tmp_path / 'outputs'}",
                 f"paths.folds={tmp_path / 'folds'}", "data.workers=1", *TINY]  # fmt: skip
    cfg = config_for(tmp_path / "data", tmp_path, *TINY)
    prepare_stage(cfg)
    folds_stage(cfg)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               "2", "-m", "src", "train", "--fold", "0", *overrides]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    history = pd.read_csv(cfg.fold_dir(0) / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    assert (cfg.fold_dir(0) / "best.pt").is_file()
