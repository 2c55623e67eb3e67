"""One optimiser step of the training loop, as fast as the device allows (``train.speed``).

The loop in ``train.py`` and ``bench/gpu_check.py`` both call :class:`TrainStep`, so the
benchmark measures the code that trains. On the CPU it computes exactly what the loop always
did (float32, no scaler, the per-parameter optimiser); on CUDA it adds autocast (bfloat16 where
supported, else float16 with a loss scaler), the whole-batch waveform augmentation when
``augment.batch_on_device`` is set, and optionally a compiled embedder.

The step never waits for the GPU: loss and accuracy are summed on the device and read once per
epoch (:meth:`StepTotals.means`), so the host can queue the next step's kernels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from src.training.device import autocast

log = logging.getLogger(__name__)


class CompileFallback:
    """``torch.compile(module)`` that runs eagerly where compiling fails, with one log line.

    Compiling happens at the first call (and a backward graph at the first backward), so
    failures surface there: :meth:`fall_back` switches to the eager module for good. The
    compiled module shares the eager module's parameters and buffers, so its ``state_dict``
    (checkpoints) is unchanged.

    Parameters
    ----------
    module : torch.nn.Module
        The module to compile (the embedder: the margin head changes its margin every step,
        which would recompile a compiled head).
    backend, mode : str
        ``torch.compile``'s ``backend`` and ``mode`` (``default``, ``reduce-overhead`` for CUDA
        graphs, ``max-autotune``).
    """

    def __init__(self, module: torch.nn.Module, backend: str = "inductor", mode: str = "default"):
        self.module = module
        self.compiled: Callable[..., Any] | None = None
        self.failed = False
        try:
            self.compiled = torch.compile(
                module, backend=backend, mode=None if mode == "default" else mode
            )
        except Exception as err:  # unknown backend, unsupported Python or platform
            self.fall_back(err)

    @property
    def active(self) -> bool:
        """Whether calls still go to the compiled module."""
        return self.compiled is not None

    def fall_back(self, err: BaseException) -> None:
        """Run eagerly from now on; the first failure is logged (one line)."""
        self.compiled = None
        if not self.failed:
            first_line = (str(err).strip().splitlines() or [""])[0][:200]
            log.warning(
                "train.speed.compile: cannot compile (%s: %s); running eagerly",
                type(err).__name__,
                first_line,
            )
            self.failed = True

    def __call__(self, *args: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except Exception as err:  # a graph break is no error; this is a failed compile
                self.fall_back(err)
        return self.module(*args)


class StepTotals:
    """Sums of loss and accuracy over an epoch, kept on the device (no sync per step).

    Summed in float64 in step order, so the means equal the per-step ``float()`` sums the
    loop used before to the last bit.
    """

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.accuracy = torch.zeros((), dtype=torch.float64, device=device)
        self.count = 0

    def add(self, loss: torch.Tensor, accuracy: torch.Tensor | float) -> None:
        self.loss += loss.detach().to(torch.float64)
        self.accuracy += torch.as_tensor(accuracy, device=self.loss.device).to(torch.float64)
        self.count += 1

    def means(self) -> dict[str, float]:
        count = max(self.count, 1)
        return {"loss": float(self.loss) / count, "accuracy": float(self.accuracy) / count}


class TrainStep:
    """Forward, backward and optimiser step of one batch.

    Parameters
    ----------
    trainable : torch.nn.Module
        What the batch goes through: the training module, or its DistributedDataParallel
        wrapper; called as ``trainable(waves, labels, genders) -> (loss, accuracy)``.
    modules : torch.nn.Module
        The unwrapped training module (gradient clipping reads its parameters).
    optimiser, scheduler
        Stepped once per batch.
    scaler : torch.amp.GradScaler
        Enabled for float16 autocast only.
    dtype : torch.dtype | None
        Autocast dtype (:func:`src.training.device.autocast_dtype`); None: float32.
    grad_clip : float
        Clip the gradient norm to this; 0 = off.
    batch_augment : callable, optional
        ``(waves, generator) -> waves`` on the device before the forward pass.
    """

    def __init__(
        self,
        trainable: torch.nn.Module,
        modules: torch.nn.Module,
        optimiser: torch.optim.Optimizer,
        scheduler: Any,
        scaler: torch.amp.GradScaler,
        device: torch.device,
        dtype: torch.dtype | None,
        grad_clip: float,
        batch_augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    ) -> None:
        self.trainable, self.modules = trainable, modules
        self.optimiser, self.scheduler, self.scaler = optimiser, scheduler, scaler
        self.device, self.dtype, self.grad_clip = device, dtype, grad_clip
        self.batch_augment = batch_augment

    def to_device(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Copies to the device that do not block the host (pinned batches overlap the copy)."""
        return tuple(t.to(self.device, non_blocking=True) for t in tensors)

    def __call__(
        self,
        waves: torch.Tensor,
        labels: torch.Tensor,
        genders: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step on a batch ``(batch, samples)``; returns the (device) loss and accuracy."""
        waves, labels, genders = self.to_device(waves, labels, genders)
        if self.batch_augment is not None:
            waves = self.batch_augment(waves, generator)
        compiled = compiled_embedder(self.modules)
        if compiled is None or not compiled.active:
            return self._step(waves, labels, genders)
        try:  # the first compiled steps compile the backward graph too: fall back on failure
            return self._step(waves, labels, genders)
        except Exception as err:
            compiled.fall_back(err)
            self.optimiser.zero_grad(set_to_none=True)
            return self._step(waves, labels, genders)

    def _step(
        self, waves: torch.Tensor, labels: torch.Tensor, genders: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(self.device, self.dtype):
            loss, accuracy = self.trainable(waves, labels, genders)
        self.optimiser.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimiser)
            torch.nn.utils.clip_grad_norm_(self.modules.parameters(), self.grad_clip)
        self.scaler.step(self.optimiser)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        return loss, accuracy


def compiled_embedder(modules: torch.nn.Module) -> CompileFallback | None:
    """The training module's compiled embedder call, when ``train.speed.compile`` set one."""
    return getattr(modules, "embed_call", None)
