"""Command line: ``python -m src <stage> --config configs/X.yaml [--fold k] [key=value ...]``.

Each stage reads the files the previous one wrote (see DESIGN.md) and can be rerun on its own.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import sys
from collections.abc import Callable
from importlib import import_module
from pathlib import Path

from src.config import ConfigError, ExperimentConfig, config_to_yaml, load_config
from src.util.io import write_text
from src.util.logs import setup_logging
from src.util.seed import seed_everything

log = logging.getLogger("src")

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
    "serve": "src.serve.app:serve_stage",
}
PER_FOLD = {"train", "embed"}


def _resolve(stage: str) -> Callable[..., object]:
    module, function = STAGES[stage].split(":")
    return getattr(import_module(module), function)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src", description=__doc__)
    parser.add_argument("stage", choices=[*STAGES, "demo", "show-config"])
    parser.add_argument("--config", type=Path, default=None, help="YAML experiment config")
    parser.add_argument("--fold", type=int, default=None, help="one fold (train, embed)")
    parser.add_argument("--force", action="store_true", help="redo even if outputs are fresh")
    parser.add_argument("--resume", action="store_true", help="train: continue from last.pt")
    parser.add_argument("--out", type=Path, default=None, help="demo: where to write the data")
    parser.add_argument("overrides", nargs="*", help="config overrides, key.sub=value")
    return parser


def save_resolved_config(cfg: ExperimentConfig, folder: Path) -> None:
    write_text(folder / "config.yaml", config_to_yaml(cfg))


def call_stage(stage: str, cfg: ExperimentConfig, fold: int | None = None, **options: bool) -> None:
    """Run one stage, every fold in turn for per-fold stages unless ``fold`` picks one.

    Options such as ``force`` and ``resume`` are passed to the stages that take them.
    """
    function = _resolve(stage)
    accepted = inspect.signature(function).parameters
    kwargs = {name: value for name, value in options.items() if name in accepted}
    if stage in PER_FOLD:
        for k in [fold] if fold is not None else range(cfg.folds.n_folds):
            function(cfg, k, **kwargs)
    else:
        function(cfg, **kwargs)


def run_stage(stage: str, cfg: ExperimentConfig, args: argparse.Namespace) -> None:
    seed_everything(cfg.seed)
    call_stage(stage, cfg, args.fold, force=args.force, resume=args.resume)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_intermixed_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        log.error("%s", err)
        return 2
    if args.stage == "show-config":
        sys.stdout.write(config_to_yaml(cfg))
        return 0
    if args.stage == "demo":
        from src.data.demo import generate_demo

        generate_demo(args.out or cfg.paths.input, seed=cfg.seed)
        return 0
    try:
        run_stage(args.stage, cfg, args)
    except (ValueError, OSError, RuntimeError) as err:  # OSError: missing file, disk full, ...
        log.error("%s failed: %s", args.stage, err)
        return 1
    return 0
