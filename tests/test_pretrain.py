"""Pretrain once on an external corpus of speaker folders, then start every fold from it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from src.data.demo import generate_demo
from src.training.checkpoint import load_checkpoint
from tests.conftest import TINY, config_for, prepare_tiny


def voxceleb_like(root: Path, n_speakers: int = 10) -> Path:
    """Demo clips rearranged as ``wav/<speaker>/<video>/<n>.wav`` (VoxCeleb's layout)."""
    generate_demo(root / "demo", n_speakers=n_speakers, clips_per_speaker=4, n_test_speakers=2,
                  test_clips_per_speaker=2, seed=7)  # fmt: skip
    for number, folder in enumerate(sorted((root / "demo" / "train").iterdir())):
        for index, clip in enumerate(sorted(folder.glob("*.wav"))):
            target = root / "corpus" / "wav" / f"id{10001 + number}" / f"video{index % 2}"
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(clip, target / f"{index:05d}.wav")
    (root / "corpus" / "wav" / "README.txt").write_text("not audio")
    return root / "corpus"


def test_pretrain_then_start_every_fold_from_it(tmp_path: Path) -> None:
    from src.training.pretrain import pretrain_stage
    from src.training.train import train_stage

    corpus = voxceleb_like(tmp_path)
    pretrain_cfg = config_for(
        corpus, tmp_path / "pre", *TINY, "data.layout=speaker_folders", "data.train_dir=wav",
        "train.selection=holdout", "train.holdout_speakers=0.2", "train.epochs=2",
        "train.steps_per_epoch=2", "experiment=vox",
    )  # fmt: skip
    with pytest.raises(ValueError, match="train.selection=holdout"):
        pretrain_stage(pretrain_cfg.model_copy(update={"train": pretrain_cfg.train.model_copy(
            update={"selection": "average"})}))  # fmt: skip
    model_path = pretrain_stage(pretrain_cfg)
    assert model_path == tmp_path / "pre" / "outputs" / "vox" / "pretrained.pt"
    manifest = pd.read_csv(
        pretrain_cfg.paths.prep_dir / "manifest.csv", dtype=str, keep_default_na=False
    )
    train = manifest[manifest["split"] == "train"]
    assert train["speaker"].nunique() == 10 and set(train["gender"]) == {"NA"}
    pretrained = load_checkpoint(model_path)
    assert len(pretrained["validation_speakers"]) >= 2
    assert not set(pretrained["validation_speakers"]) & set(pretrained["speakers"])
    assert len(pretrained["speakers"]) + len(pretrained["validation_speakers"]) == 10

    cfg = prepare_tiny(
        tmp_path / "zalo", f"train.init_checkpoint={model_path}", "train.epochs=1",
        "train.steps_per_epoch=1", "train.lr=0.00001", "train.average_last=1",
    )  # fmt: skip
    tuned = load_checkpoint(train_stage(cfg, 0))
    for name, value in pretrained["model"].items():  # a tiny step away from the start
        if value.is_floating_point() and "running_" not in name:  # BN statistics move freely
            torch.testing.assert_close(tuned["model"][name], value, atol=2e-3, rtol=0)
