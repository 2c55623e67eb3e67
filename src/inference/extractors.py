"""Embedding extractors: anything that turns a batch of 16 kHz waveforms into unit vectors.

An experiment's first-level model is an extractor chosen by ``extractor.kind``:

- ``cnn``: our log-mel CNN, one trained model per fold (``fold{k}/best.pt``);
- ``resemblyzer``: the pretrained GE2E encoder shipped inside the optional ``resemblyzer``
  package (same model for every fold: its OOF scores are its scores on each fold's trials).

Another backend (SpeechBrain ECAPA, WeSpeaker ResNet34, ...) plugs in by subclassing
:class:`EmbeddingExtractor` and adding it to ``EXTRACTORS``; see the README.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from src.config import ExperimentConfig, FeaturesConfig, ModelConfig
from src.training.checkpoint import load_checkpoint
from src.training.device import pick_device
from src.util.stage_cache import file_digest

log = logging.getLogger(__name__)


class EmbeddingExtractor(ABC):
    """Maps waveforms ``(batch, samples)`` at 16 kHz to unit vectors ``(batch, dim)``."""

    dim: int
    fingerprint: str  # changes whenever the model's weights or settings change

    @abstractmethod
    def embed(self, waves: np.ndarray) -> np.ndarray:
        """Unit-length embeddings of equal-length waveforms, float32 ``(batch, dim)``."""


class ModuleExtractor(EmbeddingExtractor):
    """Wraps a torch embedder module (in eval mode) as an extractor."""

    def __init__(self, model: torch.nn.Module, device: torch.device, dim: int, fingerprint: str):
        self.model, self.device, self.dim, self.fingerprint = model, device, dim, fingerprint

    @torch.inference_mode()
    def embed(self, waves: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(waves, dtype=np.float32)).to(self.device)
        with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
            vectors = self.model(batch).float()  # (batch, dim)
        return torch.nn.functional.normalize(vectors, dim=1).cpu().numpy()


# settings a trained model is defined by: a checkpoint written under others is refused
MODEL_SECTIONS = ("features", "model")
MODEL_KEYS_IGNORED = {"model.pretrained", "model.channels_last"}  # same weights either way


def model_mismatches(saved: dict, cfg: ExperimentConfig) -> list[str]:
    """``key: saved -> configured`` for each model setting where checkpoint and config differ."""
    wanted = cfg.model_dump(mode="json")
    problems = []
    for section in MODEL_SECTIONS:
        for key, value in wanted[section].items():
            name = f"{section}.{key}"
            old = saved.get(section, {}).get(key)
            if name not in MODEL_KEYS_IGNORED and old != value:
                problems.append(f"{name}: {old!r} -> {value!r}")
    if saved.get("data", {}).get("sample_rate") != cfg.data.sample_rate:
        problems.append(
            f"data.sample_rate: {saved.get('data', {}).get('sample_rate')!r} -> "
            f"{cfg.data.sample_rate!r}"
        )
    return problems


def load_cnn_extractor(
    checkpoint_path: Path, device: str = "auto", cfg: ExperimentConfig | None = None
) -> ModuleExtractor:
    """A trained fold model, rebuilt from the config saved inside its checkpoint.

    With ``cfg``, a checkpoint trained with other model settings is refused, naming them.
    """
    from src.model_zoo import build_embedder

    target = pick_device(device)
    state = load_checkpoint(checkpoint_path, "cpu")
    config = state["config"]
    problems = model_mismatches(config, cfg) if cfg is not None else []
    if problems:
        raise ValueError(
            f"{checkpoint_path} was trained with other model settings than this config "
            f"({'; '.join(problems)}): train this run first, or use the run that wrote it"
        )
    model = build_embedder(
        FeaturesConfig(**config["features"]),
        ModelConfig(**{**config["model"], "pretrained": False}),
        int(config["data"]["sample_rate"]),
    )
    model.load_state_dict(state["model"])
    model.to(target).eval()
    dim = int(config["model"]["embedding_dim"])
    return ModuleExtractor(model, target, dim, file_digest(checkpoint_path))


def _cnn(cfg: ExperimentConfig, fold: int) -> EmbeddingExtractor:
    return load_cnn_extractor(cfg.fold_dir(fold) / "best.pt", cfg.train.device, cfg)


def _resemblyzer(cfg: ExperimentConfig, fold: int) -> EmbeddingExtractor:
    from src.inference.resemblyzer_backend import ResemblyzerExtractor

    return ResemblyzerExtractor(cfg.train.device)


EXTRACTORS: dict[str, Callable[[ExperimentConfig, int], EmbeddingExtractor]] = {
    "cnn": _cnn,
    "resemblyzer": _resemblyzer,
}


def build_extractor(cfg: ExperimentConfig, fold: int) -> EmbeddingExtractor:
    """The extractor an experiment uses for fold ``fold``."""
    try:
        factory = EXTRACTORS[cfg.extractor.kind]
    except KeyError:
        raise ValueError(
            f"unknown extractor {cfg.extractor.kind!r}; choose from {sorted(EXTRACTORS)}"
        ) from None
    return factory(cfg, fold)
