"""The served ensemble: a bundle loaded once, answering pairs as the pipeline answers test pairs.

Per request, :meth:`BundleModel.answer` does what the pipeline does per test pair, with the same
functions:

1. each clip as ``prepare`` caches it (peak-normalised, stored as int16) and the manifest's facts
   about the uploaded file (duration, size, frames, sample rate, channels, loudness, SNR);
2. per run and fold: embeddings by window (``embed_clips``), the score stage's columns
   (``pair_score_table``: cosine, AS-norm against the fold's cohort, quality columns), the fold's
   gender head when it has one, gathered into a ``test_scores.csv``-shaped table;
3. the stack's test views (``test_metadata_views``, ``feature_views``): fold ``k``'s stacker sees
   fold ``k``'s models' numbers, after the same CSV round trip the pipeline's numbers take;
4. each fold's stacker, the fold mean, the groups' average, and the bundle's threshold.

Every clip is embedded once per extractor, however many pairs name it.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from src.config import ExperimentConfig, config_from_dict
from src.data.audio import clip_facts, describe_clip, from_int16, peak_normalise, to_int16
from src.inference.embed import embed_clips
from src.inference.extractors import EmbeddingExtractor, build_extractor
from src.inference.score import pair_score_table, test_score_table
from src.stacking.models import load_pair_model
from src.stacking.stack import (
    STACKER_DIR,
    STACKER_FILE,
    combine,
    feature_views,
    test_metadata_views,
)

from .bundle import (
    EXPERIMENTS,
    STACK,
    BundleError,
    bundle_config,
    verify_bundle,
    version_warnings,
)

log = logging.getLogger(__name__)


def as_cached(samples: np.ndarray) -> np.ndarray:
    """A clip as the embed stage reads it: peak-normalised, stored as int16, read back.

    >>> as_cached(np.array([0.0, 0.5, -0.25], dtype=np.float32)).round(3).tolist()
    [0.0, 0.95, -0.475]
    """
    return from_int16(to_int16(peak_normalise(np.asarray(samples, dtype=np.float32))))


class WaveformClips:
    """In-memory clips with the two methods of ``AudioCache`` that ``embed_clips`` uses."""

    def __init__(self, waves: dict[str, np.ndarray]) -> None:
        self.waves = waves

    def length(self, clip_id: str) -> int:
        return int(self.waves[clip_id].size)

    def samples(self, clip_id: str) -> np.ndarray:
        return self.waves[clip_id]


@dataclass(frozen=True)
class Clip:
    """One uploaded clip: mono samples at the bundle's rate and the manifest's facts about it."""

    samples: np.ndarray
    facts: dict[str, Any]

    @classmethod
    def from_samples(cls, samples: np.ndarray, rate: int) -> Clip:
        """A clip from mono float samples at the bundle's ``rate`` (no file): its facts are
        those of a 16-bit mono WAV file of these samples."""
        clip = describe_clip(np.asarray(samples, dtype=np.float32), rate, len(samples), rate, 0.0)
        return cls(clip.samples, clip_facts(clip, WAV_HEADER_BYTES + 2 * len(samples)))


WAV_HEADER_BYTES = 44


@dataclass(frozen=True)
class ServedFold:
    fold: int
    extractor: EmbeddingExtractor
    cohort: np.ndarray  # (speakers, dim) unit speaker means
    gender: Any | None  # GenderHead, or None


@dataclass(frozen=True)
class ServedRun:
    name: str
    cfg: ExperimentConfig
    folds: list[ServedFold]


@dataclass(frozen=True)
class StackerGroup:
    experiments: list[str]
    columns: list[str]
    models: dict[int, Any]  # fold -> model with .predict(features) -> probabilities


def csv_round_trip(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` written as CSV and read back: the pipeline's stacker reads its numbers from CSV
    files, so the server's numbers take the same path (float32 values print short)."""
    text = frame.to_csv(index=False)
    return pd.read_csv(
        io.StringIO(text), dtype={"audio_1": str, "audio_2": str, "id": str, "name": str}
    )


class BundleModel:
    """An exported bundle, ready to answer pairs; one request at a time (thread-safe)."""

    def __init__(
        self,
        root: Path,
        manifest: dict[str, Any],
        stack_cfg: ExperimentConfig,
        runs: list[ServedRun],
        stacker: dict[str, Any],
        groups: list[StackerGroup],
        runtime: str,
    ) -> None:
        self.root, self.manifest, self.stack_cfg = root, manifest, stack_cfg
        self.runs, self.stacker, self.groups, self.runtime = runs, stacker, groups, runtime
        self.threshold = float(manifest["threshold"]["value"])
        self.sample_rate = int(manifest["sample_rate"])
        self.warnings = version_warnings(manifest)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, root: Path, runtime: str = "torch", shown_as: Path | None = None) -> BundleModel:
        """Check and load the bundle at ``root``; ``runtime="onnx"`` serves its ONNX fold models.
        ``shown_as`` names it in log lines (export checks a bundle in its staging folder under
        the name it will have)."""
        root = Path(root)
        shown = shown_as or root
        manifest = verify_bundle(root)
        if runtime == "onnx" and not any(e["onnx_folds"] for e in manifest["experiments"].values()):
            raise BundleError(
                f"{root} has no ONNX fold models: export it with export.onnx=true, or serve "
                "with serve.runtime=torch"
            )
        stack_text = (root / STACK / "config.yaml").read_text(encoding="utf-8")
        stack_cfg = config_from_dict(yaml.safe_load(stack_text))
        runs = [
            load_run(root, name, info, runtime) for name, info in manifest["experiments"].items()
        ]
        stacker = json.loads((root / STACK / STACKER_DIR / STACKER_FILE).read_text("utf-8"))
        groups = [
            StackerGroup(
                g["experiments"],
                g["columns"],
                {
                    fold: load_pair_model(root / STACK / STACKER_DIR / name)
                    for fold, name in zip(g["folds"], g["models"], strict=True)
                },
            )
            for g in stacker["groups"]
        ]
        model = cls(root, manifest, stack_cfg, runs, stacker, groups, runtime)
        for warning in model.warnings:
            log.warning("bundle %s: %s", shown, warning)
        log.info(
            "loaded bundle %s: runs %s, threshold %.4f (%s), runtime %s",
            shown,
            [r.name for r in runs],
            model.threshold,
            manifest["threshold"]["policy"],
            runtime,
        )
        return model

    def answer(self, clips: dict[str, Clip], pairs: pd.DataFrame) -> pd.DataFrame:
        """``pairs`` (``audio_1``, ``audio_2``: keys of ``clips``) with ``probability``,
        ``label`` and each run's fold-mean ``<run>__asnorm`` and ``<run>__cosine``."""
        pairs = pairs[["audio_1", "audio_2"]].astype(str).reset_index(drop=True)
        unknown = sorted(set(pairs["audio_1"]).union(pairs["audio_2"]) - clips.keys())
        if unknown:
            raise KeyError(f"pairs name clips that were not sent: {unknown[:5]}")
        with self._lock:  # one request at a time: torch and the boosters are not re-entrant
            return self._answer(clips, pairs)

    def _answer(self, clips: dict[str, Clip], pairs: pd.DataFrame) -> pd.DataFrame:
        names = list(clips)
        tests, genders = self.first_level(clips, names, pairs)
        meta = None
        if self.stacker["use_metadata"]:
            manifest = csv_round_trip(
                pd.DataFrame(
                    [{"id": n, "name": n, "split": "test", **clips[n].facts} for n in names]
                )
            )
            folds = sorted({f for g in self.groups for f in g.models})
            meta = test_metadata_views(
                pairs, [genders.get(r.name) for r in self.runs], manifest, folds
            )
        probabilities = []
        for group in self.groups:
            views = feature_views(
                {name: tests[name] for name in group.experiments},
                meta,
                sorted(group.models),
                self.stacker["test_scores"],
            )
            fold_probs = [
                model.predict(features_for(views[fold], group.columns))
                for fold, model in group.models.items()
            ]
            probabilities.append(np.mean(fold_probs, axis=0))
        out = pairs.copy()
        out["probability"] = combine(probabilities, self.stacker["average"])
        out["label"] = (out["probability"] >= self.threshold).astype(int)
        for name, table in tests.items():
            out[f"{name}__asnorm"] = table["asnorm"].to_numpy()
            out[f"{name}__cosine"] = table["cosine"].to_numpy()
        return out

    def answer_pair(self, clip_1: Clip, clip_2: Clip) -> dict[str, Any]:
        """One pair of clips: the answer row (see :meth:`answer`) as a dict."""
        pairs = pd.DataFrame({"audio_1": ["audio_1"], "audio_2": ["audio_2"]})
        return self.answer({"audio_1": clip_1, "audio_2": clip_2}, pairs).iloc[0].to_dict()

    def answer_waves(self, wave_1: np.ndarray, wave_2: np.ndarray) -> dict[str, Any]:
        """One pair of mono waveforms at ``sample_rate``: the answer row as a dict."""
        return self.answer_pair(
            Clip.from_samples(wave_1, self.sample_rate),
            Clip.from_samples(wave_2, self.sample_rate),
        )

    def first_level(
        self, clips: dict[str, Clip], names: list[str], pairs: pd.DataFrame
    ) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
        """Per run: the ``test_scores.csv``-shaped table of ``pairs`` and, when its folds have
        gender heads, the ``gender_test.csv``-shaped table of the clips."""
        from src.inference.gender import male_probabilities

        waves = WaveformClips({n: as_cached(clips[n].samples) for n in names})
        row = {n: i for i, n in enumerate(names)}
        left = pairs["audio_1"].map(row).to_numpy()
        right = pairs["audio_2"].map(row).to_numpy()
        tests, genders = {}, {}
        for run in self.runs:
            embedded: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # a shared extractor once
            parts, male = [], {}
            for fold in run.folds:
                key = id(fold.extractor)
                if key not in embedded:
                    embedded[key] = embed_clips(
                        fold.extractor, waves, names, run.cfg.embed, self.sample_rate,
                        progress=False,
                    )  # fmt: skip
                vectors, norms = embedded[key]
                if not np.isfinite(vectors).all():
                    raise ValueError(f"{run.name} fold {fold.fold} gave non-finite embeddings")
                table = pair_score_table(
                    vectors, norms, fold.cohort, run.cfg.score.asnorm_top_k, left, right
                )
                parts.append(table.add_suffix(f"_fold{fold.fold}"))
                if fold.gender is not None:
                    male[f"p_male_fold{fold.fold}"] = male_probabilities(
                        fold.extractor, fold.gender, waves, names, self.sample_rate
                    )
            tests[run.name] = csv_round_trip(test_score_table(pairs, parts))
            if male and len(male) == len(run.folds):
                # as the pipeline: fold files read back, averaged, written, read back
                table = csv_round_trip(pd.DataFrame({"id": names, **male}))
                table.insert(1, "p_male", table[list(male)].mean(axis=1))
                genders[run.name] = csv_round_trip(table).set_index("id").astype(np.float64)
        return tests, genders


def features_for(view: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """The stacker's columns of a view, in its training order; a column the server cannot make
    is an error, never a silent zero."""
    missing = [c for c in columns if c not in view.columns]
    if missing:
        raise BundleError(
            f"the bundle's stacker uses features the server cannot compute: {missing[:5]}"
        )
    return view[columns].to_numpy(dtype=np.float64)


def load_run(root: Path, name: str, info: dict[str, Any], runtime: str) -> ServedRun:
    """One run's fold extractors (a fold-independent one built once), cohorts and gender heads."""
    from src.inference.gender import load_gender_head

    cfg = bundle_config(root, name)
    folds: list[ServedFold] = []
    shared: EmbeddingExtractor | None = None
    shared_onnx: EmbeddingExtractor | None = None
    for k in range(cfg.folds.n_folds):
        extractor = shared if shared is not None else build_extractor(cfg, k)
        if getattr(extractor, "fold_independent", False):
            shared = extractor
        fold_dir = root / EXPERIMENTS / name / f"fold{k}"
        if runtime == "onnx" and k in info["onnx_folds"]:
            from .onnx_models import OnnxFoldExtractor

            if not info.get("onnx_shared"):
                extractor = OnnxFoldExtractor(extractor, fold_dir / "model.onnx")
            elif shared_onnx is None:  # a frozen model: one file for every fold
                shared_onnx = OnnxFoldExtractor(extractor, fold_dir.parent / "model.onnx")
            extractor = shared_onnx or extractor
        cohort = np.load(fold_dir / "cohort.npy", allow_pickle=False)
        if cohort.ndim != 2 or cohort.shape[1] != extractor.dim:
            raise BundleError(
                f"{fold_dir}/cohort.npy has shape {cohort.shape}, the model gives {extractor.dim} "
                "dimensions: the bundle is inconsistent; export it again"
            )
        gender = None
        if cfg.extractor.kind == "cnn":
            gender = load_gender_head(fold_dir / "best.pt", extractor.dim)
        folds.append(ServedFold(k, extractor, cohort, gender))
    return ServedRun(name, cfg, folds)
