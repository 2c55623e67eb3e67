"""DistributedDataParallel training with two CPU processes (gloo) under torchrun."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from tests.conftest import prepare_tiny
from tests.test_pipeline import TINY


def test_torchrun_two_cpu_processes(tmp_path: Path) -> None:
    overrides = [f"paths.input={tmp_path / 'data'}", f"paths.outputs={tmp_path / 'outputs'}",
                 f"paths.folds={tmp_path / 'folds'}", "data.workers=1", *TINY]  # fmt: skip
    cfg = prepare_tiny(tmp_path, *TINY, seed=5)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               "2", "-m", "src", "train", "--fold", "0", *overrides]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    history = pd.read_csv(cfg.fold_dir(0) / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    assert (cfg.fold_dir(0) / "best.pt").is_file()
