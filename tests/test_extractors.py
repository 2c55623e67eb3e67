"""Embedding extractors: the registry, the optional Resemblyzer backend and its absence."""

import sys

import numpy as np
import pytest

from src.config import ExtractorConfig, load_config
from src.inference.extractors import build_extractor
from src.inference.resemblyzer_backend import ResemblyzerExtractor, resemblyzer_available


def test_unknown_extractor_names_the_choices() -> None:
    cfg = load_config(None)
    cfg = cfg.model_copy(update={"extractor": ExtractorConfig.model_construct(kind="ecapa")})
    with pytest.raises(ValueError, match="choose from"):
        build_extractor(cfg, 0)


def test_missing_resemblyzer_gives_install_hint(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "resemblyzer", None)
    with pytest.raises(RuntimeError, match="requirements-resemblyzer.txt"):
        ResemblyzerExtractor("cpu")


@pytest.mark.skipif(not resemblyzer_available(), reason="optional resemblyzer extra not installed")
def test_resemblyzer_embeds_unit_vectors_offline() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(32000) / 16000
    voiced = 0.3 * np.sin(2 * np.pi * 140 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    waves = np.stack([voiced, rng.standard_normal(32000) * 0.1]).astype(np.float32)
    extractor = ResemblyzerExtractor("cpu")
    vectors = extractor.embed(waves)
    assert vectors.shape == (2, 256) and extractor.fold_independent
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    again = ResemblyzerExtractor("cpu").embed(waves)
    np.testing.assert_allclose(vectors, again, atol=1e-6)


class SpectrumExtractor:
    """A fold-independent stand-in: a fixed random projection of each window's spectrum."""

    dim = 8
    fingerprint = "spectrum-v1"
    fold_independent = True

    def embed(self, waves: np.ndarray) -> np.ndarray:
        spectrum = np.abs(np.fft.rfft(waves, n=512, axis=1))  # (batch, 257)
        projection = np.random.default_rng(0).standard_normal((spectrum.shape[1], self.dim))
        vectors = spectrum @ projection
        return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def test_clip_store_is_keyed_by_the_embedding_settings(tmp_path, monkeypatch) -> None:
    """Changing the window of a fold-independent extractor re-embeds instead of reusing."""
    from src.inference import extractors
    from src.inference.embed import embed_stage, load_embeddings
    from tests.conftest import prepare_tiny

    monkeypatch.setitem(extractors.EXTRACTORS, "resemblyzer", lambda cfg, fold: SpectrumExtractor())
    cfg = prepare_tiny(tmp_path, "extractor.kind=resemblyzer", "embed.window_seconds=0.5")
    first = load_embeddings(embed_stage(cfg, 0))["vectors"]
    longer = cfg.model_copy(update={"embed": cfg.embed.model_copy(update={"window_seconds": 1.0})})
    second = load_embeddings(embed_stage(longer, 0))["vectors"]
    assert first.shape == second.shape
    assert not np.allclose(first, second)
    again = load_embeddings(embed_stage(cfg, 0, force=True))["vectors"]
    np.testing.assert_allclose(again, first, atol=1e-6)
