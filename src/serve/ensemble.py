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
    GRAPH_STACKER_DIR,
    STACKER_DIR,
    STACKER_FILE,
    combine,
    feature_views,
    test_metadata_views,
)

from .bundle import (
    EXPERIMENTS,
    HELD_OUT_FILE,
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
    graph_prefixes: tuple[str, ...] = ()  # the graph stacker's: graphs whose features it reads


@dataclass(frozen=True)
class GraphStacker:
    """The submission's stacker (trial-graph features in) and what rebuilds its graphs.

    ``held_out[run][fold]``: fold ``fold``'s held-out clips under that fold's model of ``run``,
    ``(clips, dims)``, the fixed rows of every fold graph; ``experiments``: each graph prefix's
    runs (``fused``: their mean cosine); ``decision``: the manifest's ``graph_stacker`` (the
    threshold, the policy, transitive-consistency shares, the test clips it was fitted with).
    """

    description: dict[str, Any]
    groups: list[StackerGroup]
    held_out: dict[str, dict[int, np.ndarray]]
    decision: dict[str, Any]

    @property
    def threshold(self) -> float:
        return float(self.decision["threshold"])

    @property
    def experiments(self) -> dict[str, list[str]]:
        return self.description["graph"]["experiments"]


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
        self.graph: GraphStacker | None = None

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
        stacker, groups = load_stacker(root / STACK / STACKER_DIR)
        model = cls(root, manifest, stack_cfg, runs, stacker, groups, runtime)
        model.graph = load_graph_stacker(root, manifest)
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

    def stacker_for(self, clips: int, min_share: float, asked: str = "auto") -> str:
        """Which stacker answers a batch of ``clips`` usable clips: ``graph`` (the
        submission's) when the bundle has it and the batch holds at least ``min_share`` of the
        test clips it was fitted with (``serve.graph_min_share``), else ``pairwise`` (no graph
        features); ``asked`` other than ``auto`` insists on one (``graph`` without a graph
        stacker is an error)."""
        if asked == "pairwise":
            return "pairwise"
        if self.graph is None:
            if asked == "graph":
                raise BundleError("this bundle has no graph stacker (stack.graph_features off)")
            return "pairwise"
        if asked == "graph" or clips >= min_share * self.graph.decision["test_clips"]:
            return "graph"
        return "pairwise"

    def answer(
        self, clips: dict[str, Clip], pairs: pd.DataFrame, stacker: str = "pairwise"
    ) -> pd.DataFrame:
        """``pairs`` (``audio_1``, ``audio_2``: keys of ``clips``) with ``probability``,
        ``label``, ``stacker`` and each run's fold-mean ``<run>__asnorm`` and ``<run>__cosine``.

        ``stacker="graph"``: every clip of ``clips`` (paired or not) joins each fold's trial
        graph beside the bundle's held-out clips, as the stack stage builds it for the public
        test, and the submission's stacker answers, labelled as ``submit`` labels (see
        :meth:`graph_labels`); ``pairwise``: the stacker without graph features and the
        bundle's fixed threshold.
        """
        pairs = pairs[["audio_1", "audio_2"]].astype(str).reset_index(drop=True)
        unknown = sorted(set(pairs["audio_1"]).union(pairs["audio_2"]) - clips.keys())
        if unknown:
            raise KeyError(f"pairs name clips that were not sent: {unknown[:5]}")
        if stacker not in ("graph", "pairwise"):
            raise ValueError(f"unknown stacker {stacker!r}; choose 'graph' or 'pairwise'")
        if stacker == "graph" and self.graph is None:
            raise BundleError("this bundle has no graph stacker (stack.graph_features off)")
        with self._lock:  # one request at a time: torch and the boosters are not re-entrant
            return self._answer(clips, pairs, stacker)

    def _answer(self, clips: dict[str, Clip], pairs: pd.DataFrame, stacker: str) -> pd.DataFrame:
        names = list(clips)
        tests, genders, vectors = self.first_level(clips, names, pairs)
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
        if stacker == "graph":
            assert self.graph is not None
            description, groups = self.graph.description, self.graph.groups
            graphs = self.graph_views(names, vectors, pairs)
        else:
            description, groups, graphs = self.stacker, self.groups, {}
        probabilities = []
        for group in groups:
            views = feature_views(
                {name: tests[name] for name in group.experiments},
                meta,
                sorted(group.models),
                description["test_scores"],
            )
            fold_probs = []
            for fold, model in group.models.items():
                view = pd.concat(
                    [views[fold], *(graphs[p][fold] for p in group.graph_prefixes)], axis=1
                )
                fold_probs.append(model.predict(features_for(view, group.columns)))
            probabilities.append(np.mean(fold_probs, axis=0))
        out = pairs.copy()
        out["probability"] = combine(probabilities, description["average"])
        if stacker == "graph":
            out["label"] = self.graph_labels(pairs, out["probability"].to_numpy())
        else:
            out["label"] = (out["probability"] >= self.threshold).astype(int)
        out["stacker"] = stacker
        for name, table in tests.items():
            out[f"{name}__asnorm"] = table["asnorm"].to_numpy()
            out[f"{name}__cosine"] = table["cosine"].to_numpy()
        return out

    def graph_views(
        self, names: list[str], vectors: dict[str, dict[int, np.ndarray]], pairs: pd.DataFrame
    ) -> dict[str, dict[int, pd.DataFrame]]:
        """Each graph prefix's per-fold graph features of ``pairs``: fold ``k``'s graph is the
        bundle's fold-``k`` held-out clips and the batch's clips (``names``, in that order)
        under fold ``k``'s model(s) (:func:`src.stacking.graph.test_graph_views`)."""
        from src.stacking.graph import GraphSettings, test_graph_views

        assert self.graph is not None
        # the clips in prepare's order (sorted file names): each fold graph's rows in the
        # pipeline's order, so its sampled cut heights and its ties are the pipeline's too
        order = sorted(range(len(names)), key=names.__getitem__)
        row = {names[i]: position for position, i in enumerate(order)}
        left = pairs["audio_1"].map(row).to_numpy(np.int64)
        right = pairs["audio_2"].map(row).to_numpy(np.int64)
        settings = self.graph.description["graph"]["settings"]
        settings = GraphSettings(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}
        )
        out = {}
        for prefix, runs in self.graph.experiments.items():
            folds = sorted(self.graph.held_out[runs[0]])
            held = {k: [self.graph.held_out[r][k] for r in runs] for k in folds}
            batch = {k: [vectors[r][k][order] for r in runs] for k in folds}
            out[prefix] = test_graph_views(held, batch, left, right, prefix, settings)
        return out

    def graph_labels(self, pairs: pd.DataFrame, probs: np.ndarray) -> np.ndarray:
        """Labels of a batch answered by the graph stacker, as ``submit`` labels the public
        test: transitive consistency with the shares ``submit`` chose on OOF trials (when it
        applied it), then the ``balanced`` policy on the batch (exactly ``positive_share`` of
        its pairs) or, for a policy placed on OOF predictions, its threshold."""
        from src.stacking.threshold import balanced_labels
        from src.stacking.transitive import propagate_shares, relabel

        assert self.graph is not None
        decision = self.graph.decision
        share = float(decision["positive_share"])
        shares = decision.get("transitive_shares")
        balanced = decision["policy"] == "balanced"
        if shares is not None:
            adjusted = propagate_shares(pairs, probs, shares[0], shares[1])
            if balanced:
                return relabel(adjusted, probs, share)
            return (adjusted >= self.graph.threshold).astype(np.int64)
        if balanced:
            return balanced_labels(probs, share)[0]
        return (probs >= self.graph.threshold).astype(np.int64)

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
    ) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame], dict[str, dict[int, np.ndarray]]]:
        """Per run: the ``test_scores.csv``-shaped table of ``pairs``, when its folds have
        gender heads the ``gender_test.csv``-shaped table of the clips, and each fold model's
        unit embeddings of the clips ``(len(names), dims)``."""
        from src.inference.gender import male_probabilities

        waves = WaveformClips({n: as_cached(clips[n].samples) for n in names})
        row = {n: i for i, n in enumerate(names)}
        left = pairs["audio_1"].map(row).to_numpy()
        right = pairs["audio_2"].map(row).to_numpy()
        tests, genders, fold_vectors = {}, {}, {}
        for run in self.runs:
            fold_vectors[run.name] = {}
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
                fold_vectors[run.name][fold.fold] = vectors
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
        return tests, genders, fold_vectors


def load_stacker(folder: Path) -> tuple[dict[str, Any], list[StackerGroup]]:
    """A stacker's description (``stacker.json``) and its groups' fold models."""
    description = json.loads((folder / STACKER_FILE).read_text("utf-8"))
    groups = [
        StackerGroup(
            g["experiments"],
            g["columns"],
            {
                fold: load_pair_model(folder / name)
                for fold, name in zip(g["folds"], g["models"], strict=True)
            },
            tuple(g.get("graph_prefixes", ())),
        )
        for g in description["groups"]
    ]
    return description, groups


def load_graph_stacker(root: Path, manifest: dict[str, Any]) -> GraphStacker | None:
    """The bundle's graph stacker and its fold graphs' held-out clips; ``None`` for a bundle
    exported without one (``stack.graph_features`` off, or an older export)."""
    decision = manifest.get("graph_stacker")
    folder = root / STACK / GRAPH_STACKER_DIR
    if decision is None or not (folder / STACKER_FILE).is_file():
        return None
    description, groups = load_stacker(folder)
    experiments = description["graph"]["experiments"]
    held_out: dict[str, dict[int, np.ndarray]] = {}
    for run in sorted({r for runs in experiments.values() for r in runs}):
        held_out[run] = {}
        for fold_name, count in manifest["experiments"][run]["held_out"].items():
            path = root / EXPERIMENTS / run / f"fold{fold_name}" / HELD_OUT_FILE
            vectors = np.load(path, allow_pickle=False)
            if vectors.ndim != 2 or len(vectors) != int(count):
                raise BundleError(
                    f"{path} has shape {vectors.shape}, the manifest says {count} clips"
                )
            held_out[run][int(fold_name)] = vectors
    return GraphStacker(description, groups, held_out, decision)


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
