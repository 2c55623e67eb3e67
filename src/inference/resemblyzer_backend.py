"""Resemblyzer (GE2E, VoxCeleb + LibriSpeech pretrained) as a first-level extractor.

The optional ``resemblyzer`` package ships its weights inside the wheel, so this works offline.
Install it with ``.venv/bin/pip install -r requirements-resemblyzer.txt``.
"""

from __future__ import annotations

import logging

import numpy as np

from src.inference.extractor_base import EmbeddingExtractor

log = logging.getLogger(__name__)

INSTALL_HINT = "install the optional extra: .venv/bin/pip install -r requirements-resemblyzer.txt"


def resemblyzer_available() -> bool:
    try:
        import resemblyzer  # noqa: F401
    except ImportError:
        return False
    return True


class ResemblyzerExtractor(EmbeddingExtractor):
    """GE2E utterance embeddings (256-d, unit length); the same model for every fold."""

    fold_independent = True
    dim = 256

    def __init__(self, device: str = "auto", preprocess: bool = True) -> None:
        try:
            import resemblyzer
            from resemblyzer import VoiceEncoder
        except ImportError as err:
            raise RuntimeError(
                f"the resemblyzer extractor needs its package ({err}); {INSTALL_HINT}"
            ) from None
        self._preprocess_wav = resemblyzer.preprocess_wav
        self.preprocess = preprocess
        self.encoder = VoiceEncoder(
            "cuda" if device in ("auto", "cuda") and _cuda() else "cpu", verbose=False
        )
        self.fingerprint = (
            f"resemblyzer-{getattr(resemblyzer, '__version__', '0.1.4')}-pre{int(preprocess)}"
        )

    def _prepare(self, wave: np.ndarray) -> np.ndarray:
        """Resemblyzer's own volume normalisation and long-silence trimming, when it keeps audio."""
        if not self.preprocess:
            return wave
        try:
            trimmed = self._preprocess_wav(wave.astype(np.float32), source_sr=16000)
        except (ValueError, IndexError):
            return wave
        return trimmed if trimmed.size >= 16000 * 0.5 else wave

    def embed(self, waves: np.ndarray) -> np.ndarray:
        vectors = [self.encoder.embed_utterance(self._prepare(w)) for w in waves]
        out = np.stack(vectors).astype(np.float32)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
