"""Pretrain once on an external corpus, then start every fold from that model.

``python -m src pretrain --config configs/pretrain.yaml paths.input=/data/voxceleb1`` reads a
folder of speaker sub-folders (``data.layout: speaker_folders``; the Zalo layout works too),
decodes it once into the cache (``paths.prep``), and trains one model on all of it, with no
folds: a gender-stratified ``train.holdout_speakers`` share of the speakers is kept out for the
validation EER that picks ``best.pt`` and stops training early. The model is copied to
``<outputs>/<run>/pretrained.pt``; the folder ``fold0`` beside it keeps the training state
(``last.pt`` to resume, ``history.csv``).

The competition config then starts every fold from it::

    bash run.sh --config configs/zalo.yaml train.init_checkpoint=outputs/pretrain/pretrained.pt

The pretrained model's speakers are recorded in it, so ``train.init_checkpoint`` still refuses
it for a fold whose OOF speakers it saw (a corpus that shares speakers with the competition).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from src.config import ExperimentConfig
from src.data.cache import read_manifest
from src.data.folds import training_files
from src.data.prepare import prepare_stage
from src.training.selection import holdout_split
from src.training.train import FoldTrainingData, train_stage

log = logging.getLogger(__name__)

PRETRAIN_FOLD = 0  # the one "fold": every speaker of the corpus


def pretraining_data(cfg: ExperimentConfig) -> FoldTrainingData:
    """All usable training clips of the corpus, less the held-out validation speakers."""
    files = training_files(read_manifest(cfg.paths.prep_dir))
    train_files, held, trials = holdout_split(cfg, files, PRETRAIN_FOLD)
    log.info(
        "pretrain: %d speakers, %d clips; %d speakers held out for validation (%d trials)",
        train_files["speaker"].nunique(),
        len(train_files),
        held["speaker"].nunique(),
        len(trials),
    )
    return FoldTrainingData(train_files, trials, sorted(held["speaker"].unique()), set())


def pretrain_stage(cfg: ExperimentConfig, resume: bool = False, force: bool = False) -> Path:
    """Prepare the corpus and train one model on it; returns ``<run>/pretrained.pt``.

    Raises
    ------
    ValueError
        For ``train.selection`` other than ``holdout`` (pretraining has no fold schedule to
        trust without validation), or a corpus with too few speakers to hold any out.
    """
    if cfg.train.selection != "holdout":
        raise ValueError(
            "pretrain picks its checkpoint on held-out speakers: set train.selection=holdout"
        )
    if cfg.extractor.kind != "cnn":
        raise ValueError(f"extractor.kind={cfg.extractor.kind!r} is frozen: nothing to pretrain")
    prepare_stage(cfg, force=force)
    best = train_stage(cfg, PRETRAIN_FOLD, resume, force, split=pretraining_data(cfg))
    target = cfg.experiment_dir / "pretrained.pt"
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(best, partial)
    partial.replace(target)
    log.info("pretrained model: %s (start folds from it with train.init_checkpoint)", target)
    return target
