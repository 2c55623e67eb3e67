"""Command line: ``python -m src <command> --config configs/X.yaml [--fold k] [key=value ...]``.

Commands: ``run`` (the whole pipeline in one process, as ``bash run.sh``), one stage by name
(each reads the files the previous one wrote and can be rerun on its own), ``leaderboard``,
``show-config`` (``--explain``: every key with its meaning and default), ``demo``, ``predict``
(the exported bundle's answers for a folder of clips and a pair list, as ``predict_batch``).
``python -m src <stage> --help`` says what a stage reads and writes.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import sys
from importlib import import_module
from pathlib import Path

from src.config import (
    ConfigError,
    ExperimentConfig,
    config_to_yaml,
    load_config,
    parse_override,
)
from src.runner import (
    DEFAULT_INPUT,
    RunError,
    default_config,
    has_input,
    is_default_input,
    no_input_error,
)
from src.stages import STAGES, call_stage
from src.stages import save_resolved_config as save_resolved_config  # re-exported for callers
from src.util.logs import setup_logging
from src.util.seed import seed_everything

log = logging.getLogger("src")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RUN_CONFIG = REPO / "configs" / "demo.yaml"


TOOLS = ("run", "leaderboard", "demo", "show-config", "predict")


class UsageError(ValueError):
    """A command line that argparse cannot parse."""


class OneLineParser(argparse.ArgumentParser):
    """Reports a bad command line as one error line (no usage dump)."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m src", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("stage", metavar="command", choices=[*STAGES, *TOOLS])
    parser.add_argument("--config", type=Path, default=None, help="YAML experiment config")
    parser.add_argument("--fold", type=int, default=None, help="one fold (train, embed)")
    parser.add_argument("--force", action="store_true", help="redo even if outputs are fresh")
    parser.add_argument("--resume", action="store_true", help="train: continue from last.pt")
    parser.add_argument(
        "--out", type=Path, default=None, help="demo: where to write the data; predict: the CSV"
    )
    parser.add_argument("--audio", type=Path, default=None, help="predict: a folder of clips")
    parser.add_argument("--pairs", type=Path, default=None, help="predict: its pair list (CSV)")
    parser.add_argument(
        "--stacker", default="auto", choices=["auto", "graph", "pairwise"], help="predict: which"
    )
    parser.add_argument("--stage", dest="first", default="0", help="run: first stage")
    parser.add_argument("--stop-stage", dest="last", default="8", help="run: last stage")
    parser.add_argument("--demo", action="store_true", help="run: demo data if input is empty")
    parser.add_argument("--explain", action="store_true", help="show-config: the reference")
    parser.add_argument("overrides", nargs="*", help="config overrides, key.sub=value")
    return parser


def stage_help(stage: str) -> str:
    """What one command does: its module's and function's docstrings, and the usage line."""
    if stage in STAGES:
        from src.stage_help import stage_help as reads_writes_help

        return reads_writes_help(stage, STAGES[stage])
    else:
        text = {
            "run": inspect.getdoc(import_module("src.runner")),
            "leaderboard": inspect.getdoc(import_module("src.report.leaderboard")),
            "demo": "Write the deterministic demo data set (Zalo layout) to --out.",
            "show-config": "Print the resolved config; --explain prints every key's meaning.",
            "predict": inspect.getdoc(import_module("src.serve.predict")),
        }[stage]
    usage = f"usage: python -m src {stage} --config configs/X.yaml [options] [key.sub=value ...]"
    return f"{usage}\n\n{text}\n"


def run_stage(stage: str, cfg: ExperimentConfig, args: argparse.Namespace) -> None:
    seed_everything(cfg.seed)
    call_stage(stage, cfg, args.fold, force=args.force, resume=args.resume)


def pick_default_config(overrides: list[str], demo: bool = False) -> Path:
    """``run`` without ``--config``: the demo for the demo data, a real recipe for real data
    (in ``input/``, or the folder a ``paths.input=...`` override names); logged with why.

    Raises
    ------
    RunError
        When ``paths.input=...`` names a folder that is missing or empty (and not ``--demo``):
        the demo is made only in the default ``input/``, never in a folder the user named.
    """
    folder = DEFAULT_INPUT
    for text in overrides:
        keys, value = parse_override(text)
        if keys == ["paths", "input"] and value is not None:
            folder = Path(str(value))
    if not demo and not has_input(folder) and not is_default_input(folder):
        raise no_input_error(
            folder, "or fix the paths.input override; `--demo` writes the demo data set there"
        )
    config, why = default_config(folder, DEFAULT_RUN_CONFIG.parent)
    log.info("no --config: %s (%s)", config.relative_to(REPO), why)
    return config


def run_tool(args: argparse.Namespace, cfg: ExperimentConfig) -> None:
    """The commands that are not one stage: run, leaderboard, show-config, demo."""
    if args.stage == "show-config":
        if args.explain:
            from src.config_reference import config_reference

            sys.stdout.write(config_reference())
        else:
            sys.stdout.write(config_to_yaml(cfg))
    elif args.stage == "demo":
        from src.data.demo import generate_demo

        generate_demo(args.out or cfg.paths.input, seed=cfg.seed)
    elif args.stage == "predict":
        from src.serve.predict import predict_folder

        test = cfg.paths.input
        predict_folder(
            cfg,
            args.audio or test / cfg.data.test_dir,
            args.pairs or test / cfg.data.test_csv,
            args.out or cfg.paths.outputs / "predictions.csv",
            args.stacker,
        )
    elif args.stage == "leaderboard":
        from src.report.leaderboard import config_outputs, print_leaderboard

        # with --config or a paths.outputs= override: that folder; else every outputs folder the
        # repo's configs write to
        named = args.config or any(o.startswith("paths.outputs=") for o in args.overrides)
        print_leaderboard(
            [cfg.paths.outputs] if named else config_outputs(DEFAULT_RUN_CONFIG.parent)
        )
    else:
        from src.runner import run_pipeline, stage_range

        stages = stage_range(args.first, args.last)
        seed_everything(cfg.seed)
        run_pipeline(cfg, stages, force=args.force, demo=args.demo)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) >= 2 and argv[0] in (*STAGES, *TOOLS) and {"-h", "--help"} & set(argv[1:]):
        sys.stdout.write(stage_help(argv[0]))
        return 0
    try:
        args = build_parser().parse_intermixed_args(argv)
    except UsageError as err:
        log.error("%s (see python -m src --help, or bash run.sh --help)", err)
        return 2
    try:
        if args.stage == "run" and args.config is None:
            args.config = pick_default_config(args.overrides, args.demo)
        cfg = load_config(args.config, args.overrides)
    except (ConfigError, RunError) as err:
        log.error("%s", err)
        return 2
    try:
        if args.stage in TOOLS:
            run_tool(args, cfg)
        else:
            run_stage(args.stage, cfg, args)
    except (ValueError, OSError, RuntimeError) as err:  # OSError: missing file, disk full, ...
        log.error("%s failed: %s", args.stage, err)
        return 1
    return 0
