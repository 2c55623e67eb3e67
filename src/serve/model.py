"""The trained ensemble behind the API: fold models, their AS-norm cohorts and one threshold.

:meth:`VerificationModel.load` reads what the train, embed and score stages wrote for
``cfg.experiment``, once:

- one extractor per fold (``fold{k}/best.pt`` for the CNN; a single instance when the extractor
  is fold-independent, e.g. Resemblyzer);
- per fold, the AS-norm cohort: speaker means of the ``cohort`` rows of ``fold{k}/embeddings.npz``;
- the decision threshold: the balanced threshold (``submit.positive_share``) over the fold-mean
  AS-norm scores of the public test pairs in ``test_scores.csv``, the decision the submission's
  balanced policy makes; without that file, the OOF EER threshold of ``oof_scores.csv``.

:meth:`VerificationModel.score` then treats a pair of waveforms as the pipeline treats a test
pair: peak-normalised and stored as int16 (as ``prepare`` caches clips), embedded window by
window (``cfg.embed``, as the embed stage does), AS-norm scored per fold with
``score.asnorm_top_k`` and averaged over folds (the ``asnorm`` column of ``test_scores.csv``).

Example
-------
>>> model = VerificationModel.load(load_config("configs/demo.yaml"))  # doctest: +SKIP
>>> model.predict(wave_1, wave_2)  # two (samples,) float32 arrays at 16 kHz  # doctest: +SKIP
(1, 2.37)
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.config import EmbedConfig, ExperimentConfig
from src.data.audio import from_int16, peak_normalise, to_int16
from src.inference.embed import embed_clips, load_embeddings
from src.inference.extractors import EmbeddingExtractor, build_extractor
from src.inference.metrics import balanced_threshold, equal_error_rate
from src.inference.score import asnorm, cohort_stats, speaker_means
from src.stacking.inputs import read_csv

log = logging.getLogger(__name__)

RUN_FIRST = "run the train/embed/score stages first"


@dataclass(frozen=True)
class FoldModel:
    """One fold's extractor and AS-norm cohort (unit speaker means, ``(speakers, dim)``)."""

    fold: int
    extractor: EmbeddingExtractor
    cohort: np.ndarray


@dataclass(frozen=True)
class Threshold:
    """The score at or above which a pair is labelled same-speaker, and where it came from."""

    value: float
    source: str


class WaveformClips:
    """In-memory clips with the two methods of ``AudioCache`` that ``embed_clips`` uses."""

    def __init__(self, waves: dict[str, np.ndarray]) -> None:
        self.waves = waves

    def length(self, clip_id: str) -> int:
        return int(self.waves[clip_id].size)

    def samples(self, clip_id: str) -> np.ndarray:
        return self.waves[clip_id]


def as_cached(samples: np.ndarray) -> np.ndarray:
    """A clip as the embed stage reads it: peak-normalised, stored as int16, read back.

    >>> as_cached(np.array([0.0, 0.5, -0.25], dtype=np.float32)).round(3).tolist()
    [0.0, 0.95, -0.475]
    """
    return from_int16(to_int16(peak_normalise(np.asarray(samples, dtype=np.float32))))


class VerificationModel:
    """A fold ensemble that scores a pair of 16 kHz waveforms; thread-safe (one pair at a time).

    Parameters
    ----------
    experiment
        Name of the experiment the folds come from.
    folds
        One :class:`FoldModel` per fold; extractors may be shared between folds.
    threshold
        Decision threshold on the fold-mean AS-norm score.
    embed
        Window settings, as in the embed stage.
    sample_rate
        Rate of the waveforms passed in.
    top_k
        AS-norm cohort size per clip.
    """

    def __init__(
        self,
        experiment: str,
        folds: list[FoldModel],
        threshold: Threshold,
        embed: EmbedConfig,
        sample_rate: int,
        top_k: int,
    ) -> None:
        if not folds:
            raise ValueError("a verification model needs at least one fold")
        self.experiment = experiment
        self.folds = folds
        self.threshold = threshold
        self.embed_config = embed
        self.sample_rate = sample_rate
        self.top_k = top_k
        self._lock = threading.Lock()

    @classmethod
    def load(cls, cfg: ExperimentConfig) -> VerificationModel:
        """Load every fold of ``cfg.experiment``; a missing file raises FileNotFoundError."""
        if not cfg.experiment_dir.is_dir():
            raise FileNotFoundError(
                f"experiment folder {cfg.experiment_dir} not found: {RUN_FIRST}"
            )
        folds: list[FoldModel] = []
        shared: EmbeddingExtractor | None = None
        for k in range(cfg.folds.n_folds):
            cohort = load_cohort(cfg.fold_dir(k) / "embeddings.npz", k)
            extractor = shared if shared is not None else load_fold_extractor(cfg, k)
            if getattr(extractor, "fold_independent", False):
                shared = extractor
            if cohort.shape[1] != extractor.dim:
                raise ValueError(
                    f"fold {k}: cohort embeddings have {cohort.shape[1]} dimensions, the model "
                    f"{extractor.dim}: the embeddings are stale; rerun the embed and score stages"
                )
            folds.append(FoldModel(k, extractor, cohort))
        threshold = decision_threshold(cfg)
        log.info(
            "loaded %s: %d fold model(s), cohorts of %s speakers, threshold %.4f (%s)",
            cfg.experiment,
            len(folds),
            "/".join(str(f.cohort.shape[0]) for f in folds),
            threshold.value,
            threshold.source,
        )
        return cls(
            cfg.experiment,
            folds,
            threshold,
            cfg.embed,
            cfg.data.sample_rate,
            cfg.score.asnorm_top_k,
        )

    def embed(self, extractor: EmbeddingExtractor, waves: list[np.ndarray]) -> np.ndarray:
        """Unit embeddings ``(clips, dim)`` of cache-equivalent waveforms, as the embed stage."""
        ids = [str(i) for i in range(len(waves))]
        clips = WaveformClips(dict(zip(ids, waves, strict=True)))
        vectors, _ = embed_clips(
            extractor, clips, ids, self.embed_config, self.sample_rate, progress=False
        )
        if not np.isfinite(vectors).all():
            raise ValueError("the model produced non-finite embeddings for this pair")
        return vectors

    def fold_scores(self, wave_1: np.ndarray, wave_2: np.ndarray) -> np.ndarray:
        """AS-norm score of the pair by each fold model, ``(folds,)``."""
        waves = [as_cached(wave_1), as_cached(wave_2)]
        left, right = np.array([0]), np.array([1])
        scores = []
        with self._lock:
            embedded: dict[int, np.ndarray] = {}  # a shared extractor embeds once
            for fold in self.folds:
                key = id(fold.extractor)
                if key not in embedded:
                    embedded[key] = self.embed(fold.extractor, waves)
                vectors = embedded[key]  # (2, dim)
                stats = cohort_stats(vectors, fold.cohort, self.top_k)
                raw = np.array([vectors[0] @ vectors[1]], dtype=np.float32)
                scores.append(float(asnorm(raw, stats, left, right)[0]))
        return np.array(scores)

    def score(self, wave_1: np.ndarray, wave_2: np.ndarray) -> float:
        """Fold-mean AS-norm score of two mono waveforms at ``sample_rate`` (higher: same)."""
        return float(self.fold_scores(wave_1, wave_2).mean())

    def predict(self, wave_1: np.ndarray, wave_2: np.ndarray) -> tuple[int, float]:
        """``(label, score)``: label 1 when the score reaches the threshold."""
        score = self.score(wave_1, wave_2)
        return int(score >= self.threshold.value), score


def load_fold_extractor(cfg: ExperimentConfig, fold: int) -> EmbeddingExtractor:
    """``build_extractor(cfg, fold)`` with an error that says which stage to run."""
    checkpoint = cfg.fold_dir(fold) / "best.pt"
    if cfg.extractor.kind == "cnn" and not checkpoint.is_file():
        raise FileNotFoundError(f"fold {fold}: checkpoint {checkpoint} not found: {RUN_FIRST}")
    try:
        return build_extractor(cfg, fold)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"fold {fold}: {err}; {RUN_FIRST}") from None


def load_cohort(path: Path, fold: int) -> np.ndarray:
    """Unit speaker means of the ``cohort`` rows of a fold's embeddings, ``(speakers, dim)``."""
    if not path.is_file():
        raise FileNotFoundError(f"fold {fold}: embeddings {path} not found: {RUN_FIRST}")
    emb = load_embeddings(path)
    missing = [key for key in ("role", "speaker", "vectors") if key not in emb]
    if missing:
        raise ValueError(f"{path}: missing arrays {missing}; rerun the embed stage")
    is_cohort = emb["role"] == "cohort"
    if not is_cohort.any():
        raise ValueError(f"{path}: no cohort rows to normalise scores with; rerun the embed stage")
    return speaker_means(emb["vectors"][is_cohort], emb["speaker"][is_cohort])


def decision_threshold(cfg: ExperimentConfig) -> Threshold:
    """Balanced threshold over the test pairs' fold-mean AS-norm, else the OOF EER threshold."""
    test_path = cfg.experiment_dir / "test_scores.csv"
    oof_path = cfg.experiment_dir / "oof_scores.csv"
    share = cfg.submit.positive_share
    if test_path.is_file():
        scores = read_csv(test_path, ["asnorm"], "test scores")["asnorm"].to_numpy(np.float64)
        if scores.size == 0 or not np.isfinite(scores).all():
            raise ValueError(f"{test_path}: asnorm is empty or not finite; rerun the score stage")
        return Threshold(
            balanced_threshold(scores, share),
            f"balanced: {share:.0%} of {scores.size} test pairs in {test_path.name} same-speaker",
        )
    if oof_path.is_file():
        oof = read_csv(oof_path, ["label", "asnorm"], "OOF scores")
        _, threshold = equal_error_rate(oof["asnorm"].to_numpy(), oof["label"].to_numpy())
        return Threshold(threshold, f"OOF EER threshold of {len(oof)} trials in {oof_path.name}")
    raise FileNotFoundError(
        f"neither {test_path.name} nor {oof_path.name} in {cfg.experiment_dir}: {RUN_FIRST}"
    )
