"""Device choice and DistributedDataParallel set-up (``torchrun`` sets the environment)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU; an unavailable CUDA request is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available here")
    return device


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the process group when launched by ``torchrun`` (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistributedContext()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local)
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local)


def barrier(ctx: DistributedContext) -> None:
    if ctx.enabled:
        dist.barrier()


def broadcast_float(value: float, ctx: DistributedContext) -> float:
    """Rank 0's value on every rank (e.g. the validation EER that drives early stopping)."""
    if not ctx.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return float(box[0])
