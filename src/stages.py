"""The stage registry: each stage's function, how one stage is called, and its run record.

Both the command line (``src.cli``) and the in-process pipeline runner (``src.runner``) import
this module, so neither imports the other's internals (no import circle).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import import_module
from pathlib import Path

from src.config import SECOND_LEVEL_SECTIONS, ExperimentConfig, config_to_yaml
from src.training.large_margin import first_level_configs
from src.util.io import read_json, write_json, write_text

# stage name -> "module:function"; imported lazily so `prepare` does not pay for torch
STAGES: dict[str, str] = {
    "prepare": "src.data.prepare:prepare_stage",
    "folds": "src.data.folds:folds_stage",
    "train": "src.training.train:train_stage",
    "embed": "src.inference.embed:embed_stage",
    "score": "src.inference.score:score_stage",
    "stack": "src.stacking.stack:stack_stage",
    "submit": "src.stacking.submit:submit_stage",
    "report": "src.report.report:report_stage",
    "export": "src.serve.export:export_stage",
    "serve": "src.serve.app:serve_stage",
    "pretrain": "src.training.pretrain:pretrain_stage",
}
PER_FOLD = {"train", "embed"}


def resolve(stage: str) -> Callable[..., object]:
    module, function = STAGES[stage].split(":")
    return getattr(import_module(module), function)


def save_resolved_config(cfg: ExperimentConfig, folder: Path) -> None:
    write_text(folder / "config.yaml", config_to_yaml(cfg))


def call_stage(stage: str, cfg: ExperimentConfig, fold: int | None = None, **options: bool) -> None:
    """Run one stage, every fold in turn for per-fold stages unless ``fold`` picks one.

    Options such as ``force`` and ``resume`` are passed to the stages that take them.
    """
    function = resolve(stage)
    accepted = inspect.signature(function).parameters
    kwargs = {name: value for name, value in options.items() if name in accepted}
    # a first-level stage also runs the large-margin phase when the config turns it on
    runs = first_level_configs(cfg) if stage in FIRST_LEVEL_STAGES else [cfg]
    for run in runs:
        started = time.perf_counter()
        if stage in PER_FOLD:
            for k in [fold] if fold is not None else range(run.folds.n_folds):
                function(run, k, **kwargs)
        else:
            function(run, **kwargs)
        record_run(run, stage, time.perf_counter() - started)


FIRST_LEVEL_STAGES = ("train", "embed", "score")
SECOND_LEVEL_STAGES = ("stack", "submit", "report")


def record_run(cfg: ExperimentConfig, stage: str, seconds: float) -> None:
    """Keep ``run.json`` beside a run's results: where its config came from, what it changed
    relative to its config file, and when each stage last ran (read by the leaderboard)."""
    if stage in FIRST_LEVEL_STAGES:
        folder = cfg.experiment_dir
    elif stage in SECOND_LEVEL_STAGES:
        folder = cfg.stack_dir
    else:
        return
    if not folder.is_dir():
        return
    if folder == cfg.experiment_dir:  # the export stage rebuilds the run from it
        save_resolved_config(cfg, folder)
    path = folder / "run.json"
    record = read_json(path) if path.is_file() else {"stages": {}}
    record |= {"run": cfg.run_name, "experiment": cfg.experiment, "variant": cfg.variant}
    record |= cfg.origin
    if folder == cfg.experiment_dir:  # a first-level run is not changed by stack settings
        record["changed"] = {
            k: v
            for k, v in record.get("changed", {}).items()
            if k.split(".")[0] not in SECOND_LEVEL_SECTIONS
        }
    record["stages"][stage] = {
        "seconds": round(seconds, 3),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_json(path, record)
    if cfg.tracking == "tensorboard":
        from src.config import flatten_settings
        from src.util.tracking import folder_metrics, log_run

        params = flatten_settings(cfg.model_dump(mode="json")) | {"changed": record.get("changed")}
        name = folder.name if folder == cfg.experiment_dir else f"{folder.name} ({cfg.run_name})"
        log_run(
            cfg.paths.outputs / "tensorboard",
            str(cfg.paths.outputs),
            name,
            params,
            folder_metrics(folder),
            sorted(cfg.report_dir.glob("*.png")) if folder == cfg.stack_dir else [],
        )
