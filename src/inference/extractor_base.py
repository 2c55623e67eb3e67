"""The extractor interface: anything that turns a batch of 16 kHz waveforms into unit vectors."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from src.training.device import autocast_dtype


class EmbeddingExtractor(ABC):
    """Maps waveforms ``(batch, samples)`` at 16 kHz to unit vectors ``(batch, dim)``."""

    dim: int
    fingerprint: str  # changes whenever the model's weights or settings change

    @abstractmethod
    def embed(self, waves: np.ndarray) -> np.ndarray:
        """Unit-length embeddings of equal-length waveforms, float32 ``(batch, dim)``."""


class ModuleExtractor(EmbeddingExtractor):
    """Wraps a torch embedder module (in eval mode) as an extractor.

    ``fold_independent``: the same model serves every fold (frozen pretrained weights), so its
    clip embeddings are computed once and shared. ``dtype``: the autocast dtype; by default
    bfloat16 on a CUDA GPU that has it, float16 on other GPUs, float32 on the CPU
    (:func:`src.training.device.autocast_dtype`).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        dim: int,
        fingerprint: str,
        fold_independent: bool = False,
        dtype: torch.dtype | str | None = "auto",
    ):
        self.model, self.device, self.dim, self.fingerprint = model, device, dim, fingerprint
        self.fold_independent = fold_independent
        self.dtype = autocast_dtype(device, True) if dtype == "auto" else dtype

    def raw(self, batch: torch.Tensor) -> torch.Tensor:
        """Float32 embeddings before normalising, of a batch on ``device`` (gender heads)."""
        return self.model(batch).float()

    @torch.inference_mode()
    def embed(self, waves: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(waves, dtype=np.float32))
        if self.device.type == "cuda":  # page-locked: the copy runs without blocking the host
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            vectors = self.model(batch.to(self.device)).float()  # (batch, dim)
        return torch.nn.functional.normalize(vectors, dim=1).cpu().numpy()
