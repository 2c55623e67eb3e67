"""``tracking: tensorboard``: event files that tensorboard's own reader reads back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imsave
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.config import load_config
from src.util.tracking import log_run

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return {
        tag: [(event.step, event.value) for event in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
    }


def test_a_run_is_read_back_by_tensorboard_and_rewritten_not_duplicated(tmp_path: Path) -> None:
    metrics = {"fold0/loss": [(1, 2.5), (2, 1.25)], "oof/asnorm/eer": [(0, 0.125)]}
    params = {"head.margin": 0.3, "model.backbone": "resnet18", "changed": None}
    figure = tmp_path / "det.png"
    imsave(figure, np.zeros((8, 12, 3)))
    for _ in range(2):  # a rerun replaces the run's events
        folder = log_run(tmp_path, "outputs", "demo/a (v1)", params, metrics, [figure])
    assert folder.parent == tmp_path and folder.name == "demo_a (v1)"
    scalars = _scalars(folder)
    assert scalars["fold0/loss"] == [(1, 2.5), (2, 1.25)]
    assert scalars["oof/asnorm/eer"] == [(0, 0.125)]
    images = EventAccumulator(str(folder))
    images.Reload()
    (det,) = images.Images("figures/det")
    assert (det.width, det.height) == (12, 8)
    hparams = _scalars(folder / "hparams")
    assert hparams["hparam/oof/asnorm/eer"] == [(0, 0.125)]
    assert "hparam/fold0/loss" not in hparams  # a curve is not a final figure


def test_tracking_mlflow_is_refused_with_the_new_value_named() -> None:
    with pytest.raises(ValueError, match="tracking: tensorboard"):
        load_config(DEMO, ["tracking=mlflow"])
