"""An untrained experiment that looks trained: what the serve stage reads, without training.

Writes, for each fold of ``cfg``: ``fold{k}/best.pt`` (a randomly initialised embedder in the
format ``save_epoch`` writes), ``fold{k}/embeddings.npz`` (cohort rows only: random unit
vectors standing in for training-speaker embeddings) and ``test_scores.csv`` (random fold-mean
AS-norm scores). The API can then be tested and timed with the real model size but no data.

Example
-------
>>> cfg = load_config("configs/demo.yaml", ["paths.outputs=/tmp/serve_bench"])  # doctest: +SKIP
>>> write_untrained_experiment(cfg)  # doctest: +SKIP
>>> VerificationModel.load(cfg).score(wave_1, wave_2)  # doctest: +SKIP
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from src.config import ExperimentConfig
from src.model_zoo import build_embedder
from src.training.checkpoint import save_checkpoint
from src.util.io import write_csv, write_npz

log = logging.getLogger(__name__)


def write_untrained_experiment(
    cfg: ExperimentConfig,
    cohort_speakers: int = 32,
    clips_per_speaker: int = 4,
    test_pairs: int = 200,
    seed: int = 0,
) -> None:
    """Random-weight fold checkpoints, cohort embeddings and test scores for ``cfg.experiment``."""
    rng = np.random.default_rng(seed)
    config = cfg.model_dump(mode="json")
    for k in range(cfg.folds.n_folds):
        torch.manual_seed(seed + k)
        model = build_embedder(cfg.features, cfg.model, cfg.data.sample_rate).eval()
        fold_dir = cfg.fold_dir(k)
        state = {"model": model.state_dict(), "config": config, "epoch": 1, "val_eer": 0.5}
        save_checkpoint(fold_dir / "best.pt", state)
        n_rows = cohort_speakers * clips_per_speaker
        vectors = rng.standard_normal((n_rows, cfg.model.embedding_dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        speakers = np.repeat([f"{1000 + s}" for s in range(cohort_speakers)], clips_per_speaker)
        write_npz(
            fold_dir / "embeddings.npz",
            ids=np.array([f"train/{s}/{i}.wav" for i, s in enumerate(speakers)]),
            role=np.full(n_rows, "cohort"),
            speaker=speakers,
            vectors=vectors,
            norms=np.ones(n_rows, dtype=np.float32),
        )
    scores = rng.normal(0.0, 2.0, test_pairs).astype(np.float32)
    names = [f"test{i:04d}.wav" for i in range(test_pairs + 1)]
    table = pd.DataFrame(
        {"audio_1": names[:-1], "audio_2": names[1:], "cosine": scores / 10, "asnorm": scores}
    )
    write_csv(cfg.experiment_dir / "test_scores.csv", table)
    log.info("wrote an untrained %d-fold experiment in %s", cfg.folds.n_folds, cfg.experiment_dir)
