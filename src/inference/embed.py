"""The `embed` stage: embeddings of a fold's OOF clips, the test clips and a training cohort.

Writes ``outputs/<exp>/fold{k}/embeddings.npz`` with ``ids``, ``role`` (oof / test / cohort),
``speaker`` (cohort and OOF rows), ``vectors`` (L2-normalised, float32) and ``norms`` (length of
the averaged window embedding before normalising: a quality measure for stacking).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from src.config import EmbedConfig, ExperimentConfig
from src.data.audio import rms_dbfs
from src.data.cache import AudioCache, read_manifest
from src.data.folds import split_by_fold
from src.inference.extractors import (
    EmbeddingExtractor,
    ModuleExtractor,
    build_extractor,
    known_fingerprint,
)
from src.inference.gender import load_gender_head, male_probabilities
from src.inference.windows import batches_by_length, clip_windows, energy_mask
from src.util.io import write_csv, write_npz
from src.util.logs import progress as progress_of
from src.util.stage_cache import files_fingerprint, fingerprint, is_fresh, mark_done, mark_started

log = logging.getLogger(__name__)


def embed_clips(
    extractor: EmbeddingExtractor,
    cache: AudioCache,
    ids: list[str],
    cfg: EmbedConfig,
    sample_rate: int,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Average L2-normalised window embeddings per clip.

    Returns ``(vectors, norms)``: ``(clips, dim)`` unit vectors and ``(clips,)`` the norm of
    each clip's mean window embedding (1 for a single window; lower when windows disagree).
    """
    windows = [
        w for i, c in enumerate(ids) for w in clip_windows(cache.length(c), cfg, sample_rate, i)
    ]
    sums = np.zeros((len(ids), extractor.dim), dtype=np.float64)
    counts = np.zeros(len(ids))
    window_vectors: dict[int, list[tuple[float, np.ndarray]]] = {}
    max_samples = int(batch_seconds(cfg, extractor) * sample_rate)
    batches = list(batches_by_length(windows, max_samples))
    clip_index, clip = -1, None  # the clip being cut into windows
    for batch in progress_of(batches, "embed", unit="batch", enabled=progress):
        waves = np.empty((len(batch), batch[0].length), dtype=np.float32)  # (batch, samples)
        for row, w in enumerate(batch):
            # windows come clip by clip: read each clip once, not once per window (a 10-minute
            # clip has hundreds of windows, and each slice would keep its whole copy alive)
            if w.clip != clip_index:
                clip = None  # let the previous clip go before reading the next
                clip_index, clip = w.clip, cache.samples(ids[w.clip])
            waves[row] = clip[w.start : w.start + w.length]
        vectors = extractor.embed(waves)  # (batch, dim), unit length
        for w, vec, wave in zip(batch, vectors, waves, strict=True):
            if cfg.drop_low_energy_db is None:
                sums[w.clip] += vec
                counts[w.clip] += 1
            else:
                window_vectors.setdefault(w.clip, []).append((rms_dbfs(wave), vec))
    for clip, items in window_vectors.items():
        levels = np.array([lvl for lvl, _ in items])
        keep = energy_mask(levels, cfg.drop_low_energy_db)
        sums[clip] = np.sum([v for (_, v), k in zip(items, keep, strict=True) if k], axis=0)
        counts[clip] = keep.sum()
    mean = sums / np.maximum(counts, 1)[:, None]
    norms = np.linalg.norm(mean, axis=1)
    vectors = (mean / np.maximum(norms, 1e-12)[:, None]).astype(np.float32)
    return vectors, norms.astype(np.float32)


def batch_seconds(cfg: EmbedConfig, extractor: EmbeddingExtractor) -> float:
    """Audio per embedding batch: ``embed.batch_seconds_cuda`` for a model on a CUDA GPU (large
    batches keep it busy), else ``embed.batch_seconds``. Only the grouping changes: each window
    is embedded on its own row, so the vectors are the same up to float rounding."""
    device = getattr(extractor, "device", None)
    on_cuda = isinstance(device, torch.device) and device.type == "cuda"
    return cfg.batch_seconds_cuda if on_cuda else cfg.batch_seconds


def cohort_ids(files: pd.DataFrame, per_speaker: int, seed: int) -> list[str]:
    """Up to ``per_speaker`` clips of each training speaker (longest first, ties by seed)."""
    rng = np.random.default_rng(seed)
    files = files.assign(_tie=rng.random(len(files)))
    ranked = files.sort_values(["speaker", "duration", "_tie"], ascending=[True, False, True])
    return ranked.groupby("speaker").head(per_speaker)["id"].tolist()


def embedding_roles(cfg: ExperimentConfig, manifest: pd.DataFrame, fold: int) -> pd.DataFrame:
    """Which clips a fold embeds: its OOF clips, every test clip, a cohort of training speakers."""
    oof, cohort_pool = split_by_fold(manifest, cfg.folds_dir, fold)
    cohort = cohort_pool[
        cohort_pool["id"].isin(
            cohort_ids(cohort_pool, cfg.score.cohort_files_per_speaker, cfg.seed)
        )
    ]
    test = manifest[manifest["split"] == "test"]
    parts = [oof.assign(role="oof"), test.assign(role="test"), cohort.assign(role="cohort")]
    return pd.concat(parts)[["id", "speaker", "role"]].reset_index(drop=True)


def embed_stage(cfg: ExperimentConfig, fold: int, force: bool = False) -> Path:
    """Embed one fold's clips with that fold's extractor; returns the embeddings path."""
    out = cfg.fold_dir(fold) / "embeddings.npz"
    known = known_fingerprint(cfg, fold)  # a cached fold needs no model
    extractor = build_extractor(cfg, fold) if known is None else None
    stamp = fingerprint(
        cfg.embed.model_dump(exclude={"batch_seconds_cuda"}),  # speed only, like batch_seconds
        cfg.score.cohort_files_per_speaker,
        known or extractor.fingerprint,
        files_fingerprint([cfg.paths.prep_dir / "manifest.csv", cfg.folds_dir / "folds.csv"]),
    )
    if not force and is_fresh(out.parent, "embed", stamp, [out]):
        log.info("embed fold %d: unchanged, reusing %s", fold, out)
        return out
    mark_started(out.parent, "embed")
    extractor = extractor or build_extractor(cfg, fold)
    manifest = read_manifest(cfg.paths.prep_dir)
    cache = AudioCache(cfg.paths.prep_dir, manifest)
    roles = embedding_roles(cfg, manifest, fold)
    started = time.perf_counter()
    with torch.inference_mode():
        if getattr(extractor, "fold_independent", False):
            store = cfg.experiment_dir / "clip_embeddings.npz"
            vectors, norms = embed_with_store(extractor, cache, roles["id"].tolist(), cfg, store)
        else:
            vectors, norms = embed_clips(
                extractor, cache, roles["id"].tolist(), cfg.embed, cfg.data.sample_rate
            )
    wall = time.perf_counter() - started
    audio = sum(cache.length(i) for i in roles["id"]) / cfg.data.sample_rate
    log.info(
        "embed fold %d: %d clips, %.0f s of audio in %.1f s (%.0f s audio / s)",
        fold,
        len(roles),
        audio,
        wall,
        audio / max(wall, 1e-9),
    )
    write_npz(
        out,
        ids=roles["id"].to_numpy(str),
        role=roles["role"].to_numpy(str),
        speaker=roles["speaker"].fillna("").to_numpy(str),
        vectors=vectors,
        norms=norms,
    )
    write_gender_predictions(cfg, fold, extractor, cache, roles)
    mark_done(out.parent, "embed", stamp)
    return out


def write_gender_predictions(
    cfg: ExperimentConfig, fold: int, extractor: EmbeddingExtractor, cache, roles: pd.DataFrame
) -> None:
    """``fold{k}/gender.csv`` (id, role, p_male) when the fold model has a gender head."""
    path = cfg.fold_dir(fold) / "gender.csv"
    path.unlink(missing_ok=True)  # never leave predictions of an earlier model
    if not isinstance(extractor, ModuleExtractor) or extractor.fold_independent:
        return  # only a model trained per fold can have a gender head
    head = load_gender_head(cfg.fold_dir(fold) / "best.pt", extractor.dim)
    if head is None:
        return
    scored = roles[roles["role"].isin(["oof", "test"])]
    ids = scored["id"].tolist()
    p_male = male_probabilities(extractor, head, cache, ids, cfg.data.sample_rate)
    write_csv(path, pd.DataFrame({"id": ids, "role": scored["role"].to_numpy(), "p_male": p_male}))


def embed_with_store(
    extractor: EmbeddingExtractor,
    cache: AudioCache,
    ids: list[str],
    cfg: ExperimentConfig,
    store: Path,
) -> tuple[np.ndarray, np.ndarray]:
    """Embed with a fold-independent extractor, reusing clips embedded for earlier folds.

    The store is keyed by the extractor and every embedding setting that changes a vector
    (mode, window, hop, low-energy dropping, sample rate): other settings embed afresh.
    """
    key = store_key(extractor, cfg)
    known: dict[str, tuple[np.ndarray, float]] = {}
    if store.is_file():
        saved = load_embeddings(store)
        if str(saved["fingerprint"]) == key:
            known = {
                i: (v, n)
                for i, v, n in zip(saved["ids"], saved["vectors"], saved["norms"], strict=True)
            }
    todo = [i for i in dict.fromkeys(ids) if i not in known]
    if todo:
        vectors, norms = embed_clips(extractor, cache, todo, cfg.embed, cfg.data.sample_rate)
        known.update({i: (v, n) for i, v, n in zip(todo, vectors, norms, strict=True)})
        write_npz(
            store,
            ids=np.array(list(known), dtype=str),
            vectors=np.stack([v for v, _ in known.values()]),
            norms=np.array([n for _, n in known.values()], dtype=np.float32),
            fingerprint=np.array(key),
        )
    return np.stack([known[i][0] for i in ids]), np.array(
        [known[i][1] for i in ids], dtype=np.float32
    )


def store_key(extractor: EmbeddingExtractor, cfg: ExperimentConfig) -> str:
    """What a stored clip vector depends on (batch size only groups the work: left out)."""
    settings = cfg.embed.model_dump(exclude={"batch_seconds", "batch_seconds_cuda"})
    return fingerprint(extractor.fingerprint, settings, cfg.data.sample_rate)


def load_embeddings(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}
