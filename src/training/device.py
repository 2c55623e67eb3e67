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


# --- how one training step runs on this device (train.speed) -------------------------------


def autocast_dtype(device: torch.device, amp: bool, choice: str = "auto") -> torch.dtype | None:
    """The autocast dtype of a training or embedding step, or None for float32.

    Mixed precision is CUDA-only here (the CPU keeps float32, as before). ``auto`` is
    bfloat16 where the GPU computes it natively (Ampere and newer): same exponent range as
    float32, so no loss scaling; float16 elsewhere (with :func:`make_grad_scaler`).
    """
    if not amp or device.type != "cuda":
        return None
    if choice == "bfloat16" or (choice == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` on ``device``; a no-op context for None."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def make_grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A loss scaler, enabled for float16 only (bfloat16 and float32 need none)."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def configure_backends(device: torch.device, speed) -> None:
    """Process-wide CUDA settings of ``train.speed`` (``cudnn_benchmark``, ``deterministic``).

    Nothing changes on the CPU. ``deterministic`` also sets ``CUBLAS_WORKSPACE_CONFIG``, which
    cuBLAS reads when it starts: set it in the environment before the first CUDA call to be sure.
    """
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = speed.cudnn_benchmark and not speed.deterministic
    torch.backends.cudnn.deterministic = speed.deterministic
    if speed.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def optimiser_kernel(device: torch.device, fused: bool) -> dict[str, bool]:
    """Keyword arguments that pick the optimiser's implementation on ``device``.

    On CUDA with ``fused``: ``fused=True`` (one kernel for every parameter; AdamW and SGD take
    it). Otherwise nothing: torch's default (``foreach`` on CUDA, the per-parameter loop on the
    CPU, unchanged).
    """
    return {"fused": True} if fused and device.type == "cuda" else {}


def loader_options(device: torch.device, workers: int, speed) -> dict[str, bool]:
    """``DataLoader`` flags: page-locked batches on CUDA (so ``.to(device, non_blocking=True)``
    overlaps the copy), and workers kept across epochs (``persistent_workers``)."""
    return {
        "pin_memory": device.type == "cuda" and speed.pin_memory,
        "persistent_workers": workers > 0 and speed.persistent_workers,
    }
