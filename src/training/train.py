"""The `train` stage for one fold: the whole recipe, top to bottom.

config -> data (other folds' speakers) -> model + margin head -> optimiser + schedule ->
epochs of speaker-balanced random crops -> ``last.pt`` every epoch (resume), ``history.csv`` ->
``best.pt`` chosen without fold k's trials (``train.selection``, see ``selection.py``): the best
validation EER on held-out training speakers with early stopping, or the mean of the last epochs.

Run under ``torchrun --nproc_per_node N -m src train --fold k`` for DistributedDataParallel.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from src.config import ExperimentConfig, config_to_yaml, flatten_settings
from src.data.cache import AudioCache, read_manifest
from src.data.folds import split_by_fold
from src.features.augment import build_batch_augment, build_waveform_augment
from src.inference.embed import embed_clips
from src.inference.extractors import ModuleExtractor
from src.inference.metrics import equal_error_rate
from src.inference.score import cosine_pairs
from src.model_zoo import build_embedder, build_gender_head, build_head, margin_at_epoch
from src.model_zoo.weights import has_pretrained_weights, load_initial_weights
from src.training.batches import BalancedBatches, TrainingSet, steps_per_epoch
from src.training.checkpoint import load_checkpoint, save_checkpoint
from src.training.device import (
    DistributedContext,
    autocast_dtype,
    barrier,
    broadcast_float,
    configure_backends,
    init_distributed,
    loader_options,
    make_grad_scaler,
    optimiser_kernel,
    pick_device,
)
from src.training.head_init import imprint_class_means
from src.training.schedule import group_schedules, scaled_lr, still_steps
from src.training.selection import (
    average_state_dicts,
    averaged_epochs,
    holdout_split,
    snapshot_path,
)
from src.training.step import CompileFallback, StepTotals, TrainStep
from src.util.io import write_csv, write_text
from src.util.logs import plural, progress
from src.util.seed import seed_everything
from src.util.stage_cache import files_fingerprint, fingerprint, is_fresh, mark_done, mark_started

log = logging.getLogger(__name__)

TRAINING_SECTIONS = ("seed", "data", "folds", "features", "augment", "model", "head", "train")


def training_fingerprint(cfg: ExperimentConfig, fold: int | None = None) -> str:
    """What a trained model depends on: the training config sections, the data files and the
    starting checkpoint's content (``fold`` picks it when its path has ``{fold}``).

    Settings at their default value are left out, so that a release adding a config key (whose
    default keeps the old behaviour) does not retrain finished folds. ``train.large_margin`` is
    left out too: it configures a later phase, not this model, and so is ``train.speed``: it
    decides how the same recipe runs on the device, not what it is.
    """
    dumped = cfg.model_dump(mode="json")
    defaults = flatten_settings(ExperimentConfig().model_dump(mode="json"))
    settings = {
        key: value
        for key, value in flatten_settings({k: dumped[k] for k in TRAINING_SECTIONS}).items()
        if value != defaults.get(key, object())
        and not key.startswith(("train.large_margin.", "train.speed."))
    }
    files = [cfg.paths.prep_dir / "manifest.csv", cfg.folds_dir / "folds.csv"]
    start = init_checkpoint_path(cfg, 0 if fold is None else fold)
    if start is not None:
        files.append(start)
    return fingerprint(settings, files_fingerprint(files))


@dataclass(frozen=True)
class FoldTrainingData:
    """What one fold trains on, and what (if anything) picks its checkpoint."""

    train_files: pd.DataFrame  # clips of the training speakers
    validation_trials: pd.DataFrame | None  # trials among held-out speakers (selection=holdout)
    validation_speakers: list[str]
    oof_speakers: set[str]  # fold k's own speakers: nothing here may have seen them


def fold_training_data(cfg: ExperimentConfig, fold: int) -> FoldTrainingData:
    """Training files of ``fold`` (other folds' speakers) and its validation trials.

    Fold ``fold``'s own clips and trials are never used here: they are its OOF set.
    """
    in_fold, others = split_by_fold(read_manifest(cfg.paths.prep_dir), cfg.folds_dir, fold)
    oof_speakers = set(in_fold["speaker"].astype(str))
    if cfg.train.selection == "average":
        return FoldTrainingData(others, None, [], oof_speakers)
    train_files, held, trials = holdout_split(cfg, others, fold)
    return FoldTrainingData(train_files, trials, sorted(held["speaker"].unique()), oof_speakers)


def epoch_seed(cfg: ExperimentConfig, fold: int, epoch: int, rank: int) -> int:
    """Seed of the global generators for one epoch of one rank: distinct per rank (each DDP rank
    draws its own SpecAugment masks and dropout), and a resumed run redraws what it would have.
    """
    return int(np.random.default_rng([cfg.seed, fold, epoch, rank]).integers(2**31))


class ValidationSet:
    """Fold trials scored with the model being trained (EER of cosine scores)."""

    def __init__(self, cfg: ExperimentConfig, cache: AudioCache, trials: pd.DataFrame) -> None:
        self.cfg, self.cache = cfg, cache
        self.ids = sorted(set(trials["audio_1"]) | set(trials["audio_2"]))
        index = {clip: i for i, clip in enumerate(self.ids)}
        self.left = trials["audio_1"].map(index).to_numpy()
        self.right = trials["audio_2"].map(index).to_numpy()
        self.labels = trials["label"].to_numpy()

    def eer(self, model: torch.nn.Module, device: torch.device) -> float:
        model.eval()
        extractor = ModuleExtractor(model, device, self.cfg.model.embedding_dim, "validation")
        with torch.inference_mode():
            vectors, _ = embed_clips(
                extractor, self.cache, self.ids, self.cfg.embed, self.cfg.data.sample_rate, False
            )
        model.train()
        return equal_error_rate(cosine_pairs(vectors, self.left, self.right), self.labels)[0]


class TrainingModule(torch.nn.Module):
    """Embedder + margin head (+ gender head): one module so DDP syncs every gradient."""

    def __init__(self, cfg: ExperimentConfig, n_speakers: int) -> None:
        super().__init__()
        self.gender_weight = cfg.head.gender_weight
        self.model = build_embedder(cfg.features, cfg.model, cfg.data.sample_rate)
        self.weights_digest = load_initial_weights(self.model, cfg.model, cfg.features)
        self.head = build_head(cfg.head, cfg.model.embedding_dim, n_speakers)
        self.gender = build_gender_head(cfg.head, cfg.model.embedding_dim)
        # the embedder's call in forward(): the module itself, or its torch.compile'd version
        # (train.speed.compile; not a submodule, so the state_dict keeps its keys)
        self.embed_call: CompileFallback | None = None
        # a pretrained embedder: global steps it stands still for (train.freeze_epochs), and
        # whether its batch-norm statistics stay frozen afterwards (train.pretrained_batchnorm)
        self.still_steps, self.frozen_batchnorm, self.embedder_still = 0, False, False

    def hold_pretrained(self, still_steps: int, frozen_batchnorm: bool) -> None:
        """Keep a pretrained embedder standing still for its first ``still_steps`` global steps
        (eval mode: no batch-norm statistic or dropout moves while only the heads learn), and,
        with ``frozen_batchnorm``, its batch-norm layers in eval mode afterwards too."""
        self.still_steps, self.frozen_batchnorm = still_steps, frozen_batchnorm
        self.at_step(0)

    def at_step(self, step: int) -> None:
        """Set the embedder's mode for global step ``step`` (0-based) of the run."""
        self.embedder_still = step < self.still_steps
        self.train(self.training)

    def train(self, mode: bool = True) -> TrainingModule:
        super().train(mode)
        if mode and self.embedder_still:
            self.model.eval()
        elif mode and self.frozen_batchnorm:
            for module in self.model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def compile_embedder(self, backend: str, mode: str) -> None:
        """Route the embedder through ``torch.compile`` (eager again where it cannot compile).

        Only the embedder: the margin head changes its margin every step of the warm-up, which
        would recompile it each time.
        """
        self.embed_call = CompileFallback(self.model, backend, mode)

    def forward(
        self, waves: torch.Tensor, labels: torch.Tensor, genders: torch.Tensor
    ) -> tuple[torch.Tensor, Any]:
        """Speaker margin loss plus the weighted auxiliary gender loss; and accuracy."""
        embed = self.model if self.embed_call is None else self.embed_call
        embeddings = embed(waves).float()  # (batch, dim)
        loss, accuracy = self.head(embeddings, labels)
        if self.gender is not None:
            loss = loss + self.gender_weight * self.gender(embeddings, genders).loss
        return loss, accuracy


def init_checkpoint_path(cfg: ExperimentConfig, fold: int) -> Path | None:
    """``train.init_checkpoint`` for ``fold`` (``{fold}`` in the path becomes the fold)."""
    path = cfg.train.init_checkpoint
    return None if path is None else Path(str(path).replace("{fold}", str(fold)))


def check_unseen_speakers(
    state: dict[str, Any], path: Path, oof_speakers: set[str], allow: bool
) -> None:
    """Refuse a starting checkpoint that trained on (or was chosen on) fold OOF speakers.

    Raises
    ------
    ValueError
        Naming the overlap, unless ``allow`` (``train.allow_seen_speakers``), which warns.
    """
    if "speakers" not in state:
        log.warning(
            "init_checkpoint %s does not record its training speakers: cannot check that it "
            "never saw this fold's OOF speakers",
            path,
        )
        return
    seen = set(map(str, state["speakers"])) | set(map(str, state.get("validation_speakers", [])))
    overlap = sorted(seen & oof_speakers)
    if not overlap:
        return
    message = (
        f"init_checkpoint {path} saw {len(overlap)} of this fold's {len(oof_speakers)} OOF "
        f"speakers (e.g. {overlap[:5]}), so its OOF scores would leak"
    )
    if not allow:
        raise ValueError(
            f"{message}; start fold k from a model that never saw fold k (e.g. a path with "
            "'{fold}', or a model pretrained on other data), or set "
            "train.allow_seen_speakers=true to accept optimistic OOF figures"
        )
    log.warning("LEAK ACCEPTED (train.allow_seen_speakers=true): %s", message)


def load_pretrained_embedder(
    model: torch.nn.Module,
    path: Path,
    oof_speakers: set[str] | None = None,
    allow: bool = False,
    modules: TrainingModule | None = None,
    speakers: list[str] | None = None,
) -> bool:
    """Initialise an embedder from a ``best.pt``/``last.pt`` of an earlier run (fine-tuning).

    The speaker head is loaded only when the checkpoint was trained on exactly ``speakers`` (in
    that order) and ``modules`` is given: a second phase on the same fold (large-margin
    fine-tuning) keeps its class centres; new data has other speakers. With ``oof_speakers``,
    a checkpoint that saw any of them is refused (see :func:`check_unseen_speakers`).
    Returns whether the heads were loaded too.
    """
    state = load_checkpoint(path)
    if oof_speakers is not None:
        check_unseen_speakers(state, path, oof_speakers, allow)
    if (
        modules is not None
        and speakers is not None
        and "heads" in state
        and list(map(str, state.get("speakers", []))) == list(map(str, speakers))
    ):
        load_heads(modules, state["heads"], path)
        heads_loaded = True
    else:
        heads_loaded = False
    weights = state["model"] if "model" in state else state["modules"]
    weights = {
        k.removeprefix("model."): v
        for k, v in weights.items()
        if not k.startswith(("head.", "gender."))
    }
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise RuntimeError(
            f"init_checkpoint {path} does not fit this model config (the model, features and "
            f"embedding settings must match the run that wrote it): {str(err)[:300]}"
        ) from None
    return heads_loaded


def load_heads(modules: TrainingModule, heads: dict[str, Any], path: Path) -> None:
    """The margin (and gender) head of a checkpoint trained on the same speakers."""
    try:
        modules.head.load_state_dict(heads["head"])
        if modules.gender is not None and "gender" in heads:
            modules.gender.load_state_dict(heads["gender"])
    except RuntimeError as err:
        raise RuntimeError(f"the heads in {path} do not fit this head config: {err}") from None
    log.info("continuing with the speaker head of %s (same training speakers)", path)


class StartingPoint(NamedTuple):
    """Where a fold's training starts: a pretrained embedder (weights or a checkpoint), and
    speaker heads loaded from a checkpoint trained on the same speakers."""

    pretrained: bool
    heads_loaded: bool


def build_training_objects(
    cfg: ExperimentConfig,
    speakers: list[str],
    device: torch.device,
    fold: int,
    oof_speakers: set[str],
    world_size: int = 1,
):
    """Training module (optionally initialised from pretrained weights or a checkpoint), its
    optimiser with two parameter groups (embedder, heads), and where it starts
    (:class:`StartingPoint`: a pretrained embedder gets ``train.pretrained_lr_scale`` and
    ``train.freeze_epochs``; heads loaded from the checkpoint are not imprinted again).

    The peak rate is ``train.lr`` scaled to the global batch by ``train.lr_scaling``; on CUDA
    the optimiser runs its fused kernel (``train.speed.fused_optimizer``)."""
    modules = TrainingModule(cfg, len(speakers))
    pretrained, heads_loaded = has_pretrained_weights(cfg.model), False
    start = init_checkpoint_path(cfg, fold)
    if start is not None:
        heads_loaded = load_pretrained_embedder(
            modules.model, start, oof_speakers, cfg.train.allow_seen_speakers, modules, speakers
        )
        pretrained = True
        log.info("fine-tuning from %s", start)
    elif pretrained:
        log.info("fine-tuning from the pretrained %s weights", cfg.model.architecture)
    if not pretrained and (cfg.train.freeze_epochs or cfg.train.pretrained_lr_scale != 1):
        log.warning(
            "train.freeze_epochs / train.pretrained_lr_scale apply to pretrained layers only; "
            "this model starts from random weights, so they are ignored"
        )
    if cfg.train.frozen_layers:
        if not pretrained or not hasattr(modules.model, "freeze"):
            raise ValueError(
                "train.frozen_layers keeps pretrained layers of an encoder architecture "
                "(wespeaker_resnet*, campplus) frozen; this model "
                f"({cfg.model.architecture}, pretrained: {pretrained}) has none to keep"
            )
        frozen = modules.model.freeze(cfg.train.frozen_layers)
        log.info("train.frozen_layers: %d parameter tensors stay frozen", len(frozen))
    if not pretrained and cfg.train.pretrained_batchnorm != "adapt":
        log.warning("train.pretrained_batchnorm applies to pretrained layers only; ignored")
    modules.to(device)
    heads = [p for name, p in modules.named_parameters() if not name.startswith("model.")]
    params = [
        {"params": list(modules.model.parameters()), "name": "embedder"},
        {"params": heads, "name": "heads"},
    ]
    lr = scaled_lr(cfg.train, world_size)
    if lr != cfg.train.lr:
        log.info(
            "train.lr %g scaled to %g for a global batch of %d (%s rule, reference %d)",
            cfg.train.lr,
            lr,
            cfg.train.batch_size * world_size,
            cfg.train.lr_scaling,
            cfg.train.lr_reference_batch,
        )
    kernel = optimiser_kernel(device, cfg.train.speed.fused_optimizer)
    if cfg.train.optimizer == "sgd":
        optimiser = torch.optim.SGD(
            params,
            lr=lr,
            momentum=0.9,
            nesterov=True,
            weight_decay=cfg.train.weight_decay,
            **kernel,
        )
    else:
        optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.train.weight_decay, **kernel)
    return modules, optimiser, StartingPoint(pretrained, heads_loaded)


def train_stage(
    cfg: ExperimentConfig,
    fold: int,
    resume: bool = False,
    force: bool = False,
    split: FoldTrainingData | None = None,
) -> Path:
    """Train fold ``fold``; returns the path of its best checkpoint.

    Set-up, resume, epoch loop, finish. ``split`` replaces the fold's own data (pretraining on a
    whole external corpus).
    """
    out = cfg.fold_dir(fold)
    if cfg.extractor.kind != "cnn":
        log.info(
            "train fold %d: extractor %r is pretrained, nothing to train", fold, cfg.extractor.kind
        )
        return out / "best.pt"
    stamp = training_fingerprint(cfg, fold)
    if not force and not resume and is_fresh(out, "train", stamp, [out / "best.pt"]):
        log.info("train fold %d: unchanged, reusing %s", fold, out / "best.pt")
        return out / "best.pt"
    # from here best.pt may be overwritten by this run: a kill must not leave it looking finished
    mark_started(out, "train")
    run = set_up_run(cfg, fold, stamp, split)
    state = resume_state(run, resume, force)
    announce_run(run, state)
    loop = EpochLoop.build(run, state)
    while loop_continues(run, state):
        train_one_epoch(run, state, loop)
    if run.ctx.is_main:
        mark_done(out, "train", stamp)
    return out / "best.pt"


@dataclass
class TrainingRun:
    """What one fold's training holds from set-up to finish (per process under ``torchrun``)."""

    cfg: ExperimentConfig
    fold: int
    out: Path  # the fold's folder: last.pt, best.pt, history.csv, snapshots/
    stamp: str  # training fingerprint: last.pt resumes only a run of the same one
    device: torch.device
    ctx: DistributedContext
    split: FoldTrainingData
    cache: AudioCache
    data: TrainingSet
    validation: ValidationSet | None  # None with train.selection=average
    steps: int  # steps per epoch of this rank
    modules: TrainingModule
    optimiser: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    dtype: torch.dtype | None  # autocast dtype, None for float32
    trainable: torch.nn.Module  # ``modules``, wrapped in DistributedDataParallel under torchrun


def initialise_head(
    cfg: ExperimentConfig,
    modules: TrainingModule,
    start: StartingPoint,
    clips: tuple[TrainingSet, AudioCache, torch.device],
) -> None:
    """``train.head_init=class_means``: imprint the speaker head from the starting embedder,
    unless it has nothing to give (random weights: a warning) or the head came with the
    checkpoint (trained on these speakers: kept)."""
    if start.heads_loaded:
        log.info("train.head_init=class_means: the checkpoint's speaker head is kept")
    elif not start.pretrained:
        log.warning(
            "train.head_init=class_means needs a pretrained embedder (its class means of a "
            "random model are noise); this model starts from random weights, so the head does too"
        )
    else:
        imprint_class_means(cfg, modules.model, modules.head, *clips)


def set_up_run(
    cfg: ExperimentConfig, fold: int, stamp: str, split: FoldTrainingData | None
) -> TrainingRun:
    """Device and process group, seeds, the fold's data, model, optimiser, schedule, scaler."""
    out = cfg.fold_dir(fold)
    device = pick_device(cfg.train.device)
    ctx = init_distributed(device)
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    seed_everything(cfg.seed + fold)
    configure_backends(device, cfg.train.speed)

    split = split if split is not None else fold_training_data(cfg, fold)
    cache = AudioCache(cfg.paths.prep_dir)
    data = TrainingSet.from_files(split.train_files)
    validation = None
    if split.validation_trials is not None:
        validation = ValidationSet(cfg, cache, split.validation_trials)
        if ctx.is_main:
            write_csv(out / "validation_trials.csv", split.validation_trials)
    # every rank takes the same number of steps (a DDP requirement); batches are drawn by
    # global step number, so ranks never share a batch
    steps = -(-steps_per_epoch(cfg.train, len(data.ids)) // ctx.world_size)
    modules, optimiser, start = build_training_objects(
        cfg, data.speakers, device, fold, split.oof_speakers, ctx.world_size
    )
    pretrained = start.pretrained
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, group_schedules(cfg.train, steps, pretrained)
    )
    if cfg.train.head_init == "class_means":
        initialise_head(cfg, modules, start, (data, cache, device))
    if pretrained:
        modules.hold_pretrained(
            still_steps(cfg.train, steps), cfg.train.pretrained_batchnorm == "frozen"
        )
    dtype = autocast_dtype(device, cfg.train.amp, cfg.train.speed.amp_dtype)
    scaler = make_grad_scaler(device, dtype)
    if cfg.train.speed.compile:
        modules.compile_embedder(cfg.train.speed.compile_backend, cfg.train.speed.compile_mode)
    trainable: torch.nn.Module = modules
    if ctx.enabled:
        trainable = DistributedDataParallel(
            modules, device_ids=[device.index] if device.type == "cuda" else None
        )
    return TrainingRun(
        cfg, fold, out, stamp, device, ctx, split, cache, data, validation, steps,
        modules, optimiser, scheduler, scaler, dtype, trainable,
    )  # fmt: skip


def resume_state(run: TrainingRun, resume: bool, force: bool) -> dict[str, Any]:
    """The loop's state (epoch, best EER, stale epochs, history): fresh, or that of ``last.pt``.

    ``last.pt`` is resumed (weights, optimiser, schedule, scaler, generators) only when its
    fingerprint matches the run's; unless ``force``, it is skipped otherwise.

    Raises
    ------
    RuntimeError
        ``resume`` and ``last.pt`` was trained with another config or data.
    FileNotFoundError
        ``resume`` and there is no ``last.pt``.
    """
    state = {"epoch": 0, "best_eer": float("inf"), "stale": 0, "history": []}
    last = run.out / "last.pt"
    if not force and last.is_file():
        saved = load_checkpoint(last, run.device)
        if saved.get("fingerprint") == run.stamp:
            run.modules.load_state_dict(saved["modules"])
            run.optimiser.load_state_dict(saved["optimiser"])
            run.scheduler.load_state_dict(saved["scheduler"])
            if saved["scaler"] and run.scaler.is_enabled():  # empty when saved without fp16
                run.scaler.load_state_dict(saved["scaler"])
            state = saved["state"]
            restore_rng(saved)
            log.info("train fold %d: resuming after epoch %d", run.fold, state["epoch"])
        elif resume:
            raise RuntimeError(f"{last} was trained with another config or data; use --force")
    elif resume:
        raise FileNotFoundError(f"--resume: no checkpoint {last} to resume from")
    return state


def announce_run(run: TrainingRun, state: dict[str, Any]) -> None:
    """On the main rank: clear a fresh start's snapshots, write config.yaml, log the run."""
    if not run.ctx.is_main:
        return
    if state["epoch"] == 0:  # a fresh start: no weights of an earlier run
        shutil.rmtree(run.out / "snapshots", ignore_errors=True)
    write_text(run.out / "config.yaml", config_to_yaml(run.cfg))
    log.info(
        "train fold %d: %d speakers, %d clips, %s/epoch, %d params, device %s, checkpoint by %s",
        run.fold,
        len(run.data.speakers),
        len(run.data.ids),
        plural(run.steps, "step"),
        sum(p.numel() for p in run.modules.model.parameters()),
        run.device,
        selection_summary(run.cfg, run.split),
    )


@dataclass
class EpochLoop:
    """The epoch loop's batches, loader and optimisation step, built once per run."""

    batches: BalancedBatches
    loader: DataLoader
    step: TrainStep
    first_epoch: int  # the epoch this process started (or resumed) at

    @classmethod
    def build(cls, run: TrainingRun, state: dict[str, Any]) -> EpochLoop:
        cfg, ctx = run.cfg, run.ctx
        batches = BalancedBatches(
            run.data,
            run.cache,
            cfg.train,
            cfg.data.sample_rate,
            cfg.seed + run.fold,
            state["epoch"],
            [ctx.rank + ctx.world_size * i for i in range(run.steps)],
            build_waveform_augment(cfg.augment, cfg.data.sample_rate),
        )
        # one loader for the run: with train.speed.persistent_workers its workers live across
        # epochs
        loader = DataLoader(
            batches,
            batch_size=None,
            num_workers=cfg.train.workers,
            **loader_options(run.device, cfg.train.workers, cfg.train.speed),
        )
        step = TrainStep(
            run.trainable,
            run.modules,
            run.optimiser,
            run.scheduler,
            run.scaler,
            run.device,
            run.dtype,
            cfg.train.grad_clip,
            build_batch_augment(cfg.augment, cfg.data.sample_rate),
        )
        return cls(batches, loader, step, state["epoch"])


def loop_continues(run: TrainingRun, state: dict[str, Any]) -> bool:
    """Epochs left, and (with a validation set) fewer than ``train.patience`` stale ones."""
    early_stopping = run.validation is not None
    return state["epoch"] < run.cfg.train.epochs and not (
        early_stopping and state["stale"] >= run.cfg.train.patience
    )


def train_one_epoch(run: TrainingRun, state: dict[str, Any], loop: EpochLoop) -> None:
    """Train, validate and record one epoch; ``state`` moves on by one epoch."""
    cfg, fold, ctx = run.cfg, run.fold, run.ctx
    epoch = state["epoch"]
    started = time.perf_counter()
    seed_everything(epoch_seed(cfg, fold, epoch, ctx.rank))
    loop.batches.set_epoch(epoch)
    if loop.loader.persistent_workers and epoch > loop.first_epoch:
        # a fresh loader iterator draws its workers' base seed from the global generator;
        # a persistent one draws it once: draw here too, so the masks and dropout that
        # follow are those of a run with a new loader per epoch (results do not change)
        torch.empty((), dtype=torch.int64).random_()
    totals = run_epoch(cfg, loop.step, loop.loader, epoch, epoch_seed(cfg, fold, epoch, ctx.rank))
    val_eer = float("nan")
    if run.validation is not None:
        val_eer = broadcast_float(
            run.validation.eer(run.modules.model, run.device) if ctx.is_main else 0.0, ctx
        )
    seconds = time.perf_counter() - started
    state["epoch"] = epoch + 1
    improved = run.validation is not None and val_eer < state["best_eer"]
    state["stale"] = 0 if improved else state["stale"] + 1
    if improved:
        state["best_eer"] = val_eer
    row = {
        "epoch": epoch + 1,
        **totals,
        "val_eer": val_eer,
        "lr": run.scheduler.get_last_lr()[0],
        "seconds": seconds,
    }
    state["history"].append(row)
    if ctx.is_main:
        log.info(
            "fold %d epoch %d: loss %.3f acc %.3f%s (%.0f s)",
            fold,
            epoch + 1,
            totals["loss"],
            totals["accuracy"],
            f" val EER {val_eer:.4f}" if run.validation is not None else "",
            seconds,
        )
        write_epoch_files(run, state, improved)
    barrier(ctx)


def write_epoch_files(run: TrainingRun, state: dict[str, Any], improved: bool) -> None:
    """The main rank's files after an epoch: an averaging snapshot, best.pt when chosen, last.pt
    and history.csv (``save_epoch``)."""
    cfg, out, modules = run.cfg, run.out, run.modules
    if cfg.train.selection == "average" and state["epoch"] in averaged_epochs(
        cfg.train.epochs, cfg.train.average_last
    ):
        save_checkpoint(snapshot_path(out, state["epoch"]), modules.model.state_dict())
    kept = improved or (run.validation is None and state["epoch"] == cfg.train.epochs)
    identity = {"speakers": run.data.speakers, "validation_speakers": run.split.validation_speakers}
    best = best_checkpoint(cfg, out, modules, state, identity) if kept else None
    save_epoch(cfg, out, modules, run.optimiser, run.scheduler, run.scaler, state, run.stamp, best)


def selection_summary(cfg: ExperimentConfig, split: FoldTrainingData) -> str:
    if split.validation_trials is None:
        averaged = min(cfg.train.average_last, cfg.train.epochs)
        if averaged == 1:
            return f"the weights after the last of {plural(cfg.train.epochs, 'epoch')}"
        return f"the mean of the last {averaged} of {cfg.train.epochs} epochs"
    return (
        f"validation EER on {len(split.validation_speakers)} held-out speakers "
        f"({len(split.validation_trials)} trials)"
    )


def best_checkpoint(
    cfg: ExperimentConfig, out: Path, modules: TrainingModule, state: dict, identity: dict
) -> dict[str, Any]:
    """The ``best.pt`` content: this epoch's weights (holdout) or the averaged ones (average).

    It records the config, the speakers the model was trained on and those that chose it, so a
    later run can refuse a starting checkpoint that saw its OOF speakers.
    """
    weights = modules.model.state_dict()
    chosen: list[int] = [state["epoch"]]
    if cfg.train.selection == "average":
        chosen = averaged_epochs(cfg.train.epochs, cfg.train.average_last)
        snapshots = [load_checkpoint(snapshot_path(out, e)) for e in chosen]
        weights = average_state_dicts(snapshots)
    best = {
        "model": weights,
        "config": cfg.model_dump(mode="json"),
        "epoch": state["epoch"],
        "epochs_averaged": chosen,
        "val_eer": state["best_eer"] if cfg.train.selection == "holdout" else None,
        **identity,
    }
    if modules.gender is not None:
        best["gender"] = modules.gender.state_dict()
    # the last epoch's heads: a second phase on the same speakers (large-margin) continues them
    best["heads"] = {"head": modules.head.state_dict()} | (
        {"gender": modules.gender.state_dict()} if modules.gender is not None else {}
    )
    return best


def restore_rng(saved: dict[str, Any]) -> None:
    """Restore the CPU and (when present and saved) CUDA generator states of a checkpoint."""
    torch.set_rng_state(saved["torch_rng"].cpu())
    cuda_states = saved.get("cuda_rng")
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([state.cpu() for state in cuda_states])


def run_epoch(
    cfg: ExperimentConfig, step: TrainStep, loader: DataLoader, epoch: int, seed: int
) -> dict[str, float]:
    """One pass over the epoch's batches; returns mean loss and accuracy.

    ``seed`` seeds the generator of the whole-batch augmentation on the device (when
    ``augment.batch_on_device``), so a resumed epoch draws what it would have.
    """
    step.trainable.train()
    totals = StepTotals(step.device)
    generator = None
    if step.batch_augment is not None:
        # its own stream: not the one the global generator (SpecAugment) draws from this epoch
        augment_seed = int(np.random.default_rng([seed, 1]).integers(2**62))
        generator = torch.Generator(device=step.device).manual_seed(augment_seed)
    for index, (waves, labels, genders) in enumerate(
        progress(loader, f"epoch {epoch + 1}", unit="steps")
    ):
        step.modules.at_step(step.scheduler.last_epoch)  # the scheduler counts global steps
        margin = margin_at_epoch(cfg.head, epoch + index / max(1, len(loader)))
        step.modules.head.set_margin(margin)
        totals.add(*step(waves, labels, genders, generator))
    return totals.means()


def save_epoch(
    cfg: ExperimentConfig,
    out: Path,
    modules,
    optimiser,
    scheduler,
    scaler,
    state: dict,
    stamp: str,
    best: dict[str, Any] | None,
) -> None:
    """``best.pt`` (when chosen this epoch), ``last.pt`` (everything to resume), history.csv.

    ``best.pt`` goes first: a run killed between the two writes then resumes from the previous
    epoch and redoes this one, instead of resuming past an improvement that was never saved.
    """
    if best is not None:
        save_checkpoint(out / "best.pt", best)
    save_checkpoint(
        out / "last.pt",
        {
            "modules": modules.state_dict(),
            "optimiser": optimiser.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "state": state,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "fingerprint": stamp,
            "config": cfg.model_dump(mode="json"),
        },
    )
    write_csv(out / "history.csv", pd.DataFrame(state["history"]))


def seconds_per_epoch(history: pd.DataFrame) -> float:
    return float(np.median(history["seconds"])) if len(history) else float("nan")
