"""Fine-tuning pretrained encoders per fold, and the large-margin phase."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from src.inference.resemblyzer_backend import resemblyzer_available
from src.training.checkpoint import load_checkpoint
from src.training.schedule import group_schedules
from src.training.train import train_stage
from tests.conftest import prepare_tiny

GE2E = ("model.architecture=ge2e", "model.pretrained=true", "model.embedding_dim=256")
SHORT = ("train.steps_per_epoch=2", "train.batch_size=8", "train.average_last=1")


def test_pretrained_layers_get_a_scaled_rate_and_wait_while_frozen(tmp_path: Path) -> None:
    cfg = prepare_tiny(tmp_path, "train.freeze_epochs=1", "train.pretrained_lr_scale=0.1")
    embedder, heads = group_schedules(cfg.train, steps_per_epoch=10, pretrained=True)
    assert [embedder(s) for s in range(10)] == [0.0] * 10
    assert embedder(15) == pytest.approx(0.1 * heads(15))
    same = group_schedules(cfg.train, steps_per_epoch=10, pretrained=False)
    assert same[0](3) == same[1](3) > 0  # random weights: one rate, nothing frozen


@pytest.mark.skipif(not resemblyzer_available(), reason="optional resemblyzer extra not installed")
def test_ge2e_fine_tunes_per_fold_from_the_pretrained_weights(tmp_path: Path) -> None:
    """Frozen for the whole first epoch, GE2E's weights are still the pretrained ones;
    unfrozen, they move; the fold models then embed, score and serve like any trained ones."""
    from src.inference.embed import embed_stage, load_embeddings
    from src.inference.score import score_stage
    from src.model_zoo.ge2e import GE2EEncoder, load_ge2e_weights
    from tests.fixtures.bundle import bundle_of

    cfg = prepare_tiny(tmp_path, *GE2E, *SHORT, "train.epochs=1", "train.freeze_epochs=1")
    pretrained = GE2EEncoder()
    load_ge2e_weights(pretrained)
    best = load_checkpoint(train_stage(cfg, 0))
    for name, value in pretrained.state_dict().items():
        torch.testing.assert_close(best["model"][name], value)
    assert best["heads"]["head"]["classifier.weight"].shape == (4, 256)  # 4 training speakers

    tuned = cfg.model_copy(
        update={
            "train": cfg.train.model_copy(
                update={"epochs": 2, "freeze_epochs": 0.5, "pretrained_lr_scale": 0.5}
            )
        }
    )
    moved = load_checkpoint(train_stage(tuned, 0))["model"]
    assert not torch.allclose(moved["lstm.weight_hh_l0"], pretrained.lstm.weight_hh_l0)
    embeddings = load_embeddings(embed_stage(tuned, 0))
    assert embeddings["vectors"].shape[1] == 256
    np.testing.assert_allclose(np.linalg.norm(embeddings["vectors"], axis=1), 1.0, atol=1e-5)

    # the other fold too, then scores and the API, as for any trained experiment
    train_stage(tuned, 1)
    embed_stage(tuned, 1)
    score_stage(tuned)
    served = bundle_of(tuned)
    rng = np.random.default_rng(0)
    clip = (0.1 * rng.standard_normal(24000)).astype(np.float32)
    answer = served.answer_waves(clip, clip[::-1].copy())
    assert np.isfinite(answer["probability"]) and np.isfinite(answer[f"{tuned.run_name}__asnorm"])


def test_large_margin_phase_is_its_own_run(tmp_path: Path, caplog) -> None:
    from src.cli import call_stage

    cfg = prepare_tiny(
        tmp_path,
        *SHORT,
        "train.epochs=1",
        "train.large_margin.enabled=true",
        "train.large_margin.epochs=1",
        "train.large_margin.crop_seconds=[1.5,2.0]",
    )
    assert cfg.stacked_runs == [cfg.run_name, cfg.run_name + "_lmft"]
    with caplog.at_level(logging.INFO):
        call_stage("train", cfg, fold=0)
    assert "continuing with the speaker head" in caplog.text
    base = load_checkpoint(cfg.fold_dir(0) / "best.pt")
    phase_dir = cfg.paths.outputs / (cfg.run_name + "_lmft") / "fold0"
    phase = load_checkpoint(phase_dir / "best.pt")
    assert phase["config"]["head"]["margin"] == 0.5
    assert phase["config"]["head"]["margin_warmup_epochs"] == 0
    assert phase["config"]["train"]["crop_seconds"] == [1.5, 2.0]
    assert phase["speakers"] == base["speakers"]
    assert not torch.equal(
        phase["model"]["embedding.0.weight"], base["model"]["embedding.0.weight"]
    )


def test_training_fingerprint_ignores_defaults_and_the_later_phase(tmp_path: Path) -> None:
    """Keys at their default (e.g. ones a newer release added) and the large-margin phase's
    settings do not retrain finished folds; a real change does."""
    from src.config import load_config
    from src.training.train import training_fingerprint

    cfg = load_config(None, [f"paths.outputs={tmp_path}"])
    same = load_config(
        None,
        [f"paths.outputs={tmp_path}", "features.kaldi.window=hamming", "data.layout=zalo",
         "train.large_margin.enabled=true", "train.large_margin.margin=0.6"],
    )  # fmt: skip
    other = load_config(None, [f"paths.outputs={tmp_path}", "train.lr=0.001"])
    assert training_fingerprint(cfg) == training_fingerprint(same)
    assert training_fingerprint(cfg) != training_fingerprint(other)


def test_large_margin_phase_keeps_the_head_and_warns_head_init_on_a_random_model(
    tmp_path: Path, caplog
) -> None:
    """The large-margin phase continues the first phase's head (no re-imprinting) and keeps its
    batch-norm choice; class-mean centres of a randomly initialised model are refused with a
    warning, not computed."""
    from src.config import load_config
    from src.training.large_margin import large_margin_config
    from src.training.train import train_stage

    cfg = load_config(
        None,
        [f"paths.outputs={tmp_path}", "train.head_init=class_means",
         "train.pretrained_batchnorm=frozen", "train.large_margin.enabled=true"],
    )  # fmt: skip
    phase = large_margin_config(cfg)
    assert phase.train.head_init == "random"
    assert phase.train.pretrained_batchnorm == "frozen"

    tiny = prepare_tiny(tmp_path / "tiny", *SHORT, "train.epochs=1", "train.head_init=class_means")
    with caplog.at_level(logging.INFO):
        train_stage(tiny, 0)
    assert "train.head_init=class_means needs a pretrained embedder" in caplog.text
    assert "speaker centres from the class means" not in caplog.text


def test_head_init_keeps_a_head_that_came_with_the_checkpoint(tmp_path: Path, caplog) -> None:
    """train.init_checkpoint trained on the same speakers brings its speaker head; head_init=
    class_means must not overwrite it with class means (it would discard what was learned)."""
    from src.data.cache import AudioCache
    from src.training.batches import TrainingSet
    from src.training.train import build_training_objects, fold_training_data, initialise_head

    cfg = prepare_tiny(tmp_path, *SHORT, "train.epochs=1")
    train_stage(cfg, 0)
    best = cfg.fold_dir(0) / "best.pt"
    tuned = cfg.model_copy(
        update={"train": cfg.train.model_copy(
            update={"init_checkpoint": str(best), "head_init": "class_means"})}
    )  # fmt: skip
    split = fold_training_data(tuned, 0)
    data = TrainingSet.from_files(split.train_files)
    device = torch.device("cpu")
    modules, _, start = build_training_objects(tuned, data.speakers, device, 0, split.oof_speakers)
    assert start.pretrained and start.heads_loaded
    before = {k: v.clone() for k, v in modules.head.state_dict().items()}
    with caplog.at_level(logging.INFO):
        initialise_head(tuned, modules, start, (data, AudioCache(cfg.paths.prep_dir), device))
    assert "the checkpoint's speaker head is kept" in caplog.text
    for name, tensor in modules.head.state_dict().items():
        assert torch.equal(tensor, before[name]), name
