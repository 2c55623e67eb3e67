"""Learning-rate schedules as a factor of the peak rate per optimiser step."""

from __future__ import annotations

import math

from src.config import TrainConfig


def lr_factor(step: int, total_steps: int, warmup_steps: int, kind: str) -> float:
    """Linear warm-up to 1, then cosine decay (``cosine``) or a one-cycle cosine anneal.

    ``onecycle`` starts at 1/25 of the peak rather than 0 and anneals to 1/10,000 of it.
    """
    total_steps = max(total_steps, 1)
    if kind == "onecycle":
        warm = max(warmup_steps, int(0.3 * total_steps))
        start, end = 1 / 25, 1 / 1e4
        if step < warm:
            return start + (1 - start) * (1 - math.cos(math.pi * step / warm)) / 2
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return end + (1 - end) * (1 + math.cos(math.pi * progress)) / 2
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.01 + 0.99 * (1 + math.cos(math.pi * progress)) / 2


def schedule_for(cfg: TrainConfig, steps_per_epoch: int):
    """A ``LambdaLR`` factor function for this training config."""
    total = cfg.epochs * steps_per_epoch
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    return lambda step: lr_factor(step, total, warmup, cfg.scheduler)


def group_schedules(cfg: TrainConfig, steps_per_epoch: int, pretrained: bool) -> list:
    """``LambdaLR`` factors of the two parameter groups: the embedder, then the heads.

    With pretrained embedder weights, the embedder runs at ``pretrained_lr_scale`` times the
    rate and stands still (factor 0) for its first ``freeze_epochs``: the new heads learn first.
    """
    base = schedule_for(cfg, steps_per_epoch)
    if not pretrained:
        return [base, base]
    frozen_steps = still_steps(cfg, steps_per_epoch)
    scale = cfg.pretrained_lr_scale

    def embedder(step: int) -> float:
        return 0.0 if step < frozen_steps else scale * base(step)

    return [embedder, base]


def still_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Global steps a pretrained embedder stands still for (``train.freeze_epochs``)."""
    return round(cfg.freeze_epochs * steps_per_epoch)


def scaled_lr(cfg: TrainConfig, world_size: int = 1) -> float:
    """``train.lr`` scaled to the global batch (``batch_size x world_size``) by ``lr_scaling``.

    ``linear``: ``lr x batch / lr_reference_batch``, the rule of Goyal et al. 2017, "Accurate,
    Large Minibatch SGD: Training ImageNet in 1 Hour" (arXiv:1706.02677), for SGD with a warm-up
    (``train.warmup_epochs``). ``sqrt``: ``lr x sqrt(batch / lr_reference_batch)``, which keeps
    the gradient noise scale of adaptive optimisers such as AdamW (Malladi et al. 2022, "On the
    SDEs and Scaling Rules for Adaptive Gradient Algorithms", arXiv:2205.10287; Hoffer et al.
    2017 for SGD). ``none``: ``train.lr`` as written.

    >>> scaled_lr(TrainConfig(lr=0.002, batch_size=256, lr_scaling="sqrt", lr_reference_batch=128))
    0.0028284271247461905
    """
    if cfg.lr_scaling == "none":
        return cfg.lr
    ratio = cfg.batch_size * world_size / cfg.lr_reference_batch
    return cfg.lr * (ratio if cfg.lr_scaling == "linear" else math.sqrt(ratio))
