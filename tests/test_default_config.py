"""bash run.sh without --config: the demo for demo data, a real recipe for real data."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from src.cli import REPO, pick_default_config
from src.config import load_config
from src.runner import default_config
from tests.conftest import make_zalo

CONFIGS = REPO / "configs"


@pytest.mark.parametrize("cuda", [False, True])
def test_real_data_gets_a_real_recipe(tmp_path: Path, monkeypatch, cuda: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert default_config(empty, CONFIGS)[0].name == "demo.yaml"
    real = make_zalo(tmp_path / "real")
    config, why = default_config(real, CONFIGS)
    assert config.name == ("zalo.yaml" if cuda else "zalo_cpu.yaml")
    assert ("GPU recipe" if cuda else "CPU-sized recipe") in why
    (real / "public-test-meta.csv").write_text("file,speaker,gender,duration\n")  # the demo's
    assert default_config(real, CONFIGS)[0].name == "demo.yaml"


def test_run_without_config_looks_at_the_input_override(tmp_path: Path, monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    real = make_zalo(tmp_path / "real")
    with caplog.at_level(logging.INFO):
        chosen = pick_default_config([f"paths.input={real}", "train.epochs=2"])
    assert chosen == CONFIGS / "zalo_cpu.yaml"
    assert "no --config: configs/zalo_cpu.yaml (real data in" in caplog.text


def test_real_recipes_are_not_the_demo_settings() -> None:
    demo = load_config(CONFIGS / "demo.yaml")
    for name in ("zalo.yaml", "zalo_cpu.yaml"):
        cfg = load_config(CONFIGS / name)
        assert not cfg.data.demo
        assert cfg.train.epochs * cfg.train.steps_per_epoch > 10 * (
            demo.train.epochs * demo.train.steps_per_epoch
        )
    gpu = load_config(CONFIGS / "zalo.yaml")
    assert gpu.train.amp and gpu.model.stem_stride == 1 and gpu.train.crop_seconds == (2.0, 3.0)
    # issue 26: channels-last measured 2.2x on an H200; a larger batch scales the lr (AdamW)
    assert gpu.model.channels_last and gpu.train.lr_scaling == "sqrt"
    assert gpu.train.lr_reference_batch == gpu.train.batch_size
