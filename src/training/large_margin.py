"""Large-margin fine-tuning: a short second phase per fold, written as its own experiment.

With ``train.large_margin.enabled``, every fold of a trained run gets a few more epochs from
its ``best.pt`` with longer crops (3-4 s), a larger margin at once (no warm-up) and a small
learning rate, as in the VoxSRC-20 winners' recipe. The speaker head continues from the first
phase (same fold, same speakers; ``train.head_init`` is not applied again), and
``train.pretrained_batchnorm`` carries over. The result is the run ``<run>_lmft`` with its own
checkpoints, embeddings, OOF scores and figures; the stack takes both runs by default.
"""

from __future__ import annotations

from src.config import LARGE_MARGIN_SUFFIX, ExperimentConfig, companion_configs, config_from_dict


def large_margin_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config of the large-margin phase that follows the run of ``cfg``."""
    phase = cfg.train.large_margin
    raw = cfg.model_dump(mode="json")
    raw["experiment"] = cfg.experiment + LARGE_MARGIN_SUFFIX
    raw["run"] = cfg.run_name + LARGE_MARGIN_SUFFIX
    raw["model"] |= {"pretrained": False, "weights": None, "weights_sha256": None}
    raw["head"] |= {"margin": phase.margin, "margin_warmup_epochs": 0}
    raw["train"] |= {
        "init_checkpoint": str(cfg.experiment_dir / "fold{fold}" / "best.pt"),
        "epochs": phase.epochs,
        "crop_seconds": list(phase.crop_seconds),
        "lr": phase.lr,
        "warmup_epochs": 0.0,
        "freeze_epochs": 0.0,
        "pretrained_lr_scale": 1.0,
        "head_init": "random",  # the head continues from best.pt; imprinting would discard it
        "average_last": min(cfg.train.average_last, phase.epochs),
        "batch_size": phase.batch_size or cfg.train.batch_size,
        "large_margin": {**raw["train"]["large_margin"], "enabled": False},
    }
    return config_from_dict(raw)


def first_level_configs(cfg: ExperimentConfig) -> list[ExperimentConfig]:
    """The runs a first-level stage works on: the config's own, its large-margin phase, then
    its companions (``companions``: e.g. a frozen CAM++ when its extra is installed) and theirs."""
    runs = []
    for run in [cfg, *companion_configs(cfg, warn=True)]:
        runs += [run, large_margin_config(run)] if run.large_margin_run else [run]
    return runs
