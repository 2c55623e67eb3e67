"""Training killed with SIGKILL mid-run resumes to exactly the run that was never interrupted.

The training runs here are real ``python -m src train`` processes (one thread each, so CPU
arithmetic is reproducible). Tolerance: the resumed history must equal the uninterrupted one to
``rtol=1e-6``; on CPU with one thread it is bit-exact in practice, the tolerance only absorbs a
BLAS that reorders a sum.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from src.training.checkpoint import load_checkpoint
from src.training.train import train_stage
from src.util.stage_cache import stamp_path
from tests.conftest import TINY as CORE
from tests.conftest import config_for, prepare_tiny, train_killed_after_first_epoch

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 8  # ~0.3 s each on one CPU thread: the kill lands after epoch 1 with epochs to spare
TINY = (*CORE, "train.steps_per_epoch=3", "train.device=cpu")  # fmt: skip
HISTORY_COLUMNS = ["epoch", "loss", "accuracy", "val_eer", "lr"]  # not "seconds"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """Demo data (8 speakers x 4 clips), prepared and split into folds, in-process."""
    root = tmp_path_factory.mktemp("kill")
    prepare_tiny(root, *TINY, seed=11)
    return root


def train_command(root: Path, outputs: Path, *flags: str) -> list[str]:
    paths = (
        f"paths.input={root / 'data'}", f"paths.prep={root / 'outputs' / 'prep'}",
        f"paths.folds={root / 'folds'}", f"paths.outputs={outputs}", "data.workers=1",
    )  # fmt: skip
    return [sys.executable, "-m", "src", "train", "--fold", "0", *flags, *paths, *TINY,
            f"train.epochs={EPOCHS}"]  # fmt: skip


def child_env() -> dict[str, str]:
    """One compute thread per process, so that every run does the same arithmetic."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def start(command: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as handle:  # the child keeps its own descriptor
        return subprocess.Popen(
            command, cwd=REPO, env=child_env(), stdout=handle, stderr=subprocess.STDOUT
        )


def history(fold_dir: Path) -> pd.DataFrame:
    return pd.read_csv(fold_dir / "history.csv")[HISTORY_COLUMNS]


def test_sigkill_mid_training_then_resume_equals_uninterrupted_run(prepared: Path) -> None:
    straight_dir, killed_dir = prepared / "straight" / "cnn", prepared / "killed" / "cnn"
    fold_dir = killed_dir / "fold0"
    logs = {name: prepared / f"{name}.log" for name in ("straight", "killed", "resumed")}
    straight = start(train_command(prepared, straight_dir.parent), logs["straight"])
    killed = start(train_command(prepared, killed_dir.parent), logs["killed"])
    try:
        deadline = time.monotonic() + 180
        while not (fold_dir / "last.pt").exists():  # appears when epoch 1 is complete
            assert killed.poll() is None, logs["killed"].read_text()
            assert time.monotonic() < deadline, "no last.pt after 180 s"
            time.sleep(0.01)
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(timeout=30) == -signal.SIGKILL, "training ended before the kill"

        # what the kill left: a complete checkpoint of a finished epoch, no "done" stamp
        saved = load_checkpoint(fold_dir / "last.pt")
        assert 1 <= saved["state"]["epoch"] < EPOCHS
        assert not stamp_path(fold_dir, "train").exists()
        # stray temporaries, as a kill inside a write leaves them, must never be read
        for name in (".last.pt.x1y2.tmp", ".best.pt.x1y2.tmp", ".history.csv.x1y2.tmp"):
            (fold_dir / name).write_bytes(b"half a file")

        resumed = subprocess.run(
            train_command(prepared, killed_dir.parent, "--resume"),
            cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        logs["resumed"].write_text(resumed.stdout + resumed.stderr)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert f"resuming after epoch {saved['state']['epoch']}" in resumed.stderr
        assert straight.wait(timeout=300) == 0, logs["straight"].read_text()[-3000:]
    finally:
        for process in (straight, killed):
            if process.poll() is None:
                process.kill()
                process.wait()

    expected, got = history(straight_dir / "fold0"), history(fold_dir)
    # same epochs (early stopping included), and the kill really cut the run short
    assert list(got["epoch"]) == list(expected["epoch"])
    assert saved["state"]["epoch"] < len(expected)
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=1e-6, atol=0)
    best_expected = load_checkpoint(straight_dir / "fold0" / "best.pt")
    best_got = load_checkpoint(fold_dir / "best.pt")
    assert best_got["epoch"] == best_expected["epoch"]
    for key, tensor in best_expected["model"].items():
        torch.testing.assert_close(best_got["model"][key], tensor, rtol=1e-6, atol=1e-7)
    assert stamp_path(fold_dir, "train").exists()


@pytest.mark.parametrize("damage", ["truncated", "foreign bytes"])
def test_unreadable_last_checkpoint_is_a_clear_error(prepared: Path, tmp_path, damage) -> None:
    """A last.pt damaged outside our atomic writer stops training with a message, not a trace."""
    cfg = config_for(prepared / "data", tmp_path, *TINY, "train.epochs=1")
    cfg.paths.prep = prepared / "outputs" / "prep"
    cfg.paths.folds = prepared / "folds"
    last = cfg.fold_dir(0) / "last.pt"
    last.parent.mkdir(parents=True)
    torch.save({"state": {"epoch": 1}, "weights": torch.zeros(4096)}, last)
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a checkpoint")
    with pytest.raises(RuntimeError, match=r"last\.pt is unreadable .*--force"):
        train_stage(cfg, 0)


def test_killed_run_of_another_config_is_never_reused(
    prepared: Path, tmp_path, monkeypatch, caplog
) -> None:
    """Run A finishes; run B (other lr) dies after overwriting best.pt; rerunning A retrains.

    Before stamps were cleared at the start of a run, A's old stamp still matched and A's
    rerun silently reused B's half-trained best.pt. (selection=holdout: best.pt is rewritten
    at every improvement, not only at the end of the schedule.)
    """
    cfg = config_for(
        prepared / "data", tmp_path, *TINY, "train.epochs=1", "train.selection=holdout"
    )
    cfg.paths.prep = prepared / "outputs" / "prep"
    cfg.paths.folds = prepared / "folds"
    best = train_stage(cfg, 0)
    weights_a = load_checkpoint(best)["model"]

    other = cfg.model_copy(deep=True)
    other.train.lr = cfg.train.lr * 10
    other.train.epochs = 3
    train_killed_after_first_epoch(other, monkeypatch)
    weights_b = load_checkpoint(best)["model"]
    assert any(not torch.equal(weights_b[key], weights_a[key]) for key in weights_a)

    with caplog.at_level("INFO"):
        train_stage(cfg, 0)
    assert "reusing" not in caplog.text
    for key, tensor in load_checkpoint(best)["model"].items():
        torch.testing.assert_close(tensor, weights_a[key])
